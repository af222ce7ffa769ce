"""prefect.yaml and the served deployments trigger on the same events with the same parameters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from flows.triggers import image_trigger, rerun_trigger, teardown_trigger

ROOT = Path(__file__).resolve().parents[1]


def deployments() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    return {d["name"]: d for d in data["deployments"]}


def test_yaml_triggers_match_the_served_triggers() -> None:
    found = deployments()
    served = {
        "preview-image": [image_trigger(), rerun_trigger()],
        "preview-teardown": [teardown_trigger()],
    }
    for name, triggers in served.items():
        declared_triggers = found[name]["triggers"]
        assert [d["name"] for d in declared_triggers] == [t.name for t in triggers]
        for declared, trigger in zip(declared_triggers, triggers, strict=True):
            assert set(declared["expect"]) == trigger.expect
            assert declared["match"] == trigger.match.model_dump()
            assert declared["parameters"] == trigger.parameters


def test_yaml_holds_no_secret_and_no_block_reference_in_job_variables() -> None:
    text = (ROOT / "prefect.yaml").read_text()
    assert "prefect.blocks." not in text
    for deployment in deployments().values():
        env = deployment["work_pool"]["job_variables"].get("env", {})
        assert not any(k.endswith(("TOKEN", "PASSWORD", "SECRET", "PRIVATE_KEY")) for k in env)


def test_the_scheduled_cleanup_deletes_and_says_so() -> None:
    """Issue 13 item 9: the deployment's mode is explicit (the flow's own default is a dry run)."""
    cleanup = deployments()["preview-cleanup"]
    assert cleanup["parameters"] == {"dry_run": False}
    assert cleanup["schedules"]
    text = (ROOT / "prefect.yaml").read_text()
    assert "MODE: this deployment DELETES" in text
    assert '"Quick run"' in text
    readme = (ROOT / "README.md").read_text()
    assert "**Quick run**" in readme
    assert "`preview-cleanup` deployment in `prefect.yaml` deletes" in readme


def test_entrypoints_exist() -> None:
    for deployment in deployments().values():
        module, _, func = deployment["entrypoint"].partition(":")
        assert (ROOT / module).exists()
        assert f"def {func}(" in (ROOT / module).read_text()


def test_reconcile_deployment_matches_the_served_one() -> None:
    from flows.preview_reconcile import INTERVAL_SECONDS, deployment

    declared = deployments()["preview-reconcile"]
    served = deployment(scheduled=True)
    assert declared["entrypoint"] == "flows/preview_reconcile.py:preview_reconcile"
    assert declared["schedules"] == [{"interval": INTERVAL_SECONDS}]
    assert [s.schedule.interval.total_seconds() for s in served.schedules] == [INTERVAL_SECONDS]  # type: ignore[union-attr]
    assert declared["parameters"] == served.parameters == {"dry_run": False}
    assert declared["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
    assert served.concurrency_limit == 1
