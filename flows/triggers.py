"""The event triggers of the deployments, shared by ``previews up`` (served flows) and checked against prefect.yaml.

Events come from the receiver (see DESIGN.md, "The event contract"): ``github.pull_request.<action>`` on the
resource ``github.pull-request.<owner>/<repo>#<N>`` with the validated fields in ``payload``. A template that is
exactly ``"{{ event.payload.x }}"`` keeps the payload's JSON type, so ``pr_number`` arrives as an int.
"""

from __future__ import annotations

from typing import Any

from prefect.events import DeploymentEventTrigger

BUILD_ACTIONS = ("opened", "synchronize", "reopened", "ready_for_review", "labeled")
RESOURCE_MATCH = {"prefect.resource.id": "github.pull-request.*"}

# When the receiver accepted the delivery: it orders a PR's runs (previews/core/supersede.py). ``default(none)``
# because an event without the field (stored by an older receiver) would otherwise fail to render, and Prefect
# then creates no run at all; with it, the run gets None and is ordered by its creation time.
RECEIVED = "{{ event.payload.received | default(none) }}"
IMAGE_PARAMETERS: dict[str, Any] = {
    "repository": "{{ event.payload.repository }}",
    "pr_number": "{{ event.payload.number }}",
    "head_sha": "{{ event.payload.head_sha }}",
    "base_sha": "{{ event.payload.base_sha }}",
    "fork": "{{ event.payload.fork }}",
    "labels": "{{ event.payload.labels }}",
    "delivery": "{{ event.payload.delivery }}",
    "action": "{{ event.payload.action }}",
    "received": RECEIVED,
}
# A check's "Re-run" button (previews/core/rerequest.py): the PR and SHA of the check; GitHub fills in the rest
# when the run reads the pull request. ``force_rebuild`` is true when the re-requested check had not passed.
RERUN_EVENTS = ("github.check_run.rerequested", "github.check_suite.rerequested")
RERUN_PARAMETERS: dict[str, Any] = {
    "repository": "{{ event.payload.repository }}",
    "pr_number": "{{ event.payload.number }}",
    "head_sha": "{{ event.payload.head_sha }}",
    "delivery": "{{ event.payload.delivery }}",
    "force_rebuild": "{{ event.payload.force_rebuild }}",
    "received": RECEIVED,
}
TEARDOWN_PARAMETERS: dict[str, Any] = {
    "repository": "{{ event.payload.repository }}",
    "pr_number": "{{ event.payload.number }}",
    "delivery": "{{ event.payload.delivery }}",
}


def image_trigger() -> DeploymentEventTrigger:
    """Build on every push-like pull_request action."""
    return DeploymentEventTrigger(
        name="preview-image-on-pull-request",
        expect={f"github.pull_request.{action}" for action in BUILD_ACTIONS},
        match=RESOURCE_MATCH,
        parameters=IMAGE_PARAMETERS,
    )


def rerun_trigger() -> DeploymentEventTrigger:
    """Build again when a person presses "Re-run" on the pipeline's check (or its check suite)."""
    return DeploymentEventTrigger(
        name="preview-image-on-rerequest",
        expect=set(RERUN_EVENTS),
        match=RESOURCE_MATCH,
        parameters=RERUN_PARAMETERS,
    )


def teardown_trigger() -> DeploymentEventTrigger:
    """Tear the preview down when the pull request closes."""
    return DeploymentEventTrigger(
        name="preview-teardown-on-close",
        expect={"github.pull_request.closed"},
        match=RESOURCE_MATCH,
        parameters=TEARDOWN_PARAMETERS,
    )
