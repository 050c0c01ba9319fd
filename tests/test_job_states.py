"""The life of one job as a state machine, against the real queue functions and a real SQLite
file: claims by processes that may crash or be stopped at any step, registers whose answer may
be lost after the server acted, leases that expire, retries and `retry-failed`. Whatever the
path, the knowledge base never gets the file twice, and a final run always finishes it.

The worker's rule is modelled, not imported: a register is sent only after its write-ahead
(`queue.begin_register`) was committed under a live lease, and only when the row's
`unknown_since` is NULL; otherwise list the knowledge base into remote_files and adopt what
`queue.adoptable` finds by the row's key, registering again only when it finds nothing. A
row with no key committed never registered.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import itertools
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from uploader.client import parse_entry
from uploader.model import Job, Outcome, ScanRow
from uploader.queue import open_queue
from uploader.reconcile import listed_rows
from uploader.store.listing import ListingStore

KB = "kb-test"
NAME = "report.pdf"
SIZE = 1234
LEASE = 60.0
CLOCK_SKEW = 5.0  # as the worker subtracts from `since`
FATES = ("answered", "lost_after_apply", "unknown_not_applied", "refused")
# where a SIGKILL or Ctrl+C cuts an attempt; half of the attempts run to their end
STOPS = st.one_of(
    st.none(),
    st.sampled_from(
        ["check_doubtful_register", "upload", "registering_applied", "registering_not_applied"]
    ),
)


@dataclass
class Process:
    """One `uploader run`: its lease owner id, the job it holds, results not yet flushed."""

    owner: str
    job: Job | None = None
    registering_since: float | None = None
    buffer: list[Outcome] = field(default_factory=list)


@dataclass
class Entry:
    id: str
    created_ms: int
    key: str


@functools.cache
def _migrated() -> str:
    """An empty queue file migrated once per process: every example opens a copy of it, as
    migrating a new file took longer than most examples' steps."""
    folder = tempfile.mkdtemp(prefix="job-states-migrated-")
    atexit.register(shutil.rmtree, folder, True)
    path = os.path.join(folder, "queue.db")

    async def migrate() -> None:
        await (await open_queue(path)).close()

    asyncio.run(migrate())
    return path


