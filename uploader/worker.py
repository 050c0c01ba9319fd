"""The pool: claims rows, runs one `Attempt` per row in a slot, writes their outcomes in
batches, keeps its leases and gives back rows of dead runs. What one attempt does (and the
rule for doubt that exactly once rests on) is in `attempt.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from .attempt import Attempt, Policy, Shared
from .client import ApiError, MaiAgentClient, RateLimiter, backoff, make_session
from .model import Job, Outcome, OutcomeKind
from .progress import Progress
from .queue import Queue
from .reconcile import RemoteIndex
from .registrar import Registrar

log = logging.getLogger("uploader.run")

FLUSH_INTERVAL = 0.02


@dataclass
class Settings:
    workers: int = 10
    max_retries: int = 3
    retry_delay: float = 2.0
    kb_id: str | None = None
    name: str = "basename"
    register_batch: int = 1
    register_delay: float = 0.1
    lease_seconds: float = 60.0
    grace: float = 5.0


@dataclass
class RunResult:
    uploaded: int = 0
    adopted: int = 0
    failed: int = 0
    released: int = 0
    bytes: int = 0
    elapsed: float = 0.0
    fatal: ApiError | None = None
    interrupted: bool = False
    failed_in_queue: int = 0
    batch_proved: dict[str, bool] = field(default_factory=dict)  # see Registrar.proved


class Fatal(Exception):
    """A run-wide error (bad key, unknown knowledge base) met while working on a job."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(str(error))
        self.error = error


def make_owner(host: str | None = None) -> str:
    """host:pid:token, so a later run on this host can tell that the owner is dead; `host` is
    the queue's host id (--host-id), this machine's name by default."""
    return f"{host or socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def dead_owners(owners: list[tuple[str, float]], me: str) -> list[str]:
    """Owners on this host (by `me`'s host id) whose process is gone: their rows need not wait
    for the lease. A pid says nothing about another host's processes: theirs wait."""
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
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            dead.append(owner)
        except PermissionError:
            pass
    return dead


class Writer:
    """Every result goes through here and is committed in batches: one transaction per
    flush instead of one per file."""

    def __init__(
        self, queue: Queue, owner: str, on_commit: Callable[[list[Outcome]], None]
    ) -> None:
        self._queue = queue
        self._owner = owner
        self._on_commit = on_commit
        self._items: list[Outcome] = []
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()

    def put(self, outcome: Outcome) -> None:
        self._items.append(outcome)

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
        """Flush every few milliseconds until stopped. It is stopped, not cancelled: a cancel
        arriving just after a COMMIT would put committed results back for a second write. A
        database error only delays the results (they stay in memory, the rows leased to us)."""
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), FLUSH_INTERVAL)
            try:
                await self.flush()
            except self._queue.errors as exc:
                log.warning("results not written yet: %s", exc)

    def stop(self) -> None:
        self._stop.set()


