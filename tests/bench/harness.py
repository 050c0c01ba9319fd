"""The benchmark's plumbing: the server process, measured subprocesses, generated files.

Every measured program runs as a child of this process and is reaped with `os.wait4`, which
gives that child's own CPU time and peak RSS: the server, the bare client and the uploader never
share a figure.
"""

from __future__ import annotations

import compileall
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
API_KEY = "bench-key"
KB = "kb-bench"
KIB = 1024
MIB = 1024 * KIB


def compile_bytecode() -> None:
    """The package and the bench's own programs compiled to bytecode, as an install from a
    wheel leaves them. Where PYTHONDONTWRITEBYTECODE is set (a CI machine, this one) every
    measured process would compile its 75 modules from source at its start, 0.1-0.15 CPU-s
    that no user pays, and that a run started beside an enqueue pays while they both start."""
    for folder in ("uploader", os.path.join("tests", "bench")):
        compileall.compile_dir(os.path.join(REPO, folder), quiet=1)


@dataclass
class Measured:
    """One finished subprocess: its wall time, its own CPU (user+sys) and peak RSS."""

    argv: list[str]
    code: int
    wall_s: float
    cpu_s: float
    rss_mb: float
    stdout: str
    stderr: str

    def json(self) -> dict:
        """The last stdout line as JSON: how the helper programs report what they did."""
        lines = [line for line in self.stdout.splitlines() if line.startswith("{")]
        if not lines:
            raise RuntimeError(f"{self.argv[:3]} printed no JSON: {self.tail()}")
        return json.loads(lines[-1])

    def tail(self) -> str:
        text = (self.stderr or self.stdout).strip().splitlines()
        return " | ".join(text[-3:])


def measure(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    timeout: float = 3600.0,
    sampler: DoneSampler | None = None,
    on_start: Callable[[int], None] | None = None,
) -> Measured:
    """Run argv to completion; wall time from spawn to reap, rusage from the reap itself.
    `on_start` hears the child's pid, for a case that signals it while it runs."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdout=out, stderr=err, env=env, cwd=cwd or REPO)
        killer = threading.Timer(timeout, _kill, (proc.pid,))
        killer.start()
        if sampler is not None:
            sampler.start(proc.pid)
        if on_start is not None:
            on_start(proc.pid)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        if sampler is not None:
            sampler.stop(usage.ru_utime + usage.ru_stime)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(
            argv=list(argv),
            code=proc.returncode,
            wall_s=wall,
            cpu_s=usage.ru_utime + usage.ru_stime,
            rss_mb=usage.ru_maxrss / 1024,  # KiB on Linux
            stdout=out.read().decode("utf-8", "replace"),
            stderr=err.read().decode("utf-8", "replace"),
        )


def proc_cpu_s(pid: int) -> float | None:
    """A live process's CPU so far (user+sys, all threads), from /proc; None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class DoneSampler:
    """While `uploader run` works: its CPU so far and the number of done rows, every
    `interval` seconds. CPU per file over a stretch of the run hardly depends on what else
    the machine is doing, unlike wall time, so it shows a slope that noise would hide."""

    def __init__(self, db: str, interval: float = 0.2) -> None:
        self.db = db
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, pid: int) -> None:
        self._thread = threading.Thread(target=self._loop, args=(pid,), daemon=True)
        self._thread.start()

    def stop(self, final_cpu: float) -> None:
        """The process has ended: its total CPU closes the series."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.closing(sqlite3.connect(self.db, timeout=5.0)) as conn:
            self.samples.append((final_cpu, _done_count(conn)))

    def _loop(self, pid: int) -> None:
        with contextlib.closing(sqlite3.connect(self.db, timeout=1.0)) as conn:
            while not self._stop.wait(self.interval):
                cpu = proc_cpu_s(pid)
                try:
                    done = _done_count(conn)
                except sqlite3.Error:
                    continue
                if cpu is not None:
                    self.samples.append((cpu, done))

    def cpu_per_1000(self, start: int, end: int) -> float | None:
        """CPU seconds per 1,000 files while the done count went from `start` to `end`,
        over the samples that enclose that stretch (None if the run was too short)."""
        lo = [s for s in self.samples if s[1] <= start]
        hi = [s for s in self.samples if s[1] >= end]
        if not lo or not hi or hi[0][1] == lo[-1][1]:
            return None
        (cpu_lo, count_lo), (cpu_hi, count_hi) = lo[-1], hi[0]
        return (cpu_hi - cpu_lo) / (count_hi - count_lo) * 1000


def _done_count(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT COUNT(*) FROM jobs WHERE state = 'done'").fetchone()[0]


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def uploader_argv() -> list[str]:
    """The installed console script beside this interpreter: what a user runs."""
    script = os.path.join(os.path.dirname(sys.executable), "uploader")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "from uploader.cli import main; main()"]


def module_argv(module: str) -> list[str]:
    return [sys.executable, "-m", module]


class Server:
    """A running `python -m uploader.localserver` process (see `serve`)."""

    def __init__(self, proc: subprocess.Popen[str], base_url: str, latency: float) -> None:
        self.proc = proc
        self.base_url = base_url
        self.origin = base_url.split("/api/", 1)[0]
        self.latency = latency

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(self.origin + "/_control/stats", timeout=30) as resp:
            return json.loads(resp.read())

    def cpu_s(self) -> float | None:
        """The server's CPU so far: is it the bottleneck?"""
        return proc_cpu_s(self.proc.pid)


