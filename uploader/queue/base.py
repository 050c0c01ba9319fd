"""The job queue contract: what every backend (SQLite, PostgreSQL) guarantees of the hot path
(enqueue, claim, outcomes, the write-ahead of a register, leases, reclaim, the counts the pool
needs) and of the commands that change job states (retry-failed, forget). Each backend keeps
hand-tuned statements for it; the other concerns are stores over the same engine
(uploader/store/: runs and scans, the remote listing, superseded entries, status reads,
service facts), reached through `q.engine`.

Callers (the pool, the attempt, reconcile, report, scan, the CLI) never see a connection or a
line of SQL. Each method is one operation and, where it writes, one transaction: it either
happens whole or not at all.

Opening: `open_queue(target)` returns an opened queue, which is an async context manager that
closes it (and turns late database damage into QueueError):

    async with await open_queue(path, create=False) as q:
        await q.next_due()

`opened(target)` is the same as one `async with`. Times are epoch-second floats (the Python
clock, or the database's clock where the backend says so, consistently). `match` is a predicate
over a job's relpath; "rows whose relpath satisfies match" is all the contract says (SQLite
runs it inside SQL, another backend may filter in Python). A None `kb_id` means every
knowledge base.
"""

from __future__ import annotations

import abc
import contextlib
import socket
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from ..model import (
    EnqueueCounts,
    HostScope,
    Job,
    LeaseOwner,
    Outcome,
    RemoteRetryCandidate,
    RequeueItem,
    ScanRow,
)
from ..store.engine import Engine, QueueError

Match = Callable[[str], bool]


