"""Case 10: files/s of 1, 2 and 4 `uploader run` processes ("hosts", each its own --host-id)
draining one PostgreSQL queue against one server with 20 ms latency, and the scaling ratio.

Each process is bounded by its latency limit (workers / (requests per file x latency)), so k
processes could reach k times one; on a machine of few cores the CPU bounds them first: the
uploaders, the API server and PostgreSQL share the cores. That bound is measured, not
assumed: cores / (CPU seconds per file of all three, from the same runs).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from tests.pg_server import PgServer

from .harness import (
    API_KEY,
    KB,
    KIB,
    Measured,
    Server,
    make_files,
    measure,
    serve,
    uploader_argv,
    workspace,
)

WORKERS = 10


@dataclass
class Drained:
    processes: int
    files: int
    wall_s: float
    files_per_s: float
    cpu_s_per_file: float  # uploaders + API server + PostgreSQL
    requests_per_file: float


@contextlib.contextmanager
def _queue(pg: PgServer, name: str, folder: str) -> Iterator[str]:
    url = pg.create_database(name)
    env = {**os.environ, "MAIAGENT_API_KEY": API_KEY}
    done = measure(
        [
            *uploader_argv(),
            "--db",
            url,
            "--host-id",
            "host-0",
            "enqueue",
            folder,
            "--kb",
            KB,
            "--shared",
        ],
        env=env,
    )
    if done.code != 0:
        raise RuntimeError(f"enqueue exited {done.code}: {done.tail()}")
    yield url


def drain(pg: PgServer, api: Server, folder: str, files: int, processes: int) -> Drained:
    """Enqueue `folder` once (shared storage), then `processes` runs at once; every file must
    end done, once."""
    with (
        tempfile.TemporaryDirectory(prefix="uploader-hosts-") as cwd,
        _queue(pg, f"scale{processes}", folder) as url,
    ):
        env = {**os.environ, "MAIAGENT_API_KEY": API_KEY}
        results: list[Measured] = []
        before = (api.stats()["total"], api.cpu_s() or 0.0, pg.cpu_seconds())

        def one(i: int) -> None:
            argv = [
                *uploader_argv(),
                "--db",
                url,
                "--host-id",
                f"host-{i}",
                "-q",
                "run",
                "--no-report",
                "--upload-anyway",  # hosts start together: one may list another's first entries
                "--base-url",
                api.base_url,
                "--workers",
                str(WORKERS),
            ]
            results.append(measure(argv, env=env, cwd=cwd))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(processes)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        after = (api.stats()["total"], api.cpu_s() or 0.0, pg.cpu_seconds())
        states = measure([*uploader_argv(), "--db", url, "status", "--json"], env=env)
    bad = [r for r in results if r.code != 0]
    if bad:
        raise RuntimeError(f"a run exited {bad[0].code}: {bad[0].tail()}")
    counts = json.loads(states.stdout)["knowledge_bases"][KB]
    if counts.get("done", {}).get("files") != files or len(counts) != 1:
        raise RuntimeError(f"expected {files} done, status says {counts}")
    cpu = sum(r.cpu_s for r in results) + (after[1] - before[1]) + (after[2] - before[2])
    return Drained(
        processes=processes,
        files=files,
        wall_s=wall,
        files_per_s=files / wall,
        cpu_s_per_file=cpu / files,
        requests_per_file=(after[0] - before[0]) / files,
    )


def scaling(files: int, latency: float, counts: tuple[int, ...]) -> list[Drained]:
    with PgServer(durable=True) as pg, serve(latency) as api, workspace() as root:
        folder = make_files(root, files, KIB)
        return [drain(pg, api, folder, files, k) for k in counts]
