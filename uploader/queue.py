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
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from importlib import resources
from typing import Any

import aiosqlite

from .model import (
    DoneRow,
    DuplicateItem,
    EnqueueCounts,
    Entry,
    FailedRow,
    Job,
    JobState,
    LeaseOwner,
    ListedRow,
    Outcome,
    OutcomeKind,
    RemoteRetryCandidate,
    RemoteStatus,
    ReportRow,
    RequeueItem,
    ScanRow,
    SkippedRow,
    VerificationItem,
)

log = logging.getLogger("uploader.queue")

BUSY_TIMEOUT_MS = 5000
CACHE_KIB = 32 * 1024
LOCK_RETRIES = 6
STATES = tuple(JobState)


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
        await _check_version(conn, path)
        mode = await _fetchval(conn, "PRAGMA journal_mode = WAL")
        if mode != "wal":
            log.warning("database %s: journal mode %s, not WAL", path, mode)
        await conn.execute("PRAGMA synchronous = NORMAL")
        # The default 2 MB page cache is outgrown at ~10,000 rows, after which every claim
        # and completion reads its index pages back through system calls.
        await conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        await conn.execute("PRAGMA foreign_keys = ON")
        await _migrate(conn)
    except sqlite3.DatabaseError as exc:
        await conn.close()
        raise QueueError(_explain(path, exc)) from None
    except BaseException:
        await conn.close()
        raise
    return conn


@contextlib.asynccontextmanager
async def opened(path: str, *, create: bool = True) -> AsyncIterator[aiosqlite.Connection]:
    """The database for one command; damage found later than the opening (a page corrupted
    mid-file) is the same one-line QueueError as at the opening, never a traceback."""
    conn = await connect(path, create=create)
    try:
        yield conn
    except sqlite3.DatabaseError as exc:
        raise QueueError(_explain(path, exc)) from None
    finally:
        await conn.close()


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


async def _check_version(conn: aiosqlite.Connection, path: str) -> None:
    """Refuse, before changing a byte, a database from a newer uploader or another program."""
    current = await _fetchval(conn, "PRAGMA user_version")
    latest = schema_version()
    if current > latest:
        raise QueueError(
            f"{path} was made by a newer version of uploader (schema {current}, this version "
            f"knows {latest}); upgrade uploader to use it"
        )
    if current == 0 and await _fetchval(conn, "SELECT COUNT(*) FROM sqlite_master"):
        raise QueueError(f"{path} is a SQLite database of another program, not an uploader queue")


async def _migrate(conn: aiosqlite.Connection) -> None:
    """Apply the missing migrations in one transaction; the version is read inside it, so
    two processes opening a new database at once do not both create the tables."""
    async with transaction(conn):
        current = await _fetchval(conn, "PRAGMA user_version")
        for number, sql in _migrations():
            if number > current:
                for statement in _statements(sql):
                    await conn.execute(statement)
                await conn.execute(f"PRAGMA user_version = {number}")


def _statements(script: str) -> Iterator[str]:
    """Split a migration into statements (executescript would commit our transaction)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer
            buffer = ""
    if buffer.strip() and not all(
        ln.strip().startswith("--") or not ln.strip() for ln in buffer.splitlines()
    ):
        raise sqlite3.DatabaseError(f"incomplete statement in migration: {buffer[:60]!r}")


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
            await _to_completion(conn, "BEGIN IMMEDIATE")
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
            await _to_completion(conn, "ROLLBACK")
        raise
    else:
        await _to_completion(conn, "COMMIT")


async def _to_completion(conn: aiosqlite.Connection, sql: str) -> None:
    """BEGIN, COMMIT and ROLLBACK run in the database thread whatever happens to our task;
    a cancel is let through only once the statement is over (rolling back a BEGIN it
    interrupted), so the connection is never left inside a transaction nobody owns."""
    statement = asyncio.ensure_future(conn.execute(sql))
    cancelled = False
    while not statement.done():
        try:
            await asyncio.shield(statement)
        except asyncio.CancelledError:
            cancelled = True
    statement.result()
    if cancelled:
        if sql.startswith("BEGIN") and conn.in_transaction:
            await _to_completion(conn, "ROLLBACK")
        raise asyncio.CancelledError


# --- enqueue ---------------------------------------------------------------------------------


_INSERT = """
INSERT INTO jobs (kb_id, path, relpath, size, mtime_ns, state, last_error, error_kind,
                  enqueued_at)
