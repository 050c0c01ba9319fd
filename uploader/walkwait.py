"""A run started in the same instant as an enqueue: the enqueue may not have made its
database, nor recorded its scan, when the run first looks (its start-up, the database's
migrations and the knowledge-base check come before its walk). A run that finds no database,
or no row and no scan for its knowledge base, looks again for a short bounded while before
it says that nothing is pending; one that finds work starts at once.

A queue that already holds rows of the knowledge base (last week's files, done) says nothing
of an enqueue starting beside the run, so the enqueue says it itself, before its start-up's
slow part: it holds a lock file in `<db>.scans/` from its first moment until its scan is
recorded (`announce`, `announced`). A run that finds such a lock held waits for that scan
(then for its rows, as for any scan in progress), however long the enqueue's check of --kb
takes, up to STARTING_MAX; a lock left by a dead enqueue is taken and removed."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from . import worker
from .liveness import LockError, RunLock, is_held, make_owner
from .queue import Queue, is_url
from .store.sqlite import SqliteEngine
from .store.status import StatusStore

# Longer than an enqueue takes from its start to its scan's record on a loaded machine (the
# interpreter's start, migrations of a new database, one listing call to check --kb); short
# enough that a run on an empty queue still answers at once to a person.
GRACE = 3.0
POLL = 0.05
# How long a run waits beyond GRACE for an enqueue that said it is starting and has not
# recorded its scan (its --kb check against a slow service; the request timeout and a margin).
STARTING_MAX = 90.0

_announcement: RunLock | None = None  # this process's, while its enqueue starts


def deadline() -> float:
    """When a run stops waiting for an enqueue that may be starting beside it."""
    return time.monotonic() + GRACE


def wait_for_database(target: str, until: float) -> None:
    """Wait until the SQLite file at `target` exists or `until` has passed: an enqueue started
    with this run makes it in its first moments. A PostgreSQL queue is not waited for."""
    if is_url(target):
        return
    while not os.path.exists(target) and time.monotonic() < until:
        time.sleep(POLL)


def _scans_dir(target: str) -> Path:
    """`<db>.scans`: the locks of enqueues starting into this database."""
    return Path(target + ".scans")


def announce(target: str) -> None:
    """An enqueue into the SQLite file `target` says that it is starting (see the module's
    docstring). Where the lock cannot be made (a read-only folder), nothing is said: a run
    beside it then waits GRACE only, as before."""
    global _announcement
    if is_url(target) or _announcement is not None:
        return
    try:
        _announcement = RunLock.take(_scans_dir(target))
    except LockError:
        _announcement = None


def announced() -> None:
    """The enqueue recorded its scan (or ended): its announcement is no longer needed."""
    global _announcement
    if _announcement is not None:
        _announcement.release()
        _announcement = None


def enqueue_starting(target: str) -> bool:
    """Another process's enqueue into `target` has said it is starting and lives."""
    if is_url(target):
        return False
    mine = _announcement.path if _announcement is not None else None
    folder = _scans_dir(target)
    try:
        locks = [p for p in folder.glob("*.lock") if p != mine]
    except OSError:
        return False
    return any(is_held(p) for p in locks)


async def wait_for_enqueue(q: Queue, kb_id: str | None, until: float) -> None:
    """Wait while the queue holds nothing for `kb_id` (any with None) and no scan into it is in
    progress, until `until`: an enqueue that has just started records its scan soon. While an
    enqueue into this SQLite file says it is starting, wait for it up to STARTING_MAX longer,
    even where the knowledge base holds rows already."""
    me = make_owner(q.scope.host)
    target = q.engine.path if isinstance(q.engine, SqliteEngine) else None
    while not await _work(q, kb_id, me):
        now = time.monotonic()
        if target is not None and await asyncio.to_thread(enqueue_starting, target):
            if now >= until + STARTING_MAX:
                return
        elif now >= until or await _has_rows(q, kb_id):
            return
        await asyncio.sleep(POLL)


async def _work(q: Queue, kb_id: str | None, me: str) -> bool:
    """Rows pending, or a scan in progress that will queue some."""
    return bool((await q.pending_totals(kb_id))[0]) or await worker.scan_in_progress(q, kb_id, me)


async def _has_rows(q: Queue, kb_id: str | None) -> bool:
    counts = await StatusStore(q.engine).state_counts()
    return bool(counts if kb_id is None else counts.get(kb_id))
