"""The store of saved sync jobs (uploader/store/saved_jobs.py, migration pair 0020), on every
backend: the example docs/contributing.md gives of one store module + one migration pair."""

from __future__ import annotations

from tests.helpers import async_test
from tests.queue_backends import queue_target
from uploader.store import open_engine
from uploader.store.saved_jobs import SavedJobsStore

__all__ = ["queue_target"]  # the fixture, imported for pytest

BIG5 = b"/shares/\xa4\xbd\xa5q"  # a folder whose name is not UTF-8 (Big5 bytes): kept as bytes


@async_test
async def test_a_job_is_saved_once_per_folder_and_kb_and_changed_in_place(
    queue_target: str,
) -> None:
    async with await open_engine(queue_target) as db:
        store = SavedJobsStore(db)
        await store.save(BIG5, "kb-a", {"exclude": ["*.tmp"], "label": ["hr"]})
        await store.save(b"/docs", "kb-a", {})
        await store.save(BIG5, "kb-b", {})
        first = (await store.jobs(BIG5))[0]

        await store.save(BIG5, "kb-a", {"exclude": ["*.tmp", "*.bak"], "label": ["hr"]})

        jobs = await store.jobs()
        assert [(j.folder, j.kb_id) for j in jobs] == [
            (BIG5, "kb-a"),
            (b"/docs", "kb-a"),
            (BIG5, "kb-b"),
        ]
        changed = jobs[0]
        assert changed.id == first.id
        assert changed.options == {"exclude": ["*.tmp", "*.bak"], "label": ["hr"]}
        assert changed.created_at == first.created_at <= changed.updated_at
        assert [j.kb_id for j in await store.jobs(BIG5)] == ["kb-a", "kb-b"]


@async_test
async def test_a_removed_job_is_gone_and_removing_it_again_says_so(queue_target: str) -> None:
    async with await open_engine(queue_target) as db:
        store = SavedJobsStore(db)
        await store.save(b"/docs", "kb-a", {})
        (job,) = await store.jobs()

        assert await store.remove(job.id) is True
        assert await store.remove(job.id) is False
        assert await store.jobs() == []
