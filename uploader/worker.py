"""The pool: claims rows, runs one `Attempt` per row in a slot, writes their outcomes in
batches, keeps its leases and gives back rows of dead runs. What one attempt does (and the
rule for doubt that exactly once rests on) is in `attempt.py`; the run around the pools
(nothing pending, preflight, its record) in `runner.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import logs, processes, replace
from .attempt import SETTLE_MARGIN, Attempt, Shared
from .client import MaiAgentClient
from .errors import ApiError
from .exitcodes import Ending, ExitCode
from .i18n import _
from .interrupts import Interrupts
from .leases import Leases
from .liveness import RunLock
from .model import ErrorKind, Job, Outcome, OutcomeKind, Severity
from .options import Plan, RunOptions
from .outage import GateState, OnChange, Outage, OutageGate, ServiceUnreachable, classify
from .queue import DatabaseFatal, Queue, QueueError
from .reconcile import delete_copies
from .retrying import Retry, retrying
from .store.parse import ParseStore
from .store.runs import RunsStore

log = logging.getLogger("uploader.run")

FLUSH_INTERVAL = 0.02
# How long an outage-like failure waits to learn whether the gate closes over it (the other
# requests in flight fail within moments when the service is down) before it is charged.
VERDICT_WAIT = 2.0
# An outage fails every request in flight, about one per worker: that many failures in a row
# (and at least 3) close the gate, while a service failing one request in six does not.
MAX_FAILURES_TO_CLOSE = 20
# An empty queue while an enqueue is still walking: look again this often, and give up on a
# scan of another host not seen for this long (its process died without saying so).
SCAN_POLL = 0.5
SCAN_STALE = 600.0
# No file finished for this many --timeout periods while uploads are in flight (5 minutes by
# default): the run says so, with a hint.
STALL_TIMEOUTS = 5


class RunProgress(Protocol):
    """What a run reports as it goes, for the CLI to draw (progress.Progress draws it): the
    library reports, the CLI draws."""

    def add(self, done: int = 0, failed: int = 0, nbytes: int = 0) -> None:
        """A batch of outcomes committed: files done, failed, bytes uploaded."""

    def pause(self, paused: bool) -> None:
        """The pool paused for an outage (True) or resumed (False)."""

    def not_before(self, seconds: float) -> None:
        """The pool cannot end within `seconds`: rows wait that long for registers whose
        answers were lost to settle, whatever the rate of the other files."""

    def settling(self, seconds: float, registers: int) -> None:
        """The pool has nothing to do for `seconds` but wait for `registers` registers whose
        answers were lost to settle (the listing then shows whether they landed)."""

    def close(self) -> None:
        """The pool ended."""


# A run's progress, made once the run knows what it has to do (files, bytes).
ProgressFactory = Callable[[int, int], RunProgress]


class Untold:
    """A run's progress where nobody draws it (-q, --json, a caller that wants none)."""

    def add(self, done: int = 0, failed: int = 0, nbytes: int = 0) -> None:
        """Nobody to tell."""

    def pause(self, paused: bool) -> None:
        """Nobody to tell."""

    def not_before(self, seconds: float) -> None:
        """Nobody to tell."""

    def settling(self, seconds: float, registers: int) -> None:
        """Nobody to tell (the run's log has it)."""

    def close(self) -> None:
        """Nothing drawn, nothing to close."""


