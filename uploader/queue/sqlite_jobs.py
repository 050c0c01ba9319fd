"""The SQLite statements of the jobs, runs and attempts tables: enqueue, claim, outcomes,
leases, reclaim, runs, and the counts behind status, retry-failed and the report.

A mixin of `SqliteQueue`, which owns `_conn`, `transaction()` and `_fetchval()`.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..model import (
    EnqueueCounts,
    Job,
    LeaseOwner,
    Outcome,
    OutcomeKind,
    ScanRow,
)
from ..tags import EMPTY as EMPTY_TAGS
from .states import FORGET_CHANGED, RETRY_TO_PENDING

if TYPE_CHECKING:
    from .sqlite import SqliteBase
else:
    SqliteBase = object

# --- enqueue ---------------------------------------------------------------------------------


# Bound by position: a million rows bound by name spent a tenth of the database's time
# looking the names up. A file that asks for nothing but its upload (no label, metadata,
# parser or name shown, not skipped: most of a walk) leaves those columns to their defaults,
# as binding a NULL costs as much as a value.
_INSERT = """
INSERT INTO jobs (kb_id, path, relpath, size, mtime_ns, state, last_error, error_kind,
                  enqueued_at, host, shared, tags, parser, display_name)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (kb_id, path) DO NOTHING"""

# Plain new rows go in many to a statement: sqlite3 lets go of the GIL around each step, so
# one row per step (executemany) handed the GIL back and forth with the walk's thread 500 times
# a batch, each handover a thread wake-up, and the two threads hardly ran at once. One step
# inserts a whole part without the GIL. The knowledge base, time, host and shared flag are
# bound once (?1-?4); each row binds its own four values, within the 999 variables of the
# oldest SQLite a Python 3.10 may carry.
PLAIN_ROWS = 240


@functools.lru_cache(maxsize=4)
def _insert_plain(rows: int) -> str:
    """The insert of `rows` plain new rows."""
    values = ",".join(
        f"(?1, ?{i}, ?{i + 1}, ?{i + 2}, ?{i + 3}, ?2, ?3, ?4)" for i in range(5, 5 + 4 * rows, 4)
    )
    return (
        "INSERT INTO jobs (kb_id, path, relpath, size, mtime_ns, enqueued_at, host, shared)"
        f" VALUES {values} ON CONFLICT (kb_id, path) DO NOTHING"
    )


# The rows an enqueue may change: its host's, shared ones, those of no recorded host, or any
# when its folder is shared (the same path is then the same file on every host).
_OURS = "(shared OR host IN ('', :host) OR :shared)"

# What an enqueue asks of the entry (issue 14): labels and metadata replace the row's when
# asked (uploader.tags), the parser and the name shown when given.
_RETAGGED = """tags = COALESCE(:tags, tags), parser = COALESCE(:parser, parser),
       display_name = COALESCE(:display_name, display_name)"""

_REQUEUE_CHANGED = f"""
UPDATE jobs SET size = :size, mtime_ns = :mtime_ns, relpath = :relpath, enqueued_at = :now,
       {FORGET_CHANGED}, {_RETAGGED}
WHERE kb_id = :kb AND path = :path AND state != 'running'
  AND (size != :size OR mtime_ns != :mtime_ns OR state IN ('skipped', 'removed')) AND {_OURS}"""

# An unchanged row that is not uploaded yet takes what is asked now, for its register.
_RETAG = f"""
UPDATE jobs SET {_RETAGGED}
WHERE kb_id = :kb AND path = :path AND state NOT IN ('running', 'done') AND {_OURS}
  AND (tags IS NOT COALESCE(:tags, tags) OR parser IS NOT COALESCE(:parser, parser)
       OR display_name IS NOT COALESCE(:display_name, display_name))"""

# An uploaded row whose entry does not carry the labels and metadata asked now goes back to
# pending at step 'metadata': its next attempt sends update-metadata only.
_RELABEL = f"""
UPDATE jobs SET {_RETAGGED}, state = 'pending', step = 'metadata', attempts = 0,
       next_attempt_at = 0