class Queue(abc.ABC):
    """The job queue of one database. Safe to share between the tasks of one event loop
    (writes take turns)."""

    # What a failed operation may raise while the queue stays usable (a lock held too long,
    # a disk full for a moment): a caller that can wait (the pool's writer, its lease
    # keeper) catches these and tries again later. A backend adds its driver's errors.
    errors: tuple[type[Exception], ...] = (QueueError,)

    # Which host this process is (`open_queue(scope=...)`; by default this machine's host
    # name, nothing shared): what `enqueue_batch` records and what `claim`, `next_due`,
    # `kbs_with_work` and `pending_totals` are limited to.
    scope: HostScope = HostScope(socket.gethostname())

    @property
    @abc.abstractmethod
    def engine(self) -> Engine:
        """The database under this queue, for the stores of the other concerns
        (uploader/store/): `FactsStore(q.engine)`."""

    @property
    def runs_folder(self) -> Path | None:
        """Where runs of this queue keep their liveness locks (liveness.py), or None when the
        runs of this queue share no folder (then only an expired lease frees a dead run's
        rows)."""
        return None

    # --- life ----------------------------------------------------------------------------

    async def __aenter__(self) -> Queue:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the connection(s); idempotent."""

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """One write transaction for several operations (tests, benchmarks, migrations). A
        transaction opened inside another by the same task is a savepoint: it rolls back
        alone on error, never deadlocks."""

    # --- enqueue -------------------------------------------------------------------------

    @abc.abstractmethod
    async def enqueue_batch(self, kb_id: str, rows: Sequence[ScanRow]) -> EnqueueCounts:
        """One transaction: insert new (kb_id, path) rows as pending (or skipped when the row
        has `skip`), re-queue rows whose size or mtime changed (or that were skipped) unless
        running, forgetting their upload; leave the others alone. Cost per row is an index
        lookup, independent of the table's size.

        A removed row whose file is found again is re-queued as changed. A re-queued row that
        was uploaded does not forget its entry: it goes into the record
        of superseded entries (with the job, its filename and S3 key), for `run` to delete once
        the new version is registered.

        New rows record `scope.host` and `scope.shared`. A row another host enqueued, not
        shared, is that host's file: left alone and counted `foreign`, unless this scope is
        shared (the same path is the same file everywhere), which makes the row shared."""

    # --- the pool ------------------------------------------------------------------------

    @abc.abstractmethod
    async def claim(
        self, owner: str, limit: int, lease_seconds: float, kb_id: str | None = None
    ) -> list[Job]:
        """Atomically mark up to `limit` due pending rows (next_attempt_at <= now, earliest
        due first, then id) running under `owner`'s lease; attempts += 1, started_at = now.
        Two claimers never get the same row. Returned in id order. Only rows this scope may
        read: its host's, shared ones, host '' ones, or, with `scope.shared`, any."""

    @abc.abstractmethod
    async def next_due(self, kb_id: str | None = None) -> float | None:
        """When the earliest pending row becomes claimable; None when no row is pending."""

    @abc.abstractmethod
    async def record_outcomes(self, owner: str, outcomes: Sequence[Outcome]) -> None:
        """One transaction for the batch. Each outcome is written only if `owner` still holds
        the row's lease (a reclaimed row is left to its new owner); every outcome but
        `uploaded` also appends an attempts row. Per kind: done (file_id, clears the doubt),
        retry (pending at next_attempt_at), failed, released (pending, the attempt not
        counted), uploaded (step and S3 key only, the row stays running), skipped (its bytes are
        another file's: state skipped, the reason kept, the hash too)."""

    @abc.abstractmethod
    async def uploaded_as(self, kb_id: str, content_hash: str, job_id: int) -> str | None:
        """The relpath of a done job of `kb_id` other than `job_id` whose uploaded bytes have
        this content hash, if any (an index lookup)."""

    @abc.abstractmethod
    async def begin_register(
        self, owner: str, jobs: Sequence[Job], since: float, due: float | None = None
    ) -> set[int]:
        """The write-ahead and the fence of a register, in one transaction: each job that
        `owner` still holds by an unexpired lease gets its S3 key, filename, size, mtime and
        step 'uploaded' written with unknown_since = `since` ("a register of this key may take
        effect from now on") and register_due = `due` (by when that request is over: `since`
        plus the sender's --timeout, which a run that takes the row over must wait for, whatever
        its own --timeout); the ids written are returned. A job not among them must not be
        registered: its row is another run's now, or soon will be."""

    @abc.abstractmethod
    async def record_superseded(self, owner: str, job_id: int, entry_id: str) -> None:
        """Remember `entry_id` as superseded by the job's coming new version, with the key and
        filename the row still holds, while `owner` holds it: at once, since the row is about
        to forget the key that found the entry (a crash before the new version's outcome
        would lose it). Deleted only once the job is done with another entry."""

    @abc.abstractmethod
    async def renew_leases(self, owner: str, lease_seconds: float) -> list[int]:
        """Extend `owner`'s running rows to now + lease_seconds; the ids still ours."""

    @abc.abstractmethod
    async def lease_owners(self) -> list[LeaseOwner]:
        """Owners of running rows with their earliest lease expiry."""

    @abc.abstractmethod
    async def reclaim(self, dead_owners: Iterable[str]) -> int:
        """One transaction: running rows whose lease expired or whose owner is in
        `dead_owners` go back to pending (the attempt not counted, an attempts row 'lost'
        written). Their doubt is what `begin_register` committed: a row reclaimed without it never
        sent a register. Returns how many."""

    # --- status, retry-failed, report ----------------------------------------------------

    @abc.abstractmethod
    async def retry_failed(
        self, kb_id: str | None, kinds: Sequence[str], match: Match | None
    ) -> int:
        """One transaction: failed rows (of `kb_id`, of one of `kinds` if any, whose relpath
        satisfies `match` if given) back to pending with attempts reset; the attempts table
        keeps their past. Returns how many."""

    @abc.abstractmethod
    async def kbs_with_work(self, kb_id: str | None) -> list[str]:
        """Knowledge bases with pending or running rows."""

    @abc.abstractmethod
    async def pending_totals(self, kb_id: str | None) -> tuple[int, int]:
        """Files and bytes pending or running."""

    @abc.abstractmethod
    async def failed_count(self, kb_id: str | None) -> int:
        """Rows in state failed."""

    # --- retry-failed --remote -----------------------------------------------------------

    @abc.abstractmethod
    async def remote_retry_candidates(
        self, kb_id: str | None, match: Match | None
    ) -> list[RemoteRetryCandidate]:
        """Done jobs whose remote status is failed or missing (relpath satisfying `match`),
        in id order, with the filename they were registered under."""

    @abc.abstractmethod
    async def requeue_remote(self, jobs: Sequence[RequeueItem]) -> int:
        """One transaction: forget each job's stored entry; back to pending, upload forgotten,
        each job still done and still pointing at `file_id` (a job re-uploaded meanwhile is
        left alone). Returns how many went back."""

    # --- forget ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def forget_jobs(self, kb_id: str, match: Match | None, apply: bool) -> dict[str, int]:
        """The rows of `kb_id` (relpath satisfying `match`), counted by state; with `apply`,
        in the same transaction, deleted with their attempts, except running ones (a live run
        holds them). The knowledge base itself is never touched."""

    @abc.abstractmethod
    async def forgettable(
        self, kb_id: str, match: Match | None, limit: int | None
    ) -> list[tuple[str, str, int]]:
        """What `forget_jobs` would delete, shown before it does (rclone's dry run names each
        file): relpath, state and size of the first `limit` rows by relpath (all if None)."""
