"""Persistent job queue in one SQLite file: one job per study, survives restarts, shared by workers.

States::

    queued --claim--> running --complete--> done
       ^                 |  \\--fail (permanent, or attempts used up)--> failed
       |                 |
       +--fail (retry: next attempt after an exponential backoff)
       +--lease expired (the worker died): claimed again by any worker

* One row per StudyInstanceUID (a UNIQUE constraint): sending a study again does not create a second job
  or second results; :meth:`JobQueue.enqueue` with ``force=True`` (or :meth:`JobQueue.retry`) queues a
  finished or failed study again.
* A running job carries a lease (owner, expiry time). The worker renews it (:meth:`JobQueue.heartbeat`)
  while it works; when a worker is killed its lease runs out and another worker claims the job. Only the
  lease owner can complete or fail a job, so a worker that lost its lease cannot overwrite the outcome.
* :meth:`JobQueue.retry` of a failed job keeps what it recorded (the results manifest), so outputs that
  were ready but refused by the PACS are stored as they are; a done job retried runs again from scratch.
* Every claim counts as an attempt, including one whose worker died, so a study that kills its worker
  every time ends ``failed`` instead of looping.

Several threads and processes may use the same file: each :class:`JobQueue` opens its own connection
(WAL journal, busy timeout) and claims inside ``BEGIN IMMEDIATE`` so that two workers never claim the
same job. Times are Unix seconds (float) from an injectable clock, so tests can move time.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gateway import study_key

logger = logging.getLogger(__name__)

JobState = Literal["queued", "running", "done", "failed"]
JOB_STATES: tuple[JobState, ...] = ("queued", "running", "done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,               -- JSON: where the study's images are (see Job.source)
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,      -- Unix s; a queued job is not claimed before
    lease_owner TEXT,
    lease_expires_at REAL,              -- Unix s; a running job whose lease ran out is claimed again
    last_error TEXT,
    results TEXT,                       -- JSON: what was stored back, or the outputs waiting to be
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_claim ON jobs (state, next_attempt_at);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Job:
    """One row of the queue.

    ``source`` says where the images are: ``{"kind": "orthanc", "study": <Orthanc id>, "series":
    [SeriesInstanceUID, ...]}`` or ``{"kind": "spool", "folder": <path>, "series": [...]}``. ``results``
    is what the worker recorded (outputs ready to store, then the stored SOP instances).
    """

    id: int
    study_uid: str
    source: dict[str, Any]
    state: JobState
    attempts: int
    next_attempt_at: float
    lease_owner: str | None
    lease_expires_at: float | None
    last_error: str | None
    results: dict[str, Any] | None
    created_at: float
    updated_at: float
    finished_at: float | None

    @property
    def key(self) -> str:
        """Short, non-identifying name of the study (see :func:`gateway.study_key`)."""
        return study_key(self.study_uid)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and when a failed job is tried again.

    Attempt ``n`` (1-based) that fails with a retryable error is followed by attempt ``n + 1`` after
    ``min(backoff_base_s * 2 ** (n - 1), backoff_max_s)`` seconds; after ``max_attempts`` attempts the job
    is ``failed``. ``lease_s`` is how long a claim lasts without a heartbeat (seconds).
    """

    max_attempts: int = 4
    backoff_base_s: float = 30.0
    backoff_max_s: float = 3600.0
    lease_s: float = 120.0

    def backoff_s(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt."""
        return min(self.backoff_base_s * 2 ** max(attempts - 1, 0), self.backoff_max_s)


@dataclass(frozen=True)
class EnqueueResult:
    """What :meth:`JobQueue.enqueue` did: ``created``, ``requeued`` (forced) or ``unchanged``."""

    job: Job
    action: Literal["created", "requeued", "unchanged"]


class JobQueue:
    """The job queue in the SQLite file ``path`` (created with its folder when missing)."""

    def __init__(self, *, path: Path | str, policy: RetryPolicy | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.policy = policy or RetryPolicy()
        self._clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            # Readable by the service's user only (StudyInstanceUIDs, error lines); SQLite gives its
            # journal files the same permissions.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        # One connection per queue object; the lock makes the object safe to share between threads.
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a job marked done stays done after a power cut
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(_SCHEMA)  # idempotent: CREATE ... IF NOT EXISTS

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> JobQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``: takes the write lock at once, so read-then-write is atomic."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ---------------------------------------------------------------------------------------------
    # Adding work

    def enqueue(self, *, study_uid: str, source: Mapping[str, Any], force: bool = False) -> EnqueueResult:
        """Queue a study; a study already known is left as it is unless ``force``.

        A queued job gets the new ``source`` (the latest description of where the images are). With
        ``force``, a done or failed job is queued again with its attempts reset; a queued or running job
        is never disturbed (it will produce results anyway).
        """
        now = self._clock()
        source_json = json.dumps(dict(source), sort_keys=True)
        with self._transaction() as db:
            row = db.execute("SELECT * FROM jobs WHERE study_uid = ?", (study_uid,)).fetchone()
            if row is None:
                cursor = db.execute(
                    "INSERT INTO jobs (study_uid, source, state, attempts, next_attempt_at, created_at, updated_at)"
                    " VALUES (?, ?, 'queued', 0, ?, ?, ?)", (study_uid, source_json, now, now, now))
                action: Literal["created", "requeued", "unchanged"] = "created"
                job_id = int(cursor.lastrowid or 0)
            elif row["state"] in ("done", "failed") and force:
                # A failed job keeps its results manifest: outputs that were ready (e.g. refused by the
                # PACS) are stored as they are instead of being computed again under new UIDs.
                db.execute(
                    "UPDATE jobs SET source = ?, state = 'queued', attempts = 0, next_attempt_at = ?,"
                    " lease_owner = NULL, lease_expires_at = NULL, last_error = NULL,"
                    " results = CASE WHEN state = 'failed' THEN results ELSE NULL END,"
                    " finished_at = NULL, updated_at = ? WHERE id = ?", (source_json, now, now, row["id"]))
                action, job_id = "requeued", int(row["id"])
            elif row["state"] == "queued":
                db.execute("UPDATE jobs SET source = ?, updated_at = ? WHERE id = ?", (source_json, now, row["id"]))
                action, job_id = "unchanged", int(row["id"])
            else:
                action, job_id = "unchanged", int(row["id"])
            job = self._get(db, job_id)
        logger.info("job %d (study %s): %s, %s", job.id, job.key, action, job.state)
        return EnqueueResult(job=job, action=action)

    def retry(self, job_id: int) -> Job:
        """Queue a done or failed job again now (attempts reset); raises KeyError for an unknown id."""
        job = self.get(job_id)
        return self.enqueue(study_uid=job.study_uid, source=job.source, force=True).job

    # ---------------------------------------------------------------------------------------------
    # Working

    def claim(self, *, owner: str) -> Job | None:
        """Take the next job that is due: queued and past its next-attempt time, or running with an
        expired lease (its worker died). Returns None when there is none.

        A job whose attempts are used up when its lease expires is marked failed instead.
        """
        now = self._clock()
        policy = self.policy
        with self._transaction() as db:
            while True:
                row = db.execute(
                    "SELECT * FROM jobs WHERE (state = 'queued' AND next_attempt_at <= ?)"
                    " OR (state = 'running' AND lease_expires_at < ?)"
                    " ORDER BY next_attempt_at, id LIMIT 1", (now, now)).fetchone()
                if row is None:
                    return None
                if row["state"] == "running":
                    logger.warning("job %d (study %s): lease of %s expired, worker presumed dead",
                                   row["id"], study_key(row["study_uid"]), row["lease_owner"])
                    if row["attempts"] >= policy.max_attempts:
                        error = (f"worker stopped during attempt {row['attempts']} of {policy.max_attempts}"
                                 " (lease expired)")
                        db.execute("UPDATE jobs SET state = 'failed', last_error = ?, lease_owner = NULL,"
                                   " lease_expires_at = NULL, finished_at = ?, updated_at = ? WHERE id = ?",
                                   (error, now, now, row["id"]))
                        logger.error("job %d (study %s): failed: %s", row["id"], study_key(row["study_uid"]), error)
                        continue
                db.execute("UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_owner = ?,"
                           " lease_expires_at = ?, updated_at = ? WHERE id = ?",
                           (owner, now + policy.lease_s, now, row["id"]))
                job = self._get(db, int(row["id"]))
                break
        logger.info("job %d (study %s): claimed by %s, attempt %d of %d", job.id, job.key, owner, job.attempts,
                    policy.max_attempts)
        return job

    def heartbeat(self, job_id: int, *, owner: str) -> bool:
        """Extend the lease of a running job by ``lease_s``; False when ``owner`` no longer holds it."""
        now = self._clock()
        with self._transaction() as db:
            cursor = db.execute("UPDATE jobs SET lease_expires_at = ?, updated_at = ? WHERE id = ?"
                                " AND state = 'running' AND lease_owner = ?",
                                (now + self.policy.lease_s, now, job_id, owner))
            return cursor.rowcount == 1

    def record_results(self, job_id: int, *, owner: str, results: Mapping[str, Any]) -> bool:
        """Save what the running job produced so far (e.g. outputs ready to store), so that a worker that
        takes the job over after a crash stores the same files instead of computing new ones."""
        now = self._clock()
        with self._transaction() as db:
            cursor = db.execute("UPDATE jobs SET results = ?, updated_at = ? WHERE id = ? AND state = 'running'"
                                " AND lease_owner = ?", (json.dumps(dict(results), sort_keys=True), now, job_id, owner))
            return cursor.rowcount == 1

    def complete(self, job_id: int, *, owner: str, results: Mapping[str, Any]) -> bool:
        """Mark a running job done; False (and nothing changed) when ``owner`` lost the lease."""
        now = self._clock()
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = 'done', results = ?, last_error = NULL, lease_owner = NULL,"
                " lease_expires_at = NULL, finished_at = ?, updated_at = ? WHERE id = ? AND state = 'running'"
                " AND lease_owner = ?", (json.dumps(dict(results), sort_keys=True), now, now, job_id, owner))
            done = cursor.rowcount == 1
        if done:
            logger.info("job %d: done", job_id)
        return done

    def fail(self, job_id: int, *, owner: str, error: str, permanent: bool) -> Job | None:
        """Record a failed attempt: queued again after the backoff, or failed when ``permanent`` or when
        the attempts are used up. Returns the updated job, or None when ``owner`` lost the lease."""
        now = self._clock()
        error = " ".join(error.split())
        with self._transaction() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ? AND state = 'running' AND lease_owner = ?",
                             (job_id, owner)).fetchone()
            if row is None:
                return None
            if permanent or row["attempts"] >= self.policy.max_attempts:
                db.execute("UPDATE jobs SET state = 'failed', last_error = ?, lease_owner = NULL,"
                           " lease_expires_at = NULL, finished_at = ?, updated_at = ? WHERE id = ?",
                           (error, now, now, job_id))
            else:
                delay = self.policy.backoff_s(int(row["attempts"]))
                db.execute("UPDATE jobs SET state = 'queued', last_error = ?, next_attempt_at = ?,"
                           " lease_owner = NULL, lease_expires_at = NULL, updated_at = ? WHERE id = ?",
                           (error, now + delay, now, job_id))
            job = self._get(db, job_id)
        if job.state == "failed":
            logger.error("job %d (study %s): failed after %d attempt(s): %s", job.id, job.key, job.attempts, error)
        else:
            logger.warning("job %d (study %s): attempt %d failed (%s); next attempt in %.0f s", job.id, job.key,
                           job.attempts, error, job.next_attempt_at - now)
        return job

    def release(self, job_id: int, *, owner: str) -> bool:
        """Give a running job back untouched (the gateway is shutting down): queued again at once and
        the attempt not counted. False when ``owner`` no longer holds it."""
        now = self._clock()
        with self._transaction() as db:
            cursor = db.execute("UPDATE jobs SET state = 'queued', attempts = MAX(attempts - 1, 0),"
                                " next_attempt_at = ?, lease_owner = NULL, lease_expires_at = NULL, updated_at = ?"
                                " WHERE id = ? AND state = 'running' AND lease_owner = ?", (now, now, job_id, owner))
            released = cursor.rowcount == 1
        if released:
            logger.info("job %d: released by %s (shutting down)", job_id, owner)
        return released

    # ---------------------------------------------------------------------------------------------
    # Looking

    def get(self, job_id: int) -> Job:
        """The job with this id; KeyError when there is none."""
        with self._lock:
            return self._get(self._db, job_id)

    def find(self, study_uid: str) -> Job | None:
        """The job of a study, or None."""
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE study_uid = ?", (study_uid,)).fetchone()
        return None if row is None else _job(row)

    def jobs(self, *, state: JobState | None = None) -> list[Job]:
        """All jobs (optionally of one state), oldest first."""
        with self._lock:
            if state is None:
                rows = self._db.execute("SELECT * FROM jobs ORDER BY id").fetchall()
            else:
                rows = self._db.execute("SELECT * FROM jobs WHERE state = ? ORDER BY id", (state,)).fetchall()
        return [_job(row) for row in rows]

    def counts(self) -> dict[str, int]:
        """Number of jobs in each state (every state present, 0 when empty)."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        counts = dict.fromkeys(JOB_STATES, 0)
        counts.update({state: int(n) for state, n in rows})
        return counts

    def get_setting(self, key: str) -> str | None:
        """A persistent setting of the gateway (e.g. the position in Orthanc's change feed)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_setting(self, key: str, value: str) -> None:
        """Store a persistent setting (see :meth:`get_setting`)."""
        with self._transaction() as db:
            db.execute("INSERT INTO settings (key, value) VALUES (?, ?)"
                       " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    @staticmethod
    def _get(db: sqlite3.Connection, job_id: int) -> Job:
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(f"no job {job_id}")
        return _job(row)


def _job(row: sqlite3.Row) -> Job:
    return Job(id=int(row["id"]), study_uid=str(row["study_uid"]), source=json.loads(row["source"]),
               state=row["state"], attempts=int(row["attempts"]), next_attempt_at=float(row["next_attempt_at"]),
               lease_owner=row["lease_owner"], lease_expires_at=row["lease_expires_at"],
               last_error=row["last_error"], results=None if row["results"] is None else json.loads(row["results"]),
               created_at=float(row["created_at"]), updated_at=float(row["updated_at"]),
               finished_at=row["finished_at"])