WHERE kb_id = :kb AND path = :path AND state = 'done' AND :tags IS NOT NULL
  AND tags_applied IS NOT :tags AND {_OURS}"""

# An uploaded row whose file has the same size and another mtime (a copy without -t, a
# checkout) is not forgotten: its next attempt hashes the file and is done at once when the
# bytes are the ones uploaded (step 'recheck'). Run before _SUPERSEDE and _REQUEUE_CHANGED,
# which then no longer see it changed.
_RECHECK = f"""
UPDATE jobs SET mtime_ns = :mtime_ns, relpath = :relpath, enqueued_at = :now,
       state = 'pending', attempts = 0, next_attempt_at = 0, step = 'recheck',
       last_error = NULL, error_kind = NULL, started_at = NULL, finished_at = NULL,
       duration = NULL, {_RETAGGED}
WHERE kb_id = :kb AND path = :path AND state = 'done' AND content_hash IS NOT NULL
  AND file_id IS NOT NULL AND size = :size AND mtime_ns != :mtime_ns AND {_OURS}"""

# Before a changed row forgets its upload, its entry is remembered as superseded (the same
# rows as _REQUEUE_CHANGED, read first).
_SUPERSEDE = f"""
INSERT INTO superseded (kb_id, entry_id, job_id, filename, s3_key, superseded_at)
SELECT kb_id, file_id, id, filename, s3_key, :now FROM jobs
WHERE kb_id = :kb AND path = :path AND state != 'running' AND file_id IS NOT NULL
  AND (size != :size OR mtime_ns != :mtime_ns OR state = 'skipped') AND {_OURS}
ON CONFLICT (kb_id, entry_id) DO NOTHING"""

_MARK_SKIPPED = f"""
UPDATE jobs SET size = :size, mtime_ns = :mtime_ns, state = 'skipped', last_error = :skip,
       error_kind = 'skipped'
WHERE kb_id = :kb AND path = :path AND state IN ('pending', 'failed', 'skipped') AND {_OURS}"""

_MAKE_SHARED = "UPDATE jobs SET shared = 1 WHERE kb_id = :kb AND path = :path AND NOT shared"

FOREIGN_CHUNK = 500  # paths per "queued by another host?" lookup (bound variables)
# Rows per transaction of an enqueue while other writers are about: a millisecond or two of
# the write lock, the longest a run beside the walk waits for each of its claims and outcomes.
CROWDED_ROWS = 100


JOB_COLUMNS = (
    "id, kb_id, path, relpath, size, mtime_ns, attempts, step, s3_key, unknown_since, "
    "filename, started_at, file_id, tags, parser, display_name, content_hash, register_due, "
    "tags_applied"
)

# The rows a run may take: its host's, shared ones, those of no recorded host, or any when
# the run says every host sees the same paths.
MAY_READ = "(shared OR host IN ('', :host) OR :any_host)"

CLAIM = f"""
UPDATE jobs SET state = 'running', lease_owner = :owner, lease_expires = :expires,
       attempts = attempts + 1, started_at = :now
WHERE id IN (
    SELECT id FROM jobs
    WHERE state = 'pending' AND next_attempt_at <= :now AND (:kb IS NULL OR kb_id = :kb)
      AND {MAY_READ}
    ORDER BY next_attempt_at, id LIMIT :limit
)
RETURNING {JOB_COLUMNS}"""


_DONE = """
UPDATE jobs SET state = 'done', step = 'registered', file_id = :file_id, s3_key = :s3_key,
       content_hash = :content_hash,
       filename = :filename, finished_at = :ended, duration = :ended - started_at,
       lease_owner = NULL, lease_expires = NULL, last_error = NULL, error_kind = NULL,
       unknown_since = NULL, size = :size, mtime_ns = :mtime_ns, tags_applied = :applied
