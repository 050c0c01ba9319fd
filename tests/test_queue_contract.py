"""The queue contract (`uploader.queue.base.Queue`), backend by backend: every test opens a
fresh queue through `open_queue` and uses nothing but the contract's methods, so the same
tests hold any backend to the same guarantees."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from tests.helpers import async_test
from tests.queue_backends import (
    KB,
    LEASE,
    OWNER,
    attempts_logged,
    done_jobs,
    listed,
    outcome,
    queue_target,
    rows,
    states,
)
from uploader.model import (
    DuplicateItem,
    EnqueueCounts,
    ErrorKind,
    HostCount,
    HostScope,
    JobState,
    ListedRow,
    OutcomeKind,
    RemoteStatus,
    RequeueItem,
    ScanRow,
    Step,
    Superseded,
    TagMismatch,
)
from uploader.queue import open_queue
from uploader.store.listing import ListingStore
from uploader.store.status import StatusStore
from uploader.store.superseded import SupersededStore
from uploader.tags import EMPTY, encode

__all__ = ["queue_target"]  # the fixture, imported for pytest


@async_test
async def test_enqueue_inserts_new_requeues_changed_and_leaves_the_rest(queue_target: str) -> None:
    async with await open_queue(queue_target) as q:
        first = await q.enqueue_batch(KB, [*rows("a", "b"), ScanRow(b"/data/c", "c", 5, 1, "big")])
        assert (first.scanned, first.new, first.changed, first.skipped) == (3, 2, 0, 1)
        again = await q.enqueue_batch(KB, [*rows("a"), *rows("b", size=11)])
        assert (again.new, again.changed, again.unchanged) == (0, 1, 1)
        assert await states(q) == {"pending": 2, "skipped": 1}
        assert await q.pending_totals(KB) == (2, 21)
        assert await q.kbs_with_work(None) == [KB]


@async_test
async def test_a_claim_leases_due_rows_once_in_id_order(queue_target: str) -> None:
    async with await open_queue(queue_target) as q:
        await q.enqueue_batch(KB, rows(*"abcde"))
        first, second = await asyncio.gather(
            q.claim("host:1:one", 3, LEASE, KB), q.claim("host:2:two", 3, LEASE, KB)
        )
        ids = [j.id for j in first + second]
        assert len(ids) == len(set(ids)) == 5
        assert [j.id for j in first] == sorted(j.id for j in first)
        assert all(j.attempts == 1 and j.step is None for j in first + second)
        assert await q.claim(OWNER, 10, LEASE, KB) == []
        assert await q.next_due(KB) is None
        owners = {o.owner for o in await q.lease_owners()}
        assert owners == {"host:1:one", "host:2:two"}


@async_test
async def test_outcomes_are_written_only_by_the_lease_owner(queue_target: str) -> None:
    async with await open_queue(queue_target) as q:
        await q.enqueue_batch(KB, rows("a", "b", "c", "d"))
        a, b, c, d = await q.claim(OWNER, 4, LEASE, KB)
        a.step, a.s3_key, a.filename = Step.UPLOADED, "key-a", "a"
        await q.record_outcomes(OWNER, [outcome(a, OutcomeKind.UPLOADED)])
        await q.record_outcomes(
            OWNER,
            [
                outcome(a, OutcomeKind.DONE, file_id="file-a"),
                outcome(b, OutcomeKind.RETRY, error_kind="timeout", next_attempt_at=1.0),
                outcome(c, OutcomeKind.FAILED, error_kind=ErrorKind.HTTP_4XX, error="HTTP 400"),
            ],
        )
        await q.record_outcomes("host:9:intruder", [outcome(d, OutcomeKind.DONE, file_id="x")])
        assert await attempts_logged(queue_target, d.id) == []  # not written, not logged
        assert await states(q) == {"done": 1, "pending": 1, "failed": 1, "running": 1}
        assert await StatusStore(q.engine).error_kind_counts() == {"http_4xx": 1}
        assert await q.failed_count(KB) == 1
        assert await q.next_due(KB) == 1.0
        await q.record_outcomes(OWNER, [outcome(d, OutcomeKind.RELEASED)])
        again = await q.claim(OWNER, 10, LEASE, KB)
        assert {j.id: j.attempts for j in again} == {b.id: 2, d.id: 1}


@async_test
async def test_reclaim_keeps_only_the_doubt_a_write_ahead_committed(queue_target: str) -> None:
    """A dead run's row is in doubt only if its register's write-ahead was committed: a row
    killed while uploading never sent one. The doubt comes back with its sender's deadline
    (whatever the --timeout of the run that takes it)."""
    async with await open_queue(queue_target) as q:
        await q.enqueue_batch(KB, rows("a", "b", "c"))
        a, b = await q.claim("host:1:dead", 2, LEASE, KB)
        [c] = await q.claim(OWNER, 1, LEASE, KB)
        b.s3_key, b.filename = "key-b", "b"
        since = time.time()
        assert await q.begin_register("host:1:dead", [b], since, since + 60) == {b.id}
        assert await q.renew_leases(OWNER, LEASE) == [c.id]
        assert await q.reclaim(["host:1:dead"]) == 2
        again = {j.id: j for j in await q.claim(OWNER, 2, LEASE, KB)}
        assert again[a.id].attempts == 1 and again[a.id].unknown_since is None
        assert again[a.id].s3_key is None
        assert again[b.id].unknown_since == pytest.approx(since)
        assert again[b.id].register_due == pytest.approx(since + 60)
        assert again[a.id].register_due is None
        assert (again[b.id].s3_key, again[b.id].filename) == ("key-b", "b")


@async_test
async def test_a_write_ahead_is_written_only_under_a_live_lease_of_its_owner(
    queue_target: str,
) -> None:
    async with await open_queue(queue_target) as q:
        await q.enqueue_batch(KB, rows("a", "b", "c"))
        a, b, c = await q.claim(OWNER, 3, LEASE, KB)
        for j in (a, b, c):
            j.s3_key, j.filename = f"key-{j.relpath}", j.relpath
        assert await q.begin_register("host:9:intruder", [a, b, c], time.time()) == set()
        await q.record_outcomes(OWNER, [outcome(c, OutcomeKind.RELEASED)])
        assert await q.renew_leases(OWNER, -1.0) == [a.id, b.id]  # expired now
        assert await q.begin_register(OWNER, [a, b], time.time()) == set()
        assert await q.renew_leases(OWNER, LEASE) == [a.id, b.id]
        assert await q.begin_register(OWNER, [a, b, c], time.time()) == {a.id, b.id}


@async_test
async def test_retry_failed_selects_by_kind_and_relpath(queue_target: str) -> None:
    async with await open_queue(queue_target) as q:
        await q.enqueue_batch(KB, rows("a.pdf", "b.pdf", "c.txt"))
        jobs = await q.claim(OWNER, 3, LEASE, KB)
        kinds = {"a.pdf": "timeout", "b.pdf": "http_4xx", "c.txt": "timeout"}
        await q.record_outcomes(
            OWNER, [outcome(j, OutcomeKind.FAILED, error_kind=kinds[j.relpath]) for j in jobs]
        )
        assert await q.retry_failed(KB, ["timeout"], lambda rel: rel.endswith(".pdf")) == 1
        assert await q.retry_failed(None, [], None) == 2
        assert await states(q) == {"pending": 3}
        assert all(j.attempts == 1 for j in await q.claim(OWNER, 3, LEASE, KB))


def tagged(name: str, tags: str | None, size: int = 10, **kw: str) -> ScanRow:
    return ScanRow(f"/data/{name}".encode(), name, size, 1000, tags=tags, **kw)


@async_test
async def test_what_an_enqueue_asks_of_the_entry_is_kept_per_job(queue_target: str) -> None:
    hr, ops = encode(["hr"], {"source": "nas"}), encode(["ops"], {})
    parser = "6f1c2a34-0d3b-4c1e-9a5e-2f3b4c5d6e7f"
    async with await open_queue(queue_target) as q:
        await q.enqueue_batch(
            KB, [tagged("a", hr, parser=parser, display_name="A.pdf"), tagged("b", None)]
        )
        a, b = await q.claim(OWNER, 2, LEASE, KB)
        assert (a.tags, a.parser, a.display_name, a.file_id) == (hr, parser, "A.pdf", None)
        assert (b.tags, b.parser, b.display_name) == (None, None, None)
        await q.record_outcomes(
            OWNER,
            [outcome(j, OutcomeKind.DONE, file_id=f"file-{j.relpath}") for j in (a, b)],
        )
        # Asking the same again, or nothing, changes nothing; asking other tags of an
        # uploaded file puts it back for update-metadata only, its entry kept.
        same = await q.enqueue_batch(KB, [tagged("a", hr), tagged("b", None)])
        assert (same.unchanged, same.relabel) == (2, 0)
        assert await q.enqueue_batch(KB, [tagged("b", EMPTY)]) == EnqueueCounts(
            scanned=1, unchanged=1
        ), "b was registered without labels or metadata: its entry carries EMPTY"
        again = await q.enqueue_batch(KB, [tagged("a", ops), tagged("b", hr)])
        assert (again.unchanged, again.relabel, again.changed) == (2, 2, 0)
        assert await states(q) == {"pending": 2}
        a2, b2 = await q.claim(OWNER, 2, LEASE, KB)
        assert (a2.step, a2.file_id, a2.tags, a2.parser) == (Step.METADATA, "file-a", ops, parser)
        assert (b2.step, b2.file_id, b2.tags) == (Step.METADATA, "file-b", hr)
        # A failed update-metadata goes back as one: its file is not uploaded again.
        await q.record_outcomes(
            OWNER,
            [
                outcome(a2, OutcomeKind.DONE, file_id="file-a"),
                outcome(b2, OutcomeKind.FAILED, error_kind=ErrorKind.HTTP_4XX),
            ],
        )
        assert await q.retry_failed(None, [], None) == 1
        [b3] = await q.claim(OWNER, 2, LEASE, KB)
        assert (b3.id, b3.step, b3.file_id) == (b.id, Step.METADATA, "file-b")
        # A pending row takes new tags for its register; a changed file is uploaded anew
        # with the tags it had unless others are asked.
        await q.record_outcomes(OWNER, [outcome(b3, OutcomeKind.RELEASED)])
        await q.enqueue_batch(KB, [tagged("b", ops), tagged("a", None, size=11)])
        a4, b4 = await q.claim(OWNER, 2, LEASE, KB)
        assert (a4.step, a4.file_id, a4.tags) == (None, None, ops)
        assert (b4.step, b4.tags) == (Step.METADATA, ops)


@async_test
async def test_a_doubtful_register_adopts_only_a_new_unowned_entry(queue_target: str) -> None:
    """A listing that shows no keys leaves name, size and time: only a new entry nobody owns
    (other jobs of the same name are told apart by the caller: an infinite `since` while a
    register of that name is in flight)."""
    async with await open_queue(queue_target) as q:
        listing = ListingStore(q.engine)
        await done_jobs(q, "owned")
        await q.enqueue_batch(KB, rows("x", "sub/y", "y2"))
        x, y, _y2 = await q.claim(OWNER, 3, LEASE, KB)
        now = time.time()
        await listing.store_listed(
            [
                listed("file-owned", "x", now, now),
                listed("old", "x", now, now - 100),
                listed("new", "x", now, now),
                listed("y-entry", "y", now, now),
            ]
        )
        assert await listing.any_remote_known(KB, ["nope", "new"])
        assert not await listing.any_remote_known(KB, ["nope"])
        assert await listing.adoptable(KB, x.id, "x", 10, now - 10, "k") == ["new"]
        assert await listing.adoptable(KB, x.id, "x", 11, now - 10, "k") == []
        assert await listing.adoptable(KB, y.id, "y", 10, now - 10, "k") == ["y-entry"]
        await q.enqueue_batch(KB, rows("other/y"))
        assert await listing.adoptable(KB, y.id, "y", 10, now - 10, "k") == ["y-entry"]
        assert await listing.adoptable(KB, y.id, "y", 10, math.inf, "k") == []


@async_test
async def test_where_the_listing_shows_keys_only_the_key_adopts(queue_target: str) -> None:
    """Same name, same size, newer: still another file's entry when its key differs. A
    URL-shaped `file` (docs dialect) names the key by ending with it."""
    async with await open_queue(queue_target) as q:
        listing = ListingStore(q.engine)
        now = time.time()
        key = "media/chatbots/chatbot-file/ab12.txt"
        await listing.store_listed(
            [
                ListedRow(KB, "other", "x", 10, "done", now, now, "media/chatbots/x/ff99.txt"),
                ListedRow(KB, "mine", "renamed", 99, "done", now - 500, now, "cdn/" + key),
            ]
        )
        assert await listing.adoptable(KB, 1, "x", 10, now - 10, key) == ["mine"]
        assert await listing.adoptable(KB, 1, "x", 10, now - 10, "chatbot-file/zz.txt") == []
        assert await listing.adoptable(KB, 1, "x", 10, now - 10, "b12.txt") == []


@async_test
async def test_a_listing_is_matched_to_the_done_jobs(queue_target: str) -> None:
    async with await open_queue(queue_target) as q:
        listing = ListingStore(q.engine)
        await done_jobs(q, "a", "b")
        old, now = time.time() - 50, time.time()
        await listing.store_listed([listed("stale", "s", old)])
        await listing.store_listed([listed("file-a", "a", now), listed("extra", "e", now)])
        assert await listing.unseen_job_entries(KB, now) == ["file-b"]
        await listing.forget_unseen(KB, now)
        assert not await listing.any_remote_known(KB, ["stale"])
        await listing.match_remote(KB, now)
        assert await listing.job_remote_counts(KB) == {"done": 1, "missing": 1}
        assert await listing.remote_status_counts(KB, now) == {"done": 2}
        assert await listing.not_uploaded_count(KB) == 0
        assert await listing.extra_count(KB, now, []) == 1
        assert await listing.extra_count(KB, now, ["extra"]) == 0
        await listing.forget_remote(KB, ["extra"])
        assert await listing.extra_count(KB, now, []) == 0


@async_test
async def test_a_verification_keeps_its_lists_until_the_next(queue_target: str) -> None:
    async with await open_queue(queue_target) as q:
        listing = ListingStore(q.engine)
        [a, _b] = await done_jobs(q, "a", "b")
        now = time.time()
        await listing.store_listed(
            [listed("file-a", "a", now, 1), listed("copy", "a", now, 2), listed("e", "e", now)]
        )
        await listing.match_remote(KB, now)
        candidates = await listing.duplicate_candidates(KB, now)
        assert [(c.id, c.job_id) for c in candidates] == [("file-a", a.id), ("copy", None)]
        dup = DuplicateItem(a.id, "copy", "a", 10, "done", "file-a")
        vid = await listing.record_verification(KB, now, {"ok": False}, [dup], ["copy"])
        missing = [i async for i in StatusStore(q.engine).verification_items(vid, "missing")]
        assert [(i.file_id, i.path) for i in missing] == [("file-b", b"/data/b")]
        assert [
            i.file_id async for i in StatusStore(q.engine).verification_items(vid, "extra")
        ] == ["e"]
        [copy] = [i async for i in StatusStore(q.engine).verification_items(vid, "duplicate", 5)]
        assert (copy.file_id, copy.kept_id, copy.path) == ("copy", "file-a", b"/data/a")
        [last] = await StatusStore(q.engine).last_verifications()
        assert (last["id"], last["counts"]) == (vid, {"ok": False})
        newer = await listing.record_verification(KB, now, {"ok": True}, [], [])
        assert [i async for i in StatusStore(q.engine).verification_items(vid, "missing")] == []
        assert [v["id"] for v in await StatusStore(q.engine).last_verifications()] == [newer]


@async_test
async def test_copies_are_told_by_the_keys_jobs_uploaded(queue_target: str) -> None:
    async with await open_queue(queue_target) as q:
        listing = ListingStore(q.engine)
        await q.enqueue_batch(KB, rows("a", "b"))
        a, b = await q.claim(OWNER, 2, LEASE, KB)
        await q.record_outcomes(
            OWNER,
            [
                outcome(a, OutcomeKind.DONE, file_id="file-a", s3_key="k/a", filename="a"),
                outcome(b, OutcomeKind.UPLOADED, s3_key="k/b"),
            ],
        )
        now = time.time()
        await listing.store_listed(
            [
                ListedRow(KB, "file-a", "a", 10, "done", now - 9, now, "k/a"),
                ListedRow(KB, "copy", "a", 10, "done", now - 5, now, "http/k/a"),
                ListedRow(KB, "nokey", "a", 10, "done", now - 4, now, None),
                ListedRow(KB, "stale", "s", 10, "done", now - 3, now - 60, "k/s"),
            ]
        )
        assert [(e.id, e.file_key) for e in await listing.unowned_keyed(KB, now)] == [
            ("copy", "http/k/a")
        ]
        owners = await listing.key_owners(KB, ["k/a", "k/b", "k/none"])
        assert [(o.key, o.job_id, o.state, o.file_id) for o in owners] == [
            ("k/a", a.id, "done", "file-a"),
            ("k/b", b.id, "running", None),
        ]
        assert await listing.key_owners("kb-other", ["k/a"]) == []


@async_test
async def test_an_entry_found_in_doubt_is_remembered_superseded_at_once_by_its_holder(
    queue_target: str,
) -> None:
    """Recorded with the key and name the row still holds, by its lease holder only; due
    once the job is done with another entry, not before."""
    async with await open_queue(queue_target) as q:
        await q.enqueue_batch(KB, rows("a"))
        [a] = await q.claim(OWNER, 1, LEASE, KB)
        a.s3_key, a.filename = "key-old", "a"
        assert await q.begin_register(OWNER, [a], time.time()) == {a.id}
        await q.record_superseded("host:9:intruder", a.id, "file-elsewhere")
        await q.record_superseded(OWNER, a.id, "file-old")
        await q.record_outcomes(OWNER, [outcome(a, OutcomeKind.RELEASED)])
        assert (
            await SupersededStore(q.engine).superseded_due(KB) == []
        )  # the new version is not registered yet
        [again] = await q.claim(OWNER, 1, LEASE, KB)
        await q.record_outcomes(OWNER, [outcome(again, OutcomeKind.DONE, file_id="file-new")])
        assert await SupersededStore(q.engine).superseded_due(KB) == [
            Superseded(KB, "file-old", a.id, "a", "file-new")
        ]


@async_test
async def test_a_skipped_outcome_keeps_its_reason_and_hash_and_uploads_are_found_by_hash(
    queue_target: str,
) -> None:
    async with await open_queue(queue_target) as q:
        await q.enqueue_batch(KB, rows("a", "b", "c"))
        a, b, c = await q.claim(OWNER, 3, LEASE, KB)
        a.content_hash = b.content_hash = "h1"
        await q.record_outcomes(
            OWNER,
            [
                outcome(a, OutcomeKind.DONE, file_id="file-a"),
                outcome(b, OutcomeKind.SKIPPED, error="same content as a", error_kind="skipped"),
            ],
        )
        assert await StatusStore(q.engine).content_counts() == {KB: {"hashed": 1}}
        assert await q.uploaded_as(KB, "h1", b.id) == "a"
        assert await q.uploaded_as(KB, "h1", a.id) is None  # itself does not count
        assert await q.uploaded_as("kb-other", "h1", c.id) is None
        assert await states(q) == {"done": 1, "skipped": 1, "running": 1}
        [skipped] = [r async for r in StatusStore(q.engine).report_rows("skipped")]
        assert (skipped.path, skipped.reason) == (b"/data/b", "same content as a")


@async_test
async def test_remote_retry_requeues_jobs_still_pointing_at_their_entry(queue_target: str) -> None:
    async with await open_queue(queue_target) as q:
        listing = ListingStore(q.engine)
        [a, b] = await done_jobs(q, "a.pdf", "b.txt")
        now = time.time()
        await listing.store_listed([listed("file-a.pdf", "a.pdf", now)])
        await listing.match_remote(KB, now)
        await listing.set_remote_status([RemoteStatus("failed", a.id)])
        found = await q.remote_retry_candidates(None, None)
        assert [(c.job_id, c.remote_status) for c in found] == [(a.id, "failed"), (b.id, "missing")]
        assert [c.filename for c in found] == ["a.pdf", "b.txt"]
        only_pdf = await q.remote_retry_candidates(KB, lambda rel: rel.endswith(".pdf"))
        assert [c.job_id for c in only_pdf] == [a.id]
        moved = RequeueItem(b.id, KB, "another-entry")
        assert await q.requeue_remote([RequeueItem(a.id, KB, "file-a.pdf"), moved]) == 1
        assert not await listing.any_remote_known(KB, ["file-a.pdf"])
        assert await states(q) == {"pending": 1, "done": 1}


@async_test
async def test_forget_counts_then_deletes_all_but_running_rows(queue_target: str) -> None:
    async with await open_queue(queue_target) as q:
        await q.enqueue_batch(KB, rows("a.pdf", "b.pdf", "c.txt", "d.pdf"))
        await q.enqueue_batch("kb-other", rows("a.pdf"))
        (held,) = await q.claim(OWNER, 1, LEASE, KB)  # the first in id order

        def pdfs(relpath: str) -> bool:
            return relpath.endswith(".pdf")

        dry = await q.forget_jobs(KB, pdfs, apply=False)
        assert await states(q) == {"pending": 3, "running": 1}
        applied = await q.forget_jobs(KB, pdfs, apply=True)

        assert held.relpath == "a.pdf"
        assert dry == applied == {"pending": 2, "running": 1}
        assert await states(q) == {"pending": 1, "running": 1}
        assert await states(q, "kb-other") == {"pending": 1}
        assert await q.forget_jobs(KB, None, apply=False) == {"pending": 1, "running": 1}


@async_test
async def test_forgettable_lists_what_forget_would_drop_in_relpath_order(
    queue_target: str,
) -> None:
    async with await open_queue(queue_target) as q:
        await q.enqueue_batch(KB, rows("d.pdf", "b.pdf", "c.txt", "a.pdf"))
        await q.enqueue_batch("kb-other", rows("0.pdf"))
        (held,) = await q.claim(OWNER, 1, LEASE, KB)  # d.pdf: running, never dropped

        def pdfs(relpath: str) -> bool:
            return relpath.endswith(".pdf")

        listed = await q.forgettable(KB, pdfs, None)
        first = await q.forgettable(KB, None, 2)

        assert held.relpath == "d.pdf"
        assert [(relpath, state) for relpath, state, _size in listed] == [
            ("a.pdf", "pending"),
            ("b.pdf", "pending"),
        ]
        assert [relpath for relpath, _state, _size in first] == ["a.pdf", "b.pdf"]


@async_test
async def test_entries_listed_with_other_tags_are_counted_and_taken_as_applied(
    queue_target: str,
) -> None:
    hr = encode(["hr"], {"source": "nas"})
    async with await open_queue(queue_target) as q:
        listing = ListingStore(q.engine)
        await q.enqueue_batch(KB, [tagged("a", hr), tagged("b", hr), tagged("c", None)])
        jobs = await q.claim(OWNER, 3, LEASE, KB)
        await q.record_outcomes(
            OWNER, [outcome(j, OutcomeKind.DONE, file_id=f"file-{j.relpath}") for j in jobs]
        )
        now = time.time()
        await listing.store_listed(
            [
                ListedRow(KB, "file-a", "a", 10, "done", now, now, None, encode(["x"], {})),
                ListedRow(KB, "file-b", "b", 10, "done", now, now, None, hr),
                ListedRow(KB, "file-c", "c", 10, "done", now, now, None, encode(["y"], {})),
            ]
        )
        count, [mismatch] = await listing.record_tag_mismatches(KB, now, 5)
        assert count == 1, "c asked nothing: not compared"
        assert mismatch == TagMismatch("a", "file-a", hr, encode(["x"], {}))
        again = await q.enqueue_batch(KB, [tagged("a", hr), tagged("b", hr)])
        assert again.relabel == 1, "a's entry does not carry what it asks: sent again"


@async_test
async def test_the_counts_per_knowledge_base_host_and_entry_status_agree(
    queue_target: str,
) -> None:
    """`status` and the end of a run read the counts per knowledge base, per host and per
    entry status from one tally of the rows: each view sums the same rows."""
    other = "kb-two"
    async with await open_queue(queue_target, scope=HostScope("host-a")) as a:
        await a.enqueue_batch(KB, rows("a1", "a2", "a3", size=3))
        await a.enqueue_batch(other, rows("a4", size=5))
        a1, a2, _a3 = await a.claim(OWNER, 3, LEASE, KB)
        await a.record_outcomes(
            OWNER,
            [
                outcome(a1, OutcomeKind.DONE, file_id="file-a1", filename="a1"),
                outcome(a2, OutcomeKind.FAILED, error_kind=ErrorKind.HTTP_4XX, error="HTTP 400"),
            ],
        )
    async with await open_queue(queue_target, scope=HostScope("host-b", shared=True)) as b:
        await b.enqueue_batch(KB, rows("b1", "b2", size=7))
        await b.enqueue_batch(other, rows("b3", size=11))
    async with await open_queue(queue_target, scope=HostScope("host-b")) as b:
        [b3] = await b.claim(OWNER, 1, LEASE, other)
        await b.record_outcomes(OWNER, [outcome(b3, OutcomeKind.DONE, file_id="file-b3")])
        await ListingStore(b.engine).set_remote_status([RemoteStatus("done", b3.id)])
        reads = StatusStore(b.engine)
        tally = await reads.tally()
        assert tally.states() == await reads.state_counts()
        assert tally.states() == {
            KB: {"done": (1, 3), "failed": (1, 3), "running": (1, 3), "pending": (2, 14)},
            other: {"pending": (1, 5), "done": (1, 11)},
        }
        assert tally.hosts() == [
            HostCount("host-a", False, "done", 1),
            HostCount("host-a", False, "failed", 1),
            HostCount("host-a", False, "pending", 1),
            HostCount("host-a", False, "running", 1),
            HostCount("host-b", True, "done", 1),
            HostCount("host-b", True, "pending", 2),
        ]
        assert tally.parsed() == {KB: {"unseen": 1}, other: {"done": 1}}
        assert (tally.files_in(JobState.DONE), tally.files_in(JobState.PENDING)) == (2, 3)
        assert await reads.error_kind_counts() == {"http_4xx": 1}
