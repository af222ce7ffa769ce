"""The SQLite outbox: durable adds, dedupe, states, replay with a fresh event id, purge, concurrency."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from previews.core.events import event_id
from previews.ingress.outbox import Outbox


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _event(delivery: str) -> dict[str, Any]:
    return {
        "id": str(event_id(delivery)),
        "occurred": "2026-11-28T12:00:00Z",
        "event": "github.pull_request.opened",
        "resource": {"prefect.resource.id": "github.pull-request.o/r#1"},
        "payload": {"delivery": delivery},
    }


def _add(outbox: Outbox, delivery: str) -> bool:
    return outbox.add(delivery=delivery, event=_event(delivery), repository="o/r", number=1)


def test_add_is_committed_and_visible_to_another_process(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    with Outbox(path) as outbox:
        assert _add(outbox, "d-1") is True
        script = (
            "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]);"
            "print(db.execute('PRAGMA journal_mode').fetchone()[0],"
            " db.execute('SELECT delivery, state FROM outbox').fetchall())"
        )
        out = subprocess.run(
            [sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == "wal [('d-1', 'pending')]"


def test_duplicate_delivery_is_reported_and_not_stored_twice(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as outbox:
        assert _add(outbox, "d-1") is True
        assert _add(outbox, "d-1") is False
        assert [e.delivery for e in outbox.entries()] == ["d-1"]


def test_states_attempts_errors_and_delivery(tmp_path: Path) -> None:
    clock = Clock()
    with Outbox(tmp_path / "o.db", clock=clock) as outbox:
        _add(outbox, "a")
        clock.now += 1
        _add(outbox, "b")
        assert [e.delivery for e in outbox.pending(10)] == ["a", "b"]
        outbox.mark_failed(["a", "b"], "cannot reach Prefect")
        entry = outbox.get("a")
        assert entry is not None
        assert (entry.state, entry.attempts, entry.last_error) == ("pending", 1, "cannot reach Prefect")
        clock.now += 10
        stats = outbox.stats()
        assert (stats.pending, stats.delivered, stats.oldest_pending_age) == (2, 0, 11.0)
        assert outbox.mark_delivered(["a"]) == 1
        assert outbox.mark_delivered(["a"]) == 0
        delivered = outbox.get("a")
        assert delivered is not None
        assert (delivered.state, delivered.attempts, delivered.last_error) == ("delivered", 2, None)
        assert delivered.delivered_at == clock.now
        outbox.mark_failed(["b"], "422 refused", rejected=True)
        assert [e.delivery for e in outbox.pending(10)] == []
        assert outbox.stats().rejected == 1
        assert outbox.get("missing") is None


def test_replay_sends_again_under_a_new_event_id(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as outbox:
        _add(outbox, "d-1")
        pending = outbox.replay("d-1")
        assert pending is not None
        assert (pending.replays, pending.prefect_event()["id"]) == (0, str(event_id("d-1")))
        outbox.mark_delivered(["d-1"])
        replayed = outbox.replay("d-1")
        assert replayed is not None
        assert (replayed.state, replayed.replays, replayed.delivered_at) == ("pending", 1, None)
        event = replayed.prefect_event()
        assert event["id"] == str(event_id("d-1", replay=1))
        assert event["payload"] == {"delivery": "d-1"}
        assert event["occurred"] != "2026-11-28T12:00:00Z"
        assert outbox.replay("unknown") is None


def test_purge_deletes_only_delivered_entries_past_retention(tmp_path: Path) -> None:
    clock = Clock()
    with Outbox(tmp_path / "o.db", clock=clock) as outbox:
        for name in ("old", "new", "waiting"):
            _add(outbox, name)
        outbox.mark_delivered(["old"])
        clock.now += 3600
        outbox.mark_delivered(["new"])
        clock.now += 60
        assert outbox.purge(older_than_seconds=1800) == 1
        assert sorted(e.delivery for e in outbox.entries()) == ["new", "waiting"]


def test_concurrent_adds_from_threads_and_a_second_connection(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    first, second = Outbox(path), Outbox(path)
    results: list[bool] = []
    lock = threading.Lock()

    def worker(outbox: Outbox, start: int) -> None:
        for i in range(start, start + 100):
            added = _add(outbox, f"d-{i % 150}")
            with lock:
                results.append(added)

    threads = [
        threading.Thread(target=worker, args=(ob, n * 50))
        for n, ob in enumerate([first, second, first, second])
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(results) == 150
    assert len(first.entries()) == 150
    first.close()
    second.close()


def test_schema_rejects_unknown_states(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as outbox:
        _add(outbox, "d")
    db = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("UPDATE outbox SET state = 'lost'")
    db.close()