class JobLife(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.folder = tempfile.mkdtemp(prefix="job-states-")
        self.loop = asyncio.new_event_loop()
        path = os.path.join(self.folder, "queue.db")
        shutil.copy2(_migrated(), path)
        self.queue = self.run(open_queue(path))
        self.pids = itertools.count(1000)
        self.alive: list[Process] = []
        self.dead: list[str] = []  # owners whose process died, their rows not yet reclaimed
        self.server: list[Entry] = []  # the knowledge base's entries for this file
        self.registers = 0

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        try:
            self._finish()
        finally:
            self.run(self.queue.close())
            self.loop.close()
            shutil.rmtree(self.folder, ignore_errors=True)

    # --- helpers -------------------------------------------------------------------------

    def row(self) -> dict[str, Any]:
        async def fetch() -> dict[str, Any]:
            async with self.queue.connection.execute(
                "SELECT state, step, s3_key, unknown_since, file_id, lease_owner FROM jobs"
            ) as cur:
                names = [d[0] for d in cur.description]
                return dict(zip(names, await cur.fetchone(), strict=True))

        return self.run(fetch())

    def outcome(self, p: Process, kind: str, **kw: Any) -> None:
        assert p.job is not None
        p.buffer.append(Outcome(job=p.job, outcome=kind, ended_at=time.time(), **kw))
        if kind != "uploaded":
            p.job = None  # the attempt is over for this process

    # --- the scenario --------------------------------------------------------------------

    @initialize()
    def enqueue(self) -> None:
        row = ScanRow(b"/data/" + NAME.encode(), NAME, SIZE, 1)
        self.run(self.queue.enqueue_batch(KB, [row]))
        self.start_process()

    @precondition(lambda self: len(self.alive) < 2)
    @rule()
    def start_process(self) -> None:
        self.alive.append(Process(owner=f"model-host:{next(self.pids)}:{uuid.uuid4().hex[:8]}"))

    @precondition(lambda self: any(p.job is None and not p.buffer for p in self.alive))
    @rule(
        data=st.data(),
        stop_at=STOPS,
        how=st.sampled_from(["crash", "stop"]),
        fate=st.sampled_from(FATES),
        last_try=st.booleans(),
        flushed=st.booleans(),
    )
    def attempt(
        self,
        data: st.DataObject,
        stop_at: str | None,
        how: str,
        fate: str,
        last_try: bool,
        flushed: bool,
    ) -> None:
        """One process takes the job through the worker's steps: claim, the doubtful-register
        check, upload, register; SIGKILL (`crash`) or Ctrl+C (`stop`) may cut in at `stop_at`.
        Its results are written at once (`flushed`) or stay in memory until a `flush`."""
        p = data.draw(st.sampled_from([p for p in self.alive if p.job is None and not p.buffer]))
        if not self.claim(p):
            return
        self.steps(p, stop_at, how, fate, last_try)
        if flushed and p in self.alive:
            self.write(p)

    def steps(self, p: Process, stop_at: str | None, how: str, fate: str, last_try: bool) -> None:
        for step in (self.check_doubtful_register, self.upload):
            if stop_at == step.__name__:
                self.interrupt(p, how)
                return
            step(p)
            if p.job is None:
                return  # adopted: done without registering
        if stop_at in ("registering_applied", "registering_not_applied"):
            self._register(p, applied=stop_at == "registering_applied")
            self.interrupt(p, how)
        else:
            self.register(p, fate, last_try)

    def claim(self, p: Process) -> bool:
        jobs = self.run(self.queue.claim(p.owner, 1, LEASE, KB))
        if not jobs:
            return False
        assert not any(q.job for q in self.alive), "two live processes hold the same job"
        (p.job,) = jobs
        p.job.filename = p.job.filename or NAME
        p.registering_since = None
        return True

    def check_doubtful_register(self, p: Process) -> None:
        """A row whose last register may have happened is looked up in the listing first."""
        assert p.job is not None
        if p.job.unknown_since is None:
            return
        if p.job.s3_key is None:
            p.job.unknown_since = None
            return
        listed = [
            parse_entry(
                {
                    "id": e.id,
                    "filename": NAME,
                    "size": SIZE,
                    "createdAt": e.created_ms,
                    "file": e.key,
                }
            )
            for e in self.server
        ]
        self.run(
            ListingStore(self.queue.engine).store_listed(
                listed_rows(KB, listed, time.time(), set())
            )
        )
        since = p.job.unknown_since or p.job.started_at
        found = self.run(
            ListingStore(self.queue.engine).adoptable(
                KB, p.job.id, NAME, SIZE, since - CLOCK_SKEW, p.job.s3_key
            )
        )
        if found:
            self.outcome(p, "done", file_id=found[0])
        else:
            p.job.unknown_since = None

    def upload(self, p: Process) -> None:
        assert p.job is not None
        if p.job.step == "uploaded":
            return
        p.job.s3_key = f"media/chatbot-file/{uuid.uuid4()}/{NAME}"
        p.job.step = "uploaded"
        self.outcome(p, "uploaded")

    def _register(self, p: Process, applied: bool) -> bool:
        """The write-ahead, then the register; False when the fence stopped it."""
        assert p.job is not None and p.job.unknown_since is None, "the worker's rule"
        assert p.job.s3_key is not None
        since = time.time()
        if p.job.id not in self.run(self.queue.begin_register(p.owner, [p.job], since)):
            return False
        p.registering_since = since
        self.registers += 1
        if applied:
            self.server.append(Entry(str(uuid.uuid4()), int(time.time() * 1000), p.job.s3_key))
        return True

    def register(self, p: Process, fate: str, last_try: bool) -> None:
        if not self._register(p, applied=fate in ("answered", "lost_after_apply")):
            self.outcome(p, "retry", error_kind="lease")
            return
        if fate == "answered":
            self.outcome(p, "done", file_id=self.server[-1].id)
            return
        unknown = p.registering_since if fate != "refused" else None
        self.outcome(
            p, "failed" if last_try else "retry", error_kind="network", unknown_since=unknown
        )

    def interrupt(self, p: Process, how: str) -> None:
        """SIGKILL leaves the row leased to a dead owner; Ctrl+C releases it, its register
        (if one was under way) marked doubtful."""
        if how == "crash":
            self._die(p)
        else:
            # the worker's one rule for doubt: a register cut short makes it, otherwise the
            # row keeps what it had (a doubt not yet looked up stays)
            doubt = p.registering_since
            self.outcome(p, "released", unknown_since=doubt or p.job.unknown_since)

    @precondition(lambda self: any(p.buffer for p in self.alive))
    @rule(data=st.data())
    def flush(self, data: st.DataObject) -> None:
        self.write(data.draw(st.sampled_from([p for p in self.alive if p.buffer])))

    def write(self, p: Process) -> None:
        self.run(self.queue.record_outcomes(p.owner, p.buffer))
        p.buffer = []
        if p.job is None:
            p.registering_since = None

    @precondition(lambda self: bool(self.alive))
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        """Power cut: whatever was not flushed is lost."""
        self._die(data.draw(st.sampled_from(self.alive)))

    def _die(self, p: Process) -> None:
        self.alive.remove(p)
        self.dead.append(p.owner)

    @precondition(lambda self: bool(self.dead))
    @rule(by=st.sampled_from(["pid", "lease"]))
    def reclaim(self, by: str) -> None:
        """A later run gives back rows of dead owners: at once when it can tell the process
        is gone, else when the lease has expired."""
        if by == "lease":
            self.run(self._expire(self.dead))
            self.run(self.queue.reclaim([]))
        else:
            self.run(self.queue.reclaim(list(self.dead)))
        self.dead = []

    async def _expire(self, owners: list[str]) -> None:
        async with self.queue.transaction() as conn:
            await conn.executemany(
                "UPDATE jobs SET lease_expires = ? WHERE lease_owner = ?",
                [(time.time() - 1, owner) for owner in owners],
            )

    @precondition(lambda self: self.row()["state"] == "failed")
    @rule()
    def retry_failed(self) -> None:
        self.run(self.queue.retry_failed(KB, (), None))

    # --- what must hold ------------------------------------------------------------------

    @invariant()
    def never_registered_twice(self) -> None:
        assert len(self.server) <= 1, f"{len(self.server)} entries after {self.registers} calls"

    @invariant()
    def done_means_the_entry(self) -> None:
        row = self.row()
        if row["state"] == "done":
            assert [e.id for e in self.server] == [row["file_id"]]

    def _finish(self) -> None:
        """Everyone stops; a final run (after `retry-failed`) finishes the job exactly once."""
        for p in list(self.alive):
            if p.job is None and p.buffer:
                self.run(self.queue.record_outcomes(p.owner, p.buffer))
                self.alive.remove(p)
            else:
                self._die(p)
        self.run(self.queue.reclaim(self.dead))
        self.run(self.queue.retry_failed(KB, (), None))
        last = Process(owner="model-host:1:final")
        for _ in range(2):
            if self.row()["state"] != "done":
                assert self.claim(last)
                self.check_doubtful_register(last)
                if last.job is not None:
                    self.upload(last)
                    self.register(last, "answered", last_try=False)
                self.run(self.queue.record_outcomes(last.owner, last.buffer))
                last.buffer = []
        row = self.row()
        assert row["state"] == "done", row
        assert [e.id for e in self.server] == [row["file_id"]]


JobLife.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_job_life = JobLife.TestCase
