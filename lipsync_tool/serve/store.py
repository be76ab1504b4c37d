"""The service's persistent job queue: SQLite in WAL mode (stdlib ``sqlite3``).

A job is a request (JSON) with a state: ``queued`` → ``running`` → ``done`` |
``failed`` | ``cancelled``.  Every change is one transaction, so a server
killed at any moment leaves a consistent store:

* jobs that were queued run after a restart (:meth:`JobStore.claim` takes the oldest);
* a job that was running when the server died is queued again once
  (:meth:`JobStore.recover`); a second death fails it, and its id still answers;
* finished jobs expire after a while (:meth:`JobStore.expire` returns their
  files for the caller to delete);
* the queue is bounded (:class:`~lipsync_tool.errors.QueueFullError`), and an
  identical request that is already queued or running is answered with that
  job instead of a second render (``dedupe_key``).

Several threads may share one store; each call opens its own short
transaction (``BEGIN IMMEDIATE`` where it writes).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import QueueFullError

STATES = ("queued", "running", "done", "failed", "cancelled")
ACTIVE = ("queued", "running")
FINISHED = ("done", "failed", "cancelled")
#: A job that was running when its server died runs again this many times at most.
MAX_RECOVERIES = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    request TEXT NOT NULL,
    dedupe_key TEXT,
    lane TEXT NOT NULL DEFAULT '',
    stage TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    started REAL,
    finished REAL,
    progress REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    recoveries INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    error TEXT,
    files TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, lane, created);
CREATE INDEX IF NOT EXISTS jobs_dedupe ON jobs (dedupe_key, state);
"""


