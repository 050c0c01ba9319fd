"""One `uploader run` as a library call: `await runner.run(queue, options)` decides whether
anything is pending, picks the register batch, runs the pools over the queue, keeps the run's
record (its options, counts, exit code, why it stopped, what it learned of the service) and
returns where the queue stands after it. The CLI parses, calls this and prints (as
sqlite-utils' commands call its `Database`), so a library caller gets the same record as
`uploader run` does. What one pool does is in `worker.py`, one attempt in `attempt.py`; the
runs table is `store/runs.py`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import checkup, filetypes, logs, replace, walkwait
from .bandwidth import Bandwidth
from .client import MaiAgentClient, RateLimiter, make_session
from .exitcodes import exit_code
from .i18n import _, in_english, ngettext
from .interrupts import Interrupts
from .limits import raise_open_files_limit
from .liveness import LockError, RunLock, make_owner
from .model import HostCount, JobState
from .options import Plan, RunOptions
from .outage import GateState, OnChange, Outage
from .progress import rate_text
from .queue import Queue
from .resume import resumes
from .store.runs import RunsStore
from .store.status import StatusStore
from .store.superseded import SupersededStore
from .worker import (
    Fatal,
    Pool,
    ProgressFactory,
    RunResult,
    Untold,
    install_signals,
    preflight,
    scan_in_progress,
)

log = logging.getLogger("uploader.run")


class RunRefused(Exception):
    """The run cannot do what it was asked, before it starts (bad input, exit 2): a --kb the
    queue does not hold, pending rows that only another host may take."""


@dataclass(frozen=True)
class Hooks:
    """Whom a run tells as it goes (the CLI draws and logs; None: nobody is told)."""

    # the run has work: the files per state before it (a resumed run says how far it was)
    begin: Callable[[dict[str, int], bool], None] | None = None  # and whether it resumes
    start: Callable[[int], None] | None = None  # the run's id, as soon as it has one
    progress: ProgressFactory | None = None  # made once the run's totals are known
    notice: Callable[[str], None] | None = None  # what a signal does to the run
    outage: OnChange | None = None  # every pause and resume of the outage gate


@dataclass(frozen=True)
class RunOutcome:
    """What a run came to and where the queue stands after it."""

    result: RunResult
    run_id: int | None = None  # None when nothing was pending (no run is recorded then)
    idle: str | None = None  # the line saying why nothing was pending
    states: dict[str, int] = field(default_factory=dict)  # files per state of --kb (or all)
    unknown: dict[str, int] = field(default_factory=dict)  # files of each unknown kb
    elsewhere: int = 0  # pending rows only another host may upload (0 with --shared)

    @property
    def skipped(self) -> int:
        return self.states.get(JobState.SKIPPED.value, 0)


async def run(
    queue: Queue, options: RunOptions, hooks: Hooks | None = None, until: float | None = None
) -> RunOutcome:
    """Upload every pending file of --kb (of every knowledge base without it) that this host
    may take. `until`: how long an enqueue started beside this run is waited for
    (walkwait; from now by default). Raises RunRefused on bad input."""
    hooks = hooks or Hooks()
    runs = RunsStore(queue.engine)
    mark = await runs.last_attempt()  # before anything: another run may start uploading now
    await walkwait.wait_for_enqueue(
        queue, options.kb_id, walkwait.deadline() if until is None else until
    )
    idle = await nothing_pending(queue, options.kb_id, options.host_id)
    if idle is not None:
        return RunOutcome(RunResult(), idle=idle)
    if hooks.begin is not None:
        states = states_of(await StatusStore(queue.engine).state_counts(), options.kb_id)
        hooks.begin(states, await resumes(queue.engine))
    kbs = await queue.kbs_with_work(options.kb_id)
    plan = Plan(
        register_batch=await checkup.register_batch(
            queue, options.base_url, kbs, options.register_batch
        )
    )
    raise_open_files_limit()
    owner = make_owner(queue.scope.host)
    with _run_lock(queue, owner) as lock, Interrupts() as signals:
        if lock is not None:
            await _end_dead_runs(queue, lock)
        run_id = await runs.start_run(owner, options.recorded())
        if hooks.start is not None:
            hooks.start(run_id)
        result = await _upload(queue, options, plan, kbs, hooks, owner, run_id, lock, signals)
        result.by_others = await runs.done_by_others(run_id, mark, options.kb_id, queue.scope)
        await _record(queue, run_id, result)
    await checkup.learned_from_run(queue, options.base_url, result.batch_proved)
    outcome = await _after(queue, options, result, run_id)
    with in_english():  # the log's words, whatever the user reads
        said = summary(result, outcome.skipped)
        if result.by_others:
            said += "; " + by_others(result.by_others)
    if result.interrupted:
        log.warning(
            "run interrupted (Ctrl+C, SIGTERM or the terminal closed): %s; %d files "
            "pending, `uploader run` resumes",
            said,
            outcome.states[JobState.PENDING.value],
            extra=logs.FILE_ONLY,
        )
    else:
        log.info("run ended: %s", said)
    return outcome


async def _upload(
    queue: Queue,
    options: RunOptions,
    plan: Plan,
    kbs: list[str],
    hooks: Hooks,
    owner: str,
    run_id: int,
    lock: RunLock | None,
    signals: Interrupts,
) -> RunResult:
    """Preflight of `kbs` (those with work, read when the register batch was picked), one
    pool over the queue (one per known knowledge base when some are unknown), then the old
    versions' entries replaced."""
    result = RunResult()
    async with make_session(options.workers) as session:
        client = MaiAgentClient(
            session,
            options.base_url,
            options.api_key,
            RateLimiter(options.rate_limit),
            timeout=options.timeout,
            bandwidth=Bandwidth(options.bwlimit) if options.bwlimit else None,
        )
        try:
            result.unknown_kbs = await preflight(client, kbs)
        except Fatal as exc:
            result.fatal = exc.error
        known = [kb for kb in kbs if kb not in result.unknown_kbs]
        if result.fatal is None and kbs and not known:
            result.fatal = next(iter(result.unknown_kbs.values()))
        if result.fatal is None and known:
            accepted = await filetypes.learn(queue, client, options.base_url, known)
            plan = dataclasses.replace(plan, file_types=accepted.types)
            if accepted.note is not None and hooks.notice is not None:
                hooks.notice(_("warning: {note}").format(note=accepted.note))
        if result.fatal is not None:
            return result
        # One pool over every knowledge base; one per known one when some are unknown, since
        # a claim takes rows of one knowledge base or of all.
        scopes = known if result.unknown_kbs else [options.kb_id]
        totals = [await queue.pending_totals(kb) for kb in scopes]
        files, nbytes = sum(t[0] for t in totals), sum(t[1] for t in totals)
        shown = Untold() if hooks.progress is None else hooks.progress(files, nbytes)

        def outage_seen(state: GateState, outage: Outage) -> None:
            shown.pause(state is GateState.CLOSED)
            if hooks.outage is not None:
                hooks.outage(state, outage)

        try:
            for kb in scopes:
                probe_kb = kb or (kbs[0] if kbs else "")
                pool = Pool(
                    queue,
                    client,
                    dataclasses.replace(options, kb_id=kb),
                    plan,
                    owner,
                    run_id,
                    shown,
                    probe_kb,
                    outage_seen,
                    lock,
                )
                install_signals(signals, pool, hooks.notice)
                result.add(await pool.run())
                if result.fatal is not None or result.interrupted:
                    break
        finally:
            shown.close()
        if result.fatal is None and not result.interrupted:
            # The run's client is behind no gate (only the pools' are); these deletes retry
            # on their own.
            result.replaced = await replace.drain(
                queue, client, options.kb_id, keep_old_versions=options.keep_old_versions
            )
            result.fatal = result.replaced.fatal
    return result


