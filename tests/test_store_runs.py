"""The store of runs and scans (uploader/store/runs.py), on every backend; with it, the
engine's transactions as every store uses them (nested: a savepoint; cancelled: no
transaction left open)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tests.helpers import async_test
from tests.queue_backends import queue_target
from uploader.store import open_engine
from uploader.store.runs import RunsStore

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
