"""The PostgreSQL queue: several hosts, one queue, with the claims, leases and rescue of the
PostgreSQL job queues (River, Oban, Solid Queue): `FOR UPDATE SKIP LOCKED` claims, leases by
the database's clock, rows of an expired lease taken back by any host.

Why asyncpg: the claim + complete micro-benchmark (`python -m tests.bench.pg_micro`, see
docs/benchmark.md) runs it at about twice psycopg 3's rate (binary protocol, statements
prepared once per connection).

Clocks: leases and due times are the database's `now()`; times read and written are
translated by the engine (uploader/store/postgres.py).

Round trips are what a distant server costs (20 ms each across a WAN), so every hot
operation is one statement, batches are passed as arrays (`unnest`), and the connection
pool lets the pool's claims, its writer and its lease keeper overlap.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from ..model import (
    EnqueueCounts,
    Job,
    LeaseOwner,
    Outcome,
    OutcomeKind,
    RemoteRetryCandidate,
    RequeueItem,
    ScanRow,
    ServiceFacts,
)
from ..store.postgres import NOW, PgEngine, status_count
from ..store.reach import DEFAULT_TIMEOUT
from ..tags import EMPTY as EMPTY_TAGS
from .base import Queue, QueueError
from .states import BACK_TO_PENDING, FORGET_CHANGED, FORGET_UPLOAD, RETRY_TO_PENDING

log = logging.getLogger("uploader.queue")

ANALYZE_AFTER = 1000

# --- statements ------------------------------------------------------------------------------

_ENQUEUE_ROWS = (
    "unnest($2::bytea[], $3::text[], $4::int8[], $5::int8[], $6::text[], $9::text[],"
    " $10::text[], $11::text[]) AS r(path, relpath, size, mtime_ns, skip, tags, parser,"
    " display_name)"
)

# The rows an enqueue may change ($7 host, $8 shared): its host's, shared ones, those of no
# recorded host, or any when its folder is shared.
_OURS = "(j.shared OR j.host IN ('', $7) OR $8)"

# What an enqueue asks of the entry (issue 14): labels and metadata replace the row's when
# asked (uploader.tags), the parser and the name shown when given.
_RETAGGED = """tags = COALESCE(r.tags, j.tags), parser = COALESCE(r.parser, j.parser),
       display_name = COALESCE(r.display_name, j.display_name)"""

_REQUEUE_CHANGED = f"""
UPDATE jobs AS j SET size = r.size, mtime_ns = r.mtime_ns, relpath = r.relpath,
       enqueued_at = {NOW}, {FORGET_CHANGED}, {_RETAGGED}
FROM {_ENQUEUE_ROWS}
WHERE j.kb_id = $1 AND j.path = r.path AND j.state <> 'running'
  AND (j.size <> r.size OR j.mtime_ns <> r.mtime_ns OR j.state IN ('skipped', 'removed'))
  AND {_OURS}"""

# An unchanged row that is not uploaded yet takes what is asked now, for its register.
_RETAG = f"""
UPDATE jobs AS j SET {_RETAGGED}
FROM {_ENQUEUE_ROWS}
WHERE j.kb_id = $1 AND j.path = r.path AND j.state NOT IN ('running', 'done') AND {_OURS}
  AND (j.tags IS DISTINCT FROM COALESCE(r.tags, j.tags)
       OR j.parser IS DISTINCT FROM COALESCE(r.parser, j.parser)
       OR j.display_name IS DISTINCT FROM COALESCE(r.display_name, j.display_name))"""

# An uploaded row whose entry does not carry the labels and metadata asked now goes back to
# pending at step 'metadata': its next attempt sends update-metadata only.
_RELABEL = f"""
UPDATE jobs AS j SET {_RETAGGED}, state = 'pending', step = 'metadata', attempts = 0,
       next_attempt_at = 0
