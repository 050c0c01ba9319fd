"""A run started in the same instant as an enqueue: the enqueue may not have made its
database, nor recorded its scan, when the run first looks (its start-up, the database's
migrations and the knowledge-base check come before its walk). A run that finds no database,
or no row and no scan for its knowledge base, looks again for a short bounded while before
it says that nothing is pending; one that finds work or a queue with rows starts at once."""

from __future__ import annotations

import asyncio
import os
import time

from . import worker
from .liveness import make_owner
from .queue import Queue, is_url
from .store.status import StatusStore

# Longer than an enqueue takes from its start to its scan's record on a loaded machine (the
# interpreter's start, migrations of a new database, one listing call to check --kb); short
# enough that a run on an empty queue still answers at once to a person.
GRACE = 3.0
POLL = 0.05


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


async def wait_for_enqueue(q: Queue, kb_id: str | None, until: float) -> None:
    """Wait while the queue holds nothing for `kb_id` (any with None) and no scan into it is in
    progress, until `until`: an enqueue that has just started records its scan soon."""
    me = make_owner(q.scope.host)
    while time.monotonic() < until and await _untouched(q, kb_id, me):
        await asyncio.sleep(POLL)


async def _untouched(q: Queue, kb_id: str | None, me: str) -> bool:
    if (await q.pending_totals(kb_id))[0] or await worker.scan_in_progress(q, kb_id, me):
        return False
    counts = await StatusStore(q.engine).state_counts()
    return not (counts if kb_id is None else counts.get(kb_id))
