"""Which host can read a file, on both backends: a row records the host that enqueued it and
goes to that host only, unless its folder is shared storage (enqueue or run with `shared`).
"""

from __future__ import annotations

from tests.helpers import async_test
from tests.queue_backends import queue_target
from uploader.model import HostCount, HostScope, ScanRow
from uploader.queue import open_queue
from uploader.store.status import StatusStore

__all__ = ["queue_target"]

KB = "kb-hosts"
LEASE = 60.0
A, B = HostScope("office-a"), HostScope("office-b")


def rows(*names: str, size: int = 10) -> list[ScanRow]:
    return [ScanRow(f"/mnt/nas/{n}".encode(), n, size, 1000) for n in names]


@async_test
async def test_a_run_claims_only_its_own_hosts_rows(queue_target: str) -> None:
    async with await open_queue(queue_target, scope=A) as a:
        await a.enqueue_batch(KB, rows("a1", "a2"))
    async with await open_queue(queue_target, scope=B) as b:
        await b.enqueue_batch(KB, rows("b1"))
        assert await b.pending_totals(KB) == (1, 10)
        assert await b.kbs_with_work(None) == [KB]
        assert [j.relpath for j in await b.claim("b:1:x", 10, LEASE, KB)] == ["b1"]
        assert await b.claim("b:1:x", 10, LEASE, KB) == []
        assert await b.next_due(KB) is None  # a's rows are not due for b: no busy wait
    async with await open_queue(queue_target, scope=A) as a:
        assert await a.next_due(KB) == 0
        assert sorted(j.relpath for j in await a.claim("a:1:x", 10, LEASE, KB)) == ["a1", "a2"]
        assert (await StatusStore(a.engine).tally()).hosts() == [
            HostCount("office-a", False, "running", 2),
            HostCount("office-b", False, "running", 1),
        ]


@async_test
async def test_shared_rows_go_to_any_host_and_a_shared_run_takes_any(queue_target: str) -> None:
    async with await open_queue(queue_target, scope=HostScope("office-a", shared=True)) as a:
        await a.enqueue_batch(KB, rows("s1"))
    async with await open_queue(queue_target, scope=A) as a:
        await a.enqueue_batch(KB, rows("a1"))
    async with await open_queue(queue_target, scope=B) as b:
        assert [j.relpath for j in await b.claim("b:1:x", 10, LEASE, KB)] == ["s1"]
    async with await open_queue(queue_target, scope=HostScope("office-c", shared=True)) as c:
        assert await c.pending_totals(None) == (2, 20)  # s1 running, a1 pending
        assert [j.relpath for j in await c.claim("c:1:x", 10, LEASE, KB)] == ["a1"]


@async_test
async def test_another_hosts_file_at_the_same_path_is_left_to_it(queue_target: str) -> None:
    async with await open_queue(queue_target, scope=A) as a:
        await a.enqueue_batch(KB, rows("same"))
    async with await open_queue(queue_target, scope=B) as b:
        counts = await b.enqueue_batch(KB, rows("same", size=99))
        assert (counts.foreign, counts.changed, counts.unchanged, counts.new) == (1, 0, 0, 0)
        assert await b.claim("b:1:x", 10, LEASE, KB) == []
    # Enqueued as shared storage, the same path is the same file: the row becomes shared.
    async with await open_queue(queue_target, scope=HostScope("office-b", shared=True)) as b:
        counts = await b.enqueue_batch(KB, rows("same", size=99))
        assert (counts.foreign, counts.changed) == (0, 1)
        assert (await StatusStore(b.engine).tally()).hosts() == [
            HostCount("office-a", True, "pending", 1)
        ]
    async with await open_queue(queue_target, scope=B) as b:
        [job] = await b.claim("b:1:x", 10, LEASE, KB)
        assert job.size == 99