FROM {_ENQUEUE_ROWS}
WHERE j.kb_id = $1 AND j.path = r.path AND j.state = 'done' AND r.tags IS NOT NULL
  AND j.tags_applied IS DISTINCT FROM r.tags AND {_OURS}"""


# An uploaded row whose file has the same size and another mtime is rechecked by its hash
# (step 'recheck'), not forgotten; before _SUPERSEDE and _REQUEUE_CHANGED.
_RECHECK = f"""
UPDATE jobs AS j SET mtime_ns = r.mtime_ns, relpath = r.relpath, enqueued_at = {NOW},
       state = 'pending', attempts = 0, next_attempt_at = 0, step = 'recheck',
       last_error = NULL, error_kind = NULL, started_at = NULL, finished_at = NULL,
       duration = NULL, {_RETAGGED}
FROM {_ENQUEUE_ROWS}
WHERE j.kb_id = $1 AND j.path = r.path AND j.state = 'done' AND j.content_hash IS NOT NULL
  AND j.file_id IS NOT NULL AND j.size = r.size AND j.mtime_ns <> r.mtime_ns AND {_OURS}"""

_SUPERSEDE_AT_DONE = """
INSERT INTO superseded (kb_id, entry_id, job_id, filename, s3_key, superseded_at)
SELECT j.kb_id, s.entry_id, j.id, j.filename, j.s3_key, s.ended
FROM jobs AS j, unnest($2::int8[], $3::text[], $4::float8[]) AS s(id, entry_id, ended)
WHERE j.id = s.id AND j.lease_owner = $1
ON CONFLICT (kb_id, entry_id) DO NOTHING"""

# Before a changed row forgets its upload, its entry is remembered as superseded.
_SUPERSEDE = f"""
INSERT INTO superseded (kb_id, entry_id, job_id, filename, s3_key, superseded_at)
SELECT j.kb_id, j.file_id, j.id, j.filename, j.s3_key, {NOW}
FROM jobs AS j, {_ENQUEUE_ROWS}
WHERE j.kb_id = $1 AND j.path = r.path AND j.state <> 'running' AND j.file_id IS NOT NULL
  AND (j.size <> r.size OR j.mtime_ns <> r.mtime_ns OR j.state = 'skipped') AND {_OURS}
ON CONFLICT (kb_id, entry_id) DO NOTHING"""

_MARK_SKIPPED = f"""
UPDATE jobs AS j SET size = r.size, mtime_ns = r.mtime_ns, state = 'skipped',
       last_error = r.skip, error_kind = 'skipped'
FROM {_ENQUEUE_ROWS}
WHERE j.kb_id = $1 AND j.path = r.path AND j.state IN ('pending', 'failed', 'skipped')
  AND {_OURS}"""

_MAKE_SHARED = """
UPDATE jobs AS j SET shared = true
FROM unnest($2::bytea[]) AS r(path)
WHERE j.kb_id = $1 AND j.path = r.path AND NOT j.shared"""

_FOREIGN = """
SELECT COUNT(*) FROM jobs AS j JOIN unnest($2::bytea[]) AS r(path) ON j.path = r.path
WHERE j.kb_id = $1 AND NOT j.shared AND j.host NOT IN ('', $3)"""

_INSERT = f"""
INSERT INTO jobs (kb_id, path, relpath, size, mtime_ns, state, last_error, error_kind,
                  enqueued_at, host, shared, tags, parser, display_name)
SELECT $1, r.path, r.relpath, r.size, r.mtime_ns,
       CASE WHEN r.skip IS NULL THEN 'pending' ELSE 'skipped' END, r.skip,
       CASE WHEN r.skip IS NULL THEN NULL ELSE 'skipped' END, {NOW}, $7, $8, r.tags,
       r.parser, r.display_name
FROM {_ENQUEUE_ROWS}
ON CONFLICT (kb_id, path) DO NOTHING"""

_JOB_COLUMNS = (
    "id, kb_id, path, relpath, size, mtime_ns, attempts, step, s3_key, unknown_since, "
    "filename, started_at, file_id, tags, parser, display_name, content_hash, register_due, "
    "tags_applied"
)

# The rows a run may take ($5 host, $6 any host): its host's, shared ones, those of no
# recorded host, or any when the run says every host sees the same paths.
_MAY_READ = "(shared OR host IN ('', $5) OR $6)"

_MAY_READ_2 = _MAY_READ.replace("$5", "$2").replace("$6", "$3")  # after one $1

_CLAIM = f"""
UPDATE jobs SET state = 'running', lease_owner = $1, lease_expires = {NOW} + $2,
       attempts = attempts + 1, started_at = {NOW}