@dataclass
class RunResult:
    uploaded: int = 0
    adopted: int = 0
    unchanged: int = 0  # of `uploaded`: touched files whose bytes were the ones uploaded
    relabelled: int = 0  # of `uploaded`: entries given new labels or metadata, no upload
    failed: int = 0
    released: int = 0
    bytes: int = 0
    elapsed: float = 0.0
    fatal: ApiError | None = None
    interrupted: bool = False
    failed_in_queue: int = 0
    batch_proved: dict[str, bool] = field(default_factory=dict)  # see Registrar.proved
    replaced: replace.Replaced = field(default_factory=replace.Replaced)
    copies_deleted: int = 0  # second entries of one upload deleted at the end (the safety net)
    by_others: int = 0  # files this run could have taken that another run uploaded meanwhile
    # knowledge bases the service does not know (a typo at enqueue): their rows left alone
    unknown_kbs: dict[str, ApiError] = field(default_factory=dict)

    def add(self, part: RunResult) -> None:
        """Fold in the result of one knowledge base's pool (a run with unknown ones runs a
        pool per known knowledge base)."""
        for name in (
            "uploaded",
            "adopted",
            "unchanged",
            "relabelled",
            "failed",
            "released",
            "copies_deleted",
        ):
            setattr(self, name, getattr(self, name) + getattr(part, name))
        self.bytes += part.bytes
        self.elapsed += part.elapsed
        self.failed_in_queue += part.failed_in_queue
        self.fatal = self.fatal or part.fatal
        self.interrupted = self.interrupted or part.interrupted
        self.batch_proved.update(part.batch_proved)

    def ending(self) -> Ending:
        """What the run came to, for its exit code (`exitcodes.exit_code`)."""
        return Ending(
            error=self.fatal,
            interrupted=self.interrupted,
            refused=bool(self.unknown_kbs),
            failed=bool(self.failed_in_queue),
        )


class Fatal(Exception):
    """A run-wide error (bad key, unknown knowledge base) met while working on a job."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(str(error))
        self.error = error


async def scan_in_progress(queue: Queue, kb_id: str | None, me: str) -> bool:
    """An enqueue still walking into `kb_id` (any with None): its next batch is coming, so an
    empty queue is not the end of a run. A scan of a dead process does not count: by its pid
    on this host (`me`'s), elsewhere once unseen for SCAN_STALE seconds."""
    scans = await RunsStore(queue.engine).scans(kb_id)
    dead = set(_dead_scanners(scans, me))
    return any(owner not in dead and age < SCAN_STALE for owner, age in scans)


def _dead_scanners(owners: list[tuple[str, float]], me: str) -> list[str]:
    """Scanning processes on this host (by `me`'s host id) that are gone. Only scans are
    judged by pid: a scan misjudged dead (a container with its own pid namespace) costs a run
    that stops before that enqueue ends, never a second entry; rows use run locks."""
    host = me.rsplit(":", 2)[0]
    dead = []
    for owner, _expires in owners:
        if owner == me:
            continue
        parts = owner.rsplit(":", 2)
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid == os.getpid():  # an earlier process that had our pid (containers reuse them)
            dead.append(owner)
            continue
        if processes.is_running(pid) is False:
            dead.append(owner)
    return dead


class Writer:
    """Every result goes through here and is committed in batches: one transaction per
    flush instead of one per file. So do the write-aheads of registers (`begin_register`),
    flushed at once since a register waits for its own."""

    def __init__(
        self,
        queue: Queue,
        owner: str,
        on_commit: Callable[[list[Outcome]], None],
        register_timeout: float,
    ) -> None:
        self._queue = queue
        self._owner = owner
        self._on_commit = on_commit
        # the client cuts a register at its write-ahead plus this (client.register): kept on
        # the row as its deadline, which a run that takes the row over waits for
        self._register_timeout = register_timeout
        self._items: list[Outcome] = []
        self._fences: list[tuple[Job, asyncio.Future[float | None]]] = []
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._kick = asyncio.Event()

    def put(self, outcome: Outcome) -> None:
        self._items.append(outcome)

    async def begin_register(self, job: Job) -> float | None:
        """Commit the job's S3 key and "register in flight" before the register leaves: the time
        from which it may take effect, or None when the row is no longer ours (do not send).
        Jobs arriving together share one transaction."""
        if self._stop.is_set():
            return None
        fut: asyncio.Future[float | None] = asyncio.get_running_loop().create_future()
        self._fences.append((job, fut))
        self._kick.set()
        return await fut

    async def _write_fences(self) -> None:
        async with self._lock:
            fences, self._fences = self._fences, []
            if not fences:
                return
            since = time.time()
            due = since + self._register_timeout
            jobs = [j for j, _ in fences]
            try:
                ours = await self._queue.begin_register(self._owner, jobs, since, due)
            except BaseException as exc:
                for _job, fut in fences:
                    if not fut.done():
                        fut.set_exception(_not_written(exc))
                raise
        for job, fut in fences:
            if not fut.done():
                fut.set_result(since if job.id in ours else None)

    async def flush(self) -> None:
        async with self._lock:
            items, self._items = self._items, []
            if not items:
                return
            try:
                await self._queue.record_outcomes(self._owner, items)
            except BaseException:
                self._items[:0] = items
                raise
            self._on_commit(items)

    async def loop(self) -> None:
        """Flush every few milliseconds (write-aheads at once) until stopped. It is stopped,
        not cancelled: a cancel arriving just after a COMMIT would put committed results back
        for a second write. A database error only delays the results (they stay in memory,
        the rows leased to us); a write-ahead it hit is not sent. A database out of reach past
        --db-timeout, or its disk full, ends the loop, and with it the run; a write-ahead
        asked after that is not sent."""
        try:
            while not self._stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), FLUSH_INTERVAL)
                self._kick.clear()
                try:
                    await self._write_fences()
                    await self.flush()
                except DatabaseFatal:
                    raise
                except self._queue.errors as exc:
                    log.warning("results not written yet: %s", exc)
        finally:
            self._stop.set()
            for _job, fut in self._fences:
                if not fut.done():
                    fut.set_result(None)

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()


