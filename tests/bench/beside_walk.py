"""Case 12: a run beside a big walk (issue 24).

`enqueue` of a big folder is started, and `run --workers 10` a moment later against the same
SQLite file, as someone does who starts the upload in a second terminal: the walk's inserts and
the run's claims and outcomes share one write lock. The run is stopped (Ctrl+C) a while after
the walk ended, so its rate is seen both while the walk goes on and after it.

Figures: seconds from the enqueue's start to the first done row; the run's files/s while the
walk goes on and after it ended, and their ratio; the enqueue's wall time, CPU and memory.
Times come from the rows' own finished_at (this host's clock), not from sampling. The work is
checked first: the enqueue queued every file, the run ended on its Ctrl+C (or finished) with no
file failed or left running, and the knowledge base holds exactly one entry per done row.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import threading
import time
import urllib.request

from .cases import Figures, Options, case, per_1000, ratio, rnd, verdict
from .harness import KB, Measured, Server, Traffic, Uploader, make_files, serve, workspace

# The run bound by latency, not by CPU: at 0 ms the run, the server and the walk all want a
# core, and on 2 cores the question would be CPU shares, not the write lock.
LATENCY = 0.020
WORKERS = 10
SIZE = 16  # bytes per file: each file differs (same bytes would be skipped as the same content)
RUN_DELAY = 0.3  # the run starts this long after the enqueue
SETTLE = 1.0  # the rate after the walk is counted from this long after its end


def _records(server: Server) -> list[dict]:
    with urllib.request.urlopen(f"{server.origin}/_control/records?kb={KB}", timeout=120) as resp:
        return json.loads(resp.read())


def _rows(db: str) -> tuple[dict[str, int], list[float], set[str]]:
    """The states, the done rows' finish times (sorted) and their names shown."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        states = dict(conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"))
        done = conn.execute(
            "SELECT finished_at, filename FROM jobs WHERE state = 'done' ORDER BY finished_at"
        ).fetchall()
    return states, [t for t, _name in done], {name for _t, name in done}


def _problem(
    enqueue: Measured, run: Measured, states: dict[str, int], files: int, entries: list[dict]
) -> str | None:
    if enqueue.code != 0:
        return f"enqueue exited {enqueue.code}: {enqueue.tail()}"
    if sum(states.values()) != files:
        return f"expected {files} rows, the database says {states}"
    if run.code not in (0, 130):
        return f"uploader run exited {run.code}: {run.tail()}"
    if set(states) - {"done", "pending"}:
        return f"rows neither done nor pending after the run: {states}"
    if not states.get("done"):
        return "the run uploaded nothing"
    if len(entries) != states["done"]:
        return f"{len(entries)} entries in the knowledge base for {states['done']} done rows"
    return None


@case("12", "a run beside a walk: enqueue of a big folder, run --workers 10 started with it")
def case_12(opts: Options) -> Figures:
    files = opts.files or (20_000 if opts.quick else 1_000_000)
    after = 5.0 if opts.quick else 20.0  # seconds the run goes on after the walk's end
    load = [round(x, 2) for x in os.getloadavg()]
    with workspace() as root:
        started = time.perf_counter()
        folder = make_files(root, files, SIZE)
        made_s = time.perf_counter() - started
        with serve(LATENCY) as server:
            up = Uploader(os.path.join(root, "queue"), server)
            pid: list[int] = []
            ran: list[tuple[Measured, Traffic]] = []

            def run() -> None:
                ran.append(up.run("--workers", str(WORKERS), on_start=pid.append))

            runner = threading.Thread(target=run)
            enqueue_at = time.time()
            timer = threading.Timer(RUN_DELAY, runner.start)
            timer.start()
            enqueue = up.measure("enqueue", folder, "--kb", KB, timeout=1800)
            walk_end = time.time()
            timer.join()
            deadline = time.monotonic() + after
            while runner.is_alive() and time.monotonic() < deadline:
                runner.join(0.1)
            if pid and runner.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid[0], signal.SIGINT)  # Ctrl+C: in-flight files finish, it exits
            runner.join()
            run_measured, traffic = ran[0]
            entries = _records(server)
        states, times, names = _rows(up.db)
    problem = _problem(enqueue, run_measured, states, files, entries)
    if problem is None and names != {e["filename"] for e in entries}:
        problem = "the done rows' names are not the knowledge base's entries"
    first_s = times[0] - enqueue_at if times else None
    during = [t for t in times if t <= walk_end]
    later = [t for t in times if t > walk_end + SETTLE]
    during_rate = len(during) / (walk_end - times[0]) if during and walk_end > times[0] else None
    after_rate = len(later) / (later[-1] - later[0]) if len(later) > 1 else None
    rate_ratio = ratio(during_rate, after_rate)
    done = states.get("done", 0)
    figures: Figures = {
        "files": files,
        "wall_s": rnd(enqueue.wall_s),
        "files_per_s": rnd(during_rate, 1),
        "requests_per_file": rnd(traffic.requests / done, 4) if done else None,
        "cpu_s_per_1000": rnd(per_1000(run_measured.cpu_s, done)),
        "peak_rss_mb": rnd(run_measured.rss_mb, 1),
        "first_done_s": rnd(first_s),
        "during_walk_files_per_s": rnd(during_rate, 1),
        "after_walk_files_per_s": rnd(after_rate, 1),
        "during_to_after": rnd(rate_ratio),
        "done_during_walk": len(during),
        "done": done,
        "enqueue_s": rnd(enqueue.wall_s),
        "enqueue_cpu_s": rnd(enqueue.cpu_s),
        "enqueue_rss_mb": rnd(enqueue.rss_mb, 1),
        "enqueue_s_per_million": rnd(enqueue.wall_s / files * 1_000_000, 1),
        "run_exit": run_measured.code,
        "latency_s": LATENCY,
        "generate_s": rnd(made_s, 1),
        "load_average_before": load,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    ok = first_s is not None and first_s <= 2.0 and (rate_ratio or 0) >= 0.8
    target = "first done <= 2 s after the enqueue starts; files/s during the walk >= 0.8 x after"
    return verdict(figures, target, ok, problem)