class Pool:
    """Runs jobs until the queue is empty, a fatal error, or a stop request."""

    def __init__(
        self,
        queue: Queue,
        client: MaiAgentClient,
        settings: Settings,
        owner: str,
        run_id: int,
        on_progress: Callable[[int, int, int], None],
    ) -> None:
        """`on_progress(done, failed, bytes)` hears of every batch of results committed."""
        self.queue = queue
        self.client = client
        self.s = settings
        self.owner = owner
        self.run_id = run_id
        self._on_progress = on_progress
        self.result = RunResult()
        self.writer = Writer(queue, owner, self._committed)
        self.index = RemoteIndex(queue, client)
        self.registrar = Registrar(
            client, self.index, settings.register_batch, settings.register_delay
        )
        self._shared = Shared(
            client=client,
            registrar=self.registrar,
            index=self.index,
            policy=Policy(
                settings.max_retries, settings.retry_delay, settings.name, settings.lease_seconds
            ),
            run_id=run_id,
            slots=asyncio.Semaphore(settings.workers),
            record=self.writer.put,
            lease_until=lambda job_id: self._lease_until.get(job_id, 0.0),
        )
        # Claimed rows waiting for a slot keep every worker busy between claims; claims come
        # in batches of at least half the workers so the database is not asked per file.
        self._capacity = 2 * settings.workers + 2 * settings.register_batch
        self._claim_min = max(1, settings.workers // 2)
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._lease_until: dict[int, float] = {}
        self._claim_after = 0.0

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
        self._stopping = True
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        self._wake.set()

    def _committed(self, outcomes: list[Outcome]) -> None:
        done = [o for o in outcomes if o.outcome == OutcomeKind.DONE]
        failed = sum(1 for o in outcomes if o.outcome == OutcomeKind.FAILED)
        nbytes = sum(o.job.size for o in done)
        self.result.uploaded += len(done)
        self.result.failed += failed
        self.result.bytes += nbytes
        self.result.released += sum(1 for o in outcomes if o.outcome == OutcomeKind.RELEASED)
        retries = [
            o.next_attempt_at
            for o in outcomes
            if o.outcome in (OutcomeKind.RETRY, OutcomeKind.RELEASED)
        ]
        if retries:
            self._claim_after = min(self._claim_after, *retries)
        # committed ids are excluded from adoption by the database itself
        self.index.taken.difference_update(o.file_id for o in done)
        if done or failed:
            self._on_progress(len(done), failed, nbytes)
        self._wake.set()

    # --- the main loop ---------------------------------------------------------------------

    async def run(self) -> RunResult:
        started = time.monotonic()
        await self._reclaim()
        writer = asyncio.create_task(self.writer.loop())
        keeper = asyncio.create_task(self._keep_leases())
        try:
            await self._feed()
            await self._drain()
        finally:
            keeper.cancel()
            self.writer.stop()
            await asyncio.gather(keeper, writer, return_exceptions=True)
            await self.registrar.close()
            await self.writer.flush()
        self.result.elapsed = time.monotonic() - started
        self.result.failed_in_queue = await self.queue.failed_count(self.s.kb_id)
        self.result.batch_proved = dict(self.registrar.proved)
        return self.result

    async def _feed(self) -> None:
        while not self._stopping:
            free = self._capacity - len(self._tasks)
            wanted = free >= self._claim_min or (free > 0 and not self._tasks)
            if wanted and time.time() >= self._claim_after:
                jobs = await self.queue.claim(self.owner, free, self.s.lease_seconds, self.s.kb_id)
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
                    return
                await self._sleep(due - time.time())
            else:
                await self._sleep(1.0)

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
        self._lease_until[job.id] = job.started_at + self.s.lease_seconds
        task = asyncio.create_task(self._attempt(Attempt(job, self._shared)))
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._task_done(t, job.id))

    def _task_done(self, task: asyncio.Task[None], job_id: int) -> None:
        self._tasks.discard(task)
        self._lease_until.pop(job_id, None)
        self._wake.set()

    async def _attempt(self, attempt: Attempt) -> None:
        """Whatever happens, exactly one outcome of the attempt reaches the writer."""
        try:
            outcome = await attempt.run()
        except asyncio.CancelledError:
            self.writer.put(attempt.released())
            raise
        self.writer.put(outcome)
        self.result.adopted += attempt.adopted
        if attempt.fatal is not None:
            self._fatal(attempt.fatal)

    async def _keep_leases(self) -> None:
        """Renew our leases while long uploads run; give back rows of dead processes."""
        while True:
            await asyncio.sleep(self.s.lease_seconds / 3)
            renewing = time.time()
            try:
                renewed = await self.queue.renew_leases(self.owner, self.s.lease_seconds)
                await self._reclaim()
            except self.queue.errors as exc:
                log.warning("leases not renewed this time: %s", exc)
                continue
            for job_id in renewed:
                if job_id in self._lease_until:
                    self._lease_until[job_id] = renewing + self.s.lease_seconds

    async def _reclaim(self) -> None:
        owners = await self.queue.lease_owners()
        if owners:
            n = await self.queue.reclaim(dead_owners(owners, self.owner))
            if n:
                log.info("reclaimed %d rows left running by a dead or expired run", n)
                self._wake.set()


@dataclass
class Connection:
    """Where and how to reach the service; the key lives only here, in memory."""

    base_url: str
    api_key: str = field(repr=False)
    rate_limit: float | None = None
    timeout: float = 60.0


PREFLIGHT_TRIES = 3


async def preflight(client: MaiAgentClient, kb_ids: list[str]) -> None:
    """One cheap call per knowledge base before claiming anything, so a wrong key or an
    unknown knowledge base stops the run after a single request, every row untouched."""
    for kb_id in kb_ids:
        for attempt in range(1, PREFLIGHT_TRIES + 1):
            try:
                await client.check_kb(kb_id)
                break
            except ApiError as err:
                if err.kind == "fatal" or attempt == PREFLIGHT_TRIES:
                    raise Fatal(err) from None
                await asyncio.sleep(backoff(attempt + 1, 1.0, err.retry_after))


def exit_code(result: RunResult) -> int:
    if result.fatal is not None:
        return 3
    if result.interrupted:
        return 130
    return 1 if result.failed_in_queue else 0


def _install_signals(pool: Pool) -> None:
    """First Ctrl+C or SIGTERM: stop claiming and finish in-flight files; second: quit now
    (the rows stay leased to a dead process, which the next run reclaims at once)."""
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if pool.result.interrupted:
            print("\ninterrupted again: quitting now", flush=True)
            os._exit(130)
        print(
            f"\nstopping: finishing in-flight uploads for up to {pool.s.grace:.0f}s "
            "(Ctrl+C again to quit at once)",
            flush=True,
        )
        pool.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)


async def execute(
    queue: Queue,
    settings: Settings,
    service: Connection,
    options: dict[str, object],
    quiet: bool,
) -> RunResult:
    """One `uploader run`: preflight, the pool until the queue is empty, the run's record."""
    owner = make_owner(queue.scope.host)
    run_id = await queue.start_run(owner, options)
    result = RunResult()
    async with make_session(settings.workers) as session:
        client = MaiAgentClient(
            session,
            service.base_url,
            service.api_key,
            RateLimiter(service.rate_limit),
            timeout=service.timeout,
        )
        try:
            await preflight(client, await queue.kbs_with_work(settings.kb_id))
        except Fatal as exc:
            result.fatal = exc.error
        else:
            total, total_bytes = await queue.pending_totals(settings.kb_id)
            progress = Progress(total, total_bytes, quiet)
            pool = Pool(queue, client, settings, owner, run_id, progress.add)
            _install_signals(pool)
            try:
                result = await pool.run()
            finally:
                progress.close()
    counts = {
        "uploaded": result.uploaded,
        "adopted": result.adopted,
        "failed": result.failed,
        "released": result.released,
        "seconds": round(result.elapsed, 3),
    }
    await queue.end_run(run_id, counts, exit_code(result))
    return result
