"""The CLI where the POSIX-only parts of Python are missing, as on Windows: a child process
whose `sitecustomize` (tests/no_posix) hides `fcntl`, `resource` and `termios`, removes
`os.O_NOFOLLOW` (and O_NONBLOCK, O_CLOEXEC, pread) and `select.poll`, and gives the event loop no
signal handlers. Each command must start, work and stop as it does on Linux."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import API_KEY, FAST, KB, UPLOADER, child_env, rows
from uploader.localserver import MaiAgentServer

pytestmark = pytest.mark.posix_only("makes a POSIX interpreter look like Windows' (tests/no_posix)")

NO_POSIX = Path(__file__).parent / "no_posix"
ROOT = Path(__file__).parent.parent


def no_posix_env(server: MaiAgentServer | None = None) -> dict[str, str]:
    env = child_env({"PYTHONPATH": os.pathsep.join([str(NO_POSIX), str(ROOT)])})
    if server is not None:
        env["MAIAGENT_BASE_URL"] = server.base_url
    return env


def uploader(db: Path, *args: str, server: MaiAgentServer | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*UPLOADER, "--db", str(db), *args],
        env=no_posix_env(server),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(process: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError(f"uploader still running after {timeout}s") from None
    assert "Traceback" not in err, err
    return process.returncode, out, err


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()


def make_files(data: Path, count: int) -> dict[str, bytes]:
    """Files whose bytes a text-mode read would change (CR LF, a Ctrl+Z, a NUL), and one big
    enough to be streamed in chunks (read at an offset where there is no pread)."""
    big = b"".join(b"%08d\r\n\x1a" % i for i in range(60_000))  # 660,000 bytes
    (data / "big.txt").parent.mkdir(parents=True, exist_ok=True)
    (data / "big.txt").write_bytes(big)
    files = {"big.txt": big}
    for i in range(count):
        rel = f"dir{i % 5}/doc{i // 5}.pdf"
        content = f"line {i}\r\n".encode() * (1 + i % 3) + b"\x1a\x00 end"
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(content)
        files[rel] = content
    return files


def test_the_posix_modules_are_really_missing_in_the_child() -> None:
    probe = (
        "import asyncio, importlib, os, select\n"
        "for name in ('fcntl', 'resource', 'termios'):\n"
        "    try: importlib.import_module(name)\n"
        "    except ModuleNotFoundError: pass\n"
        "    else: raise SystemExit(name)\n"
        "assert not hasattr(os, 'O_NOFOLLOW') and not hasattr(os, 'pread')\n"
        "assert not hasattr(select, 'poll')\n"
        "async def main():\n"
        "    try: asyncio.get_running_loop().add_signal_handler(2, print)\n"
        "    except NotImplementedError: return\n"
        "    raise SystemExit('signal handlers')\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(
        [*UPLOADER[:1], "-c", probe], env=no_posix_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_help_and_version_start(tmp_path: Path) -> None:
    code, out, err = finished(uploader(tmp_path / "q.db", "--help"))
    assert code == 0, err
    assert "enqueue" in out and "run" in out
    code, out, err = finished(uploader(tmp_path / "q.db", "--version"))
    assert code == 0, err
    assert out.startswith("uploader, version ")


def test_enqueue_queues_the_folder(tmp_path: Path) -> None:
    files = make_files(tmp_path / "data", 12)
    db = tmp_path / "q.db"
    code, out, err = finished(uploader(db, "enqueue", str(tmp_path / "data"), "--kb", KB))
    assert code == 0, err
    assert sorted(job["relpath"] for job in rows(db)) == sorted(files)
    assert {job["state"] for job in rows(db)} == {"pending"}


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def run_args(*extra: str) -> list[str]:
    return ["run", "--api-key", API_KEY, "--name", "relpath", *FAST, *extra]


@pytest.mark.slow
def test_ctrl_c_finishes_in_flight_files_then_a_second_run_uploads_every_file_once(
    tmp_path: Path,
    maiagent_factory: Callable[..., MaiAgentServer],
    processes: list[Any],
) -> None:
    server = maiagent_factory(latency=0.05)
    files = make_files(tmp_path / "data", 150)
    db = tmp_path / "q.db"
    code, _out, err = finished(uploader(db, "enqueue", str(tmp_path / "data"), "--kb", KB))
    assert code == 0, err

    run = uploader(db, *run_args("--workers", "4", "--grace", "10"), server=server)
    processes.append(run)
    wait_for(lambda: len(server.entries(KB)) >= 5, 30, "the first uploads")
    run.send_signal(signal.SIGINT)
    code, out, err = finished(run, 30)

    assert code == 130, err
    assert "stopping: finishing in-flight uploads" in err
    by_state = {job["state"] for job in rows(db)}
    assert "running" not in by_state and "pending" in by_state
    done = {job["file_id"] for job in rows(db) if job["state"] == "done"}
    assert done == {entry["id"] for entry in server.entries(KB)}  # in flight: finished

    server.faults.latency = 0
    code, out, err = finished(uploader(db, *run_args(), server=server))
    assert code == 0, err
    jobs = rows(db)
    entries = {entry["id"]: entry for entry in server.records(KB)}
    assert {job["state"] for job in jobs} == {"done"}
    assert len(entries) == len(jobs) == len(files)
    assert {job["file_id"] for job in jobs} == set(entries)
    for job in jobs:
        stored = server.object(entries[job["file_id"]]["key"])
        assert stored is not None and stored["data"] == files[job["relpath"]]


def test_a_symbolic_link_swapped_in_after_enqueue_is_not_followed(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    files = make_files(tmp_path / "data", 3)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"not for the knowledge base")
    db = tmp_path / "q.db"
    code, _out, err = finished(uploader(db, "enqueue", str(tmp_path / "data"), "--kb", KB))
    assert code == 0, err
    swapped = tmp_path / "data" / "dir0" / "doc0.pdf"
    swapped.unlink()
    swapped.symlink_to(secret)

    code, _out, err = finished(uploader(db, *run_args(), server=maiagent))

    assert code == 1, err
    by_path = {job["relpath"]: job for job in rows(db)}
    assert (by_path["dir0/doc0.pdf"]["state"], by_path["dir0/doc0.pdf"]["error_kind"]) == (
        "failed",
        "unreadable",
    )
    assert "symbolic link" in by_path["dir0/doc0.pdf"]["last_error"]
    assert sorted(e["filename"] for e in maiagent.entries(KB)) == sorted(
        rel for rel in files if rel != "dir0/doc0.pdf"
    )