WHERE id = ANY(ARRAY(
    SELECT id FROM jobs
    WHERE state = 'pending' AND next_attempt_at <= {NOW} AND ($3::text IS NULL OR kb_id = $3)
      AND {_MAY_READ}
    ORDER BY next_attempt_at, id LIMIT $4
    FOR UPDATE SKIP LOCKED
))
RETURNING {_JOB_COLUMNS}"""

# Every outcome kind in one statement (one round trip per batch): the CASEs say per column
# what each kind writes, as the SQLite backend's one statement per kind does; an outcome is
# written only where `owner` still holds the lease, and every kind but `uploaded` appends its
# attempt. A job appears once per statement (`_rounds`): two changes of one row in one
# statement would be applied in no defined order. The batch comes as one array of rows of
# migration 0016's type: sent as 18 arrays of one column each, asyncpg's check of every
# element for being a nested array was a quarter of the client's CPU per job (case 9).
_OUTCOMES = """
WITH o AS (
    SELECT * FROM unnest($2::job_outcome[])
), written AS (
    UPDATE jobs AS j SET
        state = CASE o.outcome WHEN 'done' THEN 'done' WHEN 'failed' THEN 'failed'
                WHEN 'skipped' THEN 'skipped' WHEN 'uploaded' THEN j.state ELSE 'pending' END,
        step = CASE o.outcome WHEN 'done' THEN 'registered' WHEN 'uploaded' THEN 'uploaded'
               WHEN 'skipped' THEN NULL ELSE o.step END,
        attempts = CASE o.outcome WHEN 'released' THEN j.attempts - 1 ELSE j.attempts END,
        file_id = CASE o.outcome WHEN 'done' THEN o.file_id ELSE j.file_id END,
        tags_applied = CASE o.outcome WHEN 'done' THEN o.applied ELSE j.tags_applied END,
        s3_key = CASE o.outcome WHEN 'skipped' THEN NULL ELSE o.s3_key END,
        filename = o.filename, size = o.size, mtime_ns = o.mtime_ns,
        content_hash = o.content_hash,
        last_error = CASE o.outcome WHEN 'done' THEN NULL WHEN 'retry' THEN o.error
                     WHEN 'failed' THEN o.error WHEN 'skipped' THEN o.error
                     ELSE j.last_error END,
        error_kind = CASE o.outcome WHEN 'done' THEN NULL WHEN 'retry' THEN o.error_kind
                     WHEN 'failed' THEN o.error_kind WHEN 'skipped' THEN o.error_kind
                     ELSE j.error_kind END,
        unknown_since = CASE o.outcome WHEN 'done' THEN NULL WHEN 'skipped' THEN NULL
                        WHEN 'uploaded' THEN j.unknown_since ELSE o.unknown END,
        next_attempt_at = CASE WHEN o.outcome IN ('retry', 'released') THEN o.next
                          ELSE j.next_attempt_at END,
        finished_at = CASE WHEN o.outcome IN ('done', 'failed', 'skipped') THEN o.ended
                      ELSE j.finished_at END,
        duration = CASE WHEN o.outcome IN ('done', 'failed', 'skipped') THEN o.ended - j.started_at
                   ELSE j.duration END,
        lease_owner = CASE o.outcome WHEN 'uploaded' THEN j.lease_owner END,
        lease_expires = CASE o.outcome WHEN 'uploaded' THEN j.lease_expires END
    FROM o
    WHERE j.id = o.id AND j.lease_owner = $1
    RETURNING j.id
), logged AS (
    INSERT INTO attempts (job_id, run_id, attempt, started_at, ended_at, outcome, step,
                          error_kind, error)
    SELECT o.id, o.run_id, o.attempt, o.started, o.ended, o.outcome, o.step, o.error_kind,
           o.error
    FROM o JOIN written ON written.id = o.id  -- a run that lost the row logs nothing
    WHERE o.outcome <> 'uploaded'
)
SELECT count(*) FROM written"""

assert all(f"'{kind.value}'" in _OUTCOMES for kind in OutcomeKind), "a kind without its CASE"

# Rows of dead or expired owners, locked so that an owner writing its outcome right now
# keeps its row (SKIP LOCKED), go back to pending with the doubt `begin_register` committed
# (the rule for doubt, attempt.py), each with a 'lost' attempt read before the update.
_RECLAIM = f"""
WITH gone AS (
    SELECT id FROM jobs
    WHERE state = 'running' AND (lease_expires < {NOW} OR lease_owner = ANY($1::text[]))
    FOR UPDATE SKIP LOCKED
), lost AS (
    INSERT INTO attempts (job_id, attempt, started_at, ended_at, outcome, step, error_kind,
                          error)
    SELECT j.id, j.attempts, COALESCE(j.started_at, {NOW}), {NOW}, 'lost', j.step, 'lost',
           'the process running it died or its lease expired'
    FROM jobs AS j JOIN gone USING (id)
), back AS (
    UPDATE jobs AS j SET state = 'pending', attempts = GREATEST(j.attempts - 1, 0),
           lease_owner = NULL, lease_expires = NULL
    FROM gone WHERE j.id = gone.id
    RETURNING 1
)
SELECT count(*) FROM back"""

# The write-ahead and fence of a register (Queue.begin_register), by the database's clock.
_BEGIN_REGISTER = f"""
UPDATE jobs AS j SET step = 'uploaded', s3_key = w.s3_key, filename = w.filename,
       size = w.size, mtime_ns = w.mtime_ns, unknown_since = $2, register_due = $8
