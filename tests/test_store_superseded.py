"""The store of superseded entries, removed files and deletions (uploader/store/superseded.py),
on every backend: rows made through the job queue, then what the store keeps of them."""

from __future__ import annotations

import time

from tests.helpers import async_test
from tests.queue_backends import KB, LEASE, OWNER, done_jobs, listed, outcome, queue_target, rows
from uploader.model import Deletion, OutcomeKind, Superseded, SupersedeFailure
from uploader.queue import open_queue
from uploader.store.listing import ListingStore
from uploader.store.status import StatusStore
from uploader.store.superseded import SupersededStore

__all__ = ["queue_target"]  # the fixture, imported for pytest


@async_test
async def test_deletions_are_kept_with_their_jobs_paths(queue_target: str) -> None:
    async with await open_queue(queue_target) as q:
        [a] = await done_jobs(q, "a")
        assert [d async for d in StatusStore(q.engine).deletion_rows()] == []
        await SupersededStore(q.engine).record_deletions(
            [
                Deletion(KB, "copy", "a", "copy", "copy of file-a", "dedupe", 100.0, a.id),
                Deletion(KB, "other", None, "same_name_size", None, "dedupe", 101.0, None),
            ]
        )
        found = [d async for d in StatusStore(q.engine).deletion_rows(chunk=1)]
        assert [(d.entry_id, d.reason, d.command, d.deleted_at, d.path) for d in found] == [
            ("copy", "copy", "dedupe", 100.0, b"/data/a"),
            ("other", "same_name_size", "dedupe", 101.0, None),
        ]


@async_test
async def test_a_changed_uploaded_file_remembers_its_entry_until_it_is_replaced(
    queue_target: str,
) -> None:
    async with await open_queue(queue_target) as q:
        listing = ListingStore(q.engine)
        [a, b] = await done_jobs(q, "a", "b")
        await q.enqueue_batch(KB, [*rows("a", size=11), *rows("b")])
        assert (
            await SupersededStore(q.engine).superseded_due(KB) == []
        )  # no new version registered yet
        [again] = await q.claim(OWNER, 5, LEASE, KB)
        assert (again.id, again.step) == (a.id, None)
        await q.record_outcomes(OWNER, [outcome(again, OutcomeKind.DONE, file_id="file-a2")])
        [due] = await SupersededStore(q.engine).superseded_due(None)
        assert due == Superseded(KB, "file-a", a.id, "a", "file-a2")
        now = time.time()
        await listing.store_listed([listed("file-a", "a", now), listed("file-a2", "a", now)])
        [shown] = await SupersededStore(q.engine).superseded_listed(KB, now)
        assert (shown.entry_id, shown.job_id, shown.replaced_by, shown.kept) == (
            "file-a",
            a.id,
            "file-a2",
            False,
        )
        await SupersededStore(q.engine).settle_superseded(
            [], [SupersedeFailure(KB, "file-a", "HTTP 409")]
        )
        assert await SupersededStore(q.engine).superseded_due(KB) == [due]
        gone = Deletion(KB, "file-a", "a", "superseded", "replaced by file-a2", "run", now, a.id)
        await SupersededStore(q.engine).settle_superseded([gone], [])
        assert await SupersededStore(q.engine).superseded_due(KB) == []
        assert not await listing.any_remote_known(KB, ["file-a"])
        assert [d.entry_id async for d in StatusStore(q.engine).deletion_rows()] == ["file-a"]


@async_test
async def test_an_entry_two_runs_deleted_is_recorded_and_counted_by_one(
    queue_target: str,
) -> None:
    """Two runs at once find the same entry due and both delete it: the first to settle
    records the deletion, the other is told it recorded none."""
    async with await open_queue(queue_target) as q:
        [a] = await done_jobs(q, "a")
        await q.enqueue_batch(KB, rows("a", size=11))
        [again] = await q.claim(OWNER, 5, LEASE, KB)
        await q.record_outcomes(OWNER, [outcome(again, OutcomeKind.DONE, file_id="file-a2")])
        store = SupersededStore(q.engine)
        gone = Deletion(KB, "file-a", "a", "superseded", "replaced by file-a2", "run", 1.0, a.id)

        first = await store.settle_superseded([gone], [])
        second = await store.settle_superseded([gone], [SupersedeFailure(KB, "file-a", "409")])

        assert (first, second) == ([gone], [])
        assert [d.entry_id async for d in StatusStore(q.engine).deletion_rows()] == ["file-a"]
        assert await store.superseded_due(KB) == []


@async_test
async def test_a_superseded_entry_another_job_points_to_is_never_due(queue_target: str) -> None:
    async with await open_queue(queue_target) as q:
        await done_jobs(q, "a", "b")
        await q.enqueue_batch(KB, rows("a", "b", size=11))
        a, b = await q.claim(OWNER, 5, LEASE, KB)
        await q.record_outcomes(
            OWNER,
            [
                outcome(a, OutcomeKind.DONE, file_id="file-a2"),
                outcome(b, OutcomeKind.DONE, file_id="file-a"),  # b's entry now: never deleted
            ],
        )
        due = await SupersededStore(q.engine).superseded_due(KB)
        assert [d.entry_id for d in due] == ["file-b"]
        assert await StatusStore(q.engine).content_counts() == {KB: {"superseded": 2}}
        await SupersededStore(q.engine).keep_superseded(due)
        assert await SupersededStore(q.engine).superseded_due(KB) == []
        assert await StatusStore(q.engine).content_counts() == {
            KB: {"superseded": 1, "old_versions_kept": 1}
        }


@async_test
async def test_checksum_queues_the_uploaded_rows_with_a_hash_for_a_recheck(
    queue_target: str,
) -> None:
    """enqueue --checksum: a done row whose upload left its content hash goes back to pending
    at step recheck, keeping its entry and hash; one without a hash cannot be compared."""
    async with await open_queue(queue_target) as q:
        await q.enqueue_batch(KB, rows("a", "b"))
        a, b = sorted(await q.claim(OWNER, 5, LEASE, KB), key=lambda j: j.relpath)
        a.content_hash = "hash-a"
        await q.record_outcomes(
            OWNER,
            [
                outcome(a, OutcomeKind.DONE, file_id="file-a"),
                outcome(b, OutcomeKind.DONE, file_id="file-b"),
            ],
        )

        assert await SupersededStore(q.engine).mark_recheck([a.id, b.id]) == 1
        [again] = await q.claim(OWNER, 5, LEASE, KB)
        assert (again.id, again.step, again.file_id, again.content_hash) == (
            a.id,
            "recheck",
            "file-a",
            "hash-a",
        )
