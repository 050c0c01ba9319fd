"""One attempt at one job: check the file, settle a doubtful register, presign and upload,
register, and come to exactly one `Outcome`. The pool (`worker.py`) only schedules attempts.

The one rule for doubt
----------------------
Exactly once rests on one rule: **register again only when the previous register certainly
did not happen.** A row's `unknown_since` holds the doubt: "a register of this row may have
taken effect, at or after this time".

- It is committed before any register leaves (`Queue.begin_register`, the write-ahead): the
  row's S3 key and "register in flight since T", written only while the row is still leased
  to this run and immediately before the request is sent (after the rate limiter, a 429 pause,
  an outage pause). That write is also the fence: when it finds the row no longer ours, the
  register is not sent. So a row that comes back from a dead process (`Queue.reclaim`) is in
  doubt exactly when it may have registered, and always with the key that settles it. The
  send is bounded by it too: made and over by the write-ahead's time plus the timeout, or not
  at all (the client's `register`), since a run that takes the row over waits that long (and
  a margin) before the listing's silence counts, however long this process stalled after it.
- It is kept when a register is cut short: the call failed in a way that may have reached the
  service (a timeout, a lost connection, a 5xx, an answer that does not name the file:
  `ApiError.maybe_applied`), or the attempt was cancelled while registering.
- It is kept by every attempt that does not settle it (a retry or a release before the
  register step carries the row's doubt unchanged; `retry-failed` keeps the key with it).
- It is settled here, before any register, by the key alone: the knowledge base's listing
  since the doubt is read (`RemoteIndex.adopt`); the entry whose `file` is (or ends with) the
  key is adopted (the job is done, no second register). An entry listed without `file` is
  matched by name, size and time only when no other job has that name. No entry is proof that
  the register did not happen only once it had time to land (`Shared.settled_at`: its sender's
  deadline, kept on the row, and a margin: the sender's --timeout, not the settling run's,
  bounds when it may land); until then the row waits, and the register
  that follows sends the same key again, so a service that refuses duplicate keys (as the
  docs say MaiAgent does) protects us too.
- It is dropped when what may have been registered no longer counts: the file changed since
  it was queued (the new content is uploaded), or the row went back to pending as a new
  upload (`enqueue` of a changed file, `retry-failed --remote`: the queue's FORGET_UPLOAD).
- A `done` outcome clears it (the entry is recorded).

`Attempt._outcome` applies the rule to every outcome; the queue's SQL only stores it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Protocol

from . import filetypes, tags
from .client import MaiAgentClient, RegisterItem
from .errors import ApiError
from .i18n import _
from .labels import LabelResolver
from .model import ErrorKind, Job, Outcome, OutcomeKind, Severity, Step
from .naming import shown_name
from .options import Plan, RunOptions
from .queue import Queue, QueueError
from .reconcile import RemoteIndex
from .registrar import Registrar
from .replace import file_digest, same_content
from .retrying import backoff

log = logging.getLogger("uploader.attempt")

SETTLE_MARGIN = 2.0  # seconds a register may land after our request timed out
# Seconds a batched register waits for its batch-mates after the first file is ready.
REGISTER_DELAY = 0.1


class Ledger(Protocol):
    """The run's books as one attempt reads and writes them. In a run they are the pool's
    (`worker.PoolLedger`: its batched writer, its leases, the queue); a test may keep them
    in memory."""

    def record(self, outcome: Outcome) -> None:
        """An intermediate outcome (`uploaded`), written with the next batch."""

    async def begin_register(self, job: Job) -> float | None:
        """The write-ahead and fence of a register: the time from which it may take effect,
        or None when the row is no longer ours (then it is not sent)."""

    async def record_superseded(self, job: Job, entry: str) -> None:
        """The entry of an older content, found by the key of its doubtful register,
        remembered as superseded before the row forgets that key."""

    def lease_until(self, job_id: int) -> float:
        """When our lease on the job ends, as last renewed."""

    async def uploaded_as(self, kb_id: str, digest: str, job_id: int) -> str | None:
        """--skip-same-content: the file of the knowledge base already uploaded with these
        bytes, if any."""

    async def any_type(self, job_id: int) -> bool:
        """Whether the job was queued with --any-type (asked only of a file of a type the
        knowledge base does not accept)."""


@dataclass
class Shared:
    """What every attempt of one run shares with the pool."""

    client: MaiAgentClient
    ledger: Ledger
    options: RunOptions  # the run's: retries, backoff, --name, lease, --timeout...
    # the types the knowledge base accepts, learned at the start of the run (None: any): a
    # file of another type not queued with --any-type is skipped at claim, nothing sent
    file_types: frozenset[str] | None
    registrar: Registrar
    index: RemoteIndex
    labels: LabelResolver  # label names to ids, per knowledge base
    run_id: int | None = None
    # --skip-same-content: (kb_id, content hash) -> relpath of the first file of this run with them
    taken: dict[tuple[str, str], str] = field(default_factory=dict)
    # job id → when a doubtful register of this run, which ended with an error, has had
    # time to land (its end and a margin); a row not in it waits until `settled_at`
    settles: dict[int, float] = field(default_factory=dict)
    # job ids whose key the service said it already holds (a duplicate-key answer): their
    # entry exists, so their doubt is never dropped, only settled by the listing
    proven: set[int] = field(default_factory=set)
    slots: asyncio.Semaphore = field(init=False)  # the --workers uploads at once

    def __post_init__(self) -> None:
        self.slots = asyncio.Semaphore(self.options.workers)

    @classmethod
    def of(
        cls,
        client: MaiAgentClient,
        queue: Queue,
        ledger: Ledger,
        options: RunOptions,
        plan: Plan,
        run_id: int | None = None,
    ) -> Shared:
        """A run's: its registrar, remote index and labels over `client` and `queue`."""
        index = RemoteIndex(queue, client)
        learn = options.register_batch is None  # --register-batch auto
        registrar = Registrar(client, index, plan.register_batch, REGISTER_DELAY, learn=learn)
        labels = LabelResolver(client, queue)
        return cls(client, ledger, options, plan.file_types, registrar, index, labels, run_id)

    def settled_at(self, job: Job) -> float:
        """Until when the doubtful register of `job` may still take effect, when this run did
        not see it end (its process died, or another run sent it): the listing is not taken as
        proof that it did not until then (a slow commit behind a proxy lands after our timeout).
        The sender's deadline kept on the row, since its --timeout, not ours, bounded the
        request: a run with a shorter one registered the file again while the first register
        could still land. A row written before the deadline was kept: its doubt and our own."""
        assert job.unknown_since is not None
        if job.register_due is not None:
            return job.register_due + SETTLE_MARGIN
        return job.unknown_since + self.options.timeout + SETTLE_MARGIN


