"""A disk that fills up under a run: the database's (a run stops in one line naming the disk
and the database, exit 6, never "paused: service unreachable" while the service answers
fine; its rows intact, every file once after space is freed and the run is started again),
a PostgreSQL server's (its tables in a tablespace on the small disk), and the log's (the run
goes on without its log). The disk is a small tmpfs mounted for the test, which needs root
on Linux."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import KB, enqueue, invoke, make_flat_files, rows, run_args, spawn
from tests.pg_server import PASSWORD, PgServer
from tests.test_postgres_cli import pg_rows
from uploader.exitcodes import ExitCode
from uploader.localserver import MaiAgentServer

FILES = 150
PG_FILES = 60
# the registers the stopped run left in doubt are settled by the next one after the timeout
SHORT = ("--timeout", "3")
pytestmark = pytest.mark.posix_only("mounts a small tmpfs (Linux, as root)")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs at tmp_path/disk (room for a run's write-ahead log, which grows to
    ~4 MiB), unmounted after the test."""
    disk = tmp_path / "disk"
    disk.mkdir()
    with tmpfs(disk):
        yield disk


@contextlib.contextmanager
def tmpfs(disk: Path) -> Iterator[None]:
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Every free byte of `disk` taken by one file; the file."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for chunk in (65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * chunk):
                    pass
    finally:
        os.close(fd)
    with pytest.raises(OSError) as full:
        (disk / "probe").write_bytes(b"\0" * 8192)
    assert full.value.errno == errno.ENOSPC
    return filler


def done_count(db: Path) -> int:
    with contextlib.suppress(sqlite3.OperationalError):  # the run holds the write lock
        return len(rows(db, "SELECT id FROM jobs WHERE state = 'done'"))
    return 0


def wait_for_done(db: Path, count: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while done_count(db) < count:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.02)


def assert_every_file_once(server: MaiAgentServer, db: Path, names: list[str]) -> None:
    assert sorted(e["filename"] for e in server.entries(KB)) == sorted(names)
    assert Counter(r["state"] for r in rows(db)) == {"done": len(names)}


def test_a_full_disk_under_the_database_stops_the_run_in_one_line_and_keeps_every_row(
    tmp_path: Path, small_disk: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(latency=0.05)
    db = small_disk / "queue.db"
    names = make_flat_files(tmp_path / "data", FILES)
    enqueue(db, tmp_path / "data")
    # not quiet: a pause for an outage would be said
    loud = [arg for arg in run_args(server, *SHORT) if arg != "-q"]
    proc = spawn(db, *loud, text=True, cwd=tmp_path)
    wait_for_done(db, FILES // 5, proc)

    filler = fill(small_disk)
    out, err = proc.communicate(timeout=60)

    assert proc.returncode == ExitCode.DISK_FULL, out + err
    assert "Traceback" not in out + err
    assert "unreachable" not in out + err and "paused" not in out + err
    errors = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, err
    assert "full" in errors[0] and str(db) in errors[0] and str(small_disk) in errors[0], err
    filler.unlink()
    assert rows(db, "PRAGMA integrity_check") == [{"integrity_check": "ok"}]
    again = spawn(db, *run_args(server, *SHORT), text=True, cwd=tmp_path)
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0, out + err
    assert_every_file_once(server, db, names)


def test_a_full_disk_under_the_log_costs_the_run_its_log_only(
    tmp_path: Path, small_disk: Path, maiagent: MaiAgentServer
) -> None:
    db = tmp_path / "queue.db"
    names = make_flat_files(tmp_path / "data", 30)
    enqueue(db, tmp_path / "data")
    log = small_disk / "run.log"
    log.touch()
    fill(small_disk)

    proc = spawn(db, *run_args(maiagent, "--log-file", str(log)), text=True, cwd=tmp_path)
    out, err = proc.communicate(timeout=60)

    assert proc.returncode == 0, out + err
    assert "Traceback" not in out + err and "unreachable" not in out + err
    assert err.count(str(log)) == 1 and "cannot be written" in err, err
    assert_every_file_once(maiagent, db, names)


def test_a_command_opening_a_database_on_a_full_disk_says_the_disk_is_full(
    tmp_path: Path, small_disk: Path
) -> None:
    """SQLite says 'disk I/O error' there (its shared-memory file cannot grow): every
    command gave that, exit 2, as if the disk were broken."""
    db = small_disk / "queue.db"
    make_flat_files(tmp_path / "data", 20)
    enqueue(db, tmp_path / "data")
    make_flat_files(tmp_path / "more", 40)
    filler = fill(small_disk)

    added = invoke(db, "enqueue", str(tmp_path / "more"), "--kb", KB)
    status = invoke(db, "status")

    for result in (added, status):
        assert result.exit_code == ExitCode.DISK_FULL, result.output
        (line,) = result.stderr.splitlines()
        assert line.startswith("Error: the disk is full") and str(small_disk) in line, line
    filler.unlink()
    assert enqueue(db, tmp_path / "more")["new"] == 40
    assert len(rows(db)) == 60


@pytest.fixture
def small_pg_disk(
    pg_server: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, Path]]:
    """A PostgreSQL database whose tables live on a small disk (a tablespace there, in the
    server's own folder, which its user can reach): its URL and the disk."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # the runs' locks
    name = f"small_{tmp_path.name.lower().replace('-', '_')}"
    disk = pg_server.data.parent / name
    disk.mkdir()
    admin = pg_server.url()
    with tmpfs(disk):
        server_user = os.stat(pg_server.data)
        os.chown(disk, server_user.st_uid, server_user.st_gid)
        pg_rows(admin, f"CREATE TABLESPACE {name} LOCATION '{disk}'")
        pg_rows(admin, f"CREATE DATABASE {name} TEMPLATE template0 TABLESPACE {name}")
        try:
            yield pg_server.url(name), disk
        finally:
            pg_rows(admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            pg_rows(admin, f"DROP TABLESPACE IF EXISTS {name}")


def test_a_full_disk_under_a_postgresql_database_stops_the_run_in_one_line(
    tmp_path: Path,
    small_pg_disk: tuple[str, Path],
    maiagent_factory: Callable[..., MaiAgentServer],
) -> None:
    full_pg_url, small_disk = small_pg_disk
    server = maiagent_factory(latency=0.05)
    names = make_flat_files(tmp_path / "data", PG_FILES)
    queued = invoke(full_pg_url, "enqueue", str(tmp_path / "data"), "--kb", KB)  # type: ignore[arg-type]
    assert queued.exit_code == 0, queued.output
    loud = [arg for arg in run_args(server, *SHORT) if arg != "-q"]
    proc = spawn(full_pg_url, *loud, text=True, cwd=tmp_path)
    done = "SELECT count(*) AS n FROM jobs WHERE state = 'done'"
    deadline = time.monotonic() + 60
    while pg_rows(full_pg_url, done)[0]["n"] < PG_FILES // 5:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)

    filler = fill(small_disk)
    out, err = proc.communicate(timeout=60)

    assert proc.returncode == ExitCode.DISK_FULL, out + err
    assert "Traceback" not in out + err and PASSWORD not in out + err
    assert "unreachable" not in out + err and "paused" not in out + err
    errors = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "full" in errors[0], err
    filler.unlink()
    again = spawn(full_pg_url, *run_args(server, *SHORT), text=True, cwd=tmp_path)
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0, out + err
    assert sorted(e["filename"] for e in server.entries(KB)) == sorted(names)
    assert Counter(r["state"] for r in pg_rows(full_pg_url)) == {"done": PG_FILES}