def _not_written(exc: BaseException) -> ApiError:
    return ApiError(
        _("register not sent: its write-ahead failed: {why}").format(why=exc),
        kind=Severity.TRANSIENT,
        error_kind=ErrorKind.LEASE,
    )


class PoolLedger:
    """The `Ledger` of a pool's attempts: outcomes and write-aheads go through its `Writer`
    (batched), leases are as the pool last renewed them, the rest is the queue's."""

    def __init__(self, queue: Queue, owner: str, writer: Writer, leases: Leases) -> None:
        self._queue, self._owner, self._writer, self._leases = queue, owner, writer, leases

    def record(self, outcome: Outcome) -> None:
        self._writer.put(outcome)

    async def begin_register(self, job: Job) -> float | None:
        return await self._writer.begin_register(job)

    async def record_superseded(self, job: Job, entry: str) -> None:
        await self._queue.record_superseded(self._owner, job.id, entry)

    def lease_until(self, job_id: int) -> float:
        return self._leases.until(job_id)

    async def uploaded_as(self, kb_id: str, digest: str, job_id: int) -> str | None:
        return await self._queue.uploaded_as(kb_id, digest, job_id)

    async def any_type(self, job_id: int) -> bool:
        return await ParseStore(self._queue.engine).any_type(job_id)


