"""The queue backends the contract tests run against: `BACKENDS` names them, `queue_target`
makes a fresh, empty target for one test: a SQLite file, or a new schema on the session's
PostgreSQL server (tests/pg_server.py), named by the URL's search_path."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

import asyncpg
import pytest

from uploader.model import Job, ListedRow, Outcome, OutcomeKind, ScanRow
from uploader.queue import Queue
from uploader.store.status import StatusStore

BACKENDS = ["sqlite", "postgresql"]

# What the contract tests of the job queue and the stores share: a knowledge base, an owner,
# a lease, and rows made through the job queue.
KB = "kb-contract"
OWNER = "host:1:contract"
LEASE = 60.0


@pytest.fixture(params=BACKENDS)
def queue_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """What `open_queue` opens: a new, empty queue per test."""
    if request.param == "sqlite":
        return str(tmp_path / "queue.db")
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url")
    raise AssertionError(f"no such backend {request.param}")


async def attempts_logged(target: str, job_id: int) -> list[str]:
    """The outcomes the attempts table holds for a job, read around the queue object (which
    has no reader for them: only the report and status summarise them)."""
    if "://" not in target:
        with contextlib.closing(sqlite3.connect(target)) as conn:
            rows = conn.execute(
                "SELECT outcome FROM attempts WHERE job_id = ? ORDER BY rowid", (job_id,)
            ).fetchall()
        return [r[0] for r in rows]
    conn = await asyncpg.connect(target)
    try:
        rows = await conn.fetch("SELECT outcome FROM attempts WHERE job_id = $1", job_id)
    finally:
        await conn.close()
    return [r[0] for r in rows]


def rows(*names: str, size: int = 10) -> list[ScanRow]:
    return [ScanRow(f"/data/{n}".encode(), n, size, 1000) for n in names]


def outcome(job: Job, kind: OutcomeKind, **kw: object) -> Outcome:
    return Outcome(job=job, outcome=kind, ended_at=time.time(), **kw)  # type: ignore[arg-type]


async def states(q: Queue, kb: str = KB) -> dict[str, int]:
    return {s: n for s, (n, _b) in (await StatusStore(q.engine).state_counts()).get(kb, {}).items()}


async def done_jobs(q: Queue, *names: str) -> list[Job]:
    await q.enqueue_batch(KB, rows(*names))
    jobs = await q.claim(OWNER, len(names), LEASE, KB)
    await q.record_outcomes(
        OWNER,
        [
            outcome(j, OutcomeKind.DONE, file_id=f"file-{j.relpath}", filename=j.relpath)
            for j in jobs
        ],
    )
    return jobs


def listed(file_id: str, name: str, seen: float, created: float = 0.0) -> ListedRow:
    return ListedRow(KB, file_id, name, 10, "done", created, seen, None)
