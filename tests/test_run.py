"""`uploader run` end to end: a real folder, a real SQLite file, the local MaiAgent server over
real sockets. Each test reads like a user's session and then checks the two places that must
agree afterwards: the queue database and the knowledge base on the server."""

from __future__ import annotations

import contextlib
import hashlib
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from tests.helpers import (
    API_KEY,
    FAST,
    KB,
    TIMEOUT,
    invoke,
    rows,
    spawn,
    without_dac_override,
)
from uploader.localserver import MaiAgentServer

PROGRESS = re.compile(
    r"^Progress: (\d+)/(\d+) \(\d+\.\d%\) \| Success: (\d+) \| Failed: (\d+) \| "
    r"Rate: \d+\.\d files/s \| ETA: \d+s$",
    re.M,
)
SUMMARY = re.compile(
    r"^uploaded (\d+), failed (\d+), skipped (\d+) in [\d.]+s "
    r"\([\d.]+ files/s, [\d.]+ [kMG]?B/s\)$",
    re.M,
)


@dataclass
class Workspace:
    """A user's folder of files and the queue database beside it."""

    root: Path
    data: Path
    db: Path

    def env(self, server: MaiAgentServer, key: str) -> dict[str, str | None]:
        return {
            "MAIAGENT_API_KEY": key,
            "MAIAGENT_BASE_URL": server.base_url,
            "MAIAGENT_KB_ID": None,
            "UPLOADER_DB": None,
        }

    def uploader(self, server: MaiAgentServer, *args: str, key: str = API_KEY) -> Result:
        return invoke(self.db, *args, env=self.env(server, key), catch_exceptions=False)

    def enqueue(self, server: MaiAgentServer, kb: str = KB) -> None:
        result = self.uploader(server, "enqueue", str(self.data), "--kb", kb)
        assert result.exit_code == 0, result.output

    def run(self, server: MaiAgentServer, *args: str, key: str = API_KEY) -> Result:
        return self.uploader(server, "run", *args, key=key)

    def spawn(
        self,
        server: MaiAgentServer,
        *args: str,
        key: str = API_KEY,
        launcher: tuple[str, ...] = (),
    ) -> subprocess.Popen[str]:
        """`uploader run` as a process of its own: for signals, memory, and dropped privileges."""
        with (
            (self.root / "stdout.txt").open("w") as out,
            (self.root / "stderr.txt").open("w") as err,
        ):
            return spawn(
                self.db,
                "run",
                *args,
                env=self.env(server, key),
                launcher=launcher,
                cwd=self.root,
                stdout=out,
                stderr=err,
                text=True,
            )

    def output(self) -> tuple[str, str]:
        return (self.root / "stdout.txt").read_text(), (self.root / "stderr.txt").read_text()

    def jobs(self) -> list[dict[str, Any]]:
        return rows(self.db)

    def query(self, sql: str, *params: Any) -> list[sqlite3.Row]:
        with contextlib.closing(sqlite3.connect(self.db)) as conn:
            conn.row_factory = sqlite3.Row
            return conn.execute(sql, params).fetchall()

    def logs(self) -> str:
        return "".join(p.read_text() for p in sorted((self.root / "logs").glob("upload_log_*.log")))


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    data = tmp_path / "data"
    data.mkdir()
    return Workspace(tmp_path, data, tmp_path / "queue.db")


def make_files(data: Path, n: int, folders: int = 10) -> dict[str, bytes]:
    """n small files whose basenames repeat in every folder (`--name relpath` keeps the names
    in the knowledge base unique); returns relpath -> content."""
    files = {}
    for i in range(n):
        rel = f"dir{i % folders}/doc{i // folders}.txt"
        content = f"file number {i}\n".encode() * (1 + i % 5)
        path = data / rel
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content)
        files[rel] = content
    return files


def states(ws: Workspace) -> dict[str, int]:
    return {row[0]: row[1] for row in ws.query("SELECT state, COUNT(*) FROM jobs GROUP BY state")}


def assert_exactly_once(ws: Workspace, server: MaiAgentServer, files: dict[str, bytes]) -> None:
    """Every file done, one entry per file, each job pointing at the entry with its bytes."""
    jobs = ws.jobs()
    assert {job["state"] for job in jobs} == {"done"}
    entries = {entry["id"]: entry for entry in server.records(KB)}
    assert len(entries) == len(files) == len(jobs)
    assert {job["file_id"] for job in jobs} == set(entries)
    for job in jobs:
        entry = entries[job["file_id"]]
        assert entry["filename"] == job["filename"] == job["relpath"]
        assert entry["size"] == job["size"] == len(files[job["relpath"]])
        stored = server.object(entry["key"])
        assert stored is not None and stored["data"] == files[job["relpath"]]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def wait_exit(process: subprocess.Popen[str], timeout: float) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"uploader still running after {timeout}s") from None


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; any still alive when it fails are killed."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


