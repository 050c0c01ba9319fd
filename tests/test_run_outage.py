"""An outage is not a property of the files: the pool pauses, probes and resumes by itself, or,
past --outage-timeout, stops with every row pending and exit code 4. The run is a process of
its own; the server (in this process) is shut down and restarted on the same port under it."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.helpers import KB, enqueue, invoke, make_files, rows, spawn
from uploader.localserver import MaiAgentServer

_WAIT = 60.0  # seconds any one step of these tests may take at most


class Run:
    """`uploader run` in a child process, its stderr read line by line as it comes."""

    def __init__(self, db: Path, server: MaiAgentServer, *args: str) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.proc = spawn(
            db,
            "run",
            "--base-url",
            server.base_url,
            "--retry-delay",
            "0.01",
            "--workers",
            "6",
            "--name",
            "relpath",
            *args,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for_line(self, prefix: str) -> str:
        with self._changed:
            found = self._changed.wait_for(
                lambda: any(line.startswith(prefix) for line in self.lines), _WAIT
            )
        assert found, f"no line {prefix!r} on stderr: {self.lines}"
        return next(line for line in self.lines if line.startswith(prefix))

    def finish(self) -> tuple[int, str]:
        """Its exit code and stdout (stderr is the reader's: `communicate` would take it)."""
        assert self.proc.stdout is not None
        try:
            code = self.proc.wait(timeout=_WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self._reader.join(timeout=_WAIT)
        return code, self.proc.stdout.read()


def _wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + _WAIT
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _done(db: Path) -> int:
    return len(rows(db, "SELECT id FROM jobs WHERE state = 'done'"))


def _queued(tmp_path: Path, count: int) -> tuple[Path, list[str]]:
    relpaths = make_files(tmp_path / "data", count)
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")
    return db, relpaths


def _assert_every_file_once(server: MaiAgentServer, db: Path, relpaths: list[str]) -> None:
    jobs = rows(db)
    assert {job["state"] for job in jobs} == {"done"}
    records = server.records(KB)
    assert sorted(r["filename"] for r in records) == sorted(relpaths)
    assert sorted(r["id"] for r in records) == sorted(job["file_id"] for job in jobs)


def test_a_server_restarted_mid_run_ends_with_every_file_once_and_no_attempt_counted(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(latency=0.01)
    db, relpaths = _queued(tmp_path, 300)
    run = Run(db, server, "--max-retries", "1")
    _wait_until(lambda: _done(db) >= 30)

    server.shutdown()
    paused = run.wait_for_line("paused: ")
    server.restart()
    code, out = run.finish()

    assert code == 0, "\n".join(run.lines)
    assert re.fullmatch(
        r"paused: service unreachable since \d\d:\d\d:\d\d: .*; probing until it answers", paused
    ), paused
    run.wait_for_line("resumed: the service answers again")
    assert "uploaded 300, failed 0" in out
    _assert_every_file_once(server, db, relpaths)
    assert {job["attempts"] for job in rows(db)} == {1}, "an attempt was counted in the pause"
    charged = rows(db, "SELECT * FROM attempts WHERE outcome IN ('retry', 'failed')")
    assert charged == []


def test_a_service_answering_503_for_a_while_is_waited_out(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(latency=0.01)
    db, relpaths = _queued(tmp_path, 300)
    run = Run(db, server, "--max-retries", "0")
    _wait_until(lambda: _done(db) >= 30)

    server.outage(2.0, "503")
    code, out = run.finish()

    assert code == 0, "\n".join(run.lines)
    run.wait_for_line("paused: service unreachable since")
    _assert_every_file_once(server, db, relpaths)
    assert {job["attempts"] for job in rows(db)} == {1}


def test_a_service_that_never_comes_back_stops_the_run_with_every_row_pending(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(latency=0.01)
    db, _relpaths = _queued(tmp_path, 300)
    run = Run(db, server, "--outage-timeout", "2")
    _wait_until(lambda: _done(db) >= 30)

    server.shutdown()
    code, out = run.finish()

    assert code == 4, "\n".join(run.lines)
    port = server.base_url.split(":")[2].split("/")[0]
    error = [line for line in run.lines if line.startswith("Error: ")]
    assert len(error) == 1, run.lines
    assert re.fullmatch(
        rf"Error: service unreachable since \d\d:\d\d:\d\d: cannot reach 127\.0\.0\.1:{port} "
        r"\(connection refused\)",
        error[0],
    ), error
    assert "Traceback" not in "\n".join(run.lines)
    jobs = rows(db)
    assert {job["state"] for job in jobs} == {"done", "pending"}
    assert {job["attempts"] for job in jobs if job["state"] == "pending"} == {0}
    assert rows(db, "SELECT * FROM attempts WHERE outcome IN ('retry', 'failed')") == []
    (last,) = rows(db, "SELECT exit_code, ended_at FROM runs")
    assert last["exit_code"] == 4 and last["ended_at"] is not None


def test_an_unreachable_host_at_the_start_says_so_in_one_line_with_exit_4(
    tmp_path: Path,
) -> None:
    db, _relpaths = _queued(tmp_path, 3)

    result = invoke(db, "run", "--base-url", "http://127.0.0.1:1/api/v1/", "--retry-delay", "0")

    assert result.exit_code == 4, result.output
    assert result.stderr.strip() == "Error: cannot reach 127.0.0.1:1 (connection refused)"
    assert {job["state"] for job in rows(db)} == {"pending"}
    assert {job["attempts"] for job in rows(db)} == {0}


def test_one_types_5xx_is_not_an_outage_and_spends_those_files_retries(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """A parser broken for one type (every .docx register answers 500) while the service
    answers everything else: no pause, each .docx spends its own retries and fails."""
    server = maiagent_factory(failing_types="docx")
    data = tmp_path / "data"
    data.mkdir()
    for i in range(100):
        (data / f"f{i:03d}.{'docx' if i % 4 == 0 else 'txt'}").write_text(f"file {i}")
    db = tmp_path / "queue.db"
    enqueue(db, data)
    retries = 2

    result = invoke(
        db,
        "run",
        "--base-url",
        server.base_url,
        "--retry-delay",
        "0.01",
        "--timeout",
        "8",
        "--max-retries",
        str(retries),
        "--workers",
        "10",
    )

    assert result.exit_code == 1, result.output
    assert "unreachable" not in result.output and "paused" not in result.output
    jobs = rows(db)
    docx = [job for job in jobs if job["relpath"].endswith(".docx")]
    assert {job["state"] for job in docx} == {"failed"}
    assert {job["error_kind"] for job in docx} == {"http_5xx"}
    assert {job["attempts"] for job in docx} == {1 + retries}
    assert {job["state"] for job in jobs if job not in docx} == {"done"}
    # every register that failed named a .docx, each .docx was sent once per attempt, and
    # every other file's register succeeded once (a batch with a .docx in it fails whole)
    others = len(jobs) - len(docx)
    assert server.stats()["register"] <= len(docx) * (1 + retries) + others