VALUES (:kb, :path, :relpath, :size, :mtime_ns, :state, :skip, :kind, :now)
ON CONFLICT (kb_id, path) DO NOTHING"""

# A row going back to pending starts its attempts afresh (the attempts table keeps the past);
# when its earlier upload no longer counts (the file changed, the entry failed remotely), the
# upload is forgotten too. A doubt about an earlier register (unknown_since) is kept otherwise.
_BACK_TO_PENDING = """state = 'pending', attempts = 0, next_attempt_at = 0, step = NULL,
       s3_key = NULL, last_error = NULL, error_kind = NULL, started_at = NULL,
       finished_at = NULL, duration = NULL"""
_FORGET_UPLOAD = "file_id = NULL, filename = NULL, remote_status = NULL, unknown_since = NULL"

_REQUEUE_CHANGED = f"""
UPDATE jobs SET size = :size, mtime_ns = :mtime_ns, relpath = :relpath, enqueued_at = :now,
       {_BACK_TO_PENDING}, {_FORGET_UPLOAD}
WHERE kb_id = :kb AND path = :path AND state != 'running'
  AND (size != :size OR mtime_ns != :mtime_ns OR state = 'skipped')"""

_MARK_SKIPPED = """
UPDATE jobs SET size = :size, mtime_ns = :mtime_ns, state = 'skipped', last_error = :skip,
       error_kind = 'skipped'
WHERE kb_id = :kb AND path = :path AND state IN ('pending', 'failed', 'skipped')"""


async def enqueue_batch(
    conn: aiosqlite.Connection, kb_id: str, rows: Sequence[ScanRow]
) -> EnqueueCounts:
    """Insert new files and re-queue changed ones, one transaction per batch of the scan;
    every statement is a lookup on the (kb_id, path) index, so a batch costs the same at the
    millionth file as at the first."""
    now = time.time()
    readable, skipped = [], []
    for r in rows:
        params = {
            "kb": kb_id,
            "path": r.path,
            "relpath": r.relpath,
            "size": r.size,
            "mtime_ns": r.mtime_ns,
            "skip": r.skip,
            "now": now,
            "state": "pending" if r.skip is None else "skipped",
            "kind": None if r.skip is None else "skipped",
        }
        (readable if r.skip is None else skipped).append(params)
    async with transaction(conn):
        changed = (await conn.executemany(_REQUEUE_CHANGED, readable)).rowcount
        new = (await conn.executemany(_INSERT, readable)).rowcount
        if skipped:
            await conn.executemany(_MARK_SKIPPED, skipped)
            await conn.executemany(_INSERT, skipped)
    return EnqueueCounts(
        scanned=len(rows),
        new=new,
        changed=changed,
        unchanged=len(readable) - new - changed,
        skipped=len(skipped),
    )


# --- claiming and completing (the workers) ---------------------------------------------------


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


_DONE = """
UPDATE jobs SET state = 'done', step = 'registered', file_id = :file_id, s3_key = :s3_key,
       filename = :filename, finished_at = :ended, duration = :ended - started_at,
       lease_owner = NULL, lease_expires = NULL, last_error = NULL, error_kind = NULL,
       unknown_since = NULL, size = :size, mtime_ns = :mtime_ns
WHERE id = :id AND lease_owner = :owner"""

_RETRY = """
UPDATE jobs SET state = 'pending', next_attempt_at = :next, last_error = :error,
       error_kind = :kind, step = :step, s3_key = :s3_key, filename = :filename,
       unknown_since = :unknown, lease_owner = NULL,
       lease_expires = NULL, size = :size, mtime_ns = :mtime_ns
WHERE id = :id AND lease_owner = :owner"""

_FAILED = """
UPDATE jobs SET state = 'failed', last_error = :error, error_kind = :kind, finished_at = :ended,
       duration = :ended - started_at, step = :step, s3_key = :s3_key, filename = :filename,
       unknown_since = :unknown, lease_owner = NULL,
       lease_expires = NULL, size = :size, mtime_ns = :mtime_ns