WHERE id = :id AND lease_owner = :owner"""

_RETRY = """
UPDATE jobs SET state = 'pending', next_attempt_at = :next, last_error = :error,
       error_kind = :kind, step = :step, s3_key = :s3_key, filename = :filename,
       unknown_since = :unknown, lease_owner = NULL, content_hash = :content_hash,
       lease_expires = NULL, size = :size, mtime_ns = :mtime_ns
WHERE id = :id AND lease_owner = :owner"""

_FAILED = """
UPDATE jobs SET state = 'failed', last_error = :error, error_kind = :kind, finished_at = :ended,
       duration = :ended - started_at, step = :step, s3_key = :s3_key, filename = :filename,
       unknown_since = :unknown, lease_owner = NULL, content_hash = :content_hash,
       lease_expires = NULL, size = :size, mtime_ns = :mtime_ns
WHERE id = :id AND lease_owner = :owner"""

_RELEASED = """
UPDATE jobs SET state = 'pending', attempts = attempts - 1, step = :step, s3_key = :s3_key,
       filename = :filename, unknown_since = :unknown, content_hash = :content_hash,
       next_attempt_at = :next,
       lease_owner = NULL, lease_expires = NULL, size = :size, mtime_ns = :mtime_ns
WHERE id = :id AND lease_owner = :owner"""

_BEGIN_REGISTER = """
UPDATE jobs SET step = 'uploaded', s3_key = :s3_key, filename = :filename, size = :size,
       mtime_ns = :mtime_ns, unknown_since = :since, register_due = :due
WHERE id = :id AND state = 'running' AND lease_owner = :owner AND lease_expires > :now
RETURNING id"""

_UPLOADED = """
UPDATE jobs SET step = 'uploaded', s3_key = :s3_key, filename = :filename, size = :size,
       mtime_ns = :mtime_ns, content_hash = :content_hash
WHERE id = :id AND lease_owner = :owner"""

_SKIPPED = """
UPDATE jobs SET state = 'skipped', last_error = :error, error_kind = :kind, finished_at = :ended,
       duration = :ended - started_at, step = NULL, s3_key = NULL, unknown_since = NULL,
       content_hash = :content_hash, lease_owner = NULL, lease_expires = NULL, size = :size,
       mtime_ns = :mtime_ns
WHERE id = :id AND lease_owner = :owner"""

# One statement per outcome kind (a kind without one fails at import, not mid-run).
_STATEMENTS = {
    OutcomeKind.DONE: _DONE,
    OutcomeKind.RETRY: _RETRY,
    OutcomeKind.FAILED: _FAILED,
    OutcomeKind.RELEASED: _RELEASED,
    OutcomeKind.UPLOADED: _UPLOADED,
    OutcomeKind.SKIPPED: _SKIPPED,
}
assert set(_STATEMENTS) == set(OutcomeKind), "every outcome kind needs its statement"

# A done outcome that replaces the job's entry by another: the old one is remembered as
# superseded (read before _DONE writes the new one).
_SUPERSEDE_AT_DONE = """
INSERT INTO superseded (kb_id, entry_id, job_id, filename, s3_key, superseded_at)
SELECT kb_id, :supersedes, id, filename, s3_key, :ended FROM jobs
WHERE id = :id AND lease_owner = :owner
ON CONFLICT (kb_id, entry_id) DO NOTHING"""

# Only an outcome that will be written is logged (read before the outcome's statement clears
# the lease): a run that lost its row records no attempt that never applied.
_ATTEMPT = """
INSERT INTO attempts (job_id, run_id, attempt, started_at, ended_at, outcome, step,
                      error_kind, error)
SELECT :id, :run_id, :attempt, :started, :ended, :outcome, :step, :kind, :error
WHERE EXISTS (SELECT 1 FROM jobs WHERE id = :id AND lease_owner = :owner)"""


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
        "content_hash": j.content_hash,
        "supersedes": o.supersedes,
        # what a done entry carries now: the tags its register or update-metadata sent
        "applied": j.tags if j.tags is not None else EMPTY_TAGS,
    }


_LOST_ATTEMPTS = """
INSERT INTO attempts (job_id, attempt, started_at, ended_at, outcome, step, error_kind, error)
SELECT id, attempts, COALESCE(started_at, :now), :now, 'lost', step, 'lost',
       'the process running it died or its lease expired'
