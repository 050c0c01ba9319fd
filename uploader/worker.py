"""The pool: claim rows, push each file through presign -> S3 POST -> register, write results.

Exactly once rests on one rule: register again only when the previous register certainly did
not happen. A register that timed out, lost its connection, got a 5xx, or whose process died
leaves the row's `unknown_since` set; before registering that row again the knowledge base's
listing is read and a matching entry is adopted instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
import sqlite3
import time
import uuid
from dataclasses import dataclass, field

import aiosqlite

from . import queue
from .client import (
    ApiError,
    MaiAgentClient,
    RateLimiter,
    RegisterItem,
    RemoteEntry,
    backoff,
    make_session,
)
from .progress import Progress
from .queue import Job, Outcome
from .reconcile import RemoteIndex

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


class Fatal(Exception):
    """A run-wide error (bad key, unknown knowledge base) met while working on a job."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(str(error))
        self.error = error


def make_owner() -> str:
    """host:pid:token, so a later run on this host can tell that the owner is dead."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def dead_owners(owners: list[tuple[str, float]], me: str) -> list[str]:
    """Owners on this host whose process is gone: their rows need not wait for the lease."""
    host = socket.gethostname()
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

    def __init__(self, conn: aiosqlite.Connection, owner: str, pool: Pool) -> None:
        self._conn = conn
        self._owner = owner
        self._pool = pool
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
                await queue.record_outcomes(self._conn, self._owner, items)
            except BaseException:
                self._items[:0] = items
                raise
            self._pool.committed(items)

    async def loop(self) -> None:
        """Flush every few milliseconds until stopped. It is stopped, not cancelled: a cancel
        arriving just after a COMMIT would put committed results back for a second write. A
        database error only delays the results (they stay in memory, the rows leased to us)."""
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), FLUSH_INTERVAL)
            try:
                await self.flush()
            except (queue.QueueError, sqlite3.Error) as exc:
                log.warning("results not written yet: %s", exc)

    def stop(self) -> None:
        self._stop.set()


@dataclass
class _Batch:
    items: list[tuple[str, str, asyncio.Future[str]]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class Registrar:
    """Registers uploaded keys, N per call when --register-batch N > 1, each file waiting at
    most `delay`. An answer that does not name every file sent turns batching off."""

    def __init__(self, client: MaiAgentClient, index: RemoteIndex, size: int, delay: float):
        self._client = client
        self._index = index
        self.size = size
        self._delay = delay
        self._batches: dict[str, _Batch] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def register(self, kb_id: str, key: str, filename: str) -> str:
        if self.size <= 1:
            entries = await self._client.register(kb_id, [RegisterItem(key, filename)])
            [file_id] = self._match(entries, [(key, filename)])
            if file_id is None:
                raise _unlisted(filename)
            self._index.taken.add(file_id)
            return file_id
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        batch = self._batches.setdefault(kb_id, _Batch())
        batch.items.append((key, filename, fut))
        if len(batch.items) >= self.size:
            self._send(kb_id)
        elif batch.timer is None:
            batch.timer = asyncio.get_running_loop().call_later(self._delay, self._send, kb_id)
        return await fut

    def _send(self, kb_id: str) -> None:
        batch = self._batches.pop(kb_id, None)
        if batch is None:
            return
        if batch.timer is not None:
            batch.timer.cancel()
        items = [item for item in batch.items if not item[2].done()]
        if items:
            task = asyncio.create_task(self._call(kb_id, items))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _call(self, kb_id: str, items: list[tuple[str, str, asyncio.Future[str]]]) -> None:
        try:
            entries = await self._client.register(
                kb_id, [RegisterItem(key, name) for key, name, _ in items]
            )
        except ApiError as exc:
            for _key, _name, fut in items:
                if not fut.done():
                    fut.set_exception(exc)
            return
        ids = self._match(entries, [(key, name) for key, name, _fut in items])
        for (_key, name, fut), file_id in zip(items, ids, strict=True):
            if fut.done():
                continue
            if file_id is None:
                fut.set_exception(_unlisted(name))
            else:
                self._index.taken.add(file_id)
                fut.set_result(file_id)

    def _match(self, entries: list[RemoteEntry], sent: list[tuple[str, str]]) -> list[str | None]:
        """The entry of each (key, filename) sent: by S3 key when the answer shows keys, else
        by filename. A file the answer does not name may or may not be registered (its job
        looks in the listing before trying again), and from then on one file goes per call."""
        keyed = [e for e in entries if e.file]
        by_name: dict[str, list[str]] = {}
        for entry in entries:
            by_name.setdefault(entry.filename, []).append(entry.id)
        ids: list[str | None] = []
        for key, name in sent:
            if keyed:
                ids.append(next((e.id for e in keyed if e.has_key(key)), None))
            else:
                ids.append(by_name[name].pop(0) if by_name.get(name) else None)
        if None in ids and self.size > 1:
            log.warning("the register answer did not list every file: one file per call now")
            self.size = 1
        return ids

    async def close(self) -> None:
        """Batch calls still in flight at the end of the run: let them go, their jobs were
        released as doubtful."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _unlisted(filename: str) -> ApiError:
    return ApiError(
        f"register answer has no entry for {filename!r}",
        kind="transient",
        error_kind="bad_response",
        maybe_applied=True,
    )


