"""Reading the knowledge base back: the listing kept in the remote_files table, refreshed
incrementally, and the lookups that decide whether a doubtful register took effect; then
verify (full listing, matched to the jobs), dedupe and the remote retry."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from . import tags
from .client import (
    FilePage,
    MaiAgentClient,
    RateLimiter,
    RemoteEntry,
    make_session,
)
from .errors import ApiError
from .i18n import _
from .model import (
    Deletion,
    DeletionReason,
    DuplicateItem,
    Entry,
    ErrorKind,
    Job,
    JobState,
    ListedRow,
    QueuedFile,
    RemoteRetryCandidate,
    RemoteStatus,
    RequeueItem,
    Severity,
    SupersededEntry,
)
from .queue import Queue, QueueError
from .retrying import Retry, retrying
from .store.listing import ListingStore
from .store.parse import ParseStore
from .store.status import StatusStore
from .store.superseded import SupersededStore

T = TypeVar("T")

log = logging.getLogger("uploader.reconcile")

# How far apart the service's clock and ours may be beyond what its answers' Date headers
# told (`ServiceClock.uncertainty`): entries this much older than a listing's start are
# looked for again by the next refresh.
CLOCK_SKEW = 5.0
PAGE_SIZE = 100
# Where the listing is not newest first, a doubt is settled by reading it whole: such reads
# begin at most once per this many seconds (or the last one's length, if longer), and each
# settles every doubt that was waiting for it.
FULL_READ_GAP = 10.0


@dataclass
class _Coverage:
    started: float  # when the last refresh began (our clock)
    floor: float  # every entry created (service clock) between floor and then is stored
    # the entries on page 1 of that refresh: the next one that meets one of them has reached
    # what this one read. An entry merely stored proves nothing of the kind: another run (a
    # host sharing the queue) stores what its listings read, down to its own doubts only.
    top: frozenset[str] = frozenset()


@dataclass
class _Look:
    """What one knowledge base's listing showed lately, for deciding how to read it next."""

    unordered: bool = False  # the last refresh saw an entry out of order: it read to the end
    said: bool = False  # that was said in the log
    full_after: float = 0.0  # no full read is begun before this (our clock)
    keyless: bool = False  # the listing shows entries without their S3 key (`file`)


