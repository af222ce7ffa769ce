"""The durable outbox between the webhook receiver and Prefect: SQLite in WAL mode, keyed by delivery id.

An accepted delivery is committed here (``synchronous=FULL``) before the receiver answers 2xx, so a Prefect
outage or a receiver crash loses nothing. Each entry also records the SHA-256 of the signed body it came
from: a delivery whose id or body is already in the outbox is a duplicate (a GitHub redelivery repeats the
id; a captured body replayed under a new id repeats the body) and stores nothing. Both keys live as long as
the entry (``PREVIEWS_OUTBOX_RETENTION_HOURS`` after delivery).

The forwarder moves entries from ``pending`` to ``delivered`` only after Prefect accepted them; ``rejected``
holds an entry Prefect refused for good (4xx on that event alone). One connection per :class:`Outbox`,
serialised by a lock; other processes (``previews outbox replay``) share the file through SQLite's own
locking. :class:`GroupCommit` lets concurrent requests share one transaction (one fsync) without answering
any of them before its entry is on disk.

Files written before the body hash existed (schema version 0) are migrated in place when opened: the column
and its unique index are added; their old entries have no hash and dedupe by delivery id only.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import anyio.to_thread

from previews.core.events import event_id, format_occurred
from previews.errors import PreviewsError

State = Literal["pending", "delivered", "rejected"]
STATES: tuple[State, ...] = ("pending", "delivered", "rejected")

SCHEMA_VERSION = 1
_SCHEMA = """
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
    delivered_at  REAL,
    body_sha256   TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outbox_state_received ON outbox (state, received_at);
