"""``previews up``: the whole stack on one machine, on embedded defaults.

A Prefect server on SQLite (state under ``.state/``), the webhook receiver, and the deployments served by a
local runner polling every second. ``--demo`` adds a throwaway registry and sample repository and sends one
signed ``pull_request`` delivery through the whole chain.

SIGINT (Ctrl-C), SIGTERM and SIGHUP stop the whole tree: the parts are stopped newest first, each while the
parts it needs still answer (the flow runner reports its cancelled runs through the Prefect server, so the
server goes after it), and whatever of a part's tree is left at its deadline is killed. The deadlines (runner
and receiver together 6 s, server 4 s, demo registry 2 s) bound a stop to about 12 s; it normally takes 1-3 s.
See :mod:`previews.local.processes`.
"""

from __future__ import annotations

import argparse
import io
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from previews.docker_engine import check_engine
from previews.errors import DockerUnavailableError, PreviewsError
from previews.local import demo, prefect_api, processes


class StackError(PreviewsError):
    """A part of the local stack did not start."""


def _port_free(port: int) -> bool:
    """Whether ``port`` on 127.0.0.1 can be listened on; a socket in TIME_WAIT does not hold it."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


ENGINE_HINT = "start a Docker engine (as root: dockerd &) or point DOCKER_HOST at one"


def preflight(*, demo_too: bool, ports: Mapping[str, int]) -> list[str]:
    """What keeps ``previews up`` from starting, one sentence each; empty when everything is there.

    ``ports`` maps the option that sets a port (``--port``) to its value. Nothing is started here.
    """
    problems: list[str] = []
    try:
        check_engine(timeout=5)
    except DockerUnavailableError as exc:
        problems.append(f"{exc}: {ENGINE_HINT}")
    if demo_too and demo.registry_binary() is None:
        problems.append(
            "the demo needs Debian's docker-registry, which is not installed (apt-get install docker-registry)"
        )
    if shutil.which("git") is None:
        problems.append("git is not installed (apt-get install git)")
    for option, port in ports.items():
        if not _port_free(port):
            problems.append(
                f"port {port} on 127.0.0.1 is in use: stop what listens there or choose another with {option}"
            )
    return problems


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise StackError(f"{log.stem} exited with status {proc.returncode}; last log lines:\n{tail}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise StackError(f"{log.stem} did not answer at {url} within {timeout:.0f}s (log: {log})")


@dataclass
class Part:
    """One process of the stack, in its own session; how long it may take to stop, and what it needs.

    Parts of a higher ``tier`` need those of lower tiers while they stop (the flow runner reports cancelled
    runs to the Prefect server), so they are stopped first; parts of one tier are stopped together.
    """

    name: str
    proc: subprocess.Popen[bytes]
    grace: float
    tier: int


@dataclass
class Stack:
    """The processes of a running stack, stopped newest first."""

    state_dir: Path
    parts: list[Part] = field(default_factory=list)

    def start(
        self, name: str, argv: list[str], env: Mapping[str, str], *, grace: float = 4.0, tier: int = 0
    ) -> tuple[subprocess.Popen[bytes], Path]:
        """Start ``argv`` in a new session with its output in ``<state>/logs/<name>.log``.

        A session of its own keeps a terminal's Ctrl-C away from it: :meth:`stop` decides the order.
        ``grace`` is how long it may take to stop after SIGTERM before its tree is killed.
        """
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=dict(env), start_new_session=True
            )
        self.parts.append(Part(name, proc, grace, tier))
        return proc, log

    def settle(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the processes the parts started (a flow run ending) to exit.

        A flow run that just failed still runs its hooks; stopping the runner before it exits would have the
        runner mark it Cancelled, and the Prefect UI would no longer show the failure.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(processes.descendants(p.proc.pid) for p in self.parts):
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop the parts tier by tier, highest first: SIGTERM to each, then SIGKILL to its tree's leftovers.

        SIGTERM goes to the part's own process only: the flow runner then cancels its flow runs itself (a
        signal to its whole group would crash them instead). Whatever is left at the deadline is killed.
        """
        for tier in sorted({part.tier for part in self.parts}, reverse=True):
            parts = [part for part in self.parts if part.tier == tier]
            trees = [pid for part in parts for pid in (part.proc.pid, *processes.descendants(part.proc.pid))]
            for part in parts:
                if part.proc.poll() is None:
                    part.proc.send_signal(signal.SIGTERM)
            left = processes.wait_gone(trees, time.monotonic() + max(part.grace for part in parts))
            if left:
                processes.signal_tree(left, signal.SIGKILL)
                processes.wait_gone(left, time.monotonic() + 2)
            for part in parts:
                part.proc.wait()


@dataclass(frozen=True)
class Running:
    """A started stack: its processes and where each part answers."""

    stack: Stack
    ui: str
    api: str
    receiver: str
    logs: Path


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