FROM unnest($3::int8[], $4::text[], $5::text[], $6::int8[], $7::int8[])
     AS w(id, s3_key, filename, size, mtime_ns)
WHERE j.id = w.id AND j.state = 'running' AND j.lease_owner = $1 AND j.lease_expires > {NOW}
RETURNING j.id"""


_REQUEUE_REMOTE = f"""
UPDATE jobs AS j SET {BACK_TO_PENDING}, {FORGET_UPLOAD}
FROM unnest($1::int8[], $2::text[]) AS r(id, file_id)
WHERE j.id = r.id AND j.state = 'done' AND j.file_id IS NOT DISTINCT FROM r.file_id"""


_STORE_FACTS = """
INSERT INTO service_facts (base_url, kb_id, learned_at, source, batch_register, facts)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (base_url, kb_id) DO UPDATE SET learned_at = excluded.learned_at,
    source = excluded.source,
    facts = CASE WHEN excluded.facts = '{}' THEN service_facts.facts ELSE excluded.facts END,
    batch_register = COALESCE(excluded.batch_register, service_facts.batch_register)"""


def _rounds(outcomes: Sequence[Outcome]) -> list[list[Outcome]]:
    """The batch split so that no job appears twice in one round, each job's outcomes in
    their order (nearly always one round: an attempt's `uploaded` and its end rarely share a
    flush)."""
    rounds: list[list[Outcome]] = []
    seen: dict[int, int] = {}
    for o in outcomes:
        n = seen.get(o.job.id, 0)
        seen[o.job.id] = n + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append(o)
    return rounds


Q = TypeVar("Q", bound=type)


def _reaching(cls: Q) -> Q:
    """Every operation of the queue tried again while the database is out of reach for less
    than --db-timeout (store/reach.py): each is one statement or one transaction, matched by
    state and lease owner, so a second run of one that had committed finds its work done."""
    for name, method in list(vars(cls).items()):
        if name.startswith("_") or name in ("open", "close"):
            continue
        if inspect.iscoroutinefunction(method):
            setattr(cls, name, _reached(method))
    return cls


def _reached(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def reached(self: PgQueue, *args: Any, **kwargs: Any) -> Any:
        return await self.engine.reached(lambda: method(self, *args, **kwargs))

    return reached


@_reaching
class PgQueue(Queue):
    """The queue in one PostgreSQL database, over one `PgEngine` (uploader/store/postgres.py),
    which owns the pool, the transactions, the migrations and the clocks."""

    errors = (QueueError,)  # every driver error is turned into a one-line QueueError

    def __init__(self, engine: PgEngine) -> None:
        self._engine = engine
        self._pool = engine.pool
        self._enqueued = 0  # rows this queue added or re-queued since its last ANALYZE
        self._analyzed = 0  # ... and before it

    @property
    def engine(self) -> PgEngine:
        return self._engine

    @property
    def runs_folder(self) -> Path | None:
        return self._engine.runs_folder

    @classmethod
    async def open(
        cls, target: str, *, create: bool = True, db_timeout: float = DEFAULT_TIMEOUT
    ) -> PgQueue:
        return cls(await PgEngine.open(target, create=create, db_timeout=db_timeout))

    async def close(self) -> None:
        await self._engine.close()

    def _connection(self) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]:
        return self._engine.connection()

    def transaction(self) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]:
        return self._engine.transaction()

    def _to_host(self, t: float | None) -> float | None:
        return self._engine.to_host(t)

    def _to_db(self, t: float | None) -> float | None:
        return self._engine.to_db(t)

    # --- enqueue -------------------------------------------------------------------------

    async def enqueue_batch(self, kb_id: str, rows: Sequence[ScanRow]) -> EnqueueCounts:
        """New rows inserted, changed rows re-queued, in one transaction per batch; every
        statement matches on the (kb_id, path) index."""
        readable = [r for r in rows if r.skip is None]
        skipped = [r for r in rows if r.skip is not None]
        changed = new = foreign = relabel = 0
        host, shared = self.scope.host, self.scope.shared
        async with self.transaction() as conn:
            if shared:
                await conn.execute(_MAKE_SHARED, kb_id, [r.path for r in rows])
            if readable:
                args = _enqueue_args(readable, host, shared)
                if not shared:
                    foreign = await conn.fetchval(_FOREIGN, kb_id, args[0], host)
                touched = status_count(await conn.execute(_RECHECK, kb_id, *args))
                await conn.execute(_SUPERSEDE, kb_id, *args)
                changed = touched + status_count(await conn.execute(_REQUEUE_CHANGED, kb_id, *args))
                relabel = status_count(await conn.execute(_RELABEL, kb_id, *args))
                await conn.execute(_RETAG, kb_id, *args)
                new = status_count(await conn.execute(_INSERT, kb_id, *args))
            if skipped:
                args = _enqueue_args(skipped, host, shared)
                await conn.execute(_RETAG, kb_id, *args)
                await conn.execute(_MARK_SKIPPED, kb_id, *args)
                await conn.execute(_INSERT, kb_id, *args)
        await self._analyze_if_grown(new + changed)
        return EnqueueCounts(
            scanned=len(rows),
            new=new,
            changed=changed,
            unchanged=len(readable) - new - changed - foreign,
            skipped=len(skipped),
            foreign=foreign,
            relabel=relabel,
        )

    async def _analyze_if_grown(self, added: int) -> None:
        """Statistics taken whenever the rows this queue enqueued have doubled: the claim's
        plan depends on them, and autovacuum takes its time. With statistics of an empty table,
        PostgreSQL sorts every pending row for each claim instead of reading the claim index
        in order (30 ms a claim at 20,000 rows instead of well under one)."""
        self._enqueued += added
        if self._enqueued >= max(ANALYZE_AFTER, self._analyzed):
            self._analyzed += self._enqueued
            self._enqueued = 0
            async with self._connection() as conn:
                await conn.execute("ANALYZE jobs")

    def _reads(self) -> tuple[str, bool]:
        """The parameters of _MAY_READ."""
        return self.scope.host, self.scope.shared

    # --- the pool ------------------------------------------------------------------------

    async def claim(
        self, owner: str, limit: int, lease_seconds: float, kb_id: str | None = None
    ) -> list[Job]:
        """One statement: the due rows no other claimer holds, leased by the database's clock."""
        async with self._connection() as conn:
            rows = await conn.fetch(_CLAIM, owner, lease_seconds, kb_id, limit, *self._reads())
        jobs = [
            Job(  # type: ignore[call-arg]
                *r[:9],
                self._to_host(r[9]),
                r[10],
                self._to_host(r[11]) or 0.0,
                *r[12:17],
                self._to_host(r[17]),
                r[18],
            )
            for r in rows
        ]
        jobs.sort(key=lambda j: j.id)
        return jobs

    async def next_due(self, kb_id: str | None = None) -> float | None:
        async with self._connection() as conn:
            due = await conn.fetchval(
                "SELECT MIN(next_attempt_at) FROM jobs WHERE state = 'pending'"
                f" AND ($1::text IS NULL OR kb_id = $1) AND {_MAY_READ_2}",
                kb_id,
                *self._reads(),
            )
        return self._to_host(due) if due else due

    async def record_outcomes(self, owner: str, outcomes: Sequence[Outcome]) -> None:
        """One statement per batch (nearly always): one round trip, atomic by itself."""
        rounds = _rounds(outcomes)
        superseding = [o for o in outcomes if o.outcome == OutcomeKind.DONE and o.supersedes]
        several = len(rounds) > 1 or bool(superseding)
        async with self.transaction() if several else self._connection() as conn:
            if superseding:
                await conn.execute(
                    _SUPERSEDE_AT_DONE,
                    owner,
                    [o.job.id for o in superseding],
                    [o.supersedes for o in superseding],
                    [self._to_db(o.ended_at) for o in superseding],
                )
            for batch in rounds:
                await conn.fetchval(_OUTCOMES, owner, self._outcome_rows(batch))

    def _outcome_rows(self, outcomes: Sequence[Outcome]) -> list[tuple[Any, ...]]:
        """The batch as rows of the type job_outcome (migration 0016), in its fields' order."""
        rows = []
        for o in outcomes:
            j = o.job
            rows.append(
                (
                    j.id,
                    str(o.outcome),
                    o.run_id,
                    j.attempts,
                    self._to_db(j.started_at),
                    self._to_db(o.ended_at),
                    None if j.step is None else str(j.step),
                    None if o.error_kind is None else str(o.error_kind),
                    o.error,
                    o.file_id,
                    o.s3_key if o.s3_key is not None else j.s3_key,
                    o.filename if o.filename is not None else j.filename,
                    self._to_db(o.next_attempt_at),
                    self._to_db(o.unknown_since),
                    j.size,
                    j.mtime_ns,
                    j.tags if j.tags is not None else EMPTY_TAGS,
                    j.content_hash,
                )
            )
        return rows

    async def uploaded_as(self, kb_id: str, content_hash: str, job_id: int) -> str | None:
        async with self._connection() as conn:
            return await conn.fetchval(
                "SELECT relpath FROM jobs WHERE kb_id = $1 AND content_hash = $2"
                " AND state = 'done' AND id <> $3 LIMIT 1",
                kb_id,
                content_hash,
                job_id,
            )

    async def record_superseded(self, owner: str, job_id: int, entry_id: str) -> None:
        async with self._connection() as conn:
            await conn.execute(
                _SUPERSEDE_AT_DONE, owner, [job_id], [entry_id], [self._to_db(time.time())]
            )

    async def begin_register(
        self, owner: str, jobs: Sequence[Job], since: float, due: float | None = None
    ) -> set[int]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                _BEGIN_REGISTER,
                owner,
                self._to_db(since),
                [j.id for j in jobs],
                [j.s3_key for j in jobs],
                [j.filename for j in jobs],
                [j.size for j in jobs],
                [j.mtime_ns for j in jobs],
                self._to_db(due),
            )
        return {r[0] for r in rows}

    async def renew_leases(self, owner: str, lease_seconds: float) -> list[int]:
        """Extend our leases by the database's clock (and measure the clocks again: the
        keeper calls this every third of a lease)."""
        async with self._connection() as conn:
            await self._engine.sync_clock(conn)
            rows = await conn.fetch(
                f"UPDATE jobs SET lease_expires = {NOW} + $2 WHERE state = 'running'"
                " AND lease_owner = $1 RETURNING id",
                owner,
                lease_seconds,
            )
        return [r[0] for r in rows]

    async def lease_owners(self) -> list[LeaseOwner]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT lease_owner, MIN(lease_expires) FROM jobs WHERE state = 'running'"
                " GROUP BY lease_owner"
            )
        return [LeaseOwner(o or "", self._to_host(e) or 0.0) for o, e in rows]

    async def reclaim(self, dead_owners: Iterable[str]) -> int:
        """Rows whose lease expired by the database's clock, or whose owner is known dead,
        back to pending: one statement."""
        async with self._connection() as conn:
            return int(await conn.fetchval(_RECLAIM, list(dead_owners)))

    # --- status, retry-failed, report ----------------------------------------------------

    async def retry_failed(
        self, kb_id: str | None, kinds: Sequence[str], match: Callable[[str], bool] | None
    ) -> int:
        """Failed rows back to pending; with `match`, the candidates are read and locked, the
        pattern applied here, and the chosen ids updated, in one transaction."""
        where = (
            "state = 'failed' AND ($1::text IS NULL OR kb_id = $1)"
            " AND (cardinality($2::text[]) = 0 OR error_kind = ANY($2::text[]))"
        )
        kinds = [str(k) for k in kinds]
        if match is None:
            async with self._connection() as conn:
                status = await conn.execute(
                    f"UPDATE jobs SET {RETRY_TO_PENDING} WHERE {where}", kb_id, kinds
                )
            return status_count(status)
        async with self.transaction() as conn:
            rows = await conn.fetch(
                f"SELECT id, relpath FROM jobs WHERE {where} FOR UPDATE", kb_id, kinds
            )
            ids = [r[0] for r in rows if match(r[1])]
            status = await conn.execute(
                f"UPDATE jobs SET {RETRY_TO_PENDING} WHERE id = ANY($1::int8[])", ids
            )
        return status_count(status)

    async def kbs_with_work(self, kb_id: str | None) -> list[str]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT DISTINCT kb_id FROM jobs WHERE state IN ('pending', 'running')"
                f" AND ($1::text IS NULL OR kb_id = $1) AND {_MAY_READ_2} ORDER BY kb_id",
                kb_id,
                *self._reads(),
            )
        return [r[0] for r in rows]

    async def pending_totals(self, kb_id: str | None) -> tuple[int, int]:
        async with self._connection() as conn:
            count, size = await conn.fetchrow(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM jobs"
                " WHERE state IN ('pending', 'running') AND ($1::text IS NULL OR kb_id = $1)"
                f" AND {_MAY_READ_2}",
                kb_id,
                *self._reads(),
            )
        return count, int(size)

    async def failed_count(self, kb_id: str | None) -> int:
        async with self._connection() as conn:
            return await conn.fetchval(
                "SELECT COUNT(*) FROM jobs WHERE state = 'failed'"
                " AND ($1::text IS NULL OR kb_id = $1)",
                kb_id,
            )

    # --- retry-failed --remote -----------------------------------------------------------

    async def remote_retry_candidates(
        self, kb_id: str | None, match: Callable[[str], bool] | None
    ) -> list[RemoteRetryCandidate]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT id, kb_id, file_id, remote_status, relpath, filename FROM jobs"
                " WHERE remote_status IN ('failed', 'missing') AND state = 'done'"
                " AND ($1::text IS NULL OR kb_id = $1) ORDER BY id",
                kb_id,
            )
        return [
            RemoteRetryCandidate(r[0], r[1], r[2], r[3], r[5])
            for r in rows
            if match is None or match(r[4])
        ]

    async def requeue_remote(self, jobs: Sequence[RequeueItem]) -> int:
        async with self.transaction() as conn:
            gone = [(kb, fid) for _job, kb, fid in jobs if fid is not None]
            if gone:
                await conn.execute(
                    "DELETE FROM remote_files AS r USING unnest($1::text[], $2::text[])"
                    " AS g(kb_id, id) WHERE r.kb_id = g.kb_id AND r.id = g.id",
                    [kb for kb, _ in gone],
                    [fid for _, fid in gone],
                )
            status = await conn.execute(
                _REQUEUE_REMOTE, [j.job_id for j in jobs], [j.file_id for j in jobs]
            )
        return status_count(status)

    # --- what the service was seen to speak ----------------------------------------------

    async def store_service_facts(self, facts: ServiceFacts) -> None:
        async with self._connection() as conn:
            await conn.execute(
                _STORE_FACTS,
                facts.base_url,
                facts.kb_id,
                facts.learned_at,
                facts.source,
                facts.batch_register,
                json.dumps(facts.facts, ensure_ascii=False),
            )

    async def service_facts(self, base_url: str, kb_id: str) -> ServiceFacts | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                "SELECT learned_at, source, batch_register, facts FROM service_facts"
                " WHERE base_url = $1 AND kb_id = $2",
                base_url,
                kb_id,
            )
        if row is None:
            return None
        learned_at, source, batch, facts = row
        return ServiceFacts(base_url, kb_id, learned_at, source, batch, json.loads(facts))

    async def label_ids(self, kb_id: str) -> dict[str, str]:
        async with self._connection() as conn:
            rows = await conn.fetch("SELECT name, id FROM labels WHERE kb_id = $1", kb_id)
        return {name: label_id for name, label_id in rows}

    async def store_labels(self, kb_id: str, labels: Sequence[tuple[str, str]]) -> None:
        by_name = dict(labels)  # one row per name: an upsert may not touch a row twice
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO labels (kb_id, name, id)"
                " SELECT $1, * FROM unnest($2::text[], $3::text[])"
                " ON CONFLICT (kb_id, name) DO UPDATE SET id = excluded.id",
                kb_id,
                list(by_name),
                list(by_name.values()),
            )

    async def forget_jobs(
        self, kb_id: str, match: Callable[[str], bool] | None, apply: bool
    ) -> dict[str, int]:
        """The pattern is applied here to the rows read and locked; the attempts log has no
        foreign key (migration 0004), so a job's attempts are deleted with it explicitly."""
        async with self.transaction() as conn:
            rows = await conn.fetch(
                "SELECT id, relpath, state FROM jobs WHERE kb_id = $1 FOR UPDATE", kb_id
            )
            chosen = [r for r in rows if match is None or match(r[1])]
            counts: dict[str, int] = {}
            for r in chosen:
                counts[r[2]] = counts.get(r[2], 0) + 1
            if apply:
                ids = [r[0] for r in chosen if r[2] != "running"]
                await conn.execute("DELETE FROM attempts WHERE job_id = ANY($1::int8[])", ids)
                await conn.execute("DELETE FROM jobs WHERE id = ANY($1::int8[])", ids)
        return counts

    async def forgettable(
        self, kb_id: str, match: Callable[[str], bool] | None, limit: int | None
    ) -> list[tuple[str, str, int]]:
        """The pattern is applied here, to the rows read in relpath order."""
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT relpath, state, size FROM jobs WHERE kb_id = $1 AND state <> 'running'"
                ' ORDER BY relpath COLLATE "C"',
                kb_id,
            )
        chosen = [(r[0], r[1], r[2]) for r in rows if match is None or match(r[0])]
        return chosen if limit is None else chosen[:limit]


def _enqueue_args(rows: Sequence[ScanRow], host: str, shared: bool) -> list[Any]:
    """$2.. of the enqueue statements: the rows' columns as arrays, $7 host, $8 shared, then
    what the rows ask of their entries."""
    return [
        [r.path for r in rows],
        [r.relpath for r in rows],
        [r.size for r in rows],
        [r.mtime_ns for r in rows],
        [r.skip for r in rows],
        host,
        shared,
        [r.tags for r in rows],
        [r.parser for r in rows],
        [r.display_name for r in rows],
    ]