WHERE id = :id AND lease_owner = :owner"""

_RELEASED = """
UPDATE jobs SET state = 'pending', attempts = attempts - 1, step = :step, s3_key = :s3_key,
       filename = :filename, unknown_since = :unknown,
       lease_owner = NULL, lease_expires = NULL, size = :size, mtime_ns = :mtime_ns
WHERE id = :id AND lease_owner = :owner"""

_UPLOADED = """
UPDATE jobs SET step = 'uploaded', s3_key = :s3_key, filename = :filename, size = :size,
       mtime_ns = :mtime_ns
WHERE id = :id AND lease_owner = :owner"""

# One statement per outcome kind (a kind without one fails at import, not mid-run).
_STATEMENTS = {
    OutcomeKind.DONE: _DONE,
    OutcomeKind.RETRY: _RETRY,
    OutcomeKind.FAILED: _FAILED,
    OutcomeKind.RELEASED: _RELEASED,
    OutcomeKind.UPLOADED: _UPLOADED,
}
assert set(_STATEMENTS) == set(OutcomeKind), "every outcome kind needs its statement"

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
        "outcome": str(o.outcome),
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
        by_kind.setdefault(OutcomeKind(o.outcome), []).append(params)
        if o.outcome != OutcomeKind.UPLOADED:
            attempts.append(params)
    async with transaction(conn):
        for kind, params in by_kind.items():
            await conn.executemany(_STATEMENTS[kind], params)
        if attempts:
            await conn.executemany(_ATTEMPT, attempts)


async def renew_leases(conn: aiosqlite.Connection, owner: str, lease_seconds: float) -> list[int]:
    """Extend our leases; the ids returned are the rows still ours (a row missing from it was
    reclaimed by another run while we were stalled)."""
    async with transaction(conn):
        rows = await conn.execute_fetchall(
            "UPDATE jobs SET lease_expires = :expires WHERE state = 'running'"
            " AND lease_owner = :owner RETURNING id",
            {"expires": time.time() + lease_seconds, "owner": owner},
        )
    return [r[0] for r in rows]


async def lease_owners(conn: aiosqlite.Connection) -> list[LeaseOwner]:
    """Owners of running rows, with their earliest lease expiry."""
    rows = await conn.execute_fetchall(
        "SELECT lease_owner, MIN(lease_expires) FROM jobs WHERE state = 'running'"
        " GROUP BY lease_owner"
    )
    return [LeaseOwner(owner or "", expires or 0.0) for owner, expires in rows]


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
            f"UPDATE jobs SET {_BACK_TO_PENDING}"
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


_REPORT_ROWS: dict[str, tuple[str, type[ReportRow]]] = {
    "done": (
        "SELECT kb_id, path, size, duration, file_id, filename FROM jobs"
        " WHERE state = 'done' ORDER BY id",
        DoneRow,
    ),
    "failed": (
        "SELECT kb_id, path, last_error, attempts, error_kind FROM jobs"
        " WHERE state = 'failed' ORDER BY id",
        FailedRow,
    ),
    "skipped": (
        "SELECT kb_id, path, last_error FROM jobs WHERE state = 'skipped' ORDER BY id",
        SkippedRow,
    ),
}


async def report_rows(
    conn: aiosqlite.Connection, state: str, chunk: int = 5000
) -> AsyncIterator[ReportRow]:
    """Stream the rows of one report section without holding them all."""
    sql, shape = _REPORT_ROWS[state]
    async with conn.execute(sql) as cur:
        while rows := await cur.fetchmany(chunk):
            for row in rows:
                yield shape(*row)


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


async def any_remote_known(conn: aiosqlite.Connection, kb_id: str, ids: Sequence[str]) -> bool:
    """Whether an earlier listing already stored one of these entries."""
    marks = ",".join("?" * len(ids))
    found = await _fetchval(
        conn,
        f"SELECT 1 FROM remote_files WHERE kb_id = ? AND id IN ({marks}) LIMIT 1",
        [kb_id, *ids],
    )
    return found is not None


_ADOPTABLE = """
SELECT r.id FROM remote_files AS r
WHERE r.kb_id = :kb AND r.filename = :filename AND r.created_at >= :since
  AND (r.size IS NULL OR r.size = :size)
  AND (r.file_key IS NULL OR :s3_key IS NULL OR r.file_key = :s3_key)
  AND NOT EXISTS (SELECT 1 FROM jobs AS j WHERE j.file_id = r.id)
