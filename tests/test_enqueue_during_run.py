"""Enqueue and run together (issue 12, point 4): a run started while an enqueue is still
walking keeps claiming until the walk has ended (scans in progress are recorded in the
database; one of a dead process is ignored), and enqueue shows its progress on a terminal."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from tests.helpers import FAST, KB, enqueue, execute, make_files, rows, service, spawn
from tests.test_progress import _Terminal
from uploader import scan
from uploader.localserver import MaiAgentServer
from uploader.store import turns

_WAIT = 600.0


def _count(db: Path, sql: str) -> int:
    with contextlib.closing(sqlite3.connect(db, timeout=0.5)) as conn:
        return int(conn.execute(sql).fetchone()[0])


def _between_transactions(db: Path) -> bool:
    """No write transaction is open: a stopped writer holds no lock a run would wait for."""
    with contextlib.closing(sqlite3.connect(db, timeout=0, isolation_level=None)) as conn:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return False
        conn.execute("ROLLBACK")
        return True


@contextlib.contextmanager
def _reaped(*procs: subprocess.Popen[str]) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()


def _a_write_in_progress(db: Path) -> BinaryIO:
    """As a writer does, the writers' lock held shared (uploader/store/turns.py) until the
    file returned is closed: an enqueue waits before each batch (up to turns.BULK_WAIT),
    which leaves the time to stop it between its scan's record and its first rows (a batch
    takes milliseconds)."""
    import fcntl  # POSIX only, as the test that uses it

    folder = Path(f"{db}.scans")
    folder.mkdir(exist_ok=True)
    lock = open(folder / turns.NAME, "ab")  # noqa: SIM115 (closed by the caller)
    fcntl.flock(lock, fcntl.LOCK_SH)
    return lock


def _stop_after_scan_started(proc: subprocess.Popen[str], db: Path) -> None:
    """SIGSTOP the enqueue once its scan is recorded, before its first rows are committed
    and outside any write transaction: a run now sees an empty queue and a live scan."""
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, "the enqueue never recorded its scan"
        assert proc.poll() is None, proc.communicate()
        with contextlib.suppress(sqlite3.OperationalError):  # not made yet, or being migrated
            if _count(db, "SELECT COUNT(*) FROM scans"):
                proc.send_signal(signal.SIGSTOP)
                if _between_transactions(db) and not _count(db, "SELECT COUNT(*) FROM jobs"):
                    return
                proc.send_signal(signal.SIGCONT)
                pytest.fail("the enqueue committed rows before it could be stopped")
        time.sleep(0.001)


@pytest.mark.posix_only("kills or suspends a child process with POSIX signals")
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_run_started_during_an_enqueue_uploads_every_file_of_it_in_one_go(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory()
    # the run starts on an empty queue beside a live scan (the enqueue is stopped): that is the
    # case, whatever the count; the run then claims while the walk goes on
    files = 5_000
    make_files(tmp_path / "data", files)
    db = tmp_path / "queue.db"
    turn = _a_write_in_progress(db)
    walker = spawn(db, "enqueue", str(tmp_path / "data"), "--kb", KB, text=True)
    with _reaped(walker):
        with turn:
            _stop_after_scan_started(walker, db)
        runner = spawn(
            db,
            "-q",
            "run",
            *service(server),
            *FAST,
            "--workers",
            "16",
            "--register-batch",
            "20",
            text=True,
        )
        with _reaped(runner):
            time.sleep(2.0)
            assert runner.poll() is None, runner.communicate()  # waiting, not done
            walker.send_signal(signal.SIGCONT)
            walked, walk_err = walker.communicate(timeout=_WAIT)
            out, err = runner.communicate(timeout=_WAIT)

    assert walker.returncode == 0, walk_err
    assert f"scanned {files}: {files} new" in walked
    assert runner.returncode == 0, err
    assert f"uploaded {files}, failed 0" in out
    assert _count(db, "SELECT COUNT(*) FROM jobs WHERE state = 'done'") == files
    assert _count(db, "SELECT COUNT(*) FROM runs") == 1
    assert len(server.records(KB)) == files
    assert _count(db, "SELECT COUNT(*) FROM scans") == 0


def test_a_scan_of_a_dead_process_does_not_hold_a_run(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    make_files(tmp_path / "data", 3)
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    now = time.time()
    execute(
        db,
        "INSERT INTO scans (owner, kb_id, started_at, seen_at) VALUES (?, ?, ?, ?)",
        (f"{socket.gethostname()}:{gone.pid}:dead", KB, now, now),
    )

    proc = spawn(db, "-q", "run", *service(maiagent), *FAST, text=True)
    out, err = proc.communicate(timeout=60)

    assert proc.returncode == 0, err
    assert {job["state"] for job in rows(db)} == {"done"}
    assert "uploaded 3" in out


def test_enqueue_shows_its_progress_on_a_terminal(tmp_path: Path) -> None:
    make_files(tmp_path / "data", 5000)
    terminal = _Terminal()

    proc = spawn(
        tmp_path / "q.db",
        "enqueue",
        str(tmp_path / "data"),
        "--kb",
        KB,
        stderr=terminal.slave,
        text=True,
    )
    out, _err = proc.communicate(timeout=120)
    shown = terminal.text()

    assert proc.returncode == 0, shown
    assert f"scanning: {scan.WALK_BATCH:,} files (" in shown, shown  # after the first batch
    assert out.startswith("scanned 5000: 5000 new")
    assert os.path.exists(tmp_path / "q.db")
