"""The store of each file's parse state (uploader/store/parse.py), on every backend."""

from __future__ import annotations

from tests.helpers import async_test
from tests.queue_backends import queue_target
from uploader import queue
from uploader.model import ScanRow
from uploader.store.parse import ParseStore
from uploader.store.status import StatusStore

__all__ = ["queue_target"]  # the fixture, imported for pytest

KB = "kb-contract"


async def _done(q: queue.Queue, names: list[str]) -> list[int]:
    """Rows uploaded as entries e-<name>, done at time 100."""
    await q.enqueue_batch(KB, [ScanRow(n.encode(), n, 1, 1) for n in names])
    for n in names:
        await q.engine.execute(
            "UPDATE jobs SET state = 'done', file_id = ?, finished_at = ? WHERE relpath = ?",
            (f"e-{n}", q.engine.to_db(100.0), n),
        )
    found = await q.engine.fetch("SELECT id FROM jobs ORDER BY id")
    return [i for (i,) in found]


@async_test
async def test_seen_reasons_counts_and_reparse(queue_target: str) -> None:
    async with queue.opened(queue_target) as q:
        a, b, c = await _done(q, ["a.txt", "b.txt", "c.txt"])
        store = ParseStore(q.engine)
        assert (await StatusStore(q.engine).tally()).parsed() == {KB: {"unseen": 3}}
        for job, status in ((a, "failed"), (b, "processing"), (c, "done")):
            await q.engine.execute("UPDATE jobs SET remote_status = ? WHERE id = ?", (status, job))
        await store.seen(KB, 200.0)
        await store.set_reasons([(a, "no text")])
        rows = {r.job_id: r for r in await store.rows(KB)}
        assert (rows[a].status, rows[a].reason, rows[a].seen_at) == ("failed", "no text", 200.0)
        assert rows[b].since == 100.0 and rows[b].relpath == "b.txt"
        assert [r.job_id for r in await store.rows(KB, ("failed",))] == [a]
        assert [r.job_id for r in await store.rows(job_ids=[b, c])] == [b, c]
        parsed = (await StatusStore(q.engine).tally()).parsed()
        assert parsed == {KB: {"failed": 1, "processing": 1, "done": 1}}

        await store.reparsing([(a, "e-a.txt"), (b, "not-its-entry")], 300.0)
        rows = {r.job_id: r for r in await store.rows(KB)}
        assert (rows[a].status, rows[a].reason, rows[a].since) == ("initial", None, 300.0)
        assert rows[b].status == "processing"  # another entry: left alone
        # a failure's reason outlives a listing only while it stays failed
        await q.engine.execute("UPDATE jobs SET remote_status = 'failed' WHERE id = ?", (b,))
        await store.set_reasons([(b, "why")])
        await q.engine.execute("UPDATE jobs SET remote_status = 'done' WHERE id = ?", (b,))
        await store.seen(KB, 400.0)
        assert {r.job_id: r.reason for r in await store.rows(KB)}[b] is None


@async_test
async def test_any_type_is_remembered_per_file(queue_target: str) -> None:
    async with queue.opened(queue_target) as q:
        a, b = await _done(q, ["a.png", "b.png"])
        store = ParseStore(q.engine)
        await store.mark_any_type(KB, [b"b.png"])
        assert (await store.any_type(a), await store.any_type(b)) == (False, True)