ORDER BY r.file_key IS NULL, r.created_at, r.id"""


async def adoptable(
    conn: aiosqlite.Connection,
    kb_id: str,
    filename: str,
    size: int,
    since: float,
    s3_key: str | None,
) -> list[str]:
    """Listed entries that a doubtful register of this file may have created: its S3 key when
    the listing shows keys, else the same name, same size when listed, created after the
    attempt began, and not already some job's entry."""
    rows = await conn.execute_fetchall(
        _ADOPTABLE,
        {"kb": kb_id, "filename": filename, "size": size, "since": since, "s3_key": s3_key},
    )
    return [r[0] for r in rows]


# --- verify, dedupe, remote retry ------------------------------------------------------------

_STORE_LISTED = """
INSERT INTO remote_files (kb_id, id, filename, size, status, created_at, seen_at, file_key)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (kb_id, id) DO UPDATE SET filename = excluded.filename, size = excluded.size,
    status = excluded.status, created_at = excluded.created_at, seen_at = excluded.seen_at,
    file_key = excluded.file_key"""


async def store_listed(conn: aiosqlite.Connection, rows: Sequence[ListedRow]) -> None:
    """Store one page of a full listing; tuples, not dicts, since a verify stores every entry."""
    async with transaction(conn):
        await conn.executemany(_STORE_LISTED, rows)


async def forget_unseen(conn: aiosqlite.Connection, kb_id: str, since: float) -> None:
    """After a complete listing, entries it did not show are gone from the knowledge base."""
    async with transaction(conn):
        await conn.execute(
            "DELETE FROM remote_files WHERE kb_id = ? AND seen_at < ?", (kb_id, since)
        )


async def forget_remote(conn: aiosqlite.Connection, kb_id: str, ids: Sequence[str]) -> None:
    async with transaction(conn):
        await conn.executemany(
            "DELETE FROM remote_files WHERE kb_id = ? AND id = ?", [(kb_id, i) for i in ids]
        )


async def unseen_job_entries(conn: aiosqlite.Connection, kb_id: str, since: float) -> list[str]:
    """Entries of done jobs that the listing begun at `since` did not show."""
    rows = await conn.execute_fetchall(
        "SELECT j.file_id FROM jobs AS j WHERE j.kb_id = :kb AND j.state = 'done'"
        " AND j.file_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM remote_files AS r"
        " WHERE r.kb_id = j.kb_id AND r.id = j.file_id AND r.seen_at >= :since)",
        {"kb": kb_id, "since": since},
    )
    return [r[0] for r in rows]


_MATCH_REMOTE = """
UPDATE jobs SET remote_status = m.status
FROM (
    SELECT j.id AS id,
           CASE WHEN r.id IS NULL THEN 'missing' ELSE COALESCE(r.status, 'unknown') END AS status
    FROM jobs AS j LEFT JOIN remote_files AS r
         ON r.kb_id = j.kb_id AND r.id = j.file_id AND r.seen_at >= :since
    WHERE j.kb_id = :kb AND j.state = 'done' AND j.file_id IS NOT NULL
) AS m
WHERE jobs.id = m.id AND jobs.remote_status IS NOT m.status"""


async def match_remote(conn: aiosqlite.Connection, kb_id: str, since: float) -> None:
    """Each done job takes the status of its entry in the listing begun at `since`, or
    'missing'; one statement, and only rows whose status changed are written."""
    async with transaction(conn):
        await conn.execute(_MATCH_REMOTE, {"kb": kb_id, "since": since})