class Pool:
    """Runs jobs until the queue is empty, a fatal error, or a stop request."""

    def __init__(
        self,
        conn: aiosqlite.Connection,
        client: MaiAgentClient,
        settings: Settings,
        owner: str,
        run_id: int,
        progress: Progress,
    ) -> None:
        self.conn = conn
        self.client = client
        self.s = settings
        self.owner = owner
        self.run_id = run_id
        self.progress = progress
        self.result = RunResult()
        self.writer = Writer(conn, owner, self)
        self.index = RemoteIndex(conn, client)
        self.registrar = Registrar(
            client, self.index, settings.register_batch, settings.register_delay
        )
        self._slots = asyncio.Semaphore(settings.workers)
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

    def committed(self, outcomes: list[Outcome]) -> None:
        done = [o for o in outcomes if o.outcome == "done"]
        failed = sum(1 for o in outcomes if o.outcome == "failed")
        nbytes = sum(o.job.size for o in done)
        self.result.uploaded += len(done)
        self.result.failed += failed
        self.result.bytes += nbytes
        self.result.released += sum(1 for o in outcomes if o.outcome == "released")
        retries = [o.next_attempt_at for o in outcomes if o.outcome in ("retry", "released")]
        if retries:
            self._claim_after = min(self._claim_after, *retries)
        # committed ids are excluded from adoption by the database itself
        self.index.taken.difference_update(o.file_id for o in done)
        if done or failed:
            self.progress.add(len(done), failed, nbytes)
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
        self.result.failed_in_queue = await queue.failed_count(self.conn, self.s.kb_id)
        return self.result

    async def _feed(self) -> None:
        while not self._stopping:
            free = self._capacity - len(self._tasks)
            wanted = free >= self._claim_min or (free > 0 and not self._tasks)
            if wanted and time.time() >= self._claim_after:
                jobs = await queue.claim(
                    self.conn, self.owner, free, self.s.lease_seconds, self.s.kb_id
                )
                if jobs:
                    for job in jobs:
                        self._spawn(job)
                    continue
                # Nothing due: no write transaction per wake-up until a row can be due.
                due = await queue.next_due(self.conn, self.s.kb_id)
                self._claim_after = min(due or math.inf, time.time() + 1.0)
            if not self._tasks:
                await self.writer.flush()
                due = await queue.next_due(self.conn, self.s.kb_id)
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
        task = asyncio.create_task(self._guarded(job))
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._task_done(t, job.id))

    def _task_done(self, task: asyncio.Task[None], job_id: int) -> None:
        self._tasks.discard(task)
        self._lease_until.pop(job_id, None)
        self._wake.set()

    async def _keep_leases(self) -> None:
        """Renew our leases while long uploads run; give back rows of dead processes."""
        while True:
            await asyncio.sleep(self.s.lease_seconds / 3)
            renewing = time.time()
            try:
                renewed = await queue.renew_leases(self.conn, self.owner, self.s.lease_seconds)
                await self._reclaim()
            except (queue.QueueError, sqlite3.Error) as exc:
                log.warning("leases not renewed this time: %s", exc)
                continue
            for job_id in renewed:
                if job_id in self._lease_until:
                    self._lease_until[job_id] = renewing + self.s.lease_seconds

    async def _reclaim(self) -> None:
        owners = await queue.lease_owners(self.conn)
        if owners:
            n = await queue.reclaim(self.conn, dead_owners(owners, self.owner))
            if n:
                log.info("reclaimed %d rows left running by a dead or expired run", n)
                self._wake.set()

    # --- one job ---------------------------------------------------------------------------

    async def _guarded(self, job: Job) -> None:
        """Run one attempt; whatever happens, exactly one outcome reaches the writer."""
        state = _Attempt()
        try:
            self.writer.put(await self._attempt(job, state))
        except Fatal as exc:
            self.writer.put(self._outcome(job, "released", state))
            self._fatal(exc.error)
        except asyncio.CancelledError:
            self.writer.put(self._outcome(job, "released", state))
            raise
        except Exception as exc:
            log.exception("unexpected error on %s", job.relpath)
            error = ApiError(
                f"internal error: {type(exc).__name__}: {exc}",
                kind="transient",
                error_kind="internal",
                maybe_applied=True,
            )
            self.writer.put(self._after_error(job, error, state))

    async def _attempt(self, job: Job, state: _Attempt) -> Outcome:
        try:
            return await self._steps(job, state)
        except ApiError as err:
            if err.kind == "fatal":
                raise Fatal(err) from None
            return self._after_error(job, err, state)

    async def _steps(self, job: Job, state: _Attempt) -> Outcome:
        """Upload holding one of the --workers slots; with batched registration the slot is
        given back while the file waits for its batch."""
        await self._slots.acquire()
        held = True
        try:
            adopted = await self._upload(job, state)
            if adopted is not None:
                return adopted
            if self.registrar.size > 1:
                self._slots.release()
                held = False
            return await self._register(job, state)
        finally:
            if held:
                self._slots.release()

    async def _upload(self, job: Job, state: _Attempt) -> Outcome | None:
        """Presign and upload unless a previous attempt did; adopt a doubtful register's
        entry if the knowledge base shows one (then that outcome is returned)."""
        if self._check_file(job):
            job.unknown_since = None  # what may have been registered is the old content
        job.filename = job.filename or self._name(job)
        if job.unknown_since is not None:
            file_id = await self.index.adopt(job, job.filename)
            if file_id is not None:
                log.info("adopted %s for %s after a doubtful register", file_id, job.relpath)
                self.result.adopted += 1
                return self._outcome(job, "done", state, file_id=file_id)
            job.unknown_since = None
        if job.step != "uploaded" or not job.s3_key:
            presigned = await self.client.presign(job.filename, job.size)
            await self.client.upload(presigned, job.path, job.size, job.filename)
            job.s3_key = presigned.fields["key"]
            job.step = "uploaded"
            self.writer.put(self._outcome(job, "uploaded", state))
        return None

    async def _register(self, job: Job, state: _Attempt) -> Outcome:
        margin = min(5.0, self.s.lease_seconds / 4)
        if time.time() > self._lease_until.get(job.id, 0.0) - margin:
            # Stalled (suspended, starved) past our lease: another run may own the row now,
            # and registering could make a second entry. Leave it to whoever holds it.
            raise ApiError("lease expired before registering", kind="transient", error_kind="lease")
        state.registering_since = time.time()
        assert job.s3_key is not None and job.filename is not None
        file_id = await self.registrar.register(job.kb_id, job.s3_key, job.filename)
        state.registering_since = None
        return self._outcome(job, "done", state, file_id=file_id)

    def _check_file(self, job: Job) -> bool:
        """The file may have changed since enqueue: upload what is there now (True if it
        changed). Unreadable files are reported by the upload's open."""
        try:
            st = os.stat(job.path)
        except FileNotFoundError:
            raise ApiError(
                "file no longer exists", kind="permanent", error_kind="missing"
            ) from None
        except OSError as exc:
            raise ApiError(
                f"cannot read file: {exc.strerror}", kind="permanent", error_kind="unreadable"
            ) from None
        if st.st_size == job.size and st.st_mtime_ns == job.mtime_ns:
            return False
        log.info("%s changed since enqueue: uploading its current content", job.relpath)
        job.size, job.mtime_ns = st.st_size, st.st_mtime_ns
        job.step, job.s3_key = None, None
        return True

    def _name(self, job: Job) -> str:
        return job.relpath if self.s.name == "relpath" else job.relpath.rsplit("/", 1)[-1]

    def _after_error(self, job: Job, err: ApiError, state: _Attempt) -> Outcome:
        last_try = job.attempts >= 1 + self.s.max_retries
        if err.kind == "permanent" or last_try:
            log.info("failed %s after %d attempt(s): %s", job.relpath, job.attempts, err)
            return self._outcome(job, "failed", state, err)
        delay = backoff(job.attempts, self.s.retry_delay, err.retry_after)
        log.info(
            "retry %d/%d of %s in %.1fs: %s",
            job.attempts,
            self.s.max_retries,
            job.relpath,
            delay,
            err,
        )
        return self._outcome(job, "retry", state, err, next_attempt_at=time.time() + delay)

    def _outcome(
        self,
        job: Job,
        outcome: str,
        state: _Attempt,
        err: ApiError | None = None,
        *,
        file_id: str | None = None,
        next_attempt_at: float = 0.0,
    ) -> Outcome:
        """The one rule for doubt: a register cut short (a cancel, or an error that may have
        reached the service) makes the row doubtful from when it began; otherwise the row
        keeps whatever doubt it had that this attempt did not settle."""
        cut_short = outcome == "released" or (err is not None and err.maybe_applied)
        unknown = job.unknown_since
        if state.registering_since is not None and cut_short:
            unknown = state.registering_since
        return Outcome(
            job=job,
            outcome=outcome,
            ended_at=time.time(),
            run_id=self.run_id,
            error_kind=err.error_kind if err else None,
            error=str(err) if err else None,
            file_id=file_id,
            next_attempt_at=next_attempt_at,
            unknown_since=unknown,
        )


@dataclass
class _Attempt:
    """What an attempt in progress has done so far that a crash or cancel must not forget."""

    registering_since: float | None = None


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
    conn: aiosqlite.Connection,
    settings: Settings,
    service: Connection,
    options: dict[str, object],
    quiet: bool,
) -> RunResult:
    """One `uploader run`: preflight, the pool until the queue is empty, the run's record."""
    owner = make_owner()
    run_id = await queue.start_run(conn, owner, options)
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
            await preflight(client, await queue.kbs_with_work(conn, settings.kb_id))
        except Fatal as exc:
            result.fatal = exc.error
        else:
            total, total_bytes = await queue.pending_totals(conn, settings.kb_id)
            progress = Progress(total, total_bytes, quiet)
            pool = Pool(conn, client, settings, owner, run_id, progress)
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
    await queue.end_run(conn, run_id, counts, exit_code(result))
    return result