"""
# Version 0 -> 1: the SHA-256 of the signed body, unique where known (entries from version 0 have none).
_BODY_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS outbox_body_sha256 ON outbox (body_sha256) WHERE body_sha256 IS NOT NULL"


class OutboxError(PreviewsError):
    """The outbox file could not be opened or written."""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One delivery in the outbox. ``event_json`` is the Prefect event exactly as it will be posted."""

    delivery: str
    event: str
    repository: str
    number: int
    event_json: str
    state: State
    attempts: int
    replays: int
    last_error: str | None
    received_at: float
    updated_at: float
    delivered_at: float | None

    def prefect_event(self) -> dict[str, Any]:
        """The stored Prefect event."""
        data: dict[str, Any] = json.loads(self.event_json)
        return data

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description for ``previews outbox list --json`` (no payload)."""

        def stamp(value: float | None) -> str | None:
            return None if value is None else datetime.fromtimestamp(value, UTC).isoformat()

        return {
            "delivery": self.delivery,
            "event": self.event,
            "state": self.state,
            "repository": self.repository,
            "number": self.number,
            "event_id": self.prefect_event().get("id"),
            "attempts": self.attempts,
            "replays": self.replays,
            "last_error": self.last_error,
            "received_at": stamp(self.received_at),
            "delivered_at": stamp(self.delivered_at),
        }


@dataclass(frozen=True, slots=True)
class NewEntry:
    """A delivery to store: its Prefect event and the SHA-256 (hex) of the signed body it came from."""

    delivery: str
    event: dict[str, Any]
    repository: str
    number: int
    body_sha256: str | None = None


@dataclass(frozen=True, slots=True)
class Added:
    """What :meth:`Outbox.add_many` did with one entry: stored, or a duplicate of ``duplicate_of``."""

    delivery: str
    duplicate_of: str | None = None

    @property
    def stored(self) -> bool:
        """True when the entry was new and is now committed."""
        return self.duplicate_of is None


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """Counts per state and the age of the oldest pending entry (seconds), for ``/healthz``."""

    pending: int
    delivered: int
    rejected: int
    oldest_pending_age: float | None


_SELECT = (
    "SELECT delivery, event, repository, number, event_json, state, attempts, replays, last_error, "
    "received_at, updated_at, delivered_at FROM outbox"
)


class Outbox:
    """The SQLite outbox. Safe to share between the request handlers' threads and the forwarder."""

    def __init__(self, path: Path | str, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        try:
            if str(self.path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA busy_timeout = 30000")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal" and str(self.path) != ":memory:":
                raise OutboxError(f"SQLite refused WAL mode for {self.path} (got {mode})")
            self._db.execute("PRAGMA synchronous = FULL")
            self._migrate()
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot open the outbox at {self.path}: {exc}") from exc

    def _migrate(self) -> None:
        """Create the schema, or bring a file written by an older version up to :data:`SCHEMA_VERSION`.

        Runs in one ``BEGIN IMMEDIATE`` transaction, so two processes opening an old file at once migrate it
        once; the second finds the new version and changes nothing.
        """
        db = self._db
        if db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise OutboxError(
                    f"the outbox at {self.path} has schema version {version}, newer than this previews "
                    f"({SCHEMA_VERSION}); upgrade previews"
                )
            if version < SCHEMA_VERSION:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                columns = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
                if "body_sha256" not in columns:
                    db.execute("ALTER TABLE outbox ADD COLUMN body_sha256 TEXT")
                db.execute(_BODY_INDEX)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox write failed: {exc}") from exc

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return list(self._db.execute(sql, params).fetchall())
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox read failed: {exc}") from exc

    def add(
        self,
        *,
        delivery: str,
        event: dict[str, Any],
        repository: str,
        number: int,
        body_sha256: str | None = None,
    ) -> bool:
        """Store a Prefect event under its delivery id, committed on return. False if id or body was known."""
        entry = NewEntry(delivery, event, repository, number, body_sha256)
        return self.add_many([entry])[0].stored

    def add_many(self, entries: Sequence[NewEntry]) -> list[Added]:
        """Store ``entries`` in one transaction (one fsync), committed on return; one :class:`Added` each.

        An entry whose delivery id or body hash is already stored (or appears earlier in ``entries``) is
        not stored; its :class:`Added` names the delivery it duplicates.
        """
        now = self._clock()
        results: list[Added] = []
        with self._write() as db:
            for entry in entries:
                cursor = db.execute(
                    "INSERT INTO outbox (delivery, event, repository, number, event_json, received_at, "
                    "updated_at, body_sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (
                        entry.delivery,
                        entry.event["event"],
                        entry.repository,
                        entry.number,
                        json.dumps(entry.event, sort_keys=True),
                        now,
                        now,
                        entry.body_sha256,
                    ),
                )
                if cursor.rowcount == 1:
                    results.append(Added(entry.delivery))
                    continue
                row = db.execute(
                    "SELECT delivery FROM outbox WHERE delivery = ? OR body_sha256 = ? "
                    "ORDER BY delivery != ? LIMIT 1",
                    (entry.delivery, entry.body_sha256, entry.delivery),
                ).fetchone()
                results.append(Added(entry.delivery, duplicate_of=row[0] if row else entry.delivery))
        return results

    def get(self, delivery: str) -> OutboxEntry | None:
        """One entry, or None."""
        rows = self._read(_SELECT + " WHERE delivery = ?", (delivery,))
        return _entry(rows[0]) if rows else None

    def entries(self, *, state: State | None = None, limit: int | None = None) -> list[OutboxEntry]:
        """Entries oldest first, optionally of one state."""
        sql = _SELECT
        params: tuple[Any, ...] = ()
        if state is not None:
            sql += " WHERE state = ?"
            params = (state,)
        sql += " ORDER BY received_at, delivery"
        if limit is not None:
            sql += " LIMIT ?"
            params = (*params, limit)
        return [_entry(row) for row in self._read(sql, params)]

    def pending(self, limit: int) -> list[OutboxEntry]:
        """The oldest ``limit`` pending entries."""
        return self.entries(state="pending", limit=limit)

    def mark_delivered(self, deliveries: list[str]) -> int:
        """Mark pending entries delivered (Prefect accepted them); returns how many changed."""
        if not deliveries:
            return 0
        now = self._clock()
        with self._write() as db:
            changed = 0
            for delivery in deliveries:
                changed += db.execute(
                    "UPDATE outbox SET state = 'delivered', delivered_at = ?, updated_at = ?, "
                    "attempts = attempts + 1, last_error = NULL WHERE delivery = ? AND state = 'pending'",
                    (now, now, delivery),
                ).rowcount
            return changed

    def mark_failed(self, deliveries: list[str], error: str, *, rejected: bool = False) -> None:
        """Count a failed attempt; ``rejected`` moves the entries out of ``pending`` until replayed."""
        now = self._clock()
        state = "rejected" if rejected else "pending"
        with self._write() as db:
            for delivery in deliveries:
                db.execute(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = ?, updated_at = ?, state = ? "
                    "WHERE delivery = ? AND state = 'pending'",
                    (error[:500], now, state, delivery),
                )

    def replay(self, delivery: str) -> OutboxEntry | None:
        """Put a delivered or rejected entry back to ``pending`` for a deliberate re-send; None if unknown.

        Prefect drops event ids it has seen, so the re-sent event gets a new id (replay ``n``) and a new
        ``occurred``; its payload, and so the ``delivery`` the flows see, stay the same. A pending entry is
        left as it is (it will be sent anyway).
        """
        now = self._clock()
        with self._write() as db:
            row = db.execute(
                "SELECT state, replays, event_json FROM outbox WHERE delivery = ?", (delivery,)
            ).fetchone()
            if row is None:
                return None
            state, replays, event_json = row
            if state != "pending":
                event = json.loads(event_json)
                event["id"] = str(event_id(delivery, replay=int(replays) + 1))
                event["occurred"] = format_occurred(datetime.fromtimestamp(now, UTC))
                db.execute(
                    "UPDATE outbox SET state = 'pending', delivered_at = NULL, updated_at = ?, last_error = NULL, "
                    "event_json = ?, replays = replays + 1 WHERE delivery = ?",
                    (now, json.dumps(event, sort_keys=True), delivery),
                )
        return self.get(delivery)

    def purge(self, *, older_than_seconds: float) -> int:
        """Delete delivered entries delivered more than ``older_than_seconds`` ago; returns how many."""
        cutoff = self._clock() - older_than_seconds
        with self._write() as db:
            return db.execute(
                "DELETE FROM outbox WHERE state = 'delivered' AND delivered_at < ?", (cutoff,)
            ).rowcount

    def stats(self) -> OutboxStats:
        """Counts per state and the age of the oldest pending entry."""
        rows = self._read("SELECT state, COUNT(*), MIN(received_at) FROM outbox GROUP BY state")
        counts = dict.fromkeys(STATES, 0)
        oldest: float | None = None
        for state, count, first in rows:
            counts[state] = int(count)
            if state == "pending":
                oldest = max(0.0, self._clock() - float(first))
        return OutboxStats(counts["pending"], counts["delivered"], counts["rejected"], oldest)


class GroupCommit:
    """Concurrent :meth:`add` calls from the event loop share one outbox transaction (one fsync).

    The first caller starts a commit of everything queued; callers arriving while it runs queue up for the
    next one, so an idle receiver commits one entry at once and a busy one commits many per fsync. A caller
    gets its answer only after the transaction holding its entry committed (or failed: :class:`OutboxError`).
    Use from one event loop only.
    """

    def __init__(self, outbox: Outbox, *, max_batch: int = 256, max_queued: int = 4096) -> None:
        self.outbox = outbox
        self.max_batch = max_batch
        self.max_queued = max_queued
        self._queue: list[tuple[NewEntry, asyncio.Future[Added]]] = []
        self._committer: asyncio.Task[None] | None = None
        self.commits = 0

    async def add(self, entry: NewEntry) -> Added:
        """Queue ``entry`` and wait until the transaction holding it committed.

        Raises :class:`OutboxError` when the commit failed, or at once when ``max_queued`` entries are
        already waiting (the disk is not keeping up; the caller should answer "retry later").
        """
        if len(self._queue) >= self.max_queued:
            raise OutboxError(f"{len(self._queue)} deliveries are already waiting for the outbox to commit")
        future: asyncio.Future[Added] = asyncio.get_running_loop().create_future()
        self._queue.append((entry, future))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_queued())
        return await asyncio.shield(future)

    async def _commit_queued(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            try:
                added = await anyio.to_thread.run_sync(self.outbox.add_many, [entry for entry, _ in batch])
            except asyncio.CancelledError:  # shutting down: nobody is told "stored" (a retry is a duplicate)
                for _, future in batch + self._queue:
                    if not future.done():
                        future.set_exception(OutboxError("the receiver is shutting down"))
                self._queue = []
                raise
            except Exception as exc:  # every caller in the batch gets the failure; none is told "stored"
                error = exc if isinstance(exc, OutboxError) else OutboxError(f"outbox write failed: {exc}")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            self.commits += 1
            for (_, future), result in zip(batch, added, strict=True):
                if not future.done():
                    future.set_result(result)


def _entry(row: tuple[Any, ...]) -> OutboxEntry:
    return OutboxEntry(
        delivery=row[0],
        event=row[1],
        repository=row[2],
        number=int(row[3]),
        event_json=row[4],
        state=row[5],
        attempts=int(row[6]),
        replays=int(row[7]),
        last_error=row[8],
        received_at=float(row[9]),
        updated_at=float(row[10]),
        delivered_at=None if row[11] is None else float(row[11]),
    )