async def remote_status_counts(
    conn: aiosqlite.Connection, kb_id: str, since: float
) -> dict[str, int]:
    """Entries per parse status in the listing begun at `since` (the whole knowledge base)."""
    rows = await conn.execute_fetchall(
        "SELECT COALESCE(status, 'unknown'), COUNT(*) FROM remote_files"
        " WHERE kb_id = ? AND seen_at >= ? GROUP BY 1",
        (kb_id, since),
    )
    return {status: n for status, n in rows}


async def job_remote_counts(conn: aiosqlite.Connection, kb_id: str) -> dict[str, int]:
    """This database's uploaded files per remote status ('missing' included)."""
    rows = await conn.execute_fetchall(
        "SELECT COALESCE(remote_status, 'unknown'), COUNT(*) FROM jobs"
        " WHERE kb_id = ? AND state = 'done' GROUP BY 1",
        (kb_id,),
    )
    return {status: n for status, n in rows}


async def not_uploaded_count(conn: aiosqlite.Connection, kb_id: str) -> int:
    return await _fetchval(
        conn,
        "SELECT COUNT(*) FROM jobs WHERE kb_id = ? AND state IN ('pending', 'running', 'failed')",
        (kb_id,),
    )


# Entries sharing a filename with another entry of the listing; a job's entry takes the job's
# size when the listing gives none. Ordered so that each group is oldest first.
_DUPLICATE_CANDIDATES = """
SELECT r.id, r.filename, COALESCE(r.size, j.size), r.status, r.created_at, j.id
FROM remote_files AS r
LEFT JOIN jobs AS j ON j.file_id = r.id AND j.kb_id = r.kb_id
WHERE r.kb_id = :kb AND r.seen_at >= :since AND r.filename IN (
    SELECT filename FROM remote_files WHERE kb_id = :kb AND seen_at >= :since
    GROUP BY filename HAVING COUNT(*) > 1)
ORDER BY r.filename, r.created_at, r.id"""


async def duplicate_candidates(conn: aiosqlite.Connection, kb_id: str, since: float) -> list[Entry]:
    """Entries whose name is not unique, each name's group oldest first."""
    rows = await conn.execute_fetchall(_DUPLICATE_CANDIDATES, {"kb": kb_id, "since": since})
    return [Entry(*r) for r in rows]


_EXTRA_WHERE = """
FROM remote_files AS r
WHERE r.kb_id = :kb AND r.seen_at >= :since
  AND NOT EXISTS (SELECT 1 FROM jobs AS j WHERE j.file_id = r.id AND j.kb_id = r.kb_id)
  AND r.id NOT IN (SELECT value FROM json_each(:ours))"""


async def extra_count(
    conn: aiosqlite.Connection, kb_id: str, since: float, ours: Sequence[str]
) -> int:
    """Listed entries no job points to, leaving out `ours` (surplus copies of our files)."""
    params = {"kb": kb_id, "since": since, "ours": json.dumps(list(ours))}
    return await _fetchval(conn, f"SELECT COUNT(*) {_EXTRA_WHERE}", params)


_ITEM_COLUMNS = "verification_id, kind, job_id, file_id, filename, size, status, kept_id"

_RECORD_EXTRA = f"""
INSERT INTO verification_items ({_ITEM_COLUMNS})
SELECT :vid, 'extra', NULL, r.id, r.filename, r.size, r.status, NULL {_EXTRA_WHERE}"""

# The few bad rows straight from their partial index, not every done job of the KB.
_RECORD_BAD = f"""
INSERT INTO verification_items ({_ITEM_COLUMNS})
SELECT :vid, remote_status, id, file_id, filename, size,
       CASE remote_status WHEN 'failed' THEN 'failed' END, NULL
FROM jobs INDEXED BY jobs_remote_bad
WHERE kb_id = :kb AND remote_status IN ('failed', 'missing') AND state = 'done'"""