FROM jobs WHERE state = 'running' AND (lease_expires < :now
      OR lease_owner IN (SELECT value FROM json_each(:owners)))"""

# A dead attempt registered nothing unless `begin_register` committed its doubt first, which
# the row keeps (the rule for doubt, attempt.py).
_RECLAIM = """
UPDATE jobs SET state = 'pending', attempts = MAX(attempts - 1, 0), lease_owner = NULL,
       lease_expires = NULL
WHERE state = 'running' AND (lease_expires < :now
      OR lease_owner IN (SELECT value FROM json_each(:owners)))"""


def _named(r: ScanRow, kb_id: str, now: float, host: str, shared: int) -> dict[str, Any]:
    """A queued path's parameters, by name, for the statements that compare it with its row."""
    return {
        "host": host,
        "shared": shared,
        "kb": kb_id,
        "path": r.path,
        "relpath": r.relpath,
        "size": r.size,
        "mtime_ns": r.mtime_ns,
        "skip": r.skip,
        "now": now,
        "tags": r.tags,
        "parser": r.parser,
        "display_name": r.display_name,
    }


def _new(r: ScanRow, kb_id: str, now: float, host: str, shared: int) -> tuple[Any, ...]:
    """A new path's row, in _INSERT's order: pending, or skipped with its reason."""
    state, kind = ("pending", None) if r.skip is None else ("skipped", "skipped")
    return (
        kb_id,
        r.path,
        r.relpath,
        r.size,
        r.mtime_ns,
        state,
        r.skip,
        kind,
        now,
        host,
        shared,
        r.tags,
        r.parser,
        r.display_name,
    )


def _write_rows(
    conn: sqlite3.Connection,
    kb_id: str,
    rows: Sequence[ScanRow],
    now: float,
    host: str,
    shared: int,
) -> EnqueueCounts:
    """One part of a batch into the queue, in the database thread, inside its transaction.
    A path not queued yet needs its insert only; the five statements that compare a queued
    row with its file run for the queued ones, which a lookup finds. Where the part's first
    path is not queued (a first enqueue), every path is inserted first (ON CONFLICT DO
    NOTHING) and looked up only if some were not new: a lookup of every path first was a fifth
    of the database thread's time in a first enqueue of a million files. Where it is (a
    re-enqueue), the lookup comes first, as an insert attempt of each queued path would cost
    more than the one probe. Either order writes the same rows."""
    readable = [r for r in rows if r.skip is None]
    skipped = [r for r in rows if r.skip is not None]
    counts = EnqueueCounts(scanned=len(rows), skipped=len(skipped))
    paths = [r.path for r in rows]
    # the rows this transaction inserts get ids above it (INTEGER PRIMARY KEY: max + 1)
    before = conn.execute("SELECT COALESCE(MAX(id), 0) FROM jobs").fetchone()[0]
    queued = _queued(conn, kb_id, host, paths[:1], before)
    if queued:
        queued = _queued(conn, kb_id, host, paths, before)
    fresh = [r for r in readable if r.path not in queued]
    counts.new = _insert_new(conn, kb_id, fresh, now, host, shared) if fresh else 0
    fresh_skipped = [_new(r, kb_id, now, host, shared) for r in skipped if r.path not in queued]
    inserted_skipped = conn.executemany(_INSERT, fresh_skipped).rowcount if skipped else 0
    if not queued and (counts.new < len(fresh) or inserted_skipped < len(fresh_skipped)):
        queued = _queued(conn, kb_id, host, paths, before)
    known = [_named(r, kb_id, now, host, shared) for r in readable if r.path in queued]
    known_skipped = [_named(r, kb_id, now, host, shared) for r in skipped if r.path in queued]
    if known or known_skipped:
        if shared:
            conn.executemany(_MAKE_SHARED, known + known_skipped)
        if not shared:
            counts.foreign = sum(queued[path] for path in {p["path"] for p in known})
        counts.changed = conn.executemany(_RECHECK, known).rowcount
        conn.executemany(_SUPERSEDE, known)
        counts.changed += conn.executemany(_REQUEUE_CHANGED, known).rowcount
        counts.relabel = conn.executemany(_RELABEL, known).rowcount
        conn.executemany(_RETAG, known + known_skipped)
        conn.executemany(_MARK_SKIPPED, known_skipped)
    counts.unchanged = len(readable) - counts.new - counts.changed - counts.foreign
    return counts