# --- the happy path under faults -------------------------------------------------------------


def test_a_thousand_files_under_5xx_and_dropped_connections_all_land_exactly_once(
    ws: Workspace, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(error_rate=0.1, drop_rate=0.05, seed=1)
    files = make_files(ws.data, 1000, folders=20)
    ws.enqueue(server)

    result = ws.run(server, "--name", "relpath", "--max-retries", "10", *FAST)

    assert result.exit_code == 0, result.output
    assert_exactly_once(ws, server, files)
    retried = ws.query("SELECT COUNT(*) FROM attempts WHERE outcome = 'retry'")[0][0]
    assert retried > 50, "the faults should have made many attempts fail"


def test_register_batch_registers_several_files_per_call(
    ws: Workspace, maiagent: MaiAgentServer
) -> None:
    files = make_files(ws.data, 100)
    ws.enqueue(maiagent)

    result = ws.run(maiagent, "--name", "relpath", "--register-batch", "5", *FAST)

    assert result.exit_code == 0, result.output
    assert_exactly_once(ws, maiagent, files)
    assert maiagent.stats()["register"] <= len(files) // 2


def test_a_service_that_registers_one_file_per_call_turns_batching_off(
    ws: Workspace, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(register_first_only=True)
    files = make_files(ws.data, 60)
    ws.enqueue(server)

    result = ws.run(server, "--name", "relpath", "--register-batch", "5", *FAST)

    assert result.exit_code == 0, result.output
    assert "one file per call now" in result.stderr
    assert_exactly_once(ws, server, files)
    assert server.stats()["register"] <= len(files) + 1


# --- the service refuses the run -------------------------------------------------------------


def assert_untouched(ws: Workspace) -> None:
    assert all(job["state"] == "pending" and job["attempts"] == 0 for job in ws.jobs())
    assert ws.query("SELECT COUNT(*) FROM attempts")[0][0] == 0


def assert_key_nowhere(ws: Workspace, key: str, *texts: str) -> None:
    for text in (*texts, ws.logs()):
        assert key not in text
    for path in ws.root.glob("queue.db*"):  # the database, its side files, its run locks
        for file in path.rglob("*") if path.is_dir() else [path]:
            assert key.encode() not in file.read_bytes()


def test_a_wrong_key_stops_the_run_at_once_with_every_row_untouched(
    ws: Workspace, maiagent: MaiAgentServer
) -> None:
    make_files(ws.data, 50)
    ws.enqueue(maiagent)
    wrong = "sk-WRONG-KEY-0123456789"

    started = time.monotonic()
    result = ws.run(maiagent, *FAST, key=wrong)

    assert time.monotonic() - started < 5
    assert result.exit_code == 3
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "API key rejected (HTTP 401)" in result.stderr
    assert_key_nowhere(ws, wrong, result.output)
    assert_untouched(ws)
    assert maiagent.stats()["total"] <= 10
    assert maiagent.entries(KB) == []
    assert [tuple(row) for row in ws.query("SELECT exit_code FROM runs")] == [(3,)]


def test_an_unknown_knowledge_base_stops_the_run_with_every_row_untouched(
    ws: Workspace, maiagent: MaiAgentServer
) -> None:
    make_files(ws.data, 20)
    ws.enqueue(maiagent, kb="kb-nope")

    started = time.monotonic()
    result = ws.run(maiagent, *FAST)

    assert time.monotonic() - started < 5
    assert result.exit_code == 3
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "kb-nope" in result.stderr and "404" in result.stderr
    assert_untouched(ws)
    assert maiagent.stats()["total"] <= 10


def test_a_key_revoked_mid_run_puts_in_flight_rows_back_untouched(
    ws: Workspace, maiagent_factory: Callable[..., MaiAgentServer], processes: list[Any]
) -> None:
    server = maiagent_factory(latency=0.02)
    make_files(ws.data, 200)
    ws.enqueue(server)
    process = ws.spawn(server, "--name", "relpath", "--workers", "4", *FAST)
    processes.append(process)
    wait_for(lambda: len(server.entries(KB)) >= 10, 20, "the first uploads")

    server._auth = "Api-Key revoked"  # the key is revoked while the run goes on
    requests_before = server.stats()["total"]
    revoked = time.monotonic()

    assert wait_exit(process, 10) == 3
    assert time.monotonic() - revoked < 5
    _, stderr = ws.output()
    assert "API key rejected (HTTP 401)" in stderr and API_KEY not in stderr
    assert server.stats()["total"] - requests_before <= 20
    by_state = states(ws)
    assert set(by_state) == {"done", "pending"}
    done = [job for job in ws.jobs() if job["state"] == "done"]
    assert {job["file_id"] for job in done} == {entry["id"] for entry in server.entries(KB)}
    assert all(job["attempts"] == 0 for job in ws.jobs() if job["state"] == "pending")


# --- throttling ------------------------------------------------------------------------------


def api_requests(server: MaiAgentServer) -> int:
    stats = server.stats()
    return stats["total"] - stats["s3"]


def test_a_429_storm_slows_the_pool_and_the_run_still_finishes(
    ws: Workspace, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(rps_limit=50)
    files = make_files(ws.data, 100)
    ws.enqueue(server)

    one = ("--register-batch", "1")  # what the request counts below assume
    result = ws.run(server, "--name", "relpath", "--workers", "10", *one, *FAST)

    assert result.exit_code == 0, result.output
    assert_exactly_once(ws, server, files)
    # presign and register per file, one preflight listing, the accepted file types, and the
    # listing before a first upload (empty: one page)
    needed = 2 * len(files) + 3
    throttled = api_requests(server) - needed
    assert 0 < throttled < len(files), "throttled, but the pool backed off together"


def test_a_rate_limit_below_the_service_limit_avoids_429s(
    ws: Workspace, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(rps_limit=50)
    files = make_files(ws.data, 40)
    ws.enqueue(server)

    one = ("--register-batch", "1")  # what the request count below assumes
    result = ws.run(server, "--name", "relpath", "--rate-limit", "35", *one, *FAST)

    assert result.exit_code == 0, result.output
    assert_exactly_once(ws, server, files)
    # and the listing, the file types, and the listing before a first upload (empty: one page)
    assert api_requests(server) == 2 * len(files) + 3


# --- files that changed under the queue ------------------------------------------------------


def test_a_file_deleted_after_enqueue_fails_as_missing_without_retries(
    ws: Workspace, maiagent: MaiAgentServer
) -> None:
    files = make_files(ws.data, 10)
    ws.enqueue(maiagent)
    (ws.data / "dir3/doc0.txt").unlink()

    result = ws.run(maiagent, "--name", "relpath", "--max-retries", "5", *FAST)

    assert result.exit_code == 1
    [gone] = [job for job in ws.jobs() if job["relpath"] == "dir3/doc0.txt"]
    assert (gone["state"], gone["error_kind"], gone["attempts"]) == ("failed", "missing", 1)
    assert len(ws.query("SELECT * FROM attempts WHERE job_id = ?", gone["id"])) == 1
    assert states(ws) == {"done": 9, "failed": 1}
    uploaded = sorted(entry["filename"] for entry in maiagent.entries(KB))
    assert uploaded == sorted(set(files) - {gone["relpath"]})


def test_a_file_replaced_by_a_folder_fails_as_unreadable(
    ws: Workspace, maiagent: MaiAgentServer
) -> None:
    make_files(ws.data, 5, folders=1)
    ws.enqueue(maiagent)
    (ws.data / "dir0/doc2.txt").unlink()
    (ws.data / "dir0/doc2.txt").mkdir()

    result = ws.run(maiagent, "--name", "relpath", *FAST)

    assert result.exit_code == 1
    [bad] = [job for job in ws.jobs() if job["relpath"] == "dir0/doc2.txt"]
    assert (bad["state"], bad["error_kind"], bad["attempts"]) == ("failed", "unreadable", 1)
    assert len(maiagent.entries(KB)) == 4


@pytest.mark.posix_only("needs file modes that bind (chmod)")
def test_a_file_without_read_permission_fails_as_unreadable(
    ws: Workspace, maiagent: MaiAgentServer, processes: list[Any]
) -> None:
    make_files(ws.data, 5, folders=1)
    ws.enqueue(maiagent)
    (ws.data / "dir0/doc1.txt").chmod(0)

    process = ws.spawn(maiagent, "--name", "relpath", *FAST, launcher=without_dac_override())
    processes.append(process)
    code = wait_exit(process, 30)

    assert code == 1, ws.output()
    [bad] = [job for job in ws.jobs() if job["relpath"] == "dir0/doc1.txt"]
    assert (bad["state"], bad["error_kind"], bad["attempts"]) == ("failed", "unreadable", 1)
    assert len(maiagent.entries(KB)) == 4


# --- Ctrl+C ----------------------------------------------------------------------------------


def start_slow_run(
    ws: Workspace, server: MaiAgentServer, processes: list[Any]
) -> tuple[subprocess.Popen[str], dict[str, bytes]]:
    files = make_files(ws.data, 300)
    ws.enqueue(server)
    process = ws.spawn(
        server, "--name", "relpath", "--workers", "4", "--grace", "5", *FAST, *TIMEOUT
    )
    processes.append(process)
    wait_for(lambda: len(server.entries(KB)) >= 5, 20, "the first uploads")
    return process, files


@pytest.mark.posix_only("sends a POSIX signal to a child process")
def test_ctrl_c_finishes_in_flight_files_and_a_second_run_completes_exactly_once(
    ws: Workspace, maiagent_factory: Callable[..., MaiAgentServer], processes: list[Any]
) -> None:
    server = maiagent_factory(latency=0.05)
    process, files = start_slow_run(ws, server, processes)
    time.sleep(0.5)

    process.send_signal(signal.SIGINT)
    interrupted = time.monotonic()
    assert wait_exit(process, 15) == 130
    assert time.monotonic() - interrupted < 5 + 2

    stdout, stderr = ws.output()
    assert "Traceback" not in stderr
    assert "stopping: finishing in-flight uploads" in stderr
    assert SUMMARY.search(stdout) and "\nreport: " in stdout  # an interrupted run's too
    by_state = states(ws)
    assert "running" not in by_state and by_state.get("pending", 0) > 0
    done_ids = {job["file_id"] for job in ws.jobs() if job["state"] == "done"}
    assert done_ids == {entry["id"] for entry in server.entries(KB)}

    server.faults.latency = 0
    result = ws.run(server, "--name", "relpath", *FAST)
    assert result.exit_code == 0, result.output
    assert_exactly_once(ws, server, files)


@pytest.mark.posix_only("sends a POSIX signal to a child process")
def test_a_second_ctrl_c_quits_at_once_and_the_next_run_still_uploads_exactly_once(
    ws: Workspace, maiagent_factory: Callable[..., MaiAgentServer], processes: list[Any]
) -> None:
    server = maiagent_factory(latency=0.05)
    process, files = start_slow_run(ws, server, processes)
    slow = 2.0  # from now on every request takes this long: the first Ctrl+C alone would wait
    server.faults.latency = slow

    process.send_signal(signal.SIGINT)
    time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    interrupted = time.monotonic()
    assert wait_exit(process, 10) == 130
    assert time.monotonic() - interrupted < slow / 2
    assert "quitting now" in ws.output()[1]
    assert states(ws).get("pending", 0) > 0

    time.sleep(slow + 0.5)  # requests the dead process left behind reach the server first
    server.faults.latency = 0
    # the registers cut off are settled by the listing once --timeout (and a margin) has passed
    result = ws.run(server, "--name", "relpath", *FAST, *TIMEOUT)
    assert result.exit_code == 0, result.output
    assert_exactly_once(ws, server, files)


# --- what the user sees ----------------------------------------------------------------------


def test_log_progress_line_summary_and_exit_code_tell_what_happened(
    ws: Workspace, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(error_rate=0.1, seed=7)
    make_files(ws.data, 30)
    ws.enqueue(server)
    (ws.data / "dir4/doc1.txt").unlink()

    result = ws.run(server, "--name", "relpath", "--max-retries", "10", *FAST)

    assert result.exit_code == 1
    lines = PROGRESS.findall(result.stdout)
    assert lines and lines[-1] == ("30", "30", "29", "1")
    summary = SUMMARY.search(result.stdout)
    assert summary is not None and summary.groups() == ("29", "1", "0")
    (report,) = (ws.db.parent / "reports").glob("upload_report_*.json")
    assert result.stdout.splitlines()[-1] == f"report: {report}"
    log = ws.logs()
    assert re.search(r"run 1 started .*\bmax_retries=10\b.*\bworkers=10\b", log), log
    assert re.search(r"retry \d+/10 of dir\d/doc\d+\.txt", log)
    assert re.search(r"failed dir4/doc1\.txt after 1 attempt\(s\): .*no longer exists", log)
    assert_key_nowhere(ws, API_KEY, result.output)

    (ws.data / "dir4/doc1.txt").write_text("back again")
    assert ws.uploader(server, "retry-failed").exit_code == 0
    assert ws.uploader(server, "enqueue", str(ws.data), "--kb", KB).exit_code == 0
    again = ws.run(server, "--name", "relpath", "--max-retries", "10", *FAST)
    assert again.exit_code == 0, again.output
    assert states(ws) == {"done": 30}


def test_plain_http_to_another_host_is_refused_before_anything_is_sent(
    ws: Workspace, maiagent: MaiAgentServer
) -> None:
    make_files(ws.data, 3)
    ws.enqueue(maiagent)

    result = ws.run(maiagent, "--base-url", "http://example.com/api/v1/")

    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "plain http" in result.stderr and "example.com" in result.stderr
    assert API_KEY not in result.output
    assert ws.query("SELECT COUNT(*) FROM runs")[0][0] == 0
    assert not (ws.root / "logs").exists()
    assert_untouched(ws)


# --- big files -------------------------------------------------------------------------------


def sha256_of_zeros(size: int) -> str:
    digest, block = hashlib.sha256(), bytes(1 << 20)
    for _ in range(size // len(block)):
        digest.update(block)
    return digest.hexdigest()


# Linux carries a process's peak RSS across exec, and a child forked from this (large) pytest
# process starts with pytest's pages: the uploader is started from a small process instead,
# which reports the uploader's own peak.
PEAK_RSS_LAUNCHER = (
    sys.executable,
    "-c",
    "import os, sys\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.execv(sys.argv[2], sys.argv[2:])\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n",
)


@pytest.mark.slow
def test_a_1gb_file_uploads_with_little_memory(
    ws: Workspace, maiagent: MaiAgentServer, processes: list[Any]
) -> None:
    size = 1 << 30
    with (ws.data / "big.pdf").open("wb") as sparse:
        sparse.truncate(size)
    ws.enqueue(maiagent)

    peak_file = ws.root / "peak_rss_kib.txt"
    process = ws.spawn(maiagent, *FAST, launcher=(*PEAK_RSS_LAUNCHER, str(peak_file)))
    processes.append(process)
    assert process.wait(timeout=120) == 0, ws.output()
    assert int(peak_file.read_text()) * 1024 < 150 * 10**6
    [entry] = maiagent.records(KB)
    assert entry["size"] == size
    stored = maiagent.object(entry["key"])
    assert stored is not None and stored["sha256"] == sha256_of_zeros(size)
    assert ws.jobs()[0]["file_id"] == entry["id"]


# --- keys and URLs that cannot work --------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    # (around the key, whitespace is stripped: "test-key\r" from a Windows .env file works)
    ["test\nkey", "test\r-key", "test\tkey", "test\x00key", "test-key\u200b", "test-key\u4e2d"],
    ids=["newline", "inner-cr", "tab", "nul", "zero-width-space", "beyond-latin-1"],
)
@pytest.mark.parametrize("command", [("run",), ("verify", "--kb", KB)])
def test_a_key_with_a_character_no_header_can_carry_is_refused_in_one_line(
    ws: Workspace, maiagent: MaiAgentServer, key: str, command: tuple[str, ...]
) -> None:
    make_files(ws.data, 3)
    ws.enqueue(maiagent)

    result = ws.uploader(maiagent, *command, "--api-key", key)

    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: the API key contains"), result.stderr
    assert "--api-key or MAIAGENT_API_KEY" in lines[0]
    assert key not in result.output and key.strip() not in result.output
    assert maiagent.stats()["total"] == 0
    assert ws.query("SELECT COUNT(*) FROM runs")[0][0] == 0
    assert not (ws.root / "logs").exists()
    assert_untouched(ws)


def test_a_base_url_without_api_v1_says_what_to_check(
    ws: Workspace, maiagent: MaiAgentServer
) -> None:
    make_files(ws.data, 3)
    ws.enqueue(maiagent)
    root = maiagent.base_url.removesuffix("api/v1/")

    result = ws.run(maiagent, "--base-url", root, *FAST)

    assert result.exit_code == 3
    assert result.stderr.strip().splitlines() == [
        f"Error: knowledge base {KB} not found (HTTP 404):"
        " check --kb and that --base-url ends in /api/v1/"
    ]
    assert_untouched(ws)


def test_a_short_key_does_not_mangle_error_messages(
    ws: Workspace, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(api_key="k")
    make_files(ws.data, 3)
    ws.enqueue(server, kb="kb1")

    result = ws.run(server, *FAST, key="k")

    assert result.exit_code == 3
    assert result.stderr.strip().splitlines() == [
        "Error: knowledge base kb1 not found (HTTP 404):"
        " check --kb and that --base-url ends in /api/v1/"
    ]
    assert "[redacted]" not in result.output