async def record_verification(
    conn: aiosqlite.Connection,
    kb_id: str,
    since: float,
    counts: dict[str, Any],
    duplicates: Sequence[DuplicateItem],
    ours: Sequence[str],
) -> int:
    """Store a verify's counts and its lists, from the listing begun at `since`; the previous
    verify of this knowledge base gives up its lists (its counts stay, as history)."""
    async with transaction(conn):
        cur = await conn.execute(
            "INSERT INTO verifications (kb_id, started_at, ended_at, counts) VALUES (?, ?, ?, ?)",
            (kb_id, since, time.time(), json.dumps(counts)),
        )
        vid = int(cur.lastrowid or 0)
        await conn.execute(
            "DELETE FROM verification_items WHERE verification_id IN"
            " (SELECT id FROM verifications WHERE kb_id = ? AND id != ?)",
            (kb_id, vid),
        )
        params = {"vid": vid, "kb": kb_id, "since": since, "ours": json.dumps(list(ours))}
        await conn.execute(_RECORD_BAD, params)
        await conn.execute(_RECORD_EXTRA, params)
        await conn.executemany(
            f"INSERT INTO verification_items ({_ITEM_COLUMNS})"
            " VALUES (?, 'duplicate', ?, ?, ?, ?, ?, ?)",
            [(vid, *item) for item in duplicates],
        )
    return vid


async def last_verifications(conn: aiosqlite.Connection) -> list[dict[str, Any]]:
    """The newest verify of each knowledge base, by knowledge base id."""
    rows = await conn.execute_fetchall(
        "SELECT id, kb_id, started_at, ended_at, counts FROM verifications"
        " WHERE id IN (SELECT MAX(id) FROM verifications GROUP BY kb_id) ORDER BY kb_id"
    )
    return [
        {"id": vid, "kb_id": kb, "started_at": s, "ended_at": e, "counts": json.loads(c)}
        for vid, kb, s, e, c in rows
    ]


async def verification_items(
    conn: aiosqlite.Connection, verification_id: int, kind: str, limit: int = -1
) -> AsyncIterator[VerificationItem]:
    """The items of one list of a verify, streamed."""
    async with conn.execute(
        "SELECT j.path, i.file_id, i.filename, i.size, i.status, i.kept_id"
        " FROM verification_items AS i LEFT JOIN jobs AS j ON j.id = i.job_id"
        " WHERE i.verification_id = ? AND i.kind = ? ORDER BY i.rowid LIMIT ?",
        (verification_id, kind, limit),
    ) as cur:
        while rows := await cur.fetchmany(5000):
            for row in rows:
                yield VerificationItem(*row)


async def remote_retry_candidates(
    conn: aiosqlite.Connection, kb_id: str | None, match: Callable[[str], bool] | None
) -> list[RemoteRetryCandidate]:
    """Done jobs whose entry failed or is gone."""
    await conn.create_function("uploader_match", 1, match or (lambda _: True), deterministic=True)
    rows = await conn.execute_fetchall(
        "SELECT id, kb_id, file_id, remote_status FROM jobs INDEXED BY jobs_remote_bad"
        " WHERE remote_status IN ('failed', 'missing') AND state = 'done'"
        " AND (:kb IS NULL OR kb_id = :kb) AND uploader_match(relpath) ORDER BY id",
        {"kb": kb_id},
    )
    return [RemoteRetryCandidate(*r) for r in rows]


_REQUEUE_REMOTE = f"""
UPDATE jobs SET {_BACK_TO_PENDING}, {_FORGET_UPLOAD}
WHERE id = ? AND state = 'done' AND file_id IS ?"""


async def requeue_remote(conn: aiosqlite.Connection, jobs: Sequence[RequeueItem]) -> int:
    """Jobs whose entry is gone go back to pending for a fresh upload;
    a job whose entry changed meanwhile (another command re-uploaded it) is left alone."""
    async with transaction(conn):
        await conn.executemany(
            "DELETE FROM remote_files WHERE kb_id = ? AND id = ?",
            [(kb, fid) for _job, kb, fid in jobs if fid is not None],
        )
        cur = await conn.executemany(_REQUEUE_REMOTE, [(job, fid) for job, _kb, fid in jobs])
    return cur.rowcount


async def set_remote_status(conn: aiosqlite.Connection, statuses: Sequence[RemoteStatus]) -> None:
    """What reading each entry back showed."""
    async with transaction(conn):
        await conn.executemany("UPDATE jobs SET remote_status = ? WHERE id = ?", statuses)