async def _record(queue: Queue, run_id: int, result: RunResult) -> None:
    """The run's end in its record: why it stopped (shown by `status` after the terminal is
    gone), its counts and exit code."""
    runs = RunsStore(queue.engine)
    if result.fatal is not None:
        log.error("run %d stopped: %s", run_id, result.fatal, extra=logs.FILE_ONLY)
        await runs.set_run_fatal(run_id, str(result.fatal))
    for error in result.unknown_kbs.values():
        log.error("%s: its rows left alone", error, extra=logs.FILE_ONLY)
    counts = {
        "uploaded": result.uploaded,
        "adopted": result.adopted,
        "unchanged": result.unchanged,
        "relabelled": result.relabelled,
        "failed": result.failed,
        "released": result.released,
        "seconds": round(result.elapsed, 3),
        "superseded_deleted": result.replaced.deleted,
        "copies_deleted": result.copies_deleted,
    }
    await runs.end_run(run_id, counts, exit_code(result.ending()))


async def _after(queue: Queue, options: RunOptions, result: RunResult, run_id: int) -> RunOutcome:
    """Where the queue stands after the run."""
    tally = await StatusStore(queue.engine).tally()
    after = tally.states()
    elsewhere = 0
    if not options.shared:
        elsewhere = pending_elsewhere(tally.hosts(), options.host_id)
    return RunOutcome(
        result,
        run_id,
        states=states_of(after, options.kb_id),
        unknown={kb: sum(states_of(after, kb).values()) for kb in result.unknown_kbs},
        elsewhere=elsewhere,
    )


