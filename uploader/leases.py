"""A run's leases, kept apart from the scheduling of its attempts (worker.Pool), as huey keeps
its scheduler apart from its worker loop: the leases of the rows this run holds renewed while
their attempts run, the rows of dead or expired runs given back, and the leases of other runs
that nobody renews any more watched for, so that a run finding nothing to do takes them over.

The keeper never outlives the pool's other tasks: the pool runs it beside its writer and ends
the run when any of them ends (a keeper renewing the leases of a dead writer's rows would keep
them from every other host, for ever).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from .liveness import RunLock
from .model import LeaseOwner
from .queue import DatabaseFatal, Queue

log = logging.getLogger("uploader.run")


class Leases:
    """The leases of one run (`owner`) on one queue."""

    def __init__(
        self,
        queue: Queue,
        owner: str,
        lease: float,
        lock: RunLock | None,
        on_reclaimed: Callable[[], None],
    ) -> None:
        """`lock` is this run's liveness lock, the judge of other owners (liveness.py);
        `on_reclaimed` hears that rows came back to pending."""
        self.queue = queue
        self.owner = owner
        self.lease = lease
        self.lock = lock
        self._on_reclaimed = on_reclaimed
        self._until: dict[int, float] = {}  # the jobs whose attempt is running here

    # --- the rows this run works on ----------------------------------------------------------

    def hold(self, job_id: int, expires: float) -> None:
        """An attempt of `job_id` runs here under a lease until `expires` (this host's clock)."""
        self._until[job_id] = expires

    def drop(self, job_id: int) -> None:
        """The attempt of `job_id` ended."""
        self._until.pop(job_id, None)

    def holds(self, job_id: int) -> bool:
        return job_id in self._until

    def until(self, job_id: int) -> float:
        """When our lease of `job_id` ends (0: none)."""
        return self._until.get(job_id, 0.0)

    # --- the keeper --------------------------------------------------------------------------

    async def keep(self) -> None:
        """Renew our leases every third of a lease while long uploads run; give back rows of
        dead processes. A database error skips one round (the next comes a third of a lease
        later); a database out of reach past --db-timeout, or its disk full, ends the keeper,
        and with it the run."""
        while True:
            await asyncio.sleep(self.lease / 3)
            renewing = time.time()
            try:
                renewed = await self.queue.renew_leases(self.owner, self.lease)
                await self.reclaim()
            except DatabaseFatal:
                raise
            except self.queue.errors as exc:
                log.warning("leases not renewed this time: %s", exc)
                continue
            for job_id in renewed:
                if job_id in self._until:
                    self._until[job_id] = renewing + self.lease

    async def reclaim(self) -> None:
        """Rows of owners whose lease expired, or whose run lock proves them dead."""
        owners = await self.queue.lease_owners()
        if owners:
            others = [o.owner for o in owners if o.owner != self.owner]
            lock = self.lock
            dead = lock.dead_owners(others, remove=False) if lock is not None else []
            n = await self.queue.reclaim(dead)
            if lock is not None:
                for owner in dead:  # their rows are back: the proof is no longer needed
                    lock.forget(owner)
            if n:
                log.info("reclaimed %d rows left running by a dead or expired run", n)
                self._on_reclaimed()

    async def lapsing(self, sleep: Callable[[float], Awaitable[None]]) -> float | None:
        """When the queue is empty, the time at which rows still running will come back: at
        once for rows leased to this run that no attempt of it works on (a claim whose answer
        the database lost: given back now), else the earliest expiry of another owner's lease
        of our scale that is not being renewed (its holder died or stalled: a live run renews
        every third of its lease). A lease renewed meanwhile means a live holder; None then,
        and the run ends and leaves its rows to it. Call it only with no attempt running."""
        owners = await self.queue.lease_owners()
        if any(o.owner == self.owner for o in owners):
            n = await self.queue.reclaim([self.owner])
            if n:
                log.info("%d rows of claims whose answer was lost given back", n)
                return time.time()
        first = self._near(owners)
        if not first:
            return None
        await sleep(self.lease / 3 + 0.2)
        again = self._near(await self.queue.lease_owners())
        lapsing = [t for owner, t in again.items() if owner in first and t <= first[owner]]
        return min(lapsing) if lapsing else None

    def _near(self, owners: list[LeaseOwner]) -> dict[str, float]:
        now = time.time()
        return {
            o.owner: o.expires
            for o in owners
            if o.owner != self.owner and o.expires - now <= self.lease
        }