def _insert_new(
    conn: sqlite3.Connection,
    kb_id: str,
    rows: list[ScanRow],
    now: float,
    host: str,
    shared: int,
) -> int:
    """The pending rows of paths not queued yet; how many were inserted."""
    if all(r.tags is None and r.parser is None and r.display_name is None for r in rows):
        inserted = 0
        for start in range(0, len(rows), PLAIN_ROWS):
            part = rows[start : start + PLAIN_ROWS]
            params: list[Any] = [kb_id, now, host, shared]
            for r in part:
                # the same BLOB: sqlite3 binds a bytes value only after looking for an adapter
                # (0.8 µs, under the GIL), a bytearray at once
                params += (bytearray(r.path), r.relpath, r.size, r.mtime_ns)
            inserted += conn.execute(_insert_plain(len(part)), params).rowcount
        return inserted
    asked = [_new(r, kb_id, now, host, shared) for r in rows]
    return conn.executemany(_INSERT, asked).rowcount


def _queued(
    conn: sqlite3.Connection, kb_id: str, host: str, paths: list[bytes], before: int
) -> dict[bytes, bool]:
    """Which of these paths the knowledge base's queue held (any host's) before this
    transaction's inserts (rows of ids up to `before`), each with whether another host queued
    it, not shared (its file, not ours): one lookup per FOREIGN_CHUNK paths answers both."""
    found: dict[bytes, bool] = {}
    for start in range(0, len(paths), FOREIGN_CHUNK):
        chunk = paths[start : start + FOREIGN_CHUNK]
        rows = conn.execute(
            "SELECT path, NOT shared AND host NOT IN ('', ?) FROM jobs"
            f" WHERE kb_id = ? AND path IN ({','.join('?' * len(chunk))}) AND id <= ?",
            [host, kb_id, *chunk, before],
        )
        found.update((path, bool(foreign)) for path, foreign in rows)
    return found