class RemoteIndex:
    """Where the listing is newest first (the docs say so; each refresh checks it again), a
    refresh reads only the pages created since the oldest doubt it must settle, and stops
    where the previous refresh began. Where it is not, or where the service's clock is not
    known, a refresh reads the whole listing, and those reads are rate-limited: a doubt that
    must wait for one is told when (`next_full_read`)."""

    def __init__(self, q: Queue, client: MaiAgentClient) -> None:
        self._queue = q
        self._listing = ListingStore(q.engine)
        self._client = client
        self._lock = asyncio.Lock()
        self._coverage: dict[str, _Coverage] = {}
        self._looks: dict[str, _Look] = {}
        self._doubts: dict[str, float] = {}  # the earliest doubt settled, per knowledge base
        self.taken: set[str] = set()  # knowledge-file ids some job of this process owns
        # filenames of registers this process has sent and not yet had answered: an entry
        # listed without its key and with such a name may be theirs, not a doubt's
        self.registering: Counter[str] = Counter()

    def registered(self, names: Iterable[str]) -> None:
        """These registers were answered (or failed): no longer in flight."""
        for name in names:
            left = self.registering[name] - 1
            if left > 0:
                self.registering[name] = left
            else:
                del self.registering[name]

    def service_time(self, ours: float) -> float:
        """The earliest service time that may correspond to `ours` (-inf while unknown)."""
        clock = self._client.clock
        if not clock.known:
            return -math.inf
        return clock.to_service(ours) - clock.uncertainty - CLOCK_SKEW

    def next_full_read(self, kb_id: str) -> float:
        """When a refresh that reads the whole listing may begin (our clock)."""
        look = self._looks.get(kb_id)
        return look.full_after if look is not None else 0.0

    async def refresh(
        self, kb_id: str, floor: float, needed_after: float, *, force: bool = False
    ) -> bool:
        """Make sure every entry created since `floor` (our clock) is stored, as seen by a
        listing that began after `needed_after`. False when that needs a whole read and one
        may not begin yet (unless `force`): nothing is proven then."""
        async with self._lock:
            stop_at = self.service_time(floor)
            cov = self._coverage.get(kb_id)
            if cov and cov.started >= needed_after and cov.floor <= stop_at:
                return True
            look = self._looks.setdefault(kb_id, _Look())
            whole = look.unordered or stop_at == -math.inf
            if whole and not force and time.time() < look.full_after:
                return False
            started = time.time()
            # Below an entry the last refresh began with, everything down to its floor is known.
            contiguous = cov is not None and cov.floor <= stop_at
            known = cov.top if cov is not None and contiguous else frozenset()
            to_end, top = await self._read_newest(kb_id, stop_at, started, known, look)
            if to_end:
                stop_at = -math.inf
            if to_end and (look.unordered or whole):
                look.full_after = time.time() + max(FULL_READ_GAP, time.time() - started)
            new_floor = min(cov.floor, stop_at) if cov is not None and contiguous else stop_at
            self._coverage[kb_id] = _Coverage(started, new_floor, top)
            return True

    async def _read_newest(
        self, kb_id: str, stop_at: float, seen_at: float, known: frozenset[str], look: _Look
    ) -> tuple[bool, frozenset[str]]:
        """Read from page 1 down to `stop_at` (service clock), or to one of the `known`
        entries (where the previous refresh began), or to the end where the pages read so far
        do not prove newest first; True when it read to the end, and the entries of page 1.
        Pages shift while they are read (this run registers at the top meanwhile), so an entry
        already seen on an earlier page is no evidence of disorder; one not seen before that is
        newer than the previous page's oldest is."""
        page = 1
        previous: float | None = None  # the oldest createdAt of the page before
        seen: set[str] = set()
        top: frozenset[str] = frozenset()
        look.unordered = False
        while True:
            data = await _call(self._client.list_files, kb_id, page, PAGE_SIZE)
            results = data.entries
            if not look.unordered and not _continues_newest_first(data, previous, seen):
                look.unordered = True
                if not look.said:
                    look.said = True
                    log.warning(
                        "knowledge base %s does not list newest first: a doubtful register"
                        " is settled by reading its whole listing (at most one such read"
                        " every %.0f s, settling every doubt waiting)",
                        kb_id,
                        FULL_READ_GAP,
                    )
            look.keyless = look.keyless or any(e.key is None for e in results)
            ordered = not look.unordered
            if page == 1:
                top = frozenset(e.id for e in results)
            # an entry this listing showed already is on this page because pages shifted
            reached = ordered and any(e.id in known and e.id not in seen for e in results)
            if results:
                await self._listing.store_listed(listed_rows(kb_id, results, seen_at, seen))
            times = [e.created_at for e in results if e.created_at is not None]
            previous = min(times) if times else previous
            oldest = (results[-1].created_at or 0.0) if results else 0.0
            early = reached or (ordered and oldest < stop_at)
            if not data.next or not results:
                return True, top
            if early:
                return False, top
            page += 1

    async def recheck(self, kb_id: str, began: float) -> None:
        """The run's last look for second entries of one upload (`delete_copies`), which only
        a register in doubt can have made, at or after the earliest doubt settled (the run's
        start where none was): the listing is read down to that doubt, not to the run's start,
        which would read every entry others made meanwhile. Newest first, it is a listing
        begun now (a register that landed after its doubt was settled is in it), most often
        one page; otherwise a whole read, taken from earlier in the run where there was one."""
        floor = self._doubts.get(kb_id, began)
        look = self._looks.get(kb_id)
        ordered = look is not None and not look.unordered
        await self.refresh(kb_id, floor, time.time() if ordered else began, force=True)

    async def adopt(self, job: Job, filename: str) -> Adoption:
        """The entry a doubtful register of `job`'s key created, if the listing shows one."""
        assert job.s3_key is not None, "a row without a committed key never registered"
        since = job.unknown_since or job.started_at
        self._doubts[job.kb_id] = min(since, self._doubts.get(job.kb_id, since))
        # a listing read for other doubts may show it already (one read settles them all)
        found = await self._stored(job, filename, since)
        if found is not None:
            return Adoption(found, covered=True)
        if not await self.refresh(job.kb_id, since, job.started_at):
            return Adoption(None, covered=False)
        found = await self._stored(job, filename, since)
        confusable = self._confusable(job.kb_id, filename)
        return Adoption(found, covered=found is not None or not confusable)

    def _confusable(self, kb_id: str, filename: str) -> bool:
        """An entry listed without its key is matched by name, size and time, unless a
        register of that name is in flight: its entry would be indistinguishable."""
        look = self._looks.get(kb_id)
        return look is not None and look.keyless and self.registering[filename] > 0

    async def _stored(self, job: Job, filename: str, since: float) -> str | None:
        """The stored listing's entry for the doubt, which becomes the job's."""
        confusable = self._confusable(job.kb_id, filename)
        keyless_since = math.inf if confusable else self.service_time(since)
        assert job.s3_key is not None
        for file_id in await self._listing.adoptable(
            job.kb_id, job.id, filename, job.size, keyless_since, job.s3_key
        ):
            if file_id not in self.taken:
                self.taken.add(file_id)
                return file_id
        return None


