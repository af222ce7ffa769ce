"""``previews up`` gives its receiver a webhook secret: the user's, or one generated and kept for the stack."""

from __future__ import annotations

import stat
from pathlib import Path

from previews.local.stack import webhook_secret


def test_a_stack_without_a_configured_secret_generates_one_and_keeps_it(tmp_path: Path) -> None:
    secret, origin = webhook_secret(tmp_path, {})
    assert len(secret) >= 32
    assert origin == f"generated for this stack, kept in {tmp_path / 'webhook-secret'}"
    assert stat.S_IMODE((tmp_path / "webhook-secret").stat().st_mode) == 0o600
    assert webhook_secret(tmp_path, {}) == (secret, origin)  # the same after a restart
    other = tmp_path / "other"
    other.mkdir()
    assert webhook_secret(other, {})[0] != secret  # each stack its own


def test_the_users_secret_wins_and_is_not_echoed(tmp_path: Path) -> None:
    secret, origin = webhook_secret(tmp_path, {"PREVIEWS_WEBHOOK_SECRET": "users-own"})
    assert (secret, origin) == ("users-own", "from PREVIEWS_WEBHOOK_SECRET")
    assert "users-own" not in origin
    assert not (tmp_path / "webhook-secret").exists()