class JobsMixin(SqliteBase):
    """Jobs, runs and attempts."""

    async def enqueue_batch(self, kb_id: str, rows: Sequence[ScanRow]) -> EnqueueCounts:
        """Insert new files and re-queue changed ones; every statement is a lookup on the
        (kb_id, path) index, so a batch costs the same at the millionth file as at the first.
        Each transaction is one hop to the database thread, after the other writers' (turns.py);
        while others write (a run beside the walk), in parts of CROWDED_ROWS, the longest a
        run's claim or outcome then waits."""
        now = time.time()
        host, shared = self.scope.host, int(self.scope.shared)
        counts = EnqueueCounts()
        start = 0
        while start < len(rows):
            crowded = await self._engine.wait_for_writers()
            part = rows[start : start + (CROWDED_ROWS if crowded else len(rows))]
            write = functools.partial(
                _write_rows, kb_id=kb_id, rows=part, now=now, host=host, shared=shared
            )
            counts.add(await self._engine.atomically(write))
            start += len(part)
        return counts

    def _reads(self) -> dict[str, Any]:
        """The parameters of MAY_READ."""
        return {"host": self.scope.host, "any_host": int(self.scope.shared)}

    async def claim(
        self,
        owner: str,
        limit: int,
        lease_seconds: float,
        kb_id: str | None = None,
    ) -> list[Job]:
        """Mark up to `limit` due rows `running` under our lease, in one statement."""
        now = time.time()
        params = {
            "owner": owner,
            "expires": now + lease_seconds,
            "now": now,
            "kb": kb_id,
            **self._reads(),
        }
        params["limit"] = limit
        rows = await self._engine.atomically(lambda conn: conn.execute(CLAIM, params).fetchall())
        jobs = [Job(*row) for row in rows]
        jobs.sort(key=lambda j: j.id)
        return jobs

    async def next_due(self, kb_id: str | None = None) -> float | None:
        """When the earliest pending row becomes claimable (None: no pending row at all)."""
        return await self._fetchval(
            "SELECT MIN(next_attempt_at) FROM jobs WHERE state = 'pending'"
            f" AND (:kb IS NULL OR kb_id = :kb) AND {MAY_READ}",
            {"kb": kb_id, **self._reads()},
        )

    async def record_outcomes(self, owner: str, outcomes: Sequence[Outcome]) -> None:
        """Write a batch of results in one transaction; a row is only written by its lease owner."""
        by_kind: dict[OutcomeKind, list[dict[str, Any]]] = {}
        attempts = []
        for o in outcomes:
            params = _outcome_params(o, owner)
            by_kind.setdefault(OutcomeKind(o.outcome), []).append(params)
            if o.outcome != OutcomeKind.UPLOADED:
                attempts.append(params)
        superseding = [p for p in by_kind.get(OutcomeKind.DONE, []) if p["supersedes"]]

        def write(conn: sqlite3.Connection) -> None:
            if attempts:
                conn.executemany(_ATTEMPT, attempts)
            if superseding:
                conn.executemany(_SUPERSEDE_AT_DONE, superseding)
            for kind, batch in by_kind.items():
                conn.executemany(_STATEMENTS[kind], batch)

        await self._engine.atomically(write)

    async def uploaded_as(self, kb_id: str, content_hash: str, job_id: int) -> str | None:
        return await self._fetchval(
            "SELECT relpath FROM jobs INDEXED BY jobs_content WHERE kb_id = ?"
            " AND content_hash = ? AND state = 'done' AND id != ? LIMIT 1",
            (kb_id, content_hash, job_id),
        )

    async def begin_register(
        self, owner: str, jobs: Sequence[Job], since: float, due: float | None = None
    ) -> set[int]:
        now = time.time()
        batch = [
            {
                "id": j.id,
                "owner": owner,
                "now": now,
                "since": since,
                "due": due,
                "s3_key": j.s3_key,
                "filename": j.filename,
                "size": j.size,
                "mtime_ns": j.mtime_ns,
            }
            for j in jobs
        ]

        def write(conn: sqlite3.Connection) -> set[int]:
            return {r[0] for p in batch for r in conn.execute(_BEGIN_REGISTER, p)}

        return await self._engine.atomically(write)

    async def record_superseded(self, owner: str, job_id: int, entry_id: str) -> None:
        params = {"id": job_id, "owner": owner, "supersedes": entry_id, "ended": time.time()}
        async with self.transaction():
            await self._conn.execute(_SUPERSEDE_AT_DONE, params)

    async def renew_leases(self, owner: str, lease_seconds: float) -> list[int]:
        """Extend our leases; the ids returned are the rows still ours (a row missing from it was
        reclaimed by another run while we were stalled)."""
        async with self.transaction():
            rows = await self._conn.execute_fetchall(
                "UPDATE jobs SET lease_expires = :expires WHERE state = 'running'"
                " AND lease_owner = :owner RETURNING id",
                {"expires": time.time() + lease_seconds, "owner": owner},
            )
        return [r[0] for r in rows]

    async def lease_owners(self) -> list[LeaseOwner]:
        """Owners of running rows, with their earliest lease expiry."""
        rows = await self._conn.execute_fetchall(
            "SELECT lease_owner, MIN(lease_expires) FROM jobs WHERE state = 'running'"
            " GROUP BY lease_owner"
        )
        return [LeaseOwner(owner or "", expires or 0.0) for owner, expires in rows]

    async def reclaim(self, dead_owners: Iterable[str]) -> int:
        """Give back rows of dead or expired owners; whether they registered is now unknown."""
        params = {"owners": json.dumps(list(dead_owners)), "now": time.time()}
        async with self.transaction():
            await self._conn.execute(_LOST_ATTEMPTS, params)
            cur = await self._conn.execute(_RECLAIM, params)
        return cur.rowcount

    async def retry_failed(
        self,
        kb_id: str | None,
        kinds: Sequence[str],
        match: Callable[[str], bool] | None,
    ) -> int:
        """Failed rows back to pending with a clean slate; the attempts table keeps their past."""
        await self._conn.create_function(
            "uploader_match", 1, match or (lambda _: True), deterministic=True
        )
        kind_filter = ""
        params: list[Any] = [kb_id, kb_id]
        if kinds:
            kind_filter = f" AND error_kind IN ({','.join('?' * len(kinds))})"
            params.extend(kinds)
        async with self.transaction():
            cur = await self._conn.execute(
                f"UPDATE jobs SET {RETRY_TO_PENDING}"
                " WHERE state = 'failed' AND (? IS NULL OR kb_id = ?)"
                f"{kind_filter} AND uploader_match(relpath)",
                params,
            )
        return cur.rowcount

    async def kbs_with_work(self, kb_id: str | None) -> list[str]:
        """Knowledge bases that have rows left to upload: the run checks each before claiming."""
        rows = await self._conn.execute_fetchall(
            "SELECT DISTINCT kb_id FROM jobs WHERE state IN ('pending', 'running')"
            f" AND (:kb IS NULL OR kb_id = :kb) AND {MAY_READ}",
            {"kb": kb_id, **self._reads()},
        )
        return [r[0] for r in rows]

    async def pending_totals(self, kb_id: str | None) -> tuple[int, int]:
        """Files and bytes still to upload (pending or running): the progress bar's total."""
        rows = await self._conn.execute_fetchall(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM jobs"
            " WHERE state IN ('pending', 'running') AND (:kb IS NULL OR kb_id = :kb)"
            f" AND {MAY_READ}",
            {"kb": kb_id, **self._reads()},
        )
        count, size = list(rows)[0]
        return count, size

    async def failed_count(self, kb_id: str | None) -> int:
        return await self._fetchval(
            "SELECT COUNT(*) FROM jobs WHERE state = 'failed' AND (:kb IS NULL OR kb_id = :kb)",
            {"kb": kb_id},
        )

    async def forget_jobs(
        self, kb_id: str, match: Callable[[str], bool] | None, apply: bool
    ) -> dict[str, int]:
        await self._conn.create_function(
            "uploader_match", 1, match or (lambda _: True), deterministic=True
        )
        where = "kb_id = ? AND uploader_match(relpath)"
        async with self.transaction():
            rows = await self._conn.execute_fetchall(
                f"SELECT state, COUNT(*) FROM jobs WHERE {where} GROUP BY state", (kb_id,)
            )
            if apply:  # attempts go with their jobs (ON DELETE CASCADE)
                await self._conn.execute(
                    f"DELETE FROM jobs WHERE {where} AND state != 'running'", (kb_id,)
                )
        return {state: count for state, count in rows}

    async def forgettable(
        self, kb_id: str, match: Callable[[str], bool] | None, limit: int | None
    ) -> list[tuple[str, str, int]]:
        await self._conn.create_function(
            "uploader_match", 1, match or (lambda _: True), deterministic=True
        )
        rows = await self._conn.execute_fetchall(
            "SELECT relpath, state, size FROM jobs WHERE kb_id = ? AND uploader_match(relpath)"
            " AND state != 'running' ORDER BY relpath LIMIT ?",
            (kb_id, -1 if limit is None else limit),
        )
        return [(relpath, state, size) for relpath, state, size in rows]
