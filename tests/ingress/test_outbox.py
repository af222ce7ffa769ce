"""The SQLite outbox: durable adds, dedupe, states, replay with a fresh event id, purge, concurrency."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from previews.core.events import event_id
from previews.ingress.outbox import SCHEMA_VERSION, Added, GroupCommit, NewEntry, Outbox, OutboxError


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


# The schema exactly as previews/ingress/outbox.py created it before the body hash (commit 3956095).
SCHEMA_BEFORE_BODY_HASH = """
CREATE TABLE IF NOT EXISTS outbox (
    delivery      TEXT PRIMARY KEY,
    event         TEXT NOT NULL,
    repository    TEXT NOT NULL,
    number        INTEGER NOT NULL,
    event_json    TEXT NOT NULL,
    state         TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'rejected')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    replays       INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    received_at   REAL NOT NULL,
    updated_at    REAL NOT NULL,
    delivered_at  REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outbox_state_received ON outbox (state, received_at);
"""


def old_outbox(path: Path) -> None:
    """An outbox file as the previous version wrote it: WAL, its schema, a pending and a delivered entry."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.executescript(SCHEMA_BEFORE_BODY_HASH)
    for delivery, state in (("old-pending", "pending"), ("old-delivered", "delivered")):
        db.execute(
            "INSERT INTO outbox (delivery, event, repository, number, event_json, received_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (delivery) DO NOTHING",
            (delivery, "github.pull_request.opened", "o/r", 1, json.dumps(_event(delivery)), 1.0, 1.0),
        )
        db.execute("UPDATE outbox SET state = ? WHERE delivery = ?", (state, delivery))
    db.close()


def test_an_outbox_written_by_the_previous_version_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    old_outbox(path)
    with Outbox(path) as outbox:
        assert [(e.delivery, e.state) for e in outbox.entries()] == [
            ("old-delivered", "delivered"),
            ("old-pending", "pending"),
        ]
        assert [e.delivery for e in outbox.pending(10)] == ["old-pending"]
        assert outbox.mark_delivered(["old-pending"]) == 1
        assert _add(outbox, "old-pending") is False  # ids stored before the migration still dedupe
        assert outbox.add(
            delivery="new-1", event=_event("new-1"), repository="o/r", number=1, body_sha256="ab"
        )
        assert not outbox.add(
            delivery="new-2", event=_event("new-2"), repository="o/r", number=1, body_sha256="ab"
        )
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("SELECT delivery, body_sha256 FROM outbox ORDER BY delivery").fetchall() == [
        ("new-1", "ab"),
        ("old-delivered", None),
        ("old-pending", None),
    ]
    db.close()
    with Outbox(path) as reopened:  # opening again changes nothing
        assert len(reopened.entries()) == 3


def test_processes_opening_an_old_outbox_at_once_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    old_outbox(path)
    script = (
        "import sys; from previews.ingress.outbox import Outbox;"
        "o = Outbox(sys.argv[1]); print(len(o.entries())); o.close()"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    assert [p.communicate(timeout=60)[0].strip() for p in procs] == ["2"] * 4
    assert [p.returncode for p in procs] == [0] * 4


def test_an_outbox_from_a_newer_version_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    with Outbox(path):
        pass
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(OutboxError, match="newer than this previews"):
        Outbox(path)


def test_same_body_under_another_delivery_id_is_a_duplicate_even_within_one_batch(tmp_path: Path) -> None:
    def entry(delivery: str, body: str | None) -> NewEntry:
        return NewEntry(delivery, _event(delivery), "o/r", 1, body)

    with Outbox(tmp_path / "o.db") as outbox:
        assert outbox.add_many([entry("a", "h1")]) == [Added("a")]
        assert outbox.add_many([entry("b", "h2"), entry("c", "h1"), entry("d", "h2"), entry("a", "h3")]) == [
            Added("b"),
            Added("c", duplicate_of="a"),
            Added("d", duplicate_of="b"),
            Added("a", duplicate_of="a"),
        ]
        assert [e.delivery for e in outbox.entries()] == ["a", "b"]
        # entries without a hash (written before it existed) never collide with each other
        assert outbox.add_many([entry("e", None), entry("f", None)]) == [Added("e"), Added("f")]


def test_group_commit_shares_transactions_and_answers_after_the_commit(tmp_path: Path) -> None:
    path = tmp_path / "o.db"

    async def many(outbox: Outbox) -> tuple[list[Added], int]:
        committer = GroupCommit(outbox)
        entries = [NewEntry(f"d-{i}", _event(f"d-{i}"), "o/r", 1, f"h-{i % 60}") for i in range(80)]
        results = await asyncio.gather(*(committer.add(e) for e in entries))
        return results, committer.commits

    with Outbox(path) as outbox:
        results, commits = asyncio.run(many(outbox))
    assert [r.stored for r in results] == [True] * 60 + [False] * 20
    assert [r.duplicate_of for r in results[60:]] == [f"d-{i}" for i in range(20)]
    assert commits < 80  # the first commit held one entry; the rest waited for it and shared the next ones
    with Outbox(path) as reopened:  # committed, as the answers said
        assert len(reopened.entries()) == 60


def test_group_commit_reports_a_failed_commit_to_every_caller(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db")
    outbox.close()

    async def add_two() -> list[BaseException | Added]:
        committer = GroupCommit(outbox)
        return await asyncio.gather(
            committer.add(NewEntry("x", _event("x"), "o/r", 1, "hx")),
            committer.add(NewEntry("y", _event("y"), "o/r", 1, "hy")),
            return_exceptions=True,
        )

    assert [type(r) for r in asyncio.run(add_two())] == [OutboxError, OutboxError]


def test_group_commit_refuses_at_once_when_too_many_wait_for_the_disk(tmp_path: Path) -> None:
    async def add_two(outbox: Outbox) -> list[BaseException | Added]:
        committer = GroupCommit(outbox, max_queued=1)
        return await asyncio.gather(
            committer.add(NewEntry("x", _event("x"), "o/r", 1, "hx")),
            committer.add(NewEntry("y", _event("y"), "o/r", 1, "hy")),
            return_exceptions=True,
        )

    with Outbox(tmp_path / "o.db") as outbox:
        first, second = asyncio.run(add_two(outbox))
        assert first == Added("x")
        assert isinstance(second, OutboxError)
        assert "waiting for the outbox to commit" in str(second)
        assert [e.delivery for e in outbox.entries()] == ["x"]
