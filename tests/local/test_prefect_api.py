"""Which Prefect API a one-shot ``previews build`` uses, decided before Prefect is imported."""

from __future__ import annotations

from pathlib import Path

from previews.local.prefect_api import configured_api_url, running_stack_api


def test_the_environment_then_the_active_profile_name_the_api(tmp_path: Path) -> None:
    (tmp_path / "profiles.toml").write_text(
        'active = "local"\n[profiles.local]\nPREFECT_API_URL = "http://127.0.0.1:4200/api"\n'
        '[profiles.other]\nPREFECT_API_URL = "http://127.0.0.1:4300/api"\n[profiles.ephemeral]\n'
    )
    home = {"PREFECT_HOME": str(tmp_path)}
    assert configured_api_url({**home, "PREFECT_API_URL": "http://x/api"}) == "http://x/api"
    assert configured_api_url(home) == "http://127.0.0.1:4200/api"
    assert configured_api_url({**home, "PREFECT_PROFILE": "other"}) == "http://127.0.0.1:4300/api"
    assert configured_api_url({**home, "PREFECT_PROFILE": "ephemeral"}) is None
    assert configured_api_url({"PREFECT_HOME": str(tmp_path / "none")}) is None


def test_a_stack_note_counts_only_for_a_local_server_that_answers(tmp_path: Path) -> None:
    env = {"PREVIEWS_STATE_DIR": str(tmp_path)}
    assert running_stack_api(env) is None  # no note
    (tmp_path / "prefect-api-url").write_text("https://prefect.example.com/api\n")
    assert running_stack_api(env) is None  # never an address a file names elsewhere
    (tmp_path / "prefect-api-url").write_text("http://127.0.0.1:9/api\n")
    assert running_stack_api(env) is None  # nothing answers there