@contextlib.contextmanager
def serve(latency: float = 0.0, **knobs: object) -> Iterator[Server]:
    """The local server in its own process for the length of a case, stopped however it ends."""
    argv = module_argv("uploader.localserver")
    argv += ["--port", "0", "--api-key", API_KEY, "--kb", KB, "--latency", str(latency)]
    for name, value in knobs.items():
        argv += ["--" + name.replace("_", "-"), str(value)]
    with (
        tempfile.TemporaryFile() as log,
        subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True) as proc,
    ):
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if not line.startswith("listening on "):
                log.seek(0)
                errors = log.read().decode("utf-8", "replace")[-2000:]
                raise RuntimeError(f"server did not start: {line!r} {errors}")
            yield Server(proc, line.removeprefix("listening on "), latency)
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Traffic:
    """What one measured program cost the server: requests, and server CPU while it ran."""

    requests: int
    server_cpu_s: float | None


def measure_against(server: Server, argv: Sequence[str], **kw) -> tuple[Measured, Traffic]:  # type: ignore[no-untyped-def]
    before, cpu_before = server.stats(), server.cpu_s()
    result = measure(argv, **kw)
    after, cpu_after = server.stats(), server.cpu_s()
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return result, Traffic(after["total"] - before["total"], cpu)


@contextlib.contextmanager
def workspace() -> Iterator[str]:
    """A temporary folder for one case's files and database, removed however the case ends."""
    folder = tempfile.mkdtemp(prefix="uploader-bench-")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def make_files(root: str, count: int, size: int, per_folder: int = 1000) -> str:
    """`count` files of `size` bytes, `per_folder` to a subfolder; each file's bytes differ."""
    folder = os.path.join(root, "files")
    filler = b"x" * size
    for i in range(count):
        sub = os.path.join(folder, f"d{i // per_folder:04d}")
        if i % per_folder == 0:
            os.makedirs(sub, exist_ok=True)
        data = (b"%08d" % i + filler)[:size] if size else b""
        fd = os.open(os.path.join(sub, f"f{i:07d}.txt"), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            if data:
                os.write(fd, data)
        finally:
            os.close(fd)
    return folder


def make_sparse(root: str, size: int) -> str:
    """One big file that costs no disk: its bytes read as zeros."""
    folder = os.path.join(root, "big")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "big.pdf")
    with open(path, "wb") as f:
        f.truncate(size)
    return folder


class Uploader:
    """The `uploader` commands against one database and one server."""

    def __init__(self, root: str, server: Server | None) -> None:
        os.makedirs(root, exist_ok=True)
        self.db = os.path.join(root, "uploader.db")
        self.root = root
        self.server = server
        self.env = {**os.environ, "UPLOADER_DB": self.db, "MAIAGENT_API_KEY": API_KEY}
        self.env["UPLOADER_NO_KB_CHECK"] = "1"  # enqueue measured without a call to the service
        self.env.pop("MAIAGENT_KB_ID", None)
        self.env.pop("MAIAGENT_BASE_URL", None)

    def command(self, *args: str) -> list[str]:
        return [*uploader_argv(), *args]

    def measure(self, *args: str, api_key: str | None = None, timeout: float = 3600.0) -> Measured:
        env = self.env if api_key is None else {**self.env, "MAIAGENT_API_KEY": api_key}
        return measure(self.command(*args), env=env, cwd=self.root, timeout=timeout)

    def enqueue(self, folder: str) -> Measured:
        return _checked(self.measure("enqueue", folder, "--kb", KB), "enqueue")

    def run(
        self,
        *options: str,
        api_key: str | None = None,
        sampler: DoneSampler | None = None,
        on_start: Callable[[int], None] | None = None,
    ) -> tuple[Measured, Traffic]:
        assert self.server is not None
        # the run's own report is left out: the rates are the upload's (case 4 times the report);
        # the bare client has put the same names in the knowledge base before, which the check
        # for a second database would otherwise stop at
        argv = self.command(
            "run", "--base-url", self.server.base_url, "--no-report", "--upload-anyway", *options
        )
        env = self.env if api_key is None else {**self.env, "MAIAGENT_API_KEY": api_key}
        return measure_against(
            self.server, argv, env=env, cwd=self.root, sampler=sampler, on_start=on_start
        )

    def states(self) -> dict[str, int]:
        with contextlib.closing(sqlite3.connect(self.db)) as conn:
            return dict(conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"))

    def finished_times(self) -> list[float]:
        with contextlib.closing(sqlite3.connect(self.db)) as conn:
            rows = conn.execute(
                "SELECT finished_at FROM jobs WHERE state = 'done' ORDER BY finished_at"
            )
            return [r[0] for r in rows]


def _checked(result: Measured, what: str) -> Measured:
    if result.code != 0:
        raise RuntimeError(f"uploader {what} exited {result.code}: {result.tail()}")
    return result


def bare_client(server: Server, *args: str) -> tuple[Measured, Traffic]:
    """The bare client (tests/bench/bare_client.py) against `server`, measured."""
    argv = [*module_argv("tests.bench.bare_client"), *args]
    argv += ["--base-url", server.base_url, "--api-key", API_KEY, "--kb", KB]
    result, traffic = measure_against(server, argv)
    if result.code != 0:
        raise RuntimeError(f"bare client exited {result.code}: {result.tail()}")
    return result, traffic