class Attempt:
    """`await Attempt(job, shared).run()` is the job's final outcome of this attempt; `fatal`
    is then set when the service refused the whole run (bad key, unknown knowledge base).
    If the task is cancelled instead, `released()` is the outcome to write."""

    def __init__(self, job: Job, shared: Shared) -> None:
        self.job = job
        self._s = shared
        self._registering_since: float | None = None
        self.fatal: ApiError | None = None
        self.error: ApiError | None = None  # what ended it, for the pool's outage gate
        self.adopted = False
        self.unchanged = False  # done by its hash: the same bytes as uploaded, nothing sent
        self.relabelled = False  # done by update-metadata alone (step `metadata`)
        # a register of this job was in doubt in this attempt: the run looks for second
        # entries of its upload at its end (reconcile.delete_copies)
        self.doubted = False

    async def run(self) -> Outcome:
        try:
            return await self._steps()
        except ApiError as err:
            if err.fatal:
                self.fatal = err
                return self.released()
            return self._after_error(err)
        except QueueError:
            raise  # the database's, not the file's: the pool decides (worker.Pool._task_done)
        except Exception as exc:
            log.exception("unexpected error on %s", self.job.relpath)
            error = ApiError(
                _("internal error: {type}: {why}").format(type=type(exc).__name__, why=exc),
                kind=Severity.TRANSIENT,
                error_kind=ErrorKind.INTERNAL,
                maybe_applied=True,
            )
            return self._after_error(error)

    def released(self) -> Outcome:
        """The outcome of an attempt stopped before its end (Ctrl+C, a fatal error)."""
        return self._outcome(OutcomeKind.RELEASED)

    async def _steps(self) -> Outcome:
        """Upload holding one of the --workers slots; with batched registration the slot is
        given back while the file waits for its batch."""
        slots = self._s.slots
        await slots.acquire()
        held = True
        try:
            if self.job.step == Step.METADATA:
                relabelled = await self._relabel()
                if relabelled is not None:
                    return relabelled
            adopted = await self._upload()
            if adopted is not None:
                return adopted
            if self._s.registrar.size > 1:
                slots.release()
                held = False
            return await self._register()
        finally:
            if held:
                slots.release()

    async def _upload(self) -> Outcome | None:
        """Presign and upload unless a previous attempt did; settle a doubtful register first
        (an outcome is returned when that ends the attempt: adopted, or not yet settled)."""
        job = self.job
        try:
            self._check_file()
        except ApiError as err:
            if err.error_kind != ErrorKind.MISSING or job.unknown_since is None or not job.s3_key:
                raise
            return await self._gone_in_doubt(err)
        if job.step is None and job.s3_key is not None:
            waiting = await self._supersede_doubt()
            if waiting is not None:
                return waiting
        if job.step == Step.RECHECK:
            if not await same_content(job):
                job.step = None  # new bytes: uploaded below, its entry superseded once done
            elif job.tags is None or job.tags == job.tags_applied:
                self.unchanged = True
                return self._outcome(OutcomeKind.DONE, file_id=job.file_id)
            else:
                # the enqueue that asked for the recheck may have asked other labels or
                # metadata as well (they were not compared): give them to the entry
                relabelled = await self._relabel()
                if relabelled is not None:
                    self.unchanged = True
                    return relabelled
        fresh = job.step is None and job.unknown_since is None and job.s3_key is None
        if fresh and (refused := await self._type_refused()) is not None:
            return self._outcome(OutcomeKind.SKIPPED, refused)
        if self._s.options.skip_same_content and job.step is None and job.unknown_since is None:
            other = await self._same_as_another()
            if other is not None:
                return self._outcome(OutcomeKind.SKIPPED, _same_content(other))
        if job.unknown_since is not None:
            settled = await self._settle_doubt()
            if settled is not None:
                return settled
        if job.step != Step.UPLOADED or not job.s3_key:
            self._check_lease("uploading")
            job.filename = self._name()  # the run that uploads decides the name
            client = self._s.client
            presigned = await client.presign(job.filename, job.size)
            uploaded = await client.upload(presigned, job.path, job.size, job.filename)
            job.s3_key, job.content_hash = presigned.fields["key"], uploaded.content_hash
            job.step = Step.UPLOADED
            self._s.ledger.record(self._outcome(OutcomeKind.UPLOADED))
        job.filename = job.filename or self._name()
        return None

    async def _type_refused(self) -> ApiError | None:
        """Why this file is not sent: a type the knowledge base does not accept (the list of
        this run), unless it was queued with --any-type."""
        types = self._s.file_types
        why = None if types is None else filetypes.refusal(self._name(), types)
        if why is None or await self._s.ledger.any_type(self.job.id):
            return None
        return ApiError(why, kind=Severity.PERMANENT, error_kind=ErrorKind.SKIPPED)

    async def _same_as_another(self) -> str | None:
        """The file (relpath) whose bytes this one has, uploaded to the same knowledge base or
        taken by an earlier attempt of this run; None when none (or the file cannot be read:
        its upload says why)."""
        job, shared = self.job, self._s
        digest = await file_digest(job)
        if digest is None:
            return None
        job.content_hash = digest  # kept by a skip; the upload computes its own
        uploaded = await shared.ledger.uploaded_as(job.kb_id, digest, job.id)
        if uploaded is not None:
            return uploaded
        first = shared.taken.setdefault((job.kb_id, digest), job.relpath)
        return None if first == job.relpath else first

    async def _settle_doubt(self) -> Outcome | None:
        """A register of this row's key may have taken effect: adopt its entry if the listing
        shows it (or wait, `_landed_entry`). A row whose key was never committed before a
        register cannot have been registered."""
        job = self.job
        assert job.unknown_since is not None
        self.doubted = True
        if not job.s3_key:
            job.unknown_since = None
            return None
        file_id, waiting = await self._landed_entry()
        if file_id is None:
            return waiting
        log.info("adopted %s for %s after a doubtful register", file_id, job.relpath)
        self.adopted = True
        return self._outcome(OutcomeKind.DONE, file_id=file_id)

    async def _gone_in_doubt(self, missing: ApiError) -> Outcome:
        """The file is gone, but a register of it may have landed: the entry it made, if the
        listing shows it, is the job's (done, so that `enqueue --delete-removed` can have it
        deleted); else the file fails as missing."""
        self.doubted = True
        file_id, waiting = await self._landed_entry()
        if waiting is not None:
            return waiting
        if file_id is None:
            raise missing
        log.info("%s is gone, but its register had landed: entry %s", self.job.relpath, file_id)
        self.adopted = True
        return self._outcome(OutcomeKind.DONE, file_id=file_id)

    async def _supersede_doubt(self) -> Outcome | None:
        """The file changed while a register of its older content (the row's key, step NULL)
        was in doubt. That register's entry, if it landed, is the old version: never adopted,
        but superseded by the new one (deleted once that is registered, replace.py)."""
        job = self.job
        self.doubted = True
        if job.unknown_since is not None:
            old, waiting = await self._landed_entry()
            if waiting is not None:
                return waiting
            if old is not None:
                log.info(
                    "%s changed: %s, its older content's entry, is superseded", job.relpath, old
                )
                await self._s.ledger.record_superseded(job, old)
        job.s3_key, job.unknown_since = None, None
        self._s.settles.pop(job.id, None)
        return None

    async def _landed_entry(self) -> tuple[str | None, Outcome | None]:
        """The entry the doubtful register of the row's key made, if the listing shows it:
        (its id, None). Not shown is proof that it did not happen only once the register had
        time to land: until then (None, the outcome that makes the row wait, doubt kept and
        attempt not counted); after, (None, None) and the doubt is dropped."""
        job = self.job
        assert job.unknown_since is not None
        index = self._s.index
        adoption = await index.adopt(job, job.filename or self._name())
        if adoption.file_id is not None:
            return adoption.file_id, None
        now = time.time()
        if not adoption.covered:
            later = max(index.next_full_read(job.kb_id), now + SETTLE_MARGIN)
            log.info("the listing cannot settle %s yet: looking again later", job.relpath)
            return None, self._outcome(OutcomeKind.RELEASED, next_attempt_at=later)
        if job.id in self._s.proven:
            # the service said it holds this key: its entry exists, the listing lags
            later = now + SETTLE_MARGIN
            log.info("%s is registered, its entry not listed yet: looking again", job.relpath)
            return None, self._outcome(OutcomeKind.RELEASED, next_attempt_at=later)
        settles = self._s.settles.get(job.id) or self._s.settled_at(job)
        if now < settles:
            log.info("a register of %s may still take effect: looking again later", job.relpath)
            return None, self._outcome(OutcomeKind.RELEASED, next_attempt_at=settles)
        job.unknown_since = None  # the listing shows no entry: it did not happen
        self._s.settles.pop(job.id, None)
        return None, None

    def _check_lease(self, doing: str) -> None:
        """Stalled (suspended, starved) near the end of our lease: another run may own the row
        soon; leave it to whoever holds it rather than act on a row that is not ours."""
        margin = min(5.0, self._s.options.lease / 4)
        if time.time() > self._s.ledger.lease_until(self.job.id) - margin:
            raise ApiError(
                _("lease expired before {doing}").format(doing=doing),
                kind=Severity.TRANSIENT,
                error_kind=ErrorKind.LEASE,
            )

    async def _register(self) -> Outcome:
        """Register the uploaded key. Its write-ahead is the fence (`begin_register`, passed
        immediately before each send): the key and "register in flight" are committed while
        the row is still ours, or nothing is sent."""
        job = self.job
        assert job.s3_key is not None and job.filename is not None
        item = await self._register_item(job.s3_key, job.filename)

        async def fence() -> float | None:
            since = await self._s.ledger.begin_register(job)
            if since is not None and self._registering_since is None:
                self._registering_since = since
            return since

        file_id = await self._s.registrar.register(job.kb_id, item, fence)
        self._registering_since = None
        return self._outcome(OutcomeKind.DONE, file_id=file_id)

    async def _relabel(self) -> Outcome | None:
        """An uploaded file whose labels or metadata changed at enqueue: update-metadata
        on its entry, nothing else (the file is not read). Sending it twice does no harm, so
        there is no doubt to settle. None when the entry is gone (deleted by hand): the file
        is then uploaded again, with its labels, as a new one."""
        job = self.job
        job.unknown_since = None
        assert job.file_id is not None
        names, metadata = tags.decode(job.tags)
        try:
            await self._s.labels.update_entry(job.kb_id, job.file_id, names, metadata)
        except ApiError as err:
            if err.status != 404:
                raise
            log.info("%s: its entry %s is gone: uploading it again", job.relpath, job.file_id)
            job.step, job.file_id, job.s3_key, job.content_hash = None, None, None, None
            return None
        log.info("labels and metadata of %s updated on entry %s", job.relpath, job.file_id)
        self.relabelled = job.step == Step.METADATA  # a recheck's counts as unchanged
        return self._outcome(OutcomeKind.DONE, file_id=job.file_id)

    async def _register_item(self, key: str, filename: str) -> RegisterItem:
        """What the register sends of this file: its labels (by id, made where missing),
        its metadata and its parser, as enqueue asked."""
        names, metadata = tags.decode(self.job.tags)
        label_ids = await self._s.labels.ids(self.job.kb_id, names)
        return RegisterItem(key, filename, label_ids, metadata or None, self.job.parser)

    def _check_file(self) -> None:
        """The file may have changed since enqueue: upload what is there now. Unreadable files
        are reported by the upload's open."""
        job = self.job
        try:
            st = os.stat(job.path)
        except FileNotFoundError:
            raise ApiError(
                _("file no longer exists"), kind=Severity.PERMANENT, error_kind=ErrorKind.MISSING
            ) from None
        except OSError as exc:
            raise ApiError(
                _("cannot read file: {why}").format(why=exc.strerror),
                kind=Severity.PERMANENT,
                error_kind=ErrorKind.UNREADABLE,
            ) from None
        if st.st_size == job.size and st.st_mtime_ns == job.mtime_ns:
            return
        log.info("%s changed since enqueue: uploading its current content", job.relpath)
        job.size, job.mtime_ns = st.st_size, st.st_mtime_ns
        job.step, job.content_hash = None, None
        if job.unknown_since is None:
            job.s3_key = None  # else kept: it settles the doubt (`_supersede_doubt`)

    def _name(self) -> str:
        """The name shown: the manifest's, else the relpath or basename as --name says."""
        if self.job.display_name:
            return self.job.display_name
        options = self._s.options
        return shown_name(self.job.relpath, options.name, options.name_separator)

    def _name_refused(self, err: ApiError) -> ApiError:
        """The name is this file's fault, and the way out is the other naming (or the
        manifest's name); the next run decides the name afresh."""
        if self.job.display_name:
            fix = _("give it another name in the manifest")
        else:
            fix = _other_naming(self._s.options.name)
        message = _("the service refused the name {name!r} ({why}): {fix}").format(
            name=self.job.filename, why=err, fix=fix
        )
        return ApiError(message, kind=Severity.PERMANENT, error_kind=ErrorKind.NAME_REFUSED)

    def _after_error(self, err: ApiError) -> Outcome:
        if err.error_kind == ErrorKind.NAME_REFUSED:
            err = self._name_refused(err)
        if err.error_kind == ErrorKind.DUPLICATE_KEY and self._registering_since is not None:
            # Our own key, refused as already registered: proof that an earlier register of
            # it landed. The entry is adopted from the listing, not failed or sent again.
            self.doubted = True
            self._s.proven.add(self.job.id)
            log.info("%s: the service holds its key already: adopting its entry", self.job.relpath)
            return self._outcome(OutcomeKind.RELEASED, err, next_attempt_at=time.time())
        self.error = err
        job, options = self.job, self._s.options
        if err.permanent or job.attempts >= 1 + options.max_retries:
            log.error("failed %s after %d attempt(s): %s", job.relpath, job.attempts, err)
            return self._outcome(OutcomeKind.FAILED, err)
        delay = backoff(job.attempts, options.retry_delay, err.retry_after)
        if self._registering_since is not None and err.maybe_applied:
            delay = max(delay, SETTLE_MARGIN)  # no use looking before it may have landed
        log.warning(
            "retry %d/%d of %s in %.1fs: %s",
            job.attempts,
            options.max_retries,
            job.relpath,
            delay,
            err,
        )
        return self._outcome(OutcomeKind.RETRY, err, next_attempt_at=time.time() + delay)

    def _outcome(
        self,
        kind: OutcomeKind,
        err: ApiError | None = None,
        *,
        file_id: str | None = None,
        next_attempt_at: float = 0.0,
    ) -> Outcome:
        """Every outcome passes here, so the rule for doubt (module docstring) is applied in
        one place: a register cut short makes the row doubtful from when it began (and, when it
        ended with an error, settled a margin after that); otherwise the row keeps whatever
        doubt this attempt did not settle."""
        cut_short = kind == OutcomeKind.RELEASED or (err is not None and err.maybe_applied)
        supersedes = None  # the entry a done outcome replaces
        if kind == OutcomeKind.DONE:
            old = self.job.file_id  # the entry the job pointed to when claimed
            supersedes = old if old is not None and file_id != old else None
        unknown = self.job.unknown_since
        if self._registering_since is not None and cut_short:
            unknown = self._registering_since
            self.doubted = True
            if err is not None:  # the register ended now: it has landed, if ever, by then
                self._s.settles[self.job.id] = time.time() + SETTLE_MARGIN
        return Outcome(
            job=self.job,
            outcome=kind,
            ended_at=time.time(),
            run_id=self._s.run_id,
            error_kind=err.error_kind if err else None,
            error=str(err) if err else None,
            file_id=file_id,
            next_attempt_at=next_attempt_at,
            unknown_since=unknown,
            supersedes=supersedes,
        )


def _other_naming(naming: str) -> str:
    """The ways out of a refused name: a relative path's `/` is what MaiAgent refuses, and
    both other modes avoid it (folders keeps where the file sits, basename is shortest)."""
    if naming == "relpath":
        return _("try --name {first} or --name {second}").format(first="folders", second="basename")
    return _("try --name {naming}").format(naming="basename" if naming == "folders" else "folders")


def _same_content(other: str) -> ApiError:
    """The reason a --skip-same-content skip records."""
    return ApiError(
        _("same content as {other} (run --skip-same-content)").format(other=other),
        kind=Severity.PERMANENT,
        error_kind=ErrorKind.SKIPPED,
    )
