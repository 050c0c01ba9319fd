"""Case 6: how many jobs per second the queue itself turns over, with no HTTP at all.

A database of `--jobs` pending rows is drained by `SqliteQueue` exactly as the pool uses it:
claim a batch (one UPDATE .. RETURNING in BEGIN IMMEDIATE), then record each job's outcome in
one `record_outcomes` transaction. `--uploaded` also records the intermediate 'uploaded' step
first, as the pool does for every file between the S3 POST and the register call. Prints one
JSON line per batch size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time

from uploader.model import Job, Outcome, OutcomeKind
from uploader.queue import Queue, open_queue
from uploader.store.runs import RunsStore
from uploader.store.status import StatusStore

KB = "kb-micro"
OWNER = "bench:0:micro"


async def fill(q: Queue, jobs: int) -> None:
    """Pending rows written directly: the fill is not what is measured, and enqueue_batch
    has its own case (4)."""
    rows = [
        (KB, b"/bench/d%04d/f%07d.txt" % (i // 1000, i), f"f{i:07d}.txt", 1024, 0, 0.0)
        for i in range(jobs)
    ]
    async with q.transaction() as conn:
        await conn.executemany(
            "INSERT INTO jobs (kb_id, path, relpath, size, mtime_ns, enqueued_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )


def outcomes(jobs: list[Job], kind: OutcomeKind, run_id: int) -> list[Outcome]:
    now = time.time()
    return [
        Outcome(
            job=job,
            outcome=kind,
            ended_at=now,
            run_id=run_id,
            file_id=f"file-{job.id}" if kind == OutcomeKind.DONE else None,
            s3_key=f"media/chatbot-file/{job.id}/{job.relpath}",
            filename=job.relpath,
        )
        for job in jobs
    ]


async def drain(path: str, jobs: int, batch: int, uploaded: bool) -> dict:
    q = await open_queue(path)
    try:
        await fill(q, jobs)
        run_id = await RunsStore(q.engine).start_run(OWNER, {})
        done = 0
        cpu, start = time.process_time(), time.perf_counter()
        while claimed := await q.claim(OWNER, batch, 60.0, None):
            if uploaded:
                await q.record_outcomes(OWNER, outcomes(claimed, OutcomeKind.UPLOADED, run_id))
            await q.record_outcomes(OWNER, outcomes(claimed, OutcomeKind.DONE, run_id))
            done += len(claimed)
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu
        left = await StatusStore(q.engine).state_counts()
    finally:
        await q.close()
    if left.get(KB, {}).get("done", (0, 0))[0] != jobs:
        raise RuntimeError(f"expected {jobs} done rows, the queue says {left}")
    return {
        "batch": batch,
        "uploaded_step": uploaded,
        "jobs": done,
        "seconds": round(seconds, 3),
        "jobs_per_s": round(done / seconds, 1),
        "cpu_s_per_1000": round(cpu / done * 1000, 4),
    }


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="uploader-micro-") as folder:
        for i, batch in enumerate(args.batch):
            for uploaded in (False, True) if args.uploaded else (False,):
                path = os.path.join(folder, f"queue-{i}-{int(uploaded)}.db")
                jobs = args.jobs if batch >= 10 else max(args.jobs // 10, batch)
                print(json.dumps(await drain(path, jobs, batch, uploaded)), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.queue_micro")
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--batch", type=int, action="append", help="claim size (repeatable)")
    parser.add_argument("--uploaded", action="store_true", help="also time the 'uploaded' step")
    args = parser.parse_args(argv)
    args.batch = args.batch or [10]
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
