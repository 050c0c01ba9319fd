"""The store of status and report reads (uploader/store/status.py), on every backend: rows
are made through the job queue, then read back."""

from __future__ import annotations

from tests.helpers import async_test
from tests.queue_backends import KB, LEASE, OWNER, outcome, queue_target, rows
from uploader.model import HostCount, HostScope, OutcomeKind, ScanRow
from uploader.queue import open_queue
from uploader.store.status import StatusStore

__all__ = ["queue_target"]  # the fixture, imported for pytest


@async_test
async def test_the_report_is_streamed_per_state(queue_target: str) -> None:
    async with await open_queue(queue_target) as q:
        await q.enqueue_batch(KB, [*rows("a", "b"), ScanRow(b"/data/s", "s", 1, 1, "too big")])
        a, b = await q.claim(OWNER, 2, LEASE, KB)
        await q.record_outcomes(
            OWNER,
            [
                outcome(a, OutcomeKind.DONE, file_id="file-a", filename="a"),
                outcome(b, OutcomeKind.FAILED, error_kind="timeout", error="slow"),
            ],
        )
        reads = StatusStore(q.engine)
        totals = await reads.report_totals()
        assert (totals["total_files"], totals["successful_uploads"]) == (3, 1)
        assert (totals["failed_uploads"], totals["skipped"]) == (1, 1)
        assert totals["knowledge_bases"] == [KB]
        [done] = [r async for r in reads.report_rows("done", chunk=1)]
        assert (done.path, done.file_id, done.filename) == (b"/data/a", "file-a", "a")
        [failed] = [r async for r in reads.report_rows("failed")]
        assert (failed.error, failed.attempts, failed.error_kind) == ("slow", 1, "timeout")
        [skipped] = [r async for r in reads.report_rows("skipped")]
        assert skipped.reason == "too big"


@async_test
async def test_counts_per_state_host_and_error_kind(queue_target: str) -> None:
    async with await open_queue(queue_target, scope=HostScope("host-a")) as q:
        await q.enqueue_batch(KB, rows("a", "b", "c", size=7))
        await q.enqueue_batch("kb-other", rows("d", size=5))
        a, b = await q.claim(OWNER, 2, LEASE, KB)
        await q.record_outcomes(
            OWNER,
            [
                outcome(a, OutcomeKind.FAILED, error_kind="timeout", error="slow"),
                outcome(b, OutcomeKind.FAILED, error="no kind"),
            ],
        )
        reads = StatusStore(q.engine)
        assert await reads.state_counts() == {
            KB: {"failed": (2, 14), "pending": (1, 7)},
            "kb-other": {"pending": (1, 5)},
        }
        assert (await reads.tally()).hosts() == [
            HostCount("host-a", False, "failed", 2),
            HostCount("host-a", False, "pending", 2),
        ]
        assert await reads.error_kind_counts() == {"timeout": 1, "unknown": 1}
        assert await reads.content_counts() == {}
        assert await reads.last_verifications() == []
        assert [d async for d in reads.deletion_rows()] == []
