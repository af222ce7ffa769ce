"""Serve the deployments from this process (``python -m flows.serve``), as ``previews up`` does.

Production runs them on a Docker work pool from prefect.yaml instead; the triggers are the same.
"""

from __future__ import annotations

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from flows import preview_reconcile
from flows.preview_image import preview_image
from flows.preview_teardown import preview_teardown
from flows.triggers import image_trigger, rerun_trigger, teardown_trigger


def main() -> None:
    """Register the deployments with their event triggers and run their flow runs locally."""
    image = preview_image.to_deployment(name="preview-image", triggers=[image_trigger(), rerun_trigger()])
    teardown = preview_teardown.to_deployment(name="preview-teardown", triggers=[teardown_trigger()])
    assert isinstance(image, RunnerDeployment)
    assert isinstance(teardown, RunnerDeployment)
    reconcile = preview_reconcile.deployment(scheduled=_reconcile_configured())
    # Prefect pauses served deployments on shutdown by default: an API call that retries for as long as the
    # server is unreachable, so a SIGTERM after the server stopped hung until a second SIGTERM. Leaving them
    # unpaused makes shutdown need no API call; serving them again updates them anyway.
    serve(image, teardown, reconcile, limit=4, pause_on_shutdown=False)


def _reconcile_configured() -> bool:
    """Schedule the reconcile only where it can work: repositories to reconcile and GitHub credentials."""
    from previews.errors import ValidationError
    from previews.settings import Settings

    try:
        settings = Settings()
        repositories = settings.reconcile_repository_names()
    except ValidationError:
        return False
    return bool(repositories) and bool(settings.github_token or settings.github_app_id)


if __name__ == "__main__":
    main()