async def _end_dead_runs(queue: Queue, lock: RunLock) -> None:
    """Runs whose process died (kill -9, a power cut, a database locked at their end) never
    recorded their end: the ones whose lock proves them dead are ended now, exit unknown."""
    runs = await RunsStore(queue.engine).open_runs()
    dead = set(lock.dead_owners([owner for _id, owner in runs], remove=False))
    for run_id, owner in runs:
        if owner in dead:
            await RunsStore(queue.engine).end_run(
                run_id, {"lost": "its process died before the run ended"}, None
            )
    # the lock files of dead runs are proof only while their rows are not taken back
    lock.sweep(keep=[o.owner for o in await queue.lease_owners()])


@contextlib.contextmanager
def _run_lock(queue: Queue, owner: str) -> Iterator[RunLock | None]:
    """This run's liveness lock for its whole life, where the queue's runs share a folder;
    without one a dead run's rows come back only when their lease expires."""
    folder = queue.runs_folder
    if folder is None:
        yield None
        return
    try:
        lock = RunLock.take(folder, owner)
    except LockError as exc:
        log.warning("%s: a dead run's rows are taken back only when their lease expires", exc)
        yield None
        return
    with lock:
        yield lock


async def nothing_pending(q: Queue, kb_id: str | None, host_id: str) -> str | None:
    """None when this host has something to upload; else the line that says why not. A --kb
    the queue does not hold (a typo) is bad input, naming the ones it does hold. Entries of
    changed files' old versions still to delete are work too (the run deletes them)."""
    if (await q.pending_totals(kb_id))[0] or await SupersededStore(q.engine).superseded_due(kb_id):
        return None
    if await scan_in_progress(q, kb_id, make_owner(q.scope.host)):
        return None  # an enqueue is still walking: the run waits for its rows
    tally = await StatusStore(q.engine).tally()
    counts = tally.states()
    if kb_id is not None and kb_id not in counts:
        holds = (
            _("the queue holds: {kbs}").format(kbs=", ".join(sorted(counts)))
            if counts
            else _("the queue is empty")
        )
        raise RunRefused(_("nothing pending for {kb} ({holds})").format(kb=kb_id, holds=holds))
    if not counts:
        return _("nothing pending: the queue is empty (`uploader enqueue DIR --kb KB_ID` fills it)")
    shown = {kb: states for kb, states in counts.items() if kb_id in (None, kb)}
    held = "; ".join(
        f"{kb}: "
        + ", ".join(
            f"{state_word(JobState(state))} {n:,}" for state, (n, _b) in sorted(states.items()) if n
        )
        for kb, states in sorted(shown.items())
    )
    line = (
        _("nothing pending for {kb} ({held})").format(kb=kb_id, held=held)
        if kb_id
        else _("nothing pending ({held})").format(held=held)
    )
    hosts = tally.hosts()
    elsewhere = pending_elsewhere(hosts, host_id)
    if elsewhere:
        _left_to_no_one(await _pending_by_host(q, hosts, host_id, kb_id), host_id)
        line += _("; {n} pending files were queued by other hosts (`run --shared`)").format(
            n=f"{elsewhere:,}"
        )
    return line


