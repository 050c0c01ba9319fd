"""Writers take turns at SQLite's write lock (uploader/store/turns.py, issue 24: a run beside a
big walk). An enqueue writes batch after batch; a run's claim or outcome wanting the lock
meanwhile is written after the batch in progress, not after however many batches SQLite's
busy handler sleeps through (a run beside a walk of a million files made 30 files/s), and
while the run writes the walk's transactions are short."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from tests.helpers import async_test
from tests.queue_backends import KB
from uploader.model import ScanRow
from uploader.queue import open_queue
from uploader.queue.sqlite_jobs import CROWDED_ROWS
from uploader.store.sqlite import SqliteEngine
from uploader.store.turns import Turns

BATCHES = 40
# rows per enqueue_batch here; a walk's batches are larger, the bound is one batch whatever its size
BATCH = 500
RUN_WRITES = 10


def _batch(number: int) -> list[ScanRow]:
    return [ScanRow(f"/walk/{number}/{i}".encode(), f"{number}/{i}", 10, 1) for i in range(BATCH)]


async def _count(engine: SqliteEngine) -> int:
    return int(await engine.fetchval("SELECT COUNT(*) FROM jobs"))


def _counted(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])


@pytest.mark.posix_only("file locks that share (flock)")
@async_test
async def test_a_write_beside_a_walk_waits_for_one_batch_at_most(tmp_path: Path) -> None:
    db = str(tmp_path / "queue.db")
    async with await open_queue(db) as walk, await open_queue(db) as run:
        assert isinstance(run.engine, SqliteEngine)
        engine = run.engine

        async def walking() -> None:
            for number in range(BATCHES):
                await walk.enqueue_batch(KB, _batch(number))

        walker = asyncio.create_task(walking())
        await asyncio.sleep(0.05)
        passed: list[int] = []  # rows the walk committed while each write of the run waited
        for write in range(RUN_WRITES):
            if walker.done():
                break
            before = await _count(engine)
            if write % 2:  # as the run's claims and outcomes write: one hop
                after = await engine.atomically(_counted)
            else:
                async with engine.transaction():
                    after = await _count(engine)
            passed.append(after - before)
            await asyncio.sleep(0.005)
        await walker

    assert len(passed) >= RUN_WRITES // 2, "the walk ended before the run wrote: too fast?"
    # the batch in progress, and one that began as the run asked
    assert max(passed) <= 2 * BATCH, passed
    # once the walk has seen the run write, it writes in short transactions
    assert sorted(passed)[len(passed) // 2] <= 2 * CROWDED_ROWS, passed
    assert await _rows(db) == BATCHES * BATCH


async def _rows(db: str) -> int:
    async with await open_queue(db) as q:
        assert isinstance(q.engine, SqliteEngine)
        return await _count(q.engine)


@pytest.mark.posix_only("file locks that share (flock)")
def test_no_turns_where_the_database_is_in_memory_or_its_folder_cannot_hold_them(
    tmp_path: Path,
) -> None:
    assert Turns.beside(":memory:") is None
    (tmp_path / "queue.db.scans").write_text("a file where the folder would be")
    assert Turns.beside(str(tmp_path / "queue.db")) is None