@contextmanager
def run_stack(
    *,
    state_dir: Path,
    receiver_port: int,
    prefect_port: int,
    extra_env: Mapping[str, str],
    progress: Callable[[str], None] = lambda _text: None,
) -> Iterator[Running]:
    """Start server, runner and receiver; yield where they answer; stop everything on exit.

    ``progress`` gets one line as each part starts (they take seconds each, the first server start longer).
    """
    for port, what in ((prefect_port, "--prefect-port"), (receiver_port, "--port")):
        if not _port_free(port):
            raise StackError(f"port {port} on 127.0.0.1 is in use; choose another with {what}")
    stack = Stack(state_dir)
    api_url = f"http://127.0.0.1:{prefect_port}/api"
    base_env = _stack_environment(state_dir, prefect_port, extra_env)
    try:
        first = not (state_dir / "prefect").exists()
        progress(
            f"Starting the Prefect server on 127.0.0.1:{prefect_port}"
            + (" (the first start creates its database: up to half a minute)" if first else "")
            + " ..."
        )
        server, log = stack.start(
            "prefect-server",
            [_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
            base_env,
            grace=4,
            tier=0,
        )
        _wait_http(f"http://127.0.0.1:{prefect_port}/api/health", server, log, timeout=180)
        progress(f"Starting the flow runner and the webhook receiver on 127.0.0.1:{receiver_port} ...")
        runner, log = stack.start("flows", [sys.executable, "-m", "flows.serve"], base_env, grace=6, tier=1)
        receiver, rlog = stack.start(
            "receiver",
            [_bin("previews"), "serve", "--host", "127.0.0.1", "--port", str(receiver_port)],
            base_env,
            grace=2,
            tier=1,
        )
        _wait_http(f"http://127.0.0.1:{receiver_port}/healthz", receiver, rlog, timeout=60)
        _wait_for_deployments(api_url, runner, log, timeout=120)
        with prefect_api.noted(state_dir, api_url):  # `previews build` here uses this server while it runs
            yield Running(
                stack=stack,
                ui=f"http://127.0.0.1:{prefect_port}",
                api=api_url,
                receiver=f"http://127.0.0.1:{receiver_port}/webhooks/github",
                logs=state_dir / "logs",
            )
    finally:
        stack.stop()


def _stack_environment(state_dir: Path, prefect_port: int, extra_env: Mapping[str, str]) -> dict[str, str]:
    """The environment of every process of the stack: this one's, pointed at the stack's own Prefect."""
    api_url = f"http://127.0.0.1:{prefect_port}/api"
    return {
        **os.environ,
        "PREFECT_HOME": str(state_dir / "prefect"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": api_url,
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREVIEWS_UI_URL": f"http://127.0.0.1:{prefect_port}",
        **extra_env,
    }


def _wait_for_deployments(
    api_url: str, runner: subprocess.Popen[bytes], log: Path, *, timeout: float
) -> None:
    """Wait until the runner has registered the deployments and their trigger automations."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if runner.poll() is not None:
            raise StackError(f"the flow runner exited with status {runner.returncode} (log: {log})")
        try:
            deployments = httpx.post(f"{api_url}/deployments/filter", json={}, timeout=5).json()
            automations = httpx.post(f"{api_url}/automations/filter", json={}, timeout=5).json()
            names = {d["name"] for d in deployments}
            if {"preview-image", "preview-teardown"} <= names and len(automations) >= 2:
                return
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            pass
        time.sleep(0.5)
    raise StackError(f"the deployments were not served within {timeout:.0f}s (log: {log})")


def webhook_secret(state_dir: Path, environ: Mapping[str, str]) -> tuple[str, str]:
    """The stack's webhook secret and where it comes from.

    ``PREVIEWS_WEBHOOK_SECRET`` if set; otherwise the one generated for this state directory on its first
    ``previews up`` and kept in ``<state>/webhook-secret`` (mode 0600), so GitHub's side stays valid across
    restarts.
    """
    if environ.get("PREVIEWS_WEBHOOK_SECRET"):
        return environ["PREVIEWS_WEBHOOK_SECRET"], "from PREVIEWS_WEBHOOK_SECRET"
    path = state_dir / "webhook-secret"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32))
    return path.read_text().strip(), f"generated for this stack, kept in {path}"


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopRequested(BaseException):
    """A stop signal arrived (a BaseException, like KeyboardInterrupt, so no ``except Exception`` eats it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _say(text: str) -> None:
    """Write to stderr from a signal handler or after a hangup, when print() may fail or re-enter."""
    with suppress(OSError):
        os.write(2, text.encode())


def _stop_on_signals() -> None:
    """Turn SIGINT, SIGTERM and SIGHUP into :class:`StopRequested`, once; later ones are only noted.

    Installing handlers also replaces a SIG_IGN inherited from a shell that started us with ``&``, so the
    children start with the default dispositions instead of ignoring SIGINT.
    """

    def again(signum: int, _frame: object) -> None:
        _say(f"previews up: {signal.Signals(signum).name} again; already stopping\n")

    def first(signum: int, _frame: object) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, again)
        _say(f"\nStopping ({signal.Signals(signum).name}) ...\n")
        raise StopRequested(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, first)


def _up(args: argparse.Namespace) -> int:
    problems = preflight(demo_too=args.demo, ports={"--prefect-port": args.prefect_port, "--port": args.port})
    if args.production:
        from previews.local import production  # it builds on this module

        problems += production.missing_programs()
        if args.demo:
            problems.append("--demo runs on the embedded stack only: drop --demo or --production")
    if problems:
        print("previews up cannot start:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        # The CLI's exit codes: 3 when the Docker engine is unreachable, else 2 (ports, missing programs).
        return 3 if any(ENGINE_HINT in problem for problem in problems) else 2
    state_dir = Path(args.state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # each line as it happens, in a pipe or a log too
    processes.become_subreaper()
    _stop_on_signals()
    ready: list[bool] = []
    try:
        run = _run_up
        if args.production:
            from previews.local import production

            run = production.run_up
        status = run(args, state_dir, on_ready=lambda: ready.append(True))
    except StopRequested as stop:  # a stop once everything ran is the normal end; before, it is not
        status = 0 if ready else 128 + stop.signum
    finally:
        leftovers = processes.descendants(os.getpid())
        if leftovers:
            processes.signal_tree(leftovers, signal.SIGKILL)
            processes.wait_gone(leftovers, time.monotonic() + 2)
        processes.reap()
    _say("Stopped.\n")
    return status


def _run_up(args: argparse.Namespace, state_dir: Path, *, on_ready: Callable[[], None]) -> int:
    secret, secret_origin = webhook_secret(state_dir, os.environ)
    with ExitStack() as stack:
        extra_env: dict[str, str] = {"PREVIEWS_WEBHOOK_SECRET": secret}
        sample: demo.DemoProject | None = None
        if args.demo:
            print("Demo: starting a registry and creating a sample repository ...", flush=True)
            registry = stack.enter_context(demo.run_registry(state_dir / "demo" / "registry"))
            sample = demo.make_project(state_dir / "demo" / "remotes")
            extra_env |= {
                "PREVIEWS_REGISTRY": registry.host,
                "PREVIEWS_REGISTRY_USERNAME": registry.username,
                "PREVIEWS_REGISTRY_TOKEN": registry.password,
                "PREVIEWS_GIT_URL_TEMPLATE": sample.git_url_template,
                "PREVIEWS_ALLOWED_REPOSITORIES": sample.repository,
                "PREVIEWS_OUTBOX_PATH": str(state_dir / "demo" / "outbox.sqlite3"),
            }
        running = stack.enter_context(
            run_stack(
                state_dir=state_dir,
                receiver_port=args.port,
                prefect_port=args.prefect_port,
                extra_env=extra_env,
                progress=lambda text: print(text, flush=True),
            )
        )
        print(f"Prefect UI:        {running.ui}")
        print(f"Webhook receiver:  {running.receiver}")
        if secret_origin.startswith("generated"):  # the user needs it for GitHub's webhook settings
            print(f"Webhook secret:    {secret}  ({secret_origin})")
        else:
            print(f"Webhook secret:    {secret_origin}")
        print(f"Logs:              {running.logs}")
        if args.demo and sample is not None:
            print("Demo: sending a signed pull_request delivery built from a real GitHub payload ...")
            try:
                outcome = demo.send_and_wait(
                    sample,
                    receiver_url=running.receiver,
                    api_url=running.api,
                    ui_url=running.ui,
                    registry=registry,
                    secret=secret,
                    timeout=args.timeout,
                )
            except demo.DemoError as exc:
                print(f"error: {exc}", file=sys.stderr, flush=True)
                print(f"The logs are in {running.logs}; stopping ...", file=sys.stderr, flush=True)
                running.stack.settle(timeout=5)
                return 1
            for key, value in outcome.items():
                print(f"{key + ':':19}{value}")
            if args.exit_after_demo:
                return 0
        on_ready()
        print("Press Ctrl-C to stop.", flush=True)
        while True:
            time.sleep(3600)


def register(sub: Any) -> None:
    """Add ``previews up`` to the CLI."""
    up = sub.add_parser(
        "up",
        help="run Prefect, the receiver and the flows locally (--demo: end to end)",
        env=("webhook_secret",),
    )
    up.add_argument("--port", type=int, default=8787, help="receiver port (default 8787)")
    up.add_argument("--prefect-port", type=int, default=4200, help="Prefect server port (default 4200)")
    up.add_argument("--demo", action="store_true", help="also run a demo registry, repository and delivery")
    up.add_argument("--state-dir", default=".state", help="where the stack keeps its state (default .state)")
    up.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the demo image")
    up.add_argument(
        "--exit-after-demo", action="store_true", help="stop the stack once the demo image exists"
    )
    up.add_argument(
        "--production",
        action="store_true",
        help="PostgreSQL, Redis, two Prefect API servers behind HAProxy, Docker workers (README, Scale)",
    )
    up.add_argument("--workers", type=int, default=2, help="--production: Docker workers (default 2)")
    up.add_argument(
        "--pool-limit", type=int, default=4, help="--production: the pool's concurrency limit (default 4)"
    )
    up.set_defaults(handler=_up)
