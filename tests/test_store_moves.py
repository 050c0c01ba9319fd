"""The store of moves (uploader/store/moves.py), on every backend: the uploaded files a new file
may be, and a row moved to its new path with its entry."""

from __future__ import annotations

from tests.helpers import async_test
from tests.queue_backends import KB, LEASE, OWNER, outcome, queue_target, rows
from uploader.model import OutcomeKind, ScanRow
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

        found = await store.uploaded_like(KB, [(10, "a"), (10, "b"), (10, "c"), (99, "a")])
        assert [(u.path, u.relpath, u.content_hash) for u in found] == [
            (b"/data/a", "a", "hash-a"),
            (b"/data/b", "b", "hash-b"),
        ]
        assert await store.uploaded_like(KB, [(99, "a")]) == []
        assert await store.uploaded_like("kb-other", [(10, "a")]) == []
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


@async_test
async def test_uploaded_files_are_found_by_size_and_their_own_name_only(queue_target: str) -> None:
    """The lookup compares the last part of the path, literally: a folder's name, a longer name
    ending the same, and LIKE's wildcards or escape (% _ \\) in a name never match another."""
    uploaded = [
        "a/b/x.txt",
        "x.txt",
        "a/bx.txt",
        "x.txt/y",
        "c/d/x.txt.bak",
        "p/100%_\\.txt",
        "p/100ab\\.txt",
        "p/100%_\\\\.txt",
        "報告/報告 ü.txt",
        "報告 ü.txt",
        "q/報告 u.txt",
    ]
    async with await open_queue(queue_target) as q:
        await q.enqueue_batch(
            KB,
            [ScanRow(f"/data/{n}".encode(), n, 10, 1000) for n in uploaded]
            + [ScanRow(b"/data/big/x.txt", "big/x.txt", 11, 1000)]
            + [ScanRow(b"/data/later/x.txt", "later/x.txt", 10, 1000)],
        )
        jobs = await q.claim(OWNER, len(uploaded) + 2, LEASE, KB)
        done = [j for j in jobs if j.relpath != "later/x.txt"]  # stays running: not uploaded
        for j in done:
            j.content_hash = f"hash-{j.relpath}"
        await q.record_outcomes(
            OWNER, [outcome(j, OutcomeKind.DONE, file_id=f"file-{j.relpath}") for j in done]
        )
        store = MovesStore(q.engine, q.scope)

        async def like(*wanted: tuple[int, str]) -> list[str]:
            return [u.relpath for u in await store.uploaded_like(KB, list(wanted))]

        assert await like((10, "x.txt")) == ["a/b/x.txt", "x.txt"]
        assert await like((11, "x.txt")) == ["big/x.txt"]
        assert await like((10, "x.txt"), (11, "x.txt")) == ["a/b/x.txt", "x.txt", "big/x.txt"]
        assert await like((10, "100%_\\.txt")) == ["p/100%_\\.txt"]
        assert await like((10, "100__\\.txt"), (10, "100%.txt"), (10, "%")) == []
        assert await like((10, "報告 ü.txt")) == ["報告/報告 ü.txt", "報告 ü.txt"]
        assert await like((10, "報告 u.txt"), (10, "y")) == ["x.txt/y", "q/報告 u.txt"]
        assert await like((10, "b/x.txt"), (10, "bx"), (10, "txt"), (10, "")) == []