@dataclass(frozen=True)
class StoredJob:
    id: str
    state: str
    request: dict[str, Any]
    created: float
    updated: float
    started: float | None = None
    finished: float | None = None
    progress: float = 0.0
    attempts: int = 0
    recoveries: int = 0
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    files: list[str] = field(default_factory=list)
    dedupe_key: str | None = None
    lane: str = ""
    stage: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The job as the API shows it."""
        out = {"id": self.id, "state": self.state, "progress": round(self.progress, 4), "created": self.created, "updated": self.updated}
        for name in ("stage", "started", "finished", "result", "error"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.recoveries:
            out["recoveries"] = self.recoveries
        return out


def _row(row: sqlite3.Row) -> StoredJob:
    return StoredJob(
        id=row["id"],
        state=row["state"],
        request=json.loads(row["request"]),
        created=row["created"],
        updated=row["updated"],
        started=row["started"],
        finished=row["finished"],
        progress=row["progress"],
        attempts=row["attempts"],
        recoveries=row["recoveries"],
        result=json.loads(row["result"]) if row["result"] else None,
        error=json.loads(row["error"]) if row["error"] else None,
        files=json.loads(row["files"]),
        dedupe_key=row["dedupe_key"],
        lane=row["lane"],
        stage=row["stage"],
    )


def new_id() -> str:
    """A job id: 32 hex digits, random."""
    return uuid.uuid4().hex


class JobStore:
    def __init__(self, path: Path, *, clock=time.time):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._local = threading.local()
        self._db().executescript(_SCHEMA)  # its own transaction

    # -- connections --------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=True)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    class _Tx:
        def __init__(self, db: sqlite3.Connection, write: bool):
            self.db, self.write = db, write

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE" if self.write else "BEGIN")
            return self.db

        def __exit__(self, exc_type, *_: object) -> None:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")

    def _tx(self, write: bool = True) -> JobStore._Tx:
        return JobStore._Tx(self._db(), write)

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- submitting and reading ------------------------------------------------------------------

    def submit(
        self, request: dict[str, Any], *, max_queue: int, dedupe_key: str | None = None, retry_after: int = 5, job_id: str | None = None, lane: str = ""
    ) -> tuple[StoredJob, bool]:
        """Queue *request* for *lane*: (the job, whether it is new).  An active
        job with the same *dedupe_key* is returned instead; a full queue raises
        QueueFullError."""
        now = self._clock()
        with self._tx() as db:
            if dedupe_key is not None:
                row = db.execute("SELECT * FROM jobs WHERE dedupe_key = ? AND state IN ('queued', 'running') ORDER BY created LIMIT 1", (dedupe_key,)).fetchone()
                if row is not None:
                    return _row(row), False
            waiting = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()[0]
            if waiting >= max_queue:
                raise QueueFullError(f"the queue is full ({waiting} jobs waiting)", retry_after=retry_after)
            job_id = job_id or new_id()
            db.execute(
                "INSERT INTO jobs (id, state, request, dedupe_key, lane, created, updated) VALUES (?, 'queued', ?, ?, ?, ?, ?)",
                (job_id, json.dumps(request, sort_keys=True, default=str), dedupe_key, lane, now, now),
            )
            return _row(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()), True

    def get(self, job_id: str) -> StoredJob | None:
        with self._tx(write=False) as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _row(row) if row is not None else None

    def jobs(self, *states: str) -> list[StoredJob]:
        with self._tx(write=False) as db:
            if states:
                rows = db.execute(f"SELECT * FROM jobs WHERE state IN ({','.join('?' * len(states))}) ORDER BY created", states).fetchall()
            else:
                rows = db.execute("SELECT * FROM jobs ORDER BY created").fetchall()
        return [_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._tx(write=False) as db:
            found = dict(db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        return {s: int(found.get(s, 0)) for s in STATES}

    # -- the worker's side -----------------------------------------------------------------------

    def claim(self, lane: str | None = None) -> StoredJob | None:
        """The oldest queued job (of *lane*), now running (None when nothing waits)."""
        now = self._clock()
        with self._tx() as db:
            if lane is None:
                row = db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY created, rowid LIMIT 1").fetchone()
            else:
                row = db.execute("SELECT id FROM jobs WHERE state = 'queued' AND lane = ? ORDER BY created, rowid LIMIT 1", (lane,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = 'running', started = ?, updated = ?, attempts = attempts + 1, progress = 0 WHERE id = ?", (now, now, row["id"]))
            return _row(db.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone())

    def progress(self, job_id: str, fraction: float, stage: str | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET progress = ?, stage = COALESCE(?, stage), updated = ? WHERE id = ? AND state = 'running'",
                (max(0.0, min(1.0, fraction)), stage, self._clock(), job_id),
            )

    def requeue(self, job_id: str) -> bool:
        """A running job back in the queue, as it was (the server stops in good order)."""
        with self._tx() as db:
            cur = db.execute("UPDATE jobs SET state = 'queued', progress = 0, stage = NULL, updated = ? WHERE id = ? AND state = 'running'", (self._clock(), job_id))
            return cur.rowcount == 1

    def add_files(self, job_id: str, paths: list[str]) -> None:
        """Files the job made (deleted with it when it expires or is cancelled)."""
        with self._tx() as db:
            row = db.execute("SELECT files FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is not None:
                files = sorted(set(json.loads(row["files"])) | set(paths))
                db.execute("UPDATE jobs SET files = ? WHERE id = ?", (json.dumps(files), job_id))

    def finish(self, job_id: str, result: dict[str, Any]) -> bool:
        return self._end(job_id, "done", result=result)

    def fail(self, job_id: str, error: dict[str, Any]) -> bool:
        return self._end(job_id, "failed", error=error)

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job (False when it had already ended)."""
        return self._end(job_id, "cancelled", error={"type": "Cancelled", "message": "cancelled"})

    def _end(self, job_id: str, state: str, *, result: dict[str, Any] | None = None, error: dict[str, Any] | None = None) -> bool:
        now = self._clock()
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET state = ?, finished = ?, updated = ?, progress = CASE WHEN ? = 'done' THEN 1 ELSE progress END, result = ?, error = ? "
                "WHERE id = ? AND state IN ('queued', 'running')",
                (state, now, now, state, json.dumps(result) if result is not None else None, json.dumps(error) if error is not None else None, job_id),
            )
            return cur.rowcount == 1

    # -- after a crash, and housekeeping -----------------------------------------------------------

    def recover(self) -> tuple[list[str], list[str]]:
        """At start-up: jobs left running by a server that died are queued again
        (once), or failed when they already were.  Returns (requeued, failed) ids."""
        now = self._clock()
        requeued, failed = [], []
        with self._tx() as db:
            for row in db.execute("SELECT id, recoveries FROM jobs WHERE state = 'running'").fetchall():
                if row["recoveries"] < MAX_RECOVERIES:
                    db.execute("UPDATE jobs SET state = 'queued', recoveries = recoveries + 1, updated = ?, progress = 0 WHERE id = ?", (now, row["id"]))
                    requeued.append(row["id"])
                else:
                    error = {"type": "Interrupted", "message": f"the server stopped during this job {row['recoveries'] + 1} times; it is not run again"}
                    db.execute("UPDATE jobs SET state = 'failed', finished = ?, updated = ?, error = ? WHERE id = ?", (now, now, json.dumps(error), row["id"]))
                    failed.append(row["id"])
        return requeued, failed

    def expire(self, max_age_seconds: float) -> list[StoredJob]:
        """Forget jobs that ended more than *max_age_seconds* ago; returns them
        (their ``files`` are for the caller to delete)."""
        cutoff = self._clock() - max_age_seconds
        with self._tx() as db:
            rows = db.execute("SELECT * FROM jobs WHERE state IN ('done', 'failed', 'cancelled') AND finished < ?", (cutoff,)).fetchall()
            db.executemany("DELETE FROM jobs WHERE id = ?", [(r["id"],) for r in rows])
        return [_row(r) for r in rows]
