"""The store of runs and scans (uploader/store/runs.py), on every backend; with it, the
engine's transactions as every store uses them (nested: a savepoint; cancelled: no
transaction left open)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import async_test
from tests.queue_backends import queue_target
from uploader.store import open_engine
from uploader.store.runs import RunsStore
from uploader.store.sqlite import SqliteEngine

__all__ = ["queue_target"]  # the fixture, imported for pytest

KB = "kb-contract"
OWNER = "host:1:contract"


@async_test
async def test_runs_are_recorded_oldest_first(queue_target: str) -> None:
    async with await open_engine(queue_target) as db:
        q = RunsStore(db)
        first = await q.start_run(OWNER, {"workers": 2})
        second = await q.start_run(OWNER, {})
        await q.end_run(first, {"uploaded": 3}, 0)
        runs = await q.runs()
        assert [r["id"] for r in runs] == [first, second]
        assert runs[0]["options"] == {"workers": 2} and runs[0]["counts"] == {"uploaded": 3}
        assert runs[1]["ended_at"] is None and runs[1]["counts"] is None
        assert [r["id"] for r in await q.runs(last=1)] == [second]
        assert await q.open_runs() == [(second, OWNER)]
        await q.end_run(second, {"lost": "died"}, None)
        assert await q.open_runs() == []
        assert (await q.runs(last=1))[0]["exit_code"] is None


@async_test
async def test_a_nested_transaction_is_a_savepoint_not_a_deadlock(queue_target: str) -> None:
    async with await open_engine(queue_target) as db:
        q = RunsStore(db)

        async def nested() -> None:
            async with db.transaction():
                await q.start_run(OWNER, {"n": 1})
                with contextlib.suppress(KeyError):
                    async with db.transaction():
                        await q.start_run(OWNER, {"n": 2})
                        raise KeyError("the inner one rolls back alone")
                await q.start_run(OWNER, {"n": 3})

        await asyncio.wait_for(nested(), timeout=10)
        assert [r["options"] for r in await q.runs()] == [{"n": 1}, {"n": 3}]
        with pytest.raises(KeyError):
            async with db.transaction():
                await q.start_run(OWNER, {"n": 4})
                raise KeyError("the outer one rolls everything back")
        assert len(await q.runs()) == 2


@async_test
async def test_a_write_cancelled_at_any_point_leaves_the_database_usable(queue_target: str) -> None:
    """Ctrl+C or a fatal error cancels tasks mid-transaction; the next write must still work."""
    async with await open_engine(queue_target) as db:
        q = RunsStore(db)
        for steps in range(8):
            task = asyncio.create_task(q.start_run("cancelled", {}))
            for _ in range(steps):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await q.start_run(OWNER, {"after": steps})
        after = [r for r in await q.runs() if r["options"].get("after") is not None]
        assert len(after) == 8


@async_test
async def test_a_run_keeps_the_reason_it_stopped(queue_target: str) -> None:
    async with await open_engine(queue_target) as db:
        q = RunsStore(db)
        stopped = await q.start_run(OWNER, {})
        fine = await q.start_run(OWNER, {})
        await q.set_run_fatal(stopped, "API key rejected (HTTP 401): Invalid API key")
        await q.end_run(stopped, {}, 3)
        await q.end_run(fine, {}, 0)
        assert await q.run_fatal(stopped) == "API key rejected (HTTP 401): Invalid API key"
        assert await q.run_fatal(fine) is None


@async_test
async def test_scans_in_progress_are_listed_until_they_end(queue_target: str) -> None:
    async with await open_engine(queue_target) as db:
        q = RunsStore(db)
        first = await q.start_scan("host:1:a", KB)
        second = await q.start_scan("host:2:b", "kb-other")
        await q.touch_scan(first)

        assert [owner for owner, _age in await q.scans(None)] == ["host:1:a", "host:2:b"]
        ((owner, age),) = await q.scans(KB)
        assert owner == "host:1:a" and 0 <= age < 60
        await q.end_scan(first)
        assert await q.scans(KB) == []
        await q.end_scan(second)
        assert await q.scans(None) == []


@async_test
async def test_a_one_hop_sqlite_transaction_is_whole_and_outlives_a_cancel(tmp_path: Path) -> None:
    """SqliteEngine.atomically, the run's claims and outcomes: its statements commit together
    or not at all, inside a transaction it is a savepoint, and a task cancelled while it runs
    hears of it only once it has committed, the connection outside any transaction."""
    insert = "INSERT INTO runs (started_at, owner, options) VALUES (1, ?, '{}')"

    def add(*owners: str, fail: bool = False, wait: float = 0.0) -> Callable[[Any], None]:
        def body(conn: sqlite3.Connection) -> None:
            for owner in owners:
                conn.execute(insert, (owner,))
            time.sleep(wait)
            if fail:
                raise KeyError("half-way")

        return body

    async with await SqliteEngine.open(str(tmp_path / "queue.db")) as db:
        await db.atomically(add("a", "b"))
        with pytest.raises(KeyError):
            await db.atomically(add("lost", "lost", fail=True))
        async with db.transaction():
            with contextlib.suppress(KeyError):
                await db.atomically(add("lost", fail=True))
            await db.atomically(add("c"))
        slow = asyncio.create_task(db.atomically(add("d", wait=0.3)))
        await asyncio.sleep(0.1)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        assert not db.connection.in_transaction
        owners = [owner for (owner,) in await db.fetch("SELECT owner FROM runs ORDER BY id")]
        assert owners == ["a", "b", "c", "d"]
