"""Case 9: claim + complete on PostgreSQL, and the driver choice behind uploader/queue/postgres.py.

A server of its own (tests/pg_server.py, durability at its defaults: fsync and synchronous
commit on) gets `--jobs` pending rows; they are drained as the pool drains them: claim a batch
(one UPDATE … FOR UPDATE SKIP LOCKED … RETURNING), then one `record_outcomes` statement for
the batch. `asyncpg` runs the real `PgQueue`; `psycopg` (psycopg 3, when installed) runs the
same two statements through an async psycopg connection, so the figures compare drivers, not
SQL. Prints one JSON line per (driver, batch).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import re
import time
from typing import Any

from tests.pg_server import PgServer
from uploader.model import Job, Outcome, OutcomeKind
from uploader.queue import HostScope, Queue, open_queue
from uploader.queue import postgres as pg
from uploader.store.runs import RunsStore
from uploader.store.status import StatusStore

KB = "kb-micro"
OWNER = "bench:0:micro"
HOST = "bench"
FILL = """
INSERT INTO jobs (kb_id, path, relpath, size, mtime_ns, enqueued_at, host)
SELECT $1, convert_to('/bench/f' || g, 'UTF8'), 'f' || g, 1024, 0, 0, $3
FROM generate_series(1, $2) AS g"""


def outcomes(jobs: list[Job], run_id: int) -> list[Outcome]:
    now = time.time()
    return [
        Outcome(
            job=job,
            outcome=OutcomeKind.DONE,
            ended_at=now,
            run_id=run_id,
            file_id=f"file-{job.id}",
            s3_key=f"media/chatbot-file/{job.id}/{job.relpath}",
            filename=job.relpath,
        )
        for job in jobs
    ]


async def fill(q: Queue, jobs: int) -> None:
    """Pending rows made by the server itself (the fill is not what is measured), then the
    statistics enqueue would have taken."""
    async with q.transaction() as conn:
        await conn.execute(FILL, KB, jobs, HOST)
    async with q.transaction() as conn:
        await conn.execute("ANALYZE jobs")


def figures(driver: str, batch: int, done: int, seconds: float, cpu: float) -> dict[str, Any]:
    return {
        "driver": driver,
        "batch": batch,
        "jobs": done,
        "seconds": round(seconds, 3),
        "jobs_per_s": round(done / seconds, 1),
        "cpu_s_per_1000": round(cpu / done * 1000, 4),
    }


def with_server_cpu(result: dict[str, Any], server_cpu: float) -> dict[str, Any]:
    """Add the server's CPU per 1,000 jobs and what client + server CPU allow: the two take
    turns on one connection, so on an idle machine jobs/s <= 1 / (their CPU per job). On a
    busy one wall time says more about the neighbours than about the queue."""
    server = server_cpu / result["jobs"] * 1000
    result["server_cpu_s_per_1000"] = round(server, 4)
    result["cpu_bound_jobs_per_s"] = round(1000 / (server + result["cpu_s_per_1000"]), 1)
    return result


async def drain_asyncpg(server: PgServer, url: str, jobs: int, batch: int) -> dict[str, Any]:
    q = await open_queue(url, scope=HostScope(HOST))
    try:
        await fill(q, jobs)
        run_id = await RunsStore(q.engine).start_run(OWNER, {})
        done = 0
        server_cpu = server.cpu_seconds()
        cpu, start = time.process_time(), time.perf_counter()
        while claimed := await q.claim(OWNER, batch, 60.0, None):
            await q.record_outcomes(OWNER, outcomes(claimed, run_id))
            done += len(claimed)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        server_cpu = server.cpu_seconds() - server_cpu
        left = await StatusStore(q.engine).state_counts()
    finally:
        await q.close()
    if left.get(KB, {}).get("done", (0, 0))[0] != jobs:
        raise RuntimeError(f"expected {jobs} done rows, the queue says {left}")
    return with_server_cpu(figures("asyncpg", batch, done, seconds, cpu), server_cpu)


def _named(sql: str) -> str:
    """asyncpg's $n placeholders as psycopg's %(pn)s (each may appear more than once)."""
    return re.sub(r"\$(\d+)", r"%(p\1)s", sql.replace("%", "%%"))


async def drain_psycopg(server: PgServer, url: str, jobs: int, batch: int) -> dict[str, Any]:
    import psycopg

    q = await open_queue(url, scope=HostScope(HOST))  # migrations and the fill
    try:
        await fill(q, jobs)
        run_id = await RunsStore(q.engine).start_run(OWNER, {})
        assert isinstance(q, pg.PgQueue)
    finally:
        await q.close()
    claim_sql, outcome_sql = _named(pg._CLAIM), _named(pg._OUTCOMES)
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True, prepare_threshold=0)
    helper = pg.PgQueue.__new__(pg.PgQueue)  # for _outcome_rows' clock shift only
    helper._skew = 0.0
    try:
        done = 0
        server_cpu = server.cpu_seconds()
        cpu, start = time.process_time(), time.perf_counter()
        while True:
            args = {f"p{i}": v for i, v in enumerate([OWNER, 60.0, None, batch, HOST, False], 1)}
            cur = await conn.execute(claim_sql, args)
            rows = await cur.fetchall()
            if not rows:
                break
            claimed = [Job(*r[:9], r[9], r[10], r[11]) for r in rows]
            values = [OWNER, helper._outcome_rows(outcomes(claimed, run_id))]
            await conn.execute(outcome_sql, {f"p{i}": v for i, v in enumerate(values, 1)})
            done += len(claimed)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        server_cpu = server.cpu_seconds() - server_cpu
        cur = await conn.execute("SELECT count(*) FROM jobs WHERE state = 'done'")
        (finished,) = await cur.fetchone() or (0,)
    finally:
        await conn.close()
    if finished != jobs:
        raise RuntimeError(f"expected {jobs} done rows, the queue says {finished}")
    return with_server_cpu(figures("psycopg", batch, done, seconds, cpu), server_cpu)


DRIVERS = {"asyncpg": drain_asyncpg, "psycopg": drain_psycopg}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.pg_micro")
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--batch", type=int, action="append", help="claim size (repeatable)")
    parser.add_argument(
        "--driver",
        action="append",
        choices=list(DRIVERS),
        help="default: asyncpg, and psycopg when installed",
    )
    args = parser.parse_args(argv)
    drivers = args.driver or [
        d for d in DRIVERS if d == "asyncpg" or importlib.util.find_spec(d) is not None
    ]
    with PgServer(durable=True) as server:
        for n, (driver, batch) in enumerate((d, b) for d in drivers for b in args.batch or [100]):
            url = server.create_database(f"micro{n}")
            result = asyncio.run(DRIVERS[driver](server, url, args.jobs, batch))
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
