"""``previews outbox list|replay`` and ``previews serve`` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx

from previews.core.events import event_id
from previews.ingress.outbox import Outbox
from previews_cli.app import parser
from tests.support.console import PREVIEWS
from tests.support.services import free_port
from tests.support.webhooks import headers, serve_process, synchronize_payload


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREVIEWS_OUTBOX_PATH": str(tmp_path / "outbox.sqlite3")}
    return subprocess.run([PREVIEWS, *args], env=env, capture_output=True, text=True, timeout=60)


def fill(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.sqlite3") as outbox:
        for delivery, action in (("d-1", "opened"), ("d-2", "closed")):
            event = {
                "id": str(event_id(delivery)),
                "event": f"github.pull_request.{action}",
                "payload": {"x": 1},
            }
            outbox.add(delivery=delivery, event=event, repository="Acme/Api", number=7)
        outbox.mark_delivered(["d-1"])


def test_the_cli_knows_the_receiver_commands() -> None:
    args = parser().parse_args(["serve", "--port", "9999"])
    assert (args.host, args.port) == ("127.0.0.1", 9999)
    assert parser().parse_args(["outbox", "list", "--json"]).json is True
    assert parser().parse_args(["outbox", "replay", "abc"]).delivery == "abc"


def test_outbox_list_json_prints_one_document_with_the_entries(tmp_path: Path) -> None:
    fill(tmp_path)
    out = run(tmp_path, "outbox", "list", "--json")
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert (body["status"], body["outbox"], body["flow_run_id"]) == (
        "ok",
        str(tmp_path / "outbox.sqlite3"),
        None,
    )
    rows = body["entries"]
    assert [(r["delivery"], r["event"], r["state"]) for r in rows] == [
        ("d-1", "github.pull_request.opened", "delivered"),
        ("d-2", "github.pull_request.closed", "pending"),
    ]
    assert rows[0]["event_id"] == str(event_id("d-1"))
    assert all("payload" not in r for r in rows)
    pending = run(tmp_path, "outbox", "list", "--state", "pending")
    assert pending.returncode == 0
    assert "d-2" in pending.stdout
    assert "d-1" not in pending.stdout


def test_outbox_replay_puts_a_delivered_entry_back_with_a_new_event_id(tmp_path: Path) -> None:
    fill(tmp_path)
    out = run(tmp_path, "outbox", "replay", "d-1", "--json")
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["status"] == "replayed"
    row = body["entry"]
    assert (row["delivery"], row["state"], row["replays"]) == ("d-1", "pending", 1)
    assert row["event_id"] == str(event_id("d-1", replay=1))
    human = run(tmp_path, "outbox", "replay", "d-2")
    assert human.returncode == 0, human.stderr
    assert human.stdout.startswith("replayed: d-2  pending")
    listed = json.loads(run(tmp_path, "outbox", "list", "--json").stdout)["entries"]
    assert f"event_id={listed[1]['event_id']}\n" in human.stdout


def test_outbox_list_of_a_missing_outbox_says_so_exits_2_and_creates_nothing(tmp_path: Path) -> None:
    for args in (["outbox", "list"], ["outbox", "replay", "d-1"]):
        out = run(tmp_path, *args)
        assert out.returncode == 2
        assert out.stderr.startswith(
            f"invalid input: PREVIEWS_OUTBOX_PATH: no outbox at {tmp_path}/outbox.sqlite3"
        )
        assert list(tmp_path.iterdir()) == []
    in_cwd = subprocess.run(
        [PREVIEWS, "--json", "outbox", "list"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert in_cwd.returncode == 2
    body = json.loads(in_cwd.stdout)
    assert (body["status"], body["error"], body["entries"]) == ("failed", "InvalidInputError", [])
    assert list(tmp_path.iterdir()) == []  # no .state/ appeared


def test_outbox_replay_of_an_unknown_or_hostile_id_fails_clearly(tmp_path: Path) -> None:
    fill(tmp_path)
    unknown = run(tmp_path, "outbox", "replay", "nope")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("failed: no delivery nope in the outbox")
    as_json = json.loads(run(tmp_path, "--json", "outbox", "replay", "nope").stdout)
    assert (as_json["status"], as_json["error"], as_json["entry"]) == ("failed", "NotFoundError", None)
    hostile = run(tmp_path, "outbox", "replay", "--", "-x;rm")
    assert hostile.returncode == 2
    assert "DELIVERY_ID" in hostile.stderr


def test_serve_without_a_secret_refuses_to_start_with_one_line_naming_the_variable(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREVIEWS_WEBHOOK_SECRET"}
    env["PREVIEWS_OUTBOX_PATH"] = str(tmp_path / "outbox.sqlite3")
    out = subprocess.run(
        [PREVIEWS, "serve", "--port", str(port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "PREVIEWS_WEBHOOK_SECRET" in lines[0]
    assert "--insecure-no-signature" in lines[0]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "outbox.sqlite3").exists()


def test_serve_insecure_flag_warns_loudly_and_still_refuses_signed_deliveries(tmp_path: Path) -> None:
    with serve_process(
        tmp_path, env={"PREVIEWS_WEBHOOK_SECRET": None}, args=("--insecure-no-signature",)
    ) as receiver:
        body = json.dumps(synchronize_payload()).encode()
        unsigned = httpx.post(
            receiver.webhook_url, content=body, headers=headers(body, secret=None), timeout=30
        )
        signed = httpx.post(receiver.webhook_url, content=body, headers=headers(body), timeout=30)
        log = receiver.log_text()
    assert unsigned.status_code == 202, unsigned.text
    assert signed.status_code == 401
    assert "WARNING previews.ingress: INSECURE: started with --insecure-no-signature" in log
    assert log.count("INSECURE") == 1
    assert "WITHOUT a signature check" in log
