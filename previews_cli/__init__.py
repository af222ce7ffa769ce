"""The ``previews`` command: the outermost layer, which may import flows, blocks and the library.

Nothing in ``previews/`` imports this package (tests/test_architecture.py checks it).

Adding a command (e.g. ``previews_cli/reconcile.py``)::

    def register(sub):
        cmd = sub.add_parser("reconcile", help="...", env=("github_token", *common.PREFECT_ENV))
        cmd.add_argument("--repository", required=True)
        cmd.set_defaults(handler=_reconcile, template=lambda: {"started": []})

    def _reconcile(args):
        settings = common.settings()            # a bad PREVIEWS_* value: exit 2, naming the variable
        common.require_prefect(settings)        # Prefect API down: exit 3
        with run_progress(args, ui_url=settings.ui_url):   # steps as they start and end (not with --json)
            state = flow(..., return_state=True)
        if not state.is_completed():
            return common.fail(args, error, flow_run_id=...)          # 1, or 2/3 by the error's class
        return common.finish(args, common.document(args, "ok", flow_run_id=..., started=[...]), lines, 0)

and one line in :func:`previews_cli.app.parser`. The command then takes ``--debug``, ``--json`` and
``--verbose`` before or after its name, its help lists its variables and the exit codes, and a
:class:`previews.errors.PreviewsError` it raises becomes the scheme's exit code and, with ``--json``, one
document of its shape (:mod:`previews_cli.common`):

    0 ok    1 the run failed    2 bad input or configuration    3 a required service unreachable
"""
