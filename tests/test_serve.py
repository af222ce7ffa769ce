"""``python -m flows.serve``'s warm start: the switch back to Prefect's own way. The warm way itself runs in
every served-flow test (tests/support/served.py starts runs as flows.serve does: supersede, worker killed,
``previews up``)."""

from __future__ import annotations

import prefect.flow_engine
import prefect.runner._starter_direct as starter

from flows.serve import warm_start


def test_spawn_keeps_prefects_own_starter() -> None:
    before = getattr(starter, "run_flow_in_subprocess")  # noqa: B009
    assert warm_start(environ={"PREVIEWS_RUNNER_START": "spawn"}) is False
    assert getattr(starter, "run_flow_in_subprocess") is before is prefect.flow_engine.run_flow_in_subprocess  # noqa: B009