class Pool:
    """Runs jobs until the queue is empty, a fatal error, or a stop request."""

    def __init__(
        self,
        queue: Queue,
        client: MaiAgentClient,
        options: RunOptions,
        plan: Plan,
        owner: str,
        run_id: int,
        shown: RunProgress,
        probe_kb: str,
        on_outage: OnChange | None = None,
        lock: RunLock | None = None,
    ) -> None:
        """`shown` hears of every batch of results committed and of every wait for doubtful
        registers to settle; `on_outage(state, outage)` of every pause and resume (the gate
        probes by listing `probe_kb`); `lock`, this run's liveness lock (the judge of other owners,
        liveness.py), is its `Leases`'."""
        self.gate = OutageGate(
            lambda: self.client.probe(probe_kb),
            outage_timeout=options.outage_timeout,
            failures_to_close=min(max(3, options.workers), MAX_FAILURES_TO_CLOSE),
            on_change=self._gate_changed,
        )
        client = client.with_gate(self.gate)  # every request of the pool waits on its gate
        self.queue = queue
        self.client = client
        self.s = options
        self.owner = owner
        self._shown = shown
        self.result = RunResult()
        self.writer = Writer(queue, owner, self._committed, options.timeout)
        self._wake = asyncio.Event()
        self.leases = Leases(queue, owner, options.lease, lock, self._wake.set)
        ledger = PoolLedger(queue, owner, self.writer, self.leases)
        self._shared = Shared.of(client, queue, ledger, options, plan, run_id)
        self.index, self.registrar = self._shared.index, self._shared.registrar
        # Claimed rows waiting for a slot keep every worker busy between claims; claims come
        # in batches of at least half the workers so the database is not asked per file.
        self._capacity = 2 * options.workers + 2 * plan.register_batch
        self._claim_min = max(1, options.workers // 2)
        self._tasks: set[asyncio.Task[Outcome]] = set()
        self._stopping = False
        # what ended the run from one of its tasks (a database out of reach past
        # --db-timeout, a bug): raised by `run` once everything is stopped
        self._died: BaseException | None = None
        # jobs whose final outcome waits in the writer: still leased to us until it is written
        self._unwritten: set[int] = set()
        self._doubted: set[str] = set()  # knowledge bases with a register in doubt this run
        # job id -> when the register of its row whose answer was lost has had time to land
        # (the row waits until then, unclaimed); and until when such a wait was said
        self._settling: dict[int, float] = {}
        self._wait_said_until = 0.0
        self._claim_after = 0.0
        self._finished_at = time.monotonic()  # when a file last came to an end (done, failed)
        self._on_outage = on_outage

    # --- control ---------------------------------------------------------------------------

    def stop(self) -> None:
        """First Ctrl+C / SIGTERM: claim nothing more, let in-flight files finish (grace)."""
        self._stopping = True
        self.result.interrupted = True
        self._wake.set()

    def _fatal(self, error: ApiError) -> None:
        if self.result.fatal is None:
            self.result.fatal = error
            log.info("stopping: %s", error)
        self._halt()

    def _halt(self) -> None:
        """Claim nothing more and cancel every attempt but the caller's (each releases its
        row): what a fatal error and a dead task of the run both do."""
        self._stopping = True
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        self._wake.set()

    def _gate_changed(self, state: GateState, outage: Outage) -> None:
        """Paused, resumed or given up: the feeder looks again; past the outage timeout the
        run stops with every row released (exit code 4)."""
        self._wake.set()
        if state is GateState.GAVE_UP:
            self._fatal(ServiceUnreachable(outage))
        if self._on_outage is not None:
            self._on_outage(state, outage)

    def _committed(self, outcomes: list[Outcome]) -> None:
        self._unwritten.difference_update(
            o.job.id for o in outcomes if o.outcome != OutcomeKind.UPLOADED
        )
        done = [o for o in outcomes if o.outcome == OutcomeKind.DONE]
        failed = sum(1 for o in outcomes if o.outcome == OutcomeKind.FAILED)
        nbytes = sum(o.job.size for o in done)
        self.result.uploaded += len(done)
        self.result.failed += failed
        self.result.bytes += nbytes
        self.result.released += sum(1 for o in outcomes if o.outcome == OutcomeKind.RELEASED)
        retries = [o for o in outcomes if o.outcome in (OutcomeKind.RETRY, OutcomeKind.RELEASED)]
        if retries:
            self._claim_after = min(self._claim_after, *(o.next_attempt_at for o in retries))
        settling = {o.job.id: o.next_attempt_at for o in retries if o.unknown_since is not None}
        if settling:
            self._settling.update(settling)
            self._shown.not_before(max(self._settling.values()) - time.time())
        # committed ids are excluded from adoption by the database itself
        self.index.taken.difference_update(o.file_id for o in done)
        if done or failed:
            self._finished_at = time.monotonic()
            self._shown.add(len(done), failed, nbytes)
        self._wake.set()

    # --- the main loop ---------------------------------------------------------------------

    async def run(self) -> RunResult:
        """The attempts until the queue is empty, a fatal error or a stop request. Its tasks
        (the writer, the lease keeper, the progress watch) live as long as the feeding of
        attempts: one that ends first takes the run down, and its error is raised here once
        every attempt is stopped and what could be written is."""
        started, began = time.monotonic(), time.time()
        await self.leases.reclaim()
        writer = asyncio.create_task(self.writer.loop(), name="writer")
        keeper = asyncio.create_task(self.leases.keep(), name="lease keeper")
        watcher = asyncio.create_task(self._watch_progress(), name="progress watch")
        try:
            await self._supervised(self._feed(), (writer, keeper, watcher))
            await self._drain()
        finally:
            await self.gate.aclose()
            keeper.cancel()
            watcher.cancel()
            self.writer.stop()
            await asyncio.gather(keeper, watcher, writer, return_exceptions=True)
            await self.registrar.close()
            await self.writer.flush()
        if self._died is not None:
            raise self._died
        if not (self.result.interrupted or self.result.fatal):
            await self._delete_copies(began)
        self.result.elapsed = time.monotonic() - started
        self.result.failed_in_queue = await self.queue.failed_count(self.s.kb_id)
        self.result.batch_proved = dict(self.registrar.proved)
        return self.result

    async def _supervised(
        self, feed: Coroutine[Any, Any, None], helpers: tuple[asyncio.Task[None], ...]
    ) -> None:
        """`feed` to its end, unless it fails or one of `helpers` (which end only when
        stopped) ends first: then the run goes down with that task's error."""
        feeder = asyncio.create_task(feed, name="feeder")
        try:
            await asyncio.wait({feeder, *helpers}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not feeder.done():
                feeder.cancel()
                await asyncio.gather(feeder, return_exceptions=True)
        if feeder.done() and not feeder.cancelled() and self._died is None:
            error = feeder.exception()
            if error is not None:
                # a claim that failed (a full disk): the attempts in flight are stopped
                # first, not left to fail on the run's closed session as a service outage
                self._down(error)
            return
        ended = next((t for t in helpers if t.done()), None)
        if ended is not None:
            error = None if ended.cancelled() else ended.exception()
            stopped = _("the run's {task} stopped").format(task=ended.get_name())
            self._down(error or RuntimeError(stopped))

    def _down(self, error: BaseException) -> None:
        """One of the run's tasks died: every attempt is stopped (its row released), and the
        error ends the run."""
        if self._died is None:
            self._died = error
            if isinstance(error, QueueError):
                # the command's one "Error: ..." line says it on the terminal
                log.error("stopping: %s", error, extra=logs.FILE_ONLY)
        self._halt()

    async def _delete_copies(self, since: float) -> None:
        """Where a register was in doubt this run, a second entry of one upload may have
        landed despite everything (a register taking effect after its doubt was settled):
        the entries listed since the run began are checked, and such copies deleted."""
        for kb_id in sorted(self._doubted):
            errors: tuple[type[Exception], ...] = (ApiError, *self.queue.errors)
            try:
                await self.index.recheck(kb_id, since)
                deleted = await delete_copies(self.queue, self.client, kb_id, since, "run")
            except errors as exc:
                log.warning("second entries of %s not looked for: %s", kb_id, exc)
                continue
            self.result.copies_deleted += len(deleted)

    async def _feed(self) -> None:
        while not self._stopping:
            if not self.gate.is_open:
                await self._sleep(1.0)  # paused: the rows stay pending, unclaimed
                continue
            free = self._capacity - len(self._tasks)
            wanted = free >= self._claim_min or (free > 0 and not self._tasks)
            if wanted and time.time() >= self._claim_after:
                jobs = await self.queue.claim(self.owner, free, self.s.lease, self.s.kb_id)
                if jobs:
                    for job in jobs:
                        self._spawn(job)
                    continue
                # Nothing due: no write transaction per wake-up until a row can be due.
                due = await self.queue.next_due(self.s.kb_id)
                self._claim_after = min(due or math.inf, time.time() + 1.0)
            if not self._tasks:
                await self.writer.flush()
                due = await self.queue.next_due(self.s.kb_id)
                if due is None:
                    if await self._scan_in_progress():
                        await self._sleep(SCAN_POLL)
                        continue
                    expiring = await self.leases.lapsing(self._sleep)
                    if expiring is None:
                        return
                    await self._sleep(expiring - time.time() + 0.1)
                    await self.leases.reclaim()
                    continue
                self._tell_wait()
                await self._sleep(due - time.time())
            else:
                await self._sleep(1.0)

    def _tell_wait(self) -> None:
        """Nothing in flight, nothing due: where rows wait for registers whose answers were
        lost to settle, the run says so once per wait, with how many and how long (a run
        silent for --timeout and a margin, its rate falling, looked stuck)."""
        now = time.time()
        waits = [t for t in self._settling.values() if t > now]
        if not waits or now < self._wait_said_until or max(waits) - now <= SETTLE_MARGIN:
            return
        seconds = max(waits) - now
        self._wait_said_until = max(waits)
        log.info(
            "waiting %d s to settle %d registers whose answers were lost",
            math.ceil(seconds),
            len(waits),
            extra=logs.FILE_ONLY,
        )
        self._shown.settling(seconds, len(waits))

    async def _scan_in_progress(self) -> bool:
        return await scan_in_progress(self.queue, self.s.kb_id, self.owner)

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=min(max(seconds, 0.005), 1.0))

    async def _drain(self) -> None:
        """After a stop: give in-flight files the grace period, then release the rest."""
        if self._tasks and self.result.fatal is None:
            grace = self.s.grace if self.result.interrupted else None
            await asyncio.wait(set(self._tasks), timeout=grace)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    def _spawn(self, job: Job) -> None:
        """One attempt per job in this run at a time. A row claimed back while our own
        attempt of it still runs, or its outcome is still unwritten, was taken from us while
        we stalled (suspended past the lease) and put back to pending: that attempt goes on
        under the new lease, and no second one uploads the file again (its register under a
        second key would be a second entry no service refuses)."""
        expires = job.started_at + self.s.lease
        self._settling.pop(job.id, None)
        if self.leases.holds(job.id):
            log.info("%s claimed back while its attempt goes on: kept", job.relpath)
            self.leases.hold(job.id, expires)
            return
        if job.id in self._unwritten:
            # Handed back: written after that outcome, this release applies only where the
            # claim came after it (the claim read what the outcome wrote); else the outcome
            # ended our lease and the release matches nothing.
            self.writer.put(Attempt(job, self._shared).released())
            return
        self.leases.hold(job.id, expires)
        attempt = Attempt(job, self._shared)
        task = asyncio.create_task(self._attempt(attempt))
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._task_done(t, attempt))

    async def _attempt(self, attempt: Attempt) -> Outcome:
        outcome = await attempt.run()
        if await self._outage_covers(attempt, outcome):
            outcome = dataclasses.replace(
                outcome, outcome=OutcomeKind.RELEASED, next_attempt_at=0.0
            )
        return outcome

    def _task_done(self, task: asyncio.Task[Outcome], attempt: Attempt) -> None:
        """Whatever happened, exactly one outcome of the attempt reaches the writer: here, since
        a task cancelled before it first ran (a fatal error right after a claim) never runs its
        coroutine, so no handler inside it could report the row."""
        self._tasks.discard(task)
        self.leases.drop(attempt.job.id)
        self._unwritten.add(attempt.job.id)
        self._wake.set()
        if task.cancelled():
            self.writer.put(attempt.released())
            return
        error = task.exception()
        if error is not None:
            self.writer.put(attempt.released())
            if isinstance(error, DatabaseFatal):
                self._down(error)
            elif isinstance(error, QueueError):
                # a database error the engine did not try again (inside a transaction): the
                # file waits for a later attempt, none counted
                log.warning("%s: put back for later: %s", attempt.job.relpath, error)
            else:
                log.error("unexpected error on %s", attempt.job.relpath, exc_info=error)
            return
        self.writer.put(task.result())
        self.result.adopted += attempt.adopted
        self.result.unchanged += attempt.unchanged
        self.result.relabelled += attempt.relabelled
        if attempt.doubted:
            self._doubted.add(attempt.job.kb_id)
        if attempt.fatal is not None:
            self._fatal(attempt.fatal)

    async def _outage_covers(self, attempt: Attempt, outcome: Outcome) -> bool:
        """A failure the service's outage explains is not the file's: its attempt is not
        counted (the row goes back to pending, keeping any doubt about its register)."""
        error = attempt.error
        if error is None or outcome.outcome not in (OutcomeKind.RETRY, OutcomeKind.FAILED):
            return False
        return await self.gate.covers(error, attempt.job.id, VERDICT_WAIT)

    async def _watch_progress(self) -> None:
        """Uploads in flight and none finishing for a long time (STALL_TIMEOUTS x --timeout),
        the service answering: most often more workers than the uplink carries, each file
        getting a sliver of it. Said once per period, with what to change."""
        period = STALL_TIMEOUTS * self.s.timeout
        said = 0.0
        while True:
            await asyncio.sleep(period / 4)
            now = time.monotonic()
            quiet = now - self._finished_at
            if self._tasks and self.gate.is_open and quiet >= period and now - said >= period:
                said = now
                log.warning(
                    "no file finished in the last %.0f s with %d uploads in flight: a slow"
                    " uplink? fewer --workers (each file then gets more of it) or --bwlimit"
                    " (leaving room for the rest of the network) lets files finish",
                    quiet,
                    len(self._tasks),
                )


