"""The life of jobs driven through the real `Attempt` (attempt.py), the real `Registrar`,
`RemoteIndex` and queue (a SQLite file), against an in-memory service whose every register may
answer, take effect and lose its answer, fail before taking effect, or take effect late (after
its request timed out, within the time the uploader allows for it to land). Processes die at
any await (the outcome never written, the lease left to expire or the owner proved dead),
stall past their lease, and run side by side. Two jobs share a name and a size, so adopting by
name would give one the other's entry.

Whatever the schedule: a final run finishes every job, no key has two entries, and every job
is done with the entry of its own upload.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import async_test, rows
from uploader import attempt as attempt_module
from uploader.attempt import Attempt, Shared
from uploader.client import ApiError, FilePage, Presigned, RegisterItem, RemoteEntry, Uploaded
from uploader.clock import ServiceClock
from uploader.liveness import make_owner
from uploader.model import ErrorKind, Job, Outcome, ScanRow, Severity
from uploader.options import Plan, RunOptions
from uploader.queue import Queue, open_queue
from uploader.store.status import StatusStore

KB = "kb-life"
TIMEOUT = 0.02  # the request timeout the attempts work with: late effects land within it
SCHEDULES = 120
FATES = ("answered", "answered", "lost_after_effect", "failed_before_effect", "late_effect")


class Crash(BaseException):
    """The process dies here: nothing after this point happens, nothing is written."""


@dataclass
class Service:
    """The knowledge base: entries by key, and registers still to take effect."""

    rng: random.Random
    entries: list[RemoteEntry] = field(default_factory=list)
    late: list[tuple[float, RemoteEntry]] = field(default_factory=list)

    def make(self, item: RegisterItem) -> RemoteEntry:
        return RemoteEntry(str(uuid.uuid4()), item.filename, item.key, 10, "done", time.time())

    def land(self) -> None:
        now = time.time()
        for due, entry in list(self.late):
            if due <= now:
                self.late.remove((due, entry))
                self.entries.append(entry._replace(created_at=now))


class FakeClient:
    """The three calls and the listing, with a fate per register and a death at any step
    (`die_after` awaits from now; None: this process does not die)."""

    gate = None
    timeout = TIMEOUT

    def __init__(self, service: Service, rng: random.Random, die_after: int | None) -> None:
        self.service, self.rng, self.die_after = service, rng, die_after
        self.clock = ServiceClock()
        self.clock.observe(-1.0, 1.0)  # the fake service stamps entries by this clock

    async def _step(self) -> None:
        await asyncio.sleep(0)
        if self.die_after is not None:
            self.die_after -= 1
            if self.die_after < 0:
                raise Crash

    async def presign(self, filename: str, size: int) -> Presigned:
        await self._step()
        return Presigned("http://s3.invalid/", {"key": f"media/{uuid.uuid4()}.txt"})

    async def upload(self, p: Presigned, path: Any, size: int, filename: str, **_: Any) -> Uploaded:
        await self._step()
        return Uploaded(size, Path(path.decode()).stat().st_mtime_ns, "0" * 64)

    async def register(
        self, kb_id: str, items: Any, label_form: str = "objects", *, fence: Any = None
    ) -> list[RemoteEntry]:
        await self._step()
        if fence is not None:
            items, _since = await fence(items)
        await self._step()  # on the wire
        fate = self.rng.choice(FATES)
        made = [self.service.make(item) for item in items]
        if fate in ("answered", "lost_after_effect"):
            self.service.entries.extend(made)
        if fate == "late_effect":
            due = time.time() + self.rng.uniform(0, TIMEOUT)
            self.service.late.extend((due, entry) for entry in made)
        if fate == "late_effect":
            await asyncio.sleep(TIMEOUT)  # no answer: the request times out
        await self._step()  # the answer on its way back
        if fate == "answered":
            return made
        raise ApiError(
            "register: timed out",
            kind=Severity.TRANSIENT,
            error_kind=ErrorKind.TIMEOUT,
            maybe_applied=True,
        )

    async def list_files(self, kb_id: str, page: int, page_size: int) -> FilePage:
        await self._step()
        self.service.land()
        newest = sorted(self.service.entries, key=lambda e: e.created_at or 0, reverse=True)
        return FilePage(newest, len(newest), None)


class Process:
    """One uploader process: its client (which may die) and its books (the attempt's Ledger,
    kept in memory: outcomes written only when the process gets to write them)."""

    def __init__(self, q: Queue, service: Service, rng: random.Random, die: int | None) -> None:
        self.q, self.owner = q, make_owner("life-host")
        self.client = FakeClient(service, rng, die)
        self.written: list[Outcome] = []
        options = RunOptions(
            "http://127.0.0.1:9/",
            "",
            workers=4,
            max_retries=50,
            retry_delay=0.0,
            register_batch=1,
            timeout=TIMEOUT,
        )
        self.shared = Shared.of(self.client, q, self, options, Plan())  # type: ignore[arg-type]

    def record(self, outcome: Outcome) -> None:
        self.written.append(outcome)

    async def begin_register(self, job: Job) -> float | None:
        await self.client._step()
        since = time.time()
        return since if job.id in await self.q.begin_register(self.owner, [job], since) else None

    async def record_superseded(self, job: Job, entry: str) -> None:
        await self.q.record_superseded(self.owner, job.id, entry)

    def lease_until(self, job_id: int) -> float:
        return time.time() + 60.0

    async def uploaded_as(self, kb_id: str, digest: str, job_id: int) -> str | None:
        return None

    async def any_type(self, job_id: int) -> bool:
        return False


async def _run_once(q: Queue, p: Process) -> bool:
    """One claim and its attempts; False if the process died (nothing more is written)."""
    jobs = await q.claim(p.owner, 2, 60.0, KB)
    try:
        outcomes = await asyncio.gather(*(Attempt(job, p.shared).run() for job in jobs))
    except Crash:
        return False
    await q.record_outcomes(p.owner, [*p.written, *outcomes])
    p.written.clear()
    return True


async def _expire(q: Queue, owner: str) -> None:
    """The process stalled past its lease (or died unseen): its lease runs out."""
    async with q.transaction() as conn:
        await conn.execute(
            "UPDATE jobs SET lease_expires = ? WHERE lease_owner = ?", (time.time() - 1, owner)
        )


def _file(folder: Path, name: str) -> ScanRow:
    """`<name>/report.pdf`: the same name and size for every job, its own bytes."""
    path = folder / name / "report.pdf"
    if not path.exists():
        path.parent.mkdir(parents=True)
        path.write_bytes(f"report {name}".ljust(10).encode())
    st = path.stat()
    return ScanRow(bytes(path), f"{name}/report.pdf", st.st_size, st.st_mtime_ns)


async def _schedule(folder: Path, seed: int) -> tuple[Service, list[dict[str, Any]]]:
    rng = random.Random(seed)
    service = Service(rng)
    db = folder / f"life-{seed}.db"
    async with await open_queue(str(db)) as q:
        await q.enqueue_batch(KB, [_file(folder, d) for d in "ab"])
        for _round in range(rng.randint(1, 8)):
            p = Process(q, service, rng, rng.choice([None, rng.randint(0, 12)]))
            if not await _run_once(q, p):
                if rng.random() < 0.5:
                    await q.reclaim([p.owner])  # proved dead by its lock
                else:
                    await _expire(q, p.owner)
                    await q.reclaim([])
        await q.retry_failed(KB, (), None)
        final = Process(q, service, rng, None)
        for _ in range(400):
            await asyncio.sleep(0.002)  # doubtful rows wait until their register had time
            await _run_once(q, final)
            if (await StatusStore(q.engine).state_counts())[KB].keys() == {"done"}:
                break
    await asyncio.sleep(TIMEOUT)
    service.land()
    return service, rows(db, "SELECT id, state, s3_key, file_id FROM jobs ORDER BY id")


@pytest.mark.parametrize("block", range(4))
@async_test
async def test_every_schedule_ends_with_each_job_done_once_with_its_own_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    monkeypatch.setattr(attempt_module, "SETTLE_MARGIN", 0.01)
    for seed in range(block * SCHEDULES // 4, (block + 1) * SCHEDULES // 4):
        service, jobs = await _schedule(tmp_path, seed)
        by_key: dict[str | None, list[str]] = {}
        for entry in service.entries:
            by_key.setdefault(entry.key, []).append(entry.id)
        assert all(len(ids) == 1 for ids in by_key.values()), (seed, by_key)
        assert [j["state"] for j in jobs] == ["done", "done"], (seed, jobs)
        for job in jobs:
            assert by_key.get(job["s3_key"]) == [job["file_id"]], (seed, job, by_key)
