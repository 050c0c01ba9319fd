"""Every SQL statement of the uploader: the jobs, attempts, runs and remote-files tables.

Connections are autocommit (`isolation_level=None`); each write is one explicit
`BEGIN IMMEDIATE` transaction, so a writer waits for the lock up front (busy timeout)
instead of failing half-way when a deferred read transaction turns into a write.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import aiosqlite

log = logging.getLogger("uploader.queue")

BUSY_TIMEOUT_MS = 5000
LOCK_RETRIES = 6
STATES = ("pending", "running", "done", "failed", "skipped")


class QueueError(Exception):
    """A database problem the user can act on; the message is one line that says what to do."""


# --- opening and migrating -------------------------------------------------------------------


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("uploader.migrations")
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), entry.read_text(encoding="utf-8")))
    return sorted(found)


def schema_version() -> int:
    return _migrations()[-1][0]


def _create_private(path: str) -> None:
    """The database holds file paths and history: readable by its owner only."""
    if path == ":memory:" or os.path.exists(path):
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise QueueError(f"cannot create database {path}: folder {folder} does not exist")
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise QueueError(f"cannot create database {path}: {exc.strerror}") from None


async def connect(path: str, *, create: bool = True) -> aiosqlite.Connection:
    """Open (and migrate) the queue database, turning every way it can fail into QueueError."""
    if os.path.isdir(path):
        raise QueueError(f"database path {path} is a folder, not a file")
    if not create and not os.path.exists(path):
        raise QueueError(f"no database at {path}: run `uploader enqueue DIR` first (or pass --db)")
    _create_private(path)
    try:
        conn = await aiosqlite.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise QueueError(f"cannot open database {path}: {exc}") from None
    try:
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = await _fetchval(conn, "PRAGMA journal_mode = WAL")
        if mode != "wal":
            log.warning("database %s: journal mode %s, not WAL", path, mode)
        await conn.execute("PRAGMA synchronous = NORMAL")
        await conn.execute("PRAGMA foreign_keys = ON")
        await _migrate(conn, path)
    except sqlite3.DatabaseError as exc:
        await conn.close()
        raise QueueError(_explain(path, exc)) from None
    except QueueError:
        await conn.close()
        raise
    return conn


def _explain(path: str, exc: sqlite3.DatabaseError) -> str:
    text = str(exc)
    if "not a database" in text or "malformed" in text:
        return (
            f"{path} is not a usable uploader database ({text}); move it aside and run "
            "`uploader enqueue DIR` again to start a new one"
        )
    if "locked" in text or "busy" in text:
        return f"database {path} is locked by another process; try again when it has finished"
    return f"database {path}: {text}"


async def _migrate(conn: aiosqlite.Connection, path: str) -> None:
    current = await _fetchval(conn, "PRAGMA user_version")
    steps = _migrations()
    latest = steps[-1][0]
    if current > latest:
        raise QueueError(
            f"{path} was made by a newer version of uploader (schema {current}, this version "
            f"knows {latest}); upgrade uploader to use it"
        )
    for number, sql in steps:
        if number <= current:
            continue
        try:
            await conn.executescript(
                f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {number};\nCOMMIT;"
            )
        except sqlite3.Error:
            if conn.in_transaction:
                await conn.execute("ROLLBACK")
            raise


async def _fetchval(conn: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> Any:
    async with conn.execute(sql, params) as cur:
        row = await cur.fetchone()
    return None if row is None else row[0]


_locks: weakref.WeakKeyDictionary[aiosqlite.Connection, asyncio.Lock] = weakref.WeakKeyDictionary()


@contextlib.asynccontextmanager
async def transaction(conn: aiosqlite.Connection) -> AsyncIterator[aiosqlite.Connection]:
    """A write transaction; the tasks sharing one connection take turns (their statements
    would otherwise interleave inside each other's transactions)."""
    lock = _locks.setdefault(conn, asyncio.Lock())
    async with lock, _begin_immediate(conn):
        yield conn


@contextlib.asynccontextmanager
async def _begin_immediate(conn: aiosqlite.Connection) -> AsyncIterator[aiosqlite.Connection]:
    """Wait out another process's lock (busy timeout, then a few retries), then say so."""
    for attempt in range(LOCK_RETRIES + 1):
        try:
            await conn.execute("BEGIN IMMEDIATE")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if attempt == LOCK_RETRIES:
                raise QueueError(
                    "the database is locked by another process beyond the busy timeout; "
                    "try again when it has finished"
                ) from None
            log.warning("database is locked by another process; retrying (%d)", attempt + 1)
            await asyncio.sleep(0.2 * (attempt + 1))
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            await conn.execute("ROLLBACK")
        raise
    else:
        await conn.execute("COMMIT")


# --- enqueue ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScanRow:
    path: bytes
    relpath: str
    size: int
    mtime_ns: int
    skip: str | None = None


@dataclass
class EnqueueCounts:
    scanned: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    skipped: int = 0

    def add(self, other: EnqueueCounts) -> None:
        for name in ("scanned", "new", "changed", "unchanged", "skipped"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


_SCAN_BATCH_TABLE = """
CREATE TEMP TABLE IF NOT EXISTS scan_batch (
    path BLOB PRIMARY KEY, relpath TEXT, size INTEGER, mtime_ns INTEGER, skip TEXT
)"""

_INSERT_NEW = """
INSERT INTO jobs (kb_id, path, relpath, size, mtime_ns, state, last_error, error_kind,
                  enqueued_at)
SELECT :kb, b.path, b.relpath, b.size, b.mtime_ns,
       CASE WHEN b.skip IS NULL THEN 'pending' ELSE 'skipped' END,
       b.skip, CASE WHEN b.skip IS NULL THEN NULL ELSE 'skipped' END, :now
FROM scan_batch AS b
WHERE NOT EXISTS (SELECT 1 FROM jobs AS j WHERE j.kb_id = :kb AND j.path = b.path)
RETURNING state"""

_REQUEUE_CHANGED = """
UPDATE jobs SET size = b.size, mtime_ns = b.mtime_ns, relpath = b.relpath, state = 'pending',
       step = NULL, s3_key = NULL, file_id = NULL, remote_status = NULL, attempts = 0,
       last_error = NULL, error_kind = NULL, next_attempt_at = 0, enqueued_at = :now,
       started_at = NULL, finished_at = NULL, duration = NULL
FROM scan_batch AS b
WHERE jobs.kb_id = :kb AND jobs.path = b.path AND b.skip IS NULL
  AND jobs.state != 'running'
  AND (jobs.size != b.size OR jobs.mtime_ns != b.mtime_ns OR jobs.state = 'skipped')
RETURNING jobs.id"""

_MARK_SKIPPED = """
UPDATE jobs SET size = b.size, mtime_ns = b.mtime_ns, state = 'skipped', last_error = b.skip,
       error_kind = 'skipped'
FROM scan_batch AS b
WHERE jobs.kb_id = :kb AND jobs.path = b.path AND b.skip IS NOT NULL
  AND jobs.state IN ('pending', 'failed', 'skipped')"""


async def enqueue_batch(
    conn: aiosqlite.Connection, kb_id: str, rows: Sequence[ScanRow]
) -> EnqueueCounts:
    """Insert new files and re-queue changed ones; one transaction per batch of the scan."""
    params = {"kb": kb_id, "now": time.time()}
    await conn.execute(_SCAN_BATCH_TABLE)
    async with transaction(conn):
        await conn.execute("DELETE FROM scan_batch")
        await conn.executemany(
            "INSERT OR REPLACE INTO scan_batch VALUES (?, ?, ?, ?, ?)",
            [(r.path, r.relpath, r.size, r.mtime_ns, r.skip) for r in rows],
        )
        inserted = await conn.execute_fetchall(_INSERT_NEW, params)
        changed = await conn.execute_fetchall(_REQUEUE_CHANGED, params)
        await conn.execute(_MARK_SKIPPED, params)
    skipped = sum(1 for r in rows if r.skip is not None)
    new = sum(1 for (state,) in inserted if state == "pending")
    return EnqueueCounts(
        scanned=len(rows),
        new=new,
        changed=len(changed),
        unchanged=len(rows) - new - len(changed) - skipped,
        skipped=skipped,
    )


# --- claiming and completing (the workers) ---------------------------------------------------


@dataclass
class Job:
    id: int
    kb_id: str
    path: bytes
    relpath: str
    size: int
    mtime_ns: int
    attempts: int
    step: str | None
    s3_key: str | None
    unknown_since: float | None
    filename: str | None
    started_at: float


_JOB_COLUMNS = (
    "id, kb_id, path, relpath, size, mtime_ns, attempts, step, s3_key, unknown_since, "
    "filename, started_at"
)

_CLAIM = f"""
UPDATE jobs SET state = 'running', lease_owner = :owner, lease_expires = :expires,
       attempts = attempts + 1, started_at = :now
WHERE id IN (
    SELECT id FROM jobs
    WHERE state = 'pending' AND next_attempt_at <= :now AND (:kb IS NULL OR kb_id = :kb)
    ORDER BY next_attempt_at, id LIMIT :limit
)
RETURNING {_JOB_COLUMNS}"""


async def claim(
    conn: aiosqlite.Connection,
    owner: str,
    limit: int,
    lease_seconds: float,
    kb_id: str | None = None,
) -> list[Job]:
    """Mark up to `limit` due rows `running` under our lease, in one statement."""
    now = time.time()
    params = {"owner": owner, "expires": now + lease_seconds, "now": now, "kb": kb_id}
    async with transaction(conn):
        rows = await conn.execute_fetchall(_CLAIM, {**params, "limit": limit})
    jobs = [Job(*row) for row in rows]
    jobs.sort(key=lambda j: j.id)
    return jobs


async def next_due(conn: aiosqlite.Connection, kb_id: str | None = None) -> float | None:
    """When the earliest pending row becomes claimable (None: no pending row at all)."""
    return await _fetchval(
        conn,
        "SELECT MIN(next_attempt_at) FROM jobs WHERE state = 'pending'"
        " AND (:kb IS NULL OR kb_id = :kb)",
        {"kb": kb_id},
    )


@dataclass
class Outcome:
    """What one attempt at one job came to; the worker hands these to `record_outcomes`."""

    job: Job
    outcome: str  # 'done', 'retry', 'failed', 'released', 'uploaded', 'changed'
    ended_at: float
    run_id: int | None = None
    error_kind: str | None = None
    error: str | None = None
    file_id: str | None = None
    s3_key: str | None = None
    filename: str | None = None
    next_attempt_at: float = 0.0
    unknown_since: float | None = None


_DONE = """
UPDATE jobs SET state = 'done', step = 'registered', file_id = :file_id, s3_key = :s3_key,
       filename = :filename, finished_at = :ended, duration = :ended - started_at,
       lease_owner = NULL, lease_expires = NULL, last_error = NULL, error_kind = NULL,
       unknown_since = NULL, size = :size, mtime_ns = :mtime_ns
WHERE id = :id AND lease_owner = :owner"""

_RETRY = """
UPDATE jobs SET state = 'pending', next_attempt_at = :next, last_error = :error,
       error_kind = :kind, step = :step, s3_key = :s3_key, filename = :filename,
       unknown_since = COALESCE(unknown_since, :unknown), lease_owner = NULL,
       lease_expires = NULL, size = :size, mtime_ns = :mtime_ns
WHERE id = :id AND lease_owner = :owner"""

_FAILED = """
UPDATE jobs SET state = 'failed', last_error = :error, error_kind = :kind, finished_at = :ended,
       duration = :ended - started_at, step = :step, s3_key = :s3_key, filename = :filename,
       unknown_since = COALESCE(unknown_since, :unknown), lease_owner = NULL,
       lease_expires = NULL, size = :size, mtime_ns = :mtime_ns
WHERE id = :id AND lease_owner = :owner"""

_RELEASED = """
UPDATE jobs SET state = 'pending', attempts = attempts - 1, step = :step, s3_key = :s3_key,
       filename = :filename, unknown_since = COALESCE(unknown_since, :unknown),
       lease_owner = NULL, lease_expires = NULL, size = :size, mtime_ns = :mtime_ns
WHERE id = :id AND lease_owner = :owner"""

_UPLOADED = """
UPDATE jobs SET step = 'uploaded', s3_key = :s3_key, filename = :filename, size = :size,
       mtime_ns = :mtime_ns
WHERE id = :id AND lease_owner = :owner"""

_STATEMENTS = {
    "done": _DONE,
    "retry": _RETRY,
    "failed": _FAILED,
    "released": _RELEASED,
    "uploaded": _UPLOADED,
}

_ATTEMPT = """
INSERT INTO attempts (job_id, run_id, attempt, started_at, ended_at, outcome, step,
                      error_kind, error)
VALUES (:id, :run_id, :attempt, :started, :ended, :outcome, :step, :kind, :error)"""


def _outcome_params(o: Outcome, owner: str) -> dict[str, Any]:
    j = o.job
    return {
        "id": j.id,
        "owner": owner,
        "run_id": o.run_id,
        "attempt": j.attempts,
        "started": j.started_at,
        "ended": o.ended_at,
        "outcome": o.outcome,
        "step": j.step,
        "kind": o.error_kind,
        "error": o.error,
        "file_id": o.file_id,
        "s3_key": o.s3_key if o.s3_key is not None else j.s3_key,
        "filename": o.filename if o.filename is not None else j.filename,
        "next": o.next_attempt_at,
        "unknown": o.unknown_since,
        "size": j.size,
        "mtime_ns": j.mtime_ns,
    }


async def record_outcomes(
    conn: aiosqlite.Connection, owner: str, outcomes: Sequence[Outcome]
) -> None:
    """Write a batch of results in one transaction; a row is only written by its lease owner."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    attempts = []
    for o in outcomes:
        params = _outcome_params(o, owner)
        by_kind.setdefault(o.outcome, []).append(params)
        if o.outcome != "uploaded":
            attempts.append(params)
    async with transaction(conn):
        for kind, params in by_kind.items():
            await conn.executemany(_STATEMENTS[kind], params)
        if attempts:
            await conn.executemany(_ATTEMPT, attempts)


async def renew_leases(conn: aiosqlite.Connection, owner: str, lease_seconds: float) -> None:
    async with transaction(conn):
        await conn.execute(
            "UPDATE jobs SET lease_expires = :expires WHERE state = 'running'"
            " AND lease_owner = :owner",
            {"expires": time.time() + lease_seconds, "owner": owner},
        )


async def lease_owners(conn: aiosqlite.Connection) -> list[tuple[str, float]]:
    """Owners of running rows, with their earliest lease expiry."""
    rows = await conn.execute_fetchall(
        "SELECT lease_owner, MIN(lease_expires) FROM jobs WHERE state = 'running'"
        " GROUP BY lease_owner"
    )
    return [(owner or "", expires or 0.0) for owner, expires in rows]


_LOST_ATTEMPTS = """
INSERT INTO attempts (job_id, attempt, started_at, ended_at, outcome, step, error_kind, error)
SELECT id, attempts, COALESCE(started_at, :now), :now, 'lost', step, 'lost',
       'the process running it died or its lease expired'
FROM jobs WHERE state = 'running' AND (lease_expires < :now
      OR lease_owner IN (SELECT value FROM json_each(:owners)))"""

_RECLAIM = """
UPDATE jobs SET state = 'pending', attempts = MAX(attempts - 1, 0), lease_owner = NULL,
       lease_expires = NULL, unknown_since = COALESCE(unknown_since, started_at, :now)
WHERE state = 'running' AND (lease_expires < :now
      OR lease_owner IN (SELECT value FROM json_each(:owners)))"""


async def reclaim(conn: aiosqlite.Connection, dead_owners: Iterable[str]) -> int:
    """Give back rows of dead or expired owners; whether they registered is now unknown."""
    params = {"owners": json.dumps(list(dead_owners)), "now": time.time()}
    async with transaction(conn):
        await conn.execute(_LOST_ATTEMPTS, params)
        cur = await conn.execute(_RECLAIM, params)
    return cur.rowcount


# --- runs ------------------------------------------------------------------------------------


async def start_run(conn: aiosqlite.Connection, owner: str, options: dict[str, Any]) -> int:
    async with transaction(conn):
        cur = await conn.execute(
            "INSERT INTO runs (started_at, owner, options) VALUES (?, ?, ?)",
            (time.time(), owner, json.dumps(options, sort_keys=True)),
        )
    return int(cur.lastrowid or 0)


async def end_run(
    conn: aiosqlite.Connection, run_id: int, counts: dict[str, Any], exit_code: int
) -> None:
    async with transaction(conn):
        await conn.execute(
            "UPDATE runs SET ended_at = ?, counts = ?, exit_code = ? WHERE id = ?",
            (time.time(), json.dumps(counts, sort_keys=True), exit_code, run_id),
        )


def _run_dict(row: Sequence[Any]) -> dict[str, Any]:
    run_id, started, ended, owner, options, counts, code = row
    return {
        "id": run_id,
        "started_at": started,
        "ended_at": ended,
        "options": json.loads(options),
        "counts": json.loads(counts) if counts else None,
        "exit_code": code,
    }


async def runs(conn: aiosqlite.Connection, last: int | None = None) -> list[dict[str, Any]]:
    """Runs, oldest first (or the `last` N)."""
    sql = "SELECT id, started_at, ended_at, owner, options, counts, exit_code FROM runs"
    if last is None:
        rows = await conn.execute_fetchall(sql + " ORDER BY id")
    else:
        rows = await conn.execute_fetchall(sql + " ORDER BY id DESC LIMIT ?", (last,))
        rows = list(reversed(list(rows)))
    return [_run_dict(r) for r in rows]


# --- status, retry-failed, report ------------------------------------------------------------


async def state_counts(conn: aiosqlite.Connection) -> dict[str, dict[str, tuple[int, int]]]:
    """{kb_id: {state: (files, bytes)}}, from the (kb_id, state, size) index alone."""
    rows = await conn.execute_fetchall(
        "SELECT kb_id, state, COUNT(*), COALESCE(SUM(size), 0) FROM jobs GROUP BY kb_id, state"
    )
    result: dict[str, dict[str, tuple[int, int]]] = {}
    for kb, state, count, size in rows:
        result.setdefault(kb, {})[state] = (count, size)
    return result


async def error_kind_counts(conn: aiosqlite.Connection) -> dict[str, int]:
    rows = await conn.execute_fetchall(
        "SELECT error_kind, COUNT(*) FROM jobs WHERE state = 'failed' GROUP BY error_kind"
    )
    return {kind or "unknown": count for kind, count in rows}


async def retry_failed(
    conn: aiosqlite.Connection,
    kb_id: str | None,
    kinds: Sequence[str],
    match: Callable[[str], bool] | None,
) -> int:
    """Failed rows back to pending with a clean slate; the attempts table keeps their past."""
    await conn.create_function("uploader_match", 1, match or (lambda _: True), deterministic=True)
    kind_filter = ""
    params: list[Any] = [kb_id, kb_id]
    if kinds:
        kind_filter = f" AND error_kind IN ({','.join('?' * len(kinds))})"
        params.extend(kinds)
    async with transaction(conn):
        cur = await conn.execute(
            "UPDATE jobs SET state = 'pending', attempts = 0, next_attempt_at = 0,"
            " last_error = NULL, error_kind = NULL, finished_at = NULL, duration = NULL"
            " WHERE state = 'failed' AND (? IS NULL OR kb_id = ?)"
            f"{kind_filter} AND uploader_match(relpath)",
            params,
        )
    return cur.rowcount


async def report_totals(conn: aiosqlite.Connection) -> dict[str, Any]:
    row = await conn.execute_fetchall(
        "SELECT COUNT(*),"
        " COALESCE(SUM(state = 'done'), 0), COALESCE(SUM(state = 'failed'), 0),"
        " COALESCE(SUM(state = 'pending'), 0), COALESCE(SUM(state = 'running'), 0),"
        " COALESCE(SUM(state = 'skipped'), 0),"
        " AVG(CASE WHEN state = 'done' THEN duration END),"
        " GROUP_CONCAT(DISTINCT kb_id)"
        " FROM jobs"
    )
    total, done, failed, pending, running, skipped, avg, kbs = list(row)[0]
    return {
        "total_files": total,
        "successful_uploads": done,
        "failed_uploads": failed,
        "pending": pending,
        "running": running,
        "skipped": skipped,
        "average_upload_time": round(avg or 0.0, 3),
        "knowledge_bases": sorted(kbs.split(",")) if kbs else [],
    }


_REPORT_ROWS = {
    "done": "SELECT kb_id, path, size, duration, file_id, filename FROM jobs"
    " WHERE state = 'done' ORDER BY id",
    "failed": "SELECT kb_id, path, last_error, attempts, error_kind FROM jobs"
    " WHERE state = 'failed' ORDER BY id",
    "skipped": "SELECT kb_id, path, last_error FROM jobs WHERE state = 'skipped' ORDER BY id",
}


async def report_rows(
    conn: aiosqlite.Connection, state: str, chunk: int = 5000
) -> AsyncIterator[tuple[Any, ...]]:
    """Stream the rows of one report section without holding them all."""
    async with conn.execute(_REPORT_ROWS[state]) as cur:
        while rows := await cur.fetchmany(chunk):
            for row in rows:
                yield tuple(row)


async def kbs_with_work(conn: aiosqlite.Connection, kb_id: str | None) -> list[str]:
    """Knowledge bases that have rows left to upload: the run checks each before claiming."""
    rows = await conn.execute_fetchall(
        "SELECT DISTINCT kb_id FROM jobs WHERE state IN ('pending', 'running')"
        " AND (:kb IS NULL OR kb_id = :kb)",
        {"kb": kb_id},
    )
    return [r[0] for r in rows]


async def pending_totals(conn: aiosqlite.Connection, kb_id: str | None) -> tuple[int, int]:
    """Files and bytes still to upload (pending or running): the progress bar's total."""
    rows = await conn.execute_fetchall(
        "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM jobs"
        " WHERE state IN ('pending', 'running') AND (:kb IS NULL OR kb_id = :kb)",
        {"kb": kb_id},
    )
    count, size = list(rows)[0]
    return count, size


async def failed_count(conn: aiosqlite.Connection, kb_id: str | None) -> int:
    return await _fetchval(
        conn,
        "SELECT COUNT(*) FROM jobs WHERE state = 'failed' AND (:kb IS NULL OR kb_id = :kb)",
        {"kb": kb_id},
    )


# --- remote files (the knowledge base's listing) ---------------------------------------------

_UPSERT_REMOTE = """
INSERT INTO remote_files (kb_id, id, filename, size, status, created_at, seen_at)
VALUES (:kb, :id, :filename, :size, :status, :created_at, :seen_at)
ON CONFLICT (kb_id, id) DO UPDATE SET filename = excluded.filename, size = excluded.size,
    status = excluded.status, created_at = excluded.created_at, seen_at = excluded.seen_at"""


async def upsert_remote(
    conn: aiosqlite.Connection, kb_id: str, entries: Sequence[dict[str, Any]], seen_at: float
) -> None:
    """Store listed entries; `created_at` is in seconds (the API gives milliseconds)."""
    params = [
        {
            "kb": kb_id,
            "id": str(e["id"]),
            "filename": e.get("filename") or "",
            "size": e.get("size"),
            "status": e.get("status"),
            "created_at": (e.get("createdAt") or 0) / 1000.0,
            "seen_at": seen_at,
        }
        for e in entries
    ]
    async with transaction(conn):
        await conn.executemany(_UPSERT_REMOTE, params)


_ADOPTABLE = """
SELECT r.id FROM remote_files AS r
WHERE r.kb_id = :kb AND r.filename = :filename AND r.created_at >= :since
  AND (r.size IS NULL OR r.size = :size)
  AND NOT EXISTS (SELECT 1 FROM jobs AS j WHERE j.file_id = r.id)
ORDER BY r.created_at, r.id"""


async def adoptable(
    conn: aiosqlite.Connection, kb_id: str, filename: str, size: int, since: float
) -> list[str]:
    """Listed entries that a doubtful register of this file may have created: same name, same
    size when listed, created after the attempt began, and not already some job's entry."""
    rows = await conn.execute_fetchall(
        _ADOPTABLE, {"kb": kb_id, "filename": filename, "size": size, "since": since}
    )
    return [r[0] for r in rows]