# up to 2 s, then up to 4 s (what backoff(attempt + 1, 1.0) gave before the policies)
PREFLIGHT = Retry(tries=3, first=2.0)


def _check_again(exc: Exception) -> bool:
    """Preflight asks again unless the service answered: refused, or no such knowledge base."""
    return isinstance(exc, ApiError) and exc.error_kind != ErrorKind.KB_NOT_FOUND and not exc.fatal


async def preflight(client: MaiAgentClient, kb_ids: list[str]) -> dict[str, ApiError]:
    """One cheap call per knowledge base before claiming anything, so a wrong key stops the
    run after a single request, every row untouched. A service never reached stops it after
    a few tries (exit 4), not after the outage timeout: at the start that is more likely a
    wrong --base-url than an outage. Returns the knowledge bases the service does not know,
    with its answer: their rows are left alone while the others' upload (one mistyped --kb
    at enqueue must not block the good ones)."""
    unknown: dict[str, ApiError] = {}
    for kb_id in kb_ids:
        try:
            await retrying(functools.partial(client.check_kb, kb_id), PREFLIGHT, _check_again)
        except ApiError as err:
            if err.error_kind == ErrorKind.KB_NOT_FOUND:
                unknown[kb_id] = err
                continue
            if not err.fatal and classify(err).outage_like:
                raise Fatal(ServiceUnreachable.at_start(err)) from None
            raise Fatal(err) from None
    return unknown


def install_signals(signals: Interrupts, pool: Pool, notice: Callable[[str], None] | None) -> None:
    """First Ctrl+C or SIGTERM: stop claiming and finish in-flight files; second: quit now
    (the rows stay leased to a dead process, which the next run reclaims at once). Each is
    said through `notice` (the CLI's), which must have shown it when it returns."""

    def on_signal() -> None:
        if pool.result.interrupted:
            if notice is not None:
                notice(_("interrupted again: quitting now"))
            os._exit(ExitCode.INTERRUPTED)
        if notice is not None:
            notice(
                _(
                    "stopping: finishing in-flight uploads for up to {seconds:.0f}s (Ctrl+C "
                    "again to quit at once)"
                ).format(seconds=pool.s.grace)
            )
        pool.stop()

    signals.on_interrupt(on_signal)