def by_others(files: int) -> str:
    """What another run uploaded while this one ran (two runs on one queue each end with part
    of it, which read as a run that stopped half-way)."""
    return ngettext(
        "{n} more file was uploaded by another run at the same time",
        "{n} more files were uploaded by another run at the same time",
        files,
    ).format(n=f"{files:,}")


def state_word(state: JobState) -> str:
    """A state as `status` and the run show it (the JSON keeps the English value)."""
    words = {
        JobState.PENDING: _("pending"),
        JobState.RUNNING: _("running"),
        JobState.DONE: _("done"),
        JobState.FAILED: _("failed"),
        JobState.SKIPPED: _("skipped"),
        JobState.REMOVED: _("removed"),
    }
    return words[state]


async def _pending_by_host(
    q: Queue, hosts: list[HostCount], host_id: str, kb_id: str | None
) -> dict[str, int]:
    """Pending rows only another host may upload, per host (of `hosts`, the queue's rows
    per host as the tally counts them), of hosts with no run going on now (a queue shared by
    several hosts: those rows are being taken)."""
    if kb_id is not None:
        return {}  # the counts per host are of the whole queue: said, not judged, for one --kb
    running = {
        run["options"].get("host_id")
        for run in await RunsStore(q.engine).runs(last=50)
        if not run["ended_at"]
    }
    pending: dict[str, int] = {}
    for c in hosts:
        others = c.host not in ("", host_id, *running)
        if c.state == JobState.PENDING and not c.shared and others:
            pending[c.host] = pending.get(c.host, 0) + c.files
    return pending


def _left_to_no_one(pending: dict[str, int], host_id: str) -> None:
    """A database copied from another machine, or a host renamed: this run takes none of the
    pending rows and no other run is taking them. Said as an error naming their hosts and
    the ways to take them, not as `nothing pending` and exit 0."""
    if not pending:
        return
    total = sum(pending.values())
    hosts = ", ".join(f"{host} ({n:,})" for host, n in sorted(pending.items()))
    first = min(pending)
    raise RunRefused(
        _(
            "nothing pending for host {host}, but {n} pending files were queued by host "
            "{hosts}: if this machine sees their folders at the same paths, take them with "
            "`uploader --host-id {first} run`, or all hosts' with `uploader run --shared`"
        ).format(host=host_id, n=f"{total:,}", hosts=hosts, first=first)
    )


def pending_elsewhere(counts: list[Any], host_id: str) -> int:
    """Pending rows only another host may upload."""
    return sum(
        c.files
        for c in counts
        if c.state == JobState.PENDING and not c.shared and c.host not in ("", host_id)
    )


def states_of(counts: dict[str, dict[str, tuple[int, int]]], kb_id: str | None) -> dict[str, int]:
    """Files per state (every state) of --kb, or of the whole queue."""
    files = dict.fromkeys((state.value for state in JobState), 0)
    for kb, states in counts.items():
        if kb_id in (None, kb):
            for state, (n, _bytes) in states.items():
                files[state] += n
    return files


def summary(result: RunResult, skipped: int) -> str:
    """The run's one line: what the terminal shows and the log keeps."""
    rate = (result.uploaded + result.failed) / result.elapsed if result.elapsed else 0.0
    speed = rate_text(result.bytes / result.elapsed if result.elapsed else 0.0)
    unchanged = (
        _(", unchanged {n} (same content)").format(n=result.unchanged) if result.unchanged else ""
    )
    if result.relabelled:
        unchanged += _(", relabelled {n} (update-metadata, no upload)").format(n=result.relabelled)
    uploaded = result.uploaded - result.unchanged - result.relabelled
    line = _(
        "uploaded {uploaded}, failed {failed}, skipped {skipped}{unchanged} in {elapsed:.1f}s "
        "({rate:.1f} files/s, {speed})"
    )
    return line.format(
        uploaded=uploaded,
        failed=result.failed,
        skipped=skipped,
        unchanged=unchanged,
        elapsed=result.elapsed,
        rate=rate,
        speed=speed,
    )
