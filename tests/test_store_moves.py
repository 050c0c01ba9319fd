"""The store of moves (uploader/store/moves.py), on every backend: the uploaded files a new file
may be, and a row moved to its new path with its entry."""

from __future__ import annotations

from tests.helpers import async_test
from tests.queue_backends import KB, LEASE, OWNER, outcome, queue_target, rows
from uploader.model import OutcomeKind
from uploader.queue import open_queue
from uploader.store.moves import MovesStore

__all__ = ["queue_target"]  # the fixture, imported for pytest


@async_test
async def test_an_uploaded_file_moves_to_a_new_path_with_its_entry(queue_target: str) -> None:
    async with await open_queue(queue_target) as q:
        await q.enqueue_batch(KB, rows("a", "b", "c"))
        jobs = await q.claim(OWNER, 3, LEASE, KB)
        for j in jobs:
            j.content_hash = None if j.relpath == "c" else f"hash-{j.relpath}"
        await q.record_outcomes(
            OWNER, [outcome(j, OutcomeKind.DONE, file_id=f"file-{j.relpath}") for j in jobs]
        )
        store = MovesStore(q.engine, q.scope)

        found = await store.uploaded_of_sizes(KB, [10, 99])
        assert [(u.path, u.relpath, u.content_hash) for u in found] == [
            (b"/data/a", "a", "hash-a"),
            (b"/data/b", "b", "hash-b"),
        ]
        assert await store.uploaded_of_sizes(KB, [99]) == []
        assert await store.uploaded_of_sizes("kb-other", [10]) == []
        assert await store.any_of_sizes(KB, [10, 99])
        assert not await store.any_of_sizes(KB, [99])
        assert not await store.any_of_sizes("kb-other", [10])
        [a, b] = found

        assert await store.move(a, b"/moved/a", "moved/a", 7)
        assert not await store.move(b, b"/moved/a", "moved/a", 7)  # the path is a row's now
        assert await store.queued(KB, [b"/moved/a", b"/data/a"]) == {b"/moved/a"}
        assert not await store.move(a, b"/again/a", "again/a", 7)  # no longer at its old path
        moved = await q.engine.fetchrow(
            "SELECT relpath, file_id, state FROM jobs WHERE path = ?", (b"/moved/a",)
        )
        assert moved == ("moved/a", "file-a", "done")
