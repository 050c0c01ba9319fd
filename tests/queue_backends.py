"""The queue backends the contract tests run against: `BACKENDS` names them, `queue_target`
makes a fresh, empty target for one test: a SQLite file, or a new schema on the session's
PostgreSQL server (tests/pg_server.py), named by the URL's search_path."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import asyncpg
import pytest

BACKENDS = ["sqlite", "postgresql"]


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