@dataclass(frozen=True)
class Adoption:
    """What the listing showed of a doubtful register: its entry (`file_id`), or none, which
    proves nothing unless `covered` (the listing since the doubt was read, and no register of
    the same name was in flight to be confused with it)."""

    file_id: str | None
    covered: bool


def _continues_newest_first(page: FilePage, previous: float | None, seen: set[str]) -> bool:
    """createdAt never increases down this page, nor from the page before to an entry of this
    one not seen on an earlier page of the same listing."""
    if not page.newest_first():
        return False
    if previous is None:
        return True
    return all(
        e.created_at is None or e.created_at <= previous or e.id in seen for e in page.entries
    )


# --- verify, dedupe, remote retry ------------------------------------------------------------

LIST_CONCURRENCY = 8
LIST_PAGE_SIZE = 100
LISTING_TRIES = 3  # a listing that changed while it was read is read again, this many times
CALLS = Retry(tries=5, first=0.5)  # a call safe to repeat (a read, a delete)
DELETES = Retry(tries=4, first=0.5)  # a delete whose error answer is checked by a read
BATCH_DELETE = 100
WAIT_FIRST = 0.25
WAIT_MAX = 15.0
GONE_BATCH = 1000  # uploaded files looked for on disk per thread hop
TAG_EXAMPLES = 5  # entries whose labels or metadata differ, named in a verify's counts
STATUSES = ("initial", "processing", "done", "failed")
UNSETTLED = ("initial", "processing")
# Being deleted: listed, but neither present nor gone yet; verify --wait waits for it too.
DELETING = "deleting"
# Gone, though a listing may still show it: never stored as an entry.
DELETED = "deleted"


class ReadProgress(Protocol):
    """What verify and dedupe tell as they read the knowledge base back, for the CLI to
    draw: the library reports, the CLI draws (None where they are given none: nothing)."""

    def listing(self, kb_id: str, stored: int, total: int) -> None:
        """A full listing of `total` entries has stored `stored` of them so far."""

    def listing_done(self, kb_id: str) -> None:
        """That listing ended (complete or not, or by an error)."""

    def parsing(self, kb_id: str, files: dict[str, int]) -> None:
        """verify --wait, after each listing: this database's files per remote status."""

    def parsing_done(self, kb_id: str) -> None:
        """verify --wait stopped waiting (all parsed, timed out, or an error)."""


@contextlib.asynccontextmanager
async def open_client(
    base_url: str, api_key: str, timeout: float = 60.0
) -> AsyncIterator[MaiAgentClient]:
    """A client for the commands that read the knowledge base back, pooled for the listing."""
    async with make_session(LIST_CONCURRENCY) as session:
        yield MaiAgentClient(session, base_url, api_key, RateLimiter(None), timeout=timeout)


def transient(exc: Exception) -> bool:
    """An answer worth asking again for (a 5xx, a timeout, a 429 past the client's own
    re-sends), as opposed to a refusal or a bad request."""
    return isinstance(exc, ApiError) and exc.transient


def _retrying_said(exc: Exception, _retry: int) -> None:
    log.info("retrying: %s", exc)


async def _call(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """A call that is safe to repeat (reads, deletes): transient errors are retried."""
    return await retrying(lambda: fn(*args), CALLS, transient, _retrying_said)


async def each(items: Iterable[T], fn: Callable[[T], Awaitable[None]]) -> None:
    """`fn` over `items`, LIST_CONCURRENCY at a time; the first error stops the others."""
    shared = iter(items)

    async def lane() -> None:
        for item in shared:
            await fn(item)

    tasks = [asyncio.create_task(lane()) for _ in range(LIST_CONCURRENCY)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# --- the full listing ---


@dataclass
class Listing:
    """A full listing of one knowledge base, stored in remote_files with seen_at = started."""

    kb_id: str
    started: float
    entries: int
    complete: bool  # every page agreed on the count and every entry was seen


def listed_rows(
    kb_id: str, results: Sequence[RemoteEntry], seen_at: float, seen: set[str]
) -> list[ListedRow]:
    """The per-entry work of a verify: keep it to building one tuple."""
    rows = []
    for e in results:
        if e.status == DELETED:
            continue  # not an entry any more: what it was is missing
        seen.add(e.id)
        created = e.created_at if e.created_at is not None else 0.0
        rows.append(
            ListedRow(kb_id, e.id, e.filename, e.size, e.status, created, seen_at, e.key, _tags(e))
        )
    return rows


def _tags(entry: RemoteEntry) -> str | None:
    """What the listing shows of an entry's labels and metadata, as uploader.tags encodes a
    job's (label names; an id where the listing gives no name); None when it shows neither,
    so that verify compares only what it saw."""
    if entry.metadata is None and not entry.labels:
        return None
    names = [label.name or label.id for label in entry.labels]
    return tags.encode(names, entry.metadata or {})


async def _read_listing(
    q: Queue, client: MaiAgentClient, kb_id: str, progress: ReadProgress | None
) -> Listing:
    """Page 1 gives the count, then the other pages are fetched LIST_CONCURRENCY at a time.

    The page size is what the service actually returned on page 1 (it may cap the one asked
    for). Pages shift when entries come or go meanwhile; then the counts disagree or entries
    are not all seen, and the listing is marked incomplete. The count is believed only as far
    as the pages bear it out: a page past the end (a 404, an empty page) or one without a
    `next` ends the listing, whatever the count said (a stale cache may claim 10^12), and
    pages are asked for a wave at a time, never all the count implies at once.
    """
    remote_files = ListingStore(q.engine)
    started = time.time()
    seen: set[str] = set()
    first = await _call(client.list_files, kb_id, 1, LIST_PAGE_SIZE)
    count, results = first.count, first.entries
    if count is None:
        raise ApiError(
            _("list files: no count in the answer"),
            kind=Severity.TRANSIENT,
            error_kind=ErrorKind.BAD_RESPONSE,
        )
    await remote_files.store_listed(listed_rows(kb_id, results, started, seen))
    pages = math.ceil(count / len(results)) if first.next and results else 1
    counts: set[Any] = {count}
    stored = len(results)
    end = pages + 1  # the first page number past the end, as far as the pages showed
    if progress is not None:
        progress.listing(kb_id, stored, count)

    async def page(number: int) -> None:
        nonlocal stored, end
        try:
            data = await _call(client.list_files, kb_id, number, LIST_PAGE_SIZE)
        except ApiError as err:
            if err.error_kind is not ErrorKind.KB_NOT_FOUND:
                raise
            data = None
        if data is None or not data.entries:
            # past the end: the knowledge base shrank meanwhile, or its count lies
            counts.add(None)
            end = min(end, number)
            return
        if not data.next:
            end = min(end, number + 1)
        counts.add(data.count)
        rows = listed_rows(kb_id, data.entries, started, seen)
        await remote_files.store_listed(rows)
        stored += len(rows)
        if progress is not None:
            progress.listing(kb_id, stored, count)

    try:
        number = 2
        while number < end:
            wave = range(number, min(end, number + LIST_CONCURRENCY))
            await each(wave, page)
            number = wave.stop
    finally:
        if progress is not None:
            progress.listing_done(kb_id)
    complete = len(counts) == 1 and len(seen) == count
    return Listing(kb_id, started, len(seen), complete)


async def _look_up_unseen(q: Queue, client: MaiAgentClient, listing: Listing) -> None:
    """After an incomplete listing, the jobs' entries it did not show are read one by one,
    so that none is called missing because the pages moved under the listing."""
    remote_files = ListingStore(q.engine)
    found: list[RemoteEntry] = []

    async def look(file_id: str) -> None:
        entry = await _call(client.get_file, listing.kb_id, file_id)
        if entry is not None and entry.status != DELETED:
            found.append(entry)

    await each(await remote_files.unseen_job_entries(listing.kb_id, listing.started), look)
    await remote_files.store_listed(listed_rows(listing.kb_id, found, listing.started, set()))
    listing.entries += len(found)


async def list_and_match(
    q: Queue, client: MaiAgentClient, kb_id: str, progress: ReadProgress | None = None
) -> Listing:
    """Replace the stored listing of `kb_id` with a full one and set every done job's
    remote status from it ('missing' when its entry is not there)."""
    remote_files = ListingStore(q.engine)
    for _try in range(LISTING_TRIES):
        listing = await _read_listing(q, client, kb_id, progress)
        if listing.complete:
            await remote_files.forget_unseen(kb_id, listing.started)
            break
        log.info("knowledge base %s changed while it was listed: listing it again", kb_id)
    else:
        log.warning(
            "knowledge base %s kept changing while it was listed: looking up the entries of "
            "this database's files that the listing did not show",
            kb_id,
        )
        await _look_up_unseen(q, client, listing)
    await remote_files.match_remote(kb_id, listing.started)
    await ParseStore(q.engine).seen(kb_id, listing.started)
    return listing


# --- duplicates ---


@dataclass
class DuplicateGroup:
    """Entries of which `keep` stays and `surplus` is what dedupe deletes.

    With a `job_id` the surplus are provably that job's copies: registered with the S3 key the
    job uploaded (a lost answer, an earlier run). Without one they are entries of unknown
    origin that merely share a filename and size, which proves nothing (two different
    documents can): only `dedupe --include-extra` deletes those, with a warning."""

    filename: str
    size: int | None
    keep: str  # the entry id that stays
    surplus: list[Entry]
    job_id: int | None = None

    @property
    def extra(self) -> bool:
        """Not this database's: entries of unknown origin grouped by name and size."""
        return self.job_id is None


@dataclass
class Copies:
    """What a listing shows beyond one entry per job: `groups` (provable copies, per job),
    `unknown` (name-and-size groups among entries of unknown origin that share no name and
    size with a job's entry), and `ours` (every listed entry made for a job of this database
    that the job does not point to: its copies, and entries a job still settling may adopt)."""

    groups: list[DuplicateGroup]
    unknown: list[DuplicateGroup]
    ours: set[str]
    superseded: list[SupersededEntry]  # old versions of changed files, still listed

    @property
    def surplus(self) -> list[str]:
        return [e.id for g in self.groups for e in g.surplus]


def key_forms(file_key: str) -> list[str]:
    """The S3 keys a listed `file` may have been registered with, longest first: the path
    itself or any of its tails after a "/" (a media URL's path ends with the key), as
    `client.key_matches` decides."""
    parts = file_key.lstrip("/").split("/")
    return ["/".join(parts[i:]) for i in range(len(parts))]


async def find_copies(q: Queue, kb_id: str, since: float) -> Copies:
    """Sort the listing begun at `since` into provable copies and the rest.

    Two entries are copies only when this database can prove it: an entry no job points to
    but whose S3 key a job uploaded was made for that job. Entries of *different* jobs are
    never copies, whatever their name and size; an entry whose key belongs to a job not done
    yet is left to that job (it may be adopting it right now). A changed file's old version
    is no copy either: it is superseded, for `run` to delete (`replace.py`)."""
    remote_files = ListingStore(q.engine)
    superseded = await SupersededStore(q.engine).superseded_listed(kb_id, since)
    unowned = await remote_files.unowned_keyed(kb_id, since)
    wanted = sorted({k for e in unowned for k in key_forms(e.file_key)})
    owners = {o.key: o for o in await remote_files.key_owners(kb_id, wanted)}
    groups: dict[int, DuplicateGroup] = {}
    ours = {e.entry_id for e in superseded}
    for e in unowned:
        owner = next((owners[k] for k in key_forms(e.file_key) if k in owners), None)
        if owner is None or e.id in ours:
            continue
        ours.add(e.id)
        if owner.state != JobState.DONE or owner.file_id is None:
            continue
        group = groups.setdefault(
            owner.job_id, DuplicateGroup(e.filename, e.size, owner.file_id, [], owner.job_id)
        )
        group.surplus.append(Entry(e.id, e.filename, e.size, e.status, e.created_at, None))
    candidates = await remote_files.duplicate_candidates(kb_id, since)
    owned = [e for e in candidates if e.job_id is not None]
    unknown = [
        e
        for e in candidates
        if e.job_id is None and e.id not in ours and not any(_alike(e, o) for o in owned)
    ]
    return Copies(list(groups.values()), duplicate_groups(unknown), ours, superseded)


def _alike(a: Entry, b: Entry) -> bool:
    """Same name and size as far as the listing tells (an unknown size may be either)."""
    return a.filename == b.filename and (a.size is None or b.size is None or a.size == b.size)


def duplicate_groups(entries: Iterable[Entry]) -> list[DuplicateGroup]:
    """Group entries of unknown origin (ordered by filename, then age) by name and size."""
    by_name: dict[str, list[Entry]] = {}
    for entry in entries:
        by_name.setdefault(entry.filename, []).append(entry)
    groups = []
    for name, members in by_name.items():
        for size, same in _by_size(members).items():
            if len(same) > 1:
                keep = next((e for e in same if e.status == "done"), same[0])
                surplus = [e for e in same if e.id != keep.id]
                groups.append(DuplicateGroup(name, size, keep.id, surplus))
    return groups


def _by_size(members: list[Entry]) -> dict[int | None, list[Entry]]:
    """Entries of unknown size join the group of the one size known under their name; with
    several sizes known they cannot be placed and form a group of their own."""
    by_size: dict[int | None, list[Entry]] = {}
    for entry in members:
        by_size.setdefault(entry.size, []).append(entry)
    unsized = by_size.pop(None, [])
    if unsized and len(by_size) == 1:
        (only,) = by_size.values()
        only.extend(unsized)
        only.sort(key=lambda e: (e.created_at, e.id))
    elif unsized:
        by_size[None] = unsized
    return by_size


# --- verify ---


@dataclass
class Verification:
    kb_id: str
    id: int
    counts: dict[str, Any]

    @property
    def ok(self) -> bool:
        return bool(self.counts["ok"])


async def verify(
    q: Queue,
    client: MaiAgentClient,
    kb_id: str,
    *,
    wait: bool = False,
    timeout: float = 3600.0,
    progress: ReadProgress | None = None,
    repair: bool = True,
) -> Verification:
    """List the knowledge base, match it to the jobs and record what is wrong; with `wait`,
    list again until none of this database's entries is initial/processing or `timeout`.
    With `repair`, second entries of one upload are deleted (`delete_copies`); without, verify
    only reads, and they stay counted as duplicates."""
    remote_files = ListingStore(q.engine)
    deadline = time.monotonic() + timeout
    delay = WAIT_FIRST
    try:
        while True:
            listing = await list_and_match(q, client, kb_id, progress)
            files = await remote_files.job_remote_counts(kb_id)
            unsettled = sum(files.get(s, 0) for s in (*UNSETTLED, DELETING))
            if not wait:
                break
            if progress is not None:
                progress.parsing(kb_id, files)
            left = deadline - time.monotonic()
            if not unsettled or left <= 0:
                break
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 1.5, WAIT_MAX)
    finally:
        if wait and progress is not None:
            progress.parsing_done(kb_id)
    deleted = await delete_copies(q, client, kb_id, listing.started, "verify") if repair else []
    if deleted:
        files = await remote_files.job_remote_counts(kb_id)
    return await _record(q, listing, files, wait and unsettled > 0, len(deleted))


async def _record(
    q: Queue, listing: Listing, files: dict[str, int], timed_out: bool, copies_deleted: int
) -> Verification:
    remote_files = ListingStore(q.engine)
    kb_id, since = listing.kb_id, listing.started
    copies = await find_copies(q, kb_id, since)
    surplus = copies.surplus
    items = [
        DuplicateItem(g.job_id, e.id, e.filename, e.size, e.status, g.keep)
        for g in (*copies.groups, *copies.unknown)
        for e in g.surplus
    ]
    old = [
        DuplicateItem(e.job_id, e.entry_id, e.filename, e.size, e.status, e.replaced_by)
        for e in copies.superseded
    ]
    pending = sum(1 for e in copies.superseded if not e.kept)
    remote = await remote_files.remote_status_counts(kb_id, since)
    not_uploaded = await remote_files.not_uploaded_count(kb_id)
    counts: dict[str, Any] = {
        "entries": listing.entries,
        "remote": _with_statuses(remote),
        "files": _with_statuses(files, "missing"),
        "not_uploaded": not_uploaded,
        "missing": files.get("missing", 0),
        "failed": files.get("failed", 0),
        "extra": await remote_files.extra_count(kb_id, since, sorted(copies.ours)),
        "duplicate_groups": len(copies.groups),
        "duplicates": len(surplus),
        "extra_duplicates": sum(len(g.surplus) for g in copies.unknown),
        "superseded": pending,
        "old_versions_kept": len(old) - pending,
        "complete": listing.complete,
        "timed_out": timed_out,
        "copies_deleted": copies_deleted,  # second entries of one upload (delete_copies)
    }
    gone, gone_examples = await gone_from_disk(q, kb_id)
    counts["gone_from_disk"] = gone
    counts["gone_from_disk_examples"] = gone_examples
    mismatched, examples = await remote_files.record_tag_mismatches(kb_id, since, TAG_EXAMPLES)
    counts["tag_mismatches"] = mismatched
    counts["tag_mismatch_examples"] = [
        {"file": m.relpath, "entry": m.file_id, **_tag_views(m.wanted, m.shown)} for m in examples
    ]
    done = files.get("done", 0) == sum(files.values())
    counts["ok"] = not_uploaded == 0 and not surplus and not pending and done and not mismatched
    vid = await remote_files.record_verification(
        kb_id, since, counts, items, sorted(copies.ours), old
    )
    return Verification(kb_id, vid, counts)


async def gone_from_disk(q: Queue, kb_id: str) -> tuple[int, list[str]]:
    """Uploaded files whose path names nothing any more (a folder renamed or deleted): their
    entries stay (copy semantics) until `enqueue DIR --delete-removed` says otherwise, but a
    user reading "every file is there once" should know. How many, and the first few."""
    gone: list[str] = []
    batch: list[QueuedFile] = []

    def missing(files: list[QueuedFile]) -> list[str]:
        return [f.relpath for f in files if _names_nothing(f.path)]

    async for queued in SupersededStore(q.engine).queued_under(kb_id, b"", q.scope):
        if queued.uploaded:
            batch.append(queued)
        if len(batch) >= GONE_BATCH:
            gone += await asyncio.to_thread(missing, batch)
            batch = []
    gone += await asyncio.to_thread(missing, batch)
    return len(gone), gone[:TAG_EXAMPLES]


def _names_nothing(path: bytes) -> bool:
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False  # unreadable proves nothing
    return False


def _tag_views(wanted: str, shown: str) -> dict[str, Any]:
    want_labels, want_meta = tags.decode(wanted)
    shown_labels, shown_meta = tags.decode(shown)
    return {
        "labels": list(want_labels),
        "metadata": want_meta,
        "entry_labels": list(shown_labels),
        "entry_metadata": shown_meta,
    }


def _with_statuses(counts: dict[str, int], *more: str) -> dict[str, int]:
    """Every usual status present (0 when none), then any other the service reported."""
    shown = {s: counts.get(s, 0) for s in (*STATUSES, *more)}
    shown.update({s: n for s, n in sorted(counts.items()) if s not in shown})
    return shown


# --- deleting entries ---


async def delete_entry(client: MaiAgentClient, kb_id: str, file_id: str) -> tuple[bool, str | None]:
    """Delete one entry: (True, None) once it is gone, (False, status) when it is being
    processed. An error answer is checked by reading the entry back: a 500 may have deleted
    it anyway, a 409 comes while it is processed (then it is left alone). Its own loop over
    the DELETES policy, not `retrying`: between two tries it reads the entry, which may end
    it (gone, or being processed)."""
    for attempt in range(1, DELETES.tries + 1):
        try:
            await client.delete_file(kb_id, file_id)
            return True, None
        except ApiError as err:
            if err.fatal or attempt == DELETES.tries:
                raise
            retry_after = err.retry_after
        entry = await _call(client.get_file, kb_id, file_id)
        if entry is None or entry.status in (DELETING, DELETED):
            return True, None  # a deletion under way ends by itself
        if entry.status in UNSETTLED:
            return False, entry.status
        await asyncio.sleep(DELETES.wait(attempt, retry_after))
    raise AssertionError("unreachable")


async def _delete_many(
    client: MaiAgentClient, kb_id: str, ids: Sequence[str], errors: list[str]
) -> list[str]:
    """Batch-delete in chunks; a chunk whose batch call keeps failing is deleted one by one."""
    deleted: list[str] = []

    async def one(file_id: str) -> None:
        try:
            gone, status = await delete_entry(client, kb_id, file_id)
        except ApiError as err:
            if err.fatal:
                raise
            errors.append(f"{file_id}: {err}")
            return
        if gone:
            deleted.append(file_id)
        else:
            errors.append(f"{file_id}: still {status}, not deleted")

    for start in range(0, len(ids), BATCH_DELETE):
        chunk = list(ids[start : start + BATCH_DELETE])
        try:
            await _call(client.batch_delete, kb_id, chunk)
        except ApiError as err:
            if err.fatal:
                raise
            log.warning("batch delete failed (%s): deleting these one by one", err)
            await each(chunk, one)
        else:
            deleted.extend(chunk)
    return deleted


# --- dedupe ---


@dataclass
class Dedupe:
    groups: list[DuplicateGroup]
    doomed: list[Entry]  # deleted, or in a dry run what would be
    spared_extra: int  # surplus of unknown-origin groups, kept without include_extra
    deleted: int = 0
    errors: list[str] = field(default_factory=list)


async def dedupe(
    q: Queue,
    client: MaiAgentClient,
    kb_id: str,
    *,
    apply: bool,
    include_extra: bool = False,
    progress: ReadProgress | None = None,
) -> Dedupe:
    """Delete provable copies (a dry run unless `apply`), and with `include_extra` the
    surplus of unknown-origin name-and-size groups, from a fresh listing: a stale one could
    name an entry that is now the only copy. Every deletion is recorded. Deleting is refused
    while a run holds files of the knowledge base: an entry a job is adopting at that moment
    is owned by no job yet, and would look like a surplus copy."""
    if apply:
        await _refuse_during_a_run(q, kb_id)
    listing = await list_and_match(q, client, kb_id, progress)
    copies = await find_copies(q, kb_id, listing.started)
    groups = [*copies.groups, *(copies.unknown if include_extra else [])]
    doomed = [e for g in groups for e in g.surplus]
    spared = 0 if include_extra else sum(len(g.surplus) for g in copies.unknown)
    result = Dedupe([*copies.groups, *copies.unknown], doomed, spared)
    if apply and doomed:
        command = "dedupe --include-extra" if include_extra else "dedupe"
        deleted = await _delete_recorded(q, client, kb_id, groups, command, result.errors)
        result.deleted = len(deleted)
    return result


async def delete_copies(
    q: Queue, client: MaiAgentClient, kb_id: str, since: float, command: str
) -> list[str]:
    """The safety net of exactly once: entries of the listing begun at `since` that share the
    S3 key of a done job's entry are provable second entries of one upload (a register that
    landed after its doubt was settled, a race no fence closed): delete them, record it, say
    it. Entries of jobs not done yet are left to them (`find_copies`)."""
    copies = await find_copies(q, kb_id, since)
    errors: list[str] = []
    deleted = await _delete_recorded(q, client, kb_id, copies.groups, command, errors)
    for group in copies.groups:
        for entry in group.surplus:
            if entry.id in deleted:
                log.warning(
                    "deleted %s (%s): a second entry of the upload whose entry is %s",
                    entry.id,
                    entry.filename,
                    group.keep,
                )
    for error in errors:
        log.warning("a second entry of one upload is not deleted yet: %s", error)
    return sorted(deleted)


async def _delete_recorded(
    q: Queue,
    client: MaiAgentClient,
    kb_id: str,
    groups: Sequence[DuplicateGroup],
    command: str,
    errors: list[str],
) -> set[str]:
    """Delete every group's surplus; what went is forgotten from the listing and recorded."""
    remote_files = ListingStore(q.engine)
    doomed = [e.id for g in groups for e in g.surplus]
    if not doomed:
        return set()
    deleted = set(await _delete_many(client, kb_id, doomed, errors))
    await remote_files.forget_remote(kb_id, sorted(deleted))
    await SupersededStore(q.engine).record_deletions(
        [_deletion(kb_id, g, e, command) for g in groups for e in g.surplus if e.id in deleted]
    )
    return deleted


def _deletion(kb_id: str, group: DuplicateGroup, entry: Entry, command: str) -> Deletion:
    if group.extra:
        reason, detail = DeletionReason.SAME_NAME_SIZE, f"same name and size as {group.keep}"
    else:
        reason, detail = DeletionReason.COPY, f"copy of {group.keep}"
    return Deletion(
        kb_id, entry.id, entry.filename, reason, detail, command, time.time(), group.job_id
    )


class RunInProgress(QueueError):
    """A run holds files of the knowledge base, so deleting entries now is unsafe."""


async def _refuse_during_a_run(q: Queue, kb_id: str) -> None:
    running = (await StatusStore(q.engine).state_counts()).get(kb_id, {}).get("running", (0, 0))[0]
    if running:
        raise RunInProgress(
            _(
                "a run is uploading {n} file(s) of {kb}: dedupe --yes deletes nothing until it "
                "ends (a dead run's files come back when `uploader run` reclaims them)"
            ).format(n=running, kb=kb_id)
        )


# --- retry-failed --remote ---


@dataclass
class RemoteRetry:
    requeued: int = 0
    deleted: int = 0
    busy: int = 0  # entries being processed again (a reparse?): left as they are
    recovered: int = 0  # entries found no longer failed: left as they are
    errors: list[str] = field(default_factory=list)


async def retry_remote(
    q: Queue,
    client: MaiAgentClient,
    kb_id: str | None,
    match: Callable[[str], bool] | None = None,
) -> RemoteRetry:
    """Jobs whose entry failed parsing or is missing (as the last verify saw it): delete the
    entry if it is there, then back to pending so that the next run uploads the file again."""
    remote_files = ListingStore(q.engine)
    result = RemoteRetry()
    requeue: list[RequeueItem] = []
    statuses: list[RemoteStatus] = []
    deletions: list[Deletion] = []

    async def settle(row: RemoteRetryCandidate) -> None:
        job_id, kb, file_id, status, filename = row
        try:
            outcome, now = await _clear_entry(client, kb, file_id, status)
        except ApiError as err:
            if err.fatal:
                raise
            result.errors.append(f"{file_id}: {err}")
            return
        if outcome in ("gone", "deleted"):
            requeue.append(RequeueItem(job_id, kb, file_id))
        if outcome == "deleted" and file_id is not None:
            result.deleted += 1
            detail = f"its entry was {status}; the file is uploaded again"
            deletions.append(
                Deletion(
                    kb,
                    file_id,
                    filename,
                    DeletionReason.REMOTE_RETRY,
                    detail,
                    "retry-failed --remote",
                    time.time(),
                    job_id,
                )
            )
        else:
            statuses.append(RemoteStatus(now, job_id))
            result.busy += outcome == "busy"
            result.recovered += outcome == "present"

    try:
        await each(await q.remote_retry_candidates(kb_id, match), settle)
    finally:
        await SupersededStore(q.engine).record_deletions(deletions)
        await remote_files.set_remote_status(statuses)
        result.requeued = await q.requeue_remote(requeue)
    return result


async def _clear_entry(
    client: MaiAgentClient, kb_id: str, file_id: str | None, status: str
) -> tuple[str, str | None]:
    """'gone' (it already was), 'deleted', 'busy' (being processed) or 'present' (a missing
    entry that is back and not failed), with the entry's status when it stays."""
    if file_id is None:
        return "gone", None
    if status == "missing":
        entry = await _call(client.get_file, kb_id, file_id)
        if entry is None or entry.status in (DELETING, DELETED):
            return "gone", None
        if entry.status != "failed":
            return "present", entry.status
    gone, now = await delete_entry(client, kb_id, file_id)
    return ("deleted", None) if gone else ("busy", now)
