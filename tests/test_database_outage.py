"""A database that goes away in the middle of a run: PostgreSQL restarted (a maintenance
window, a failover), its connections terminated (a DBA, a pooler restart), or out of reach
for longer than --db-timeout; a SQLite database whose folder goes away (a network share that
vanishes, a disk unmounted: renamed away here, which SQLite's open file does not notice); a
task of the pool that dies. The run, a child process, waits for the database and goes on;
past --db-timeout it stops in one line (exit 4), and the next run closes its record and takes
its rows back at once. Never a traceback, never a hang."""

from __future__ import annotations

import os
import struct
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
from uploader.localserver import MaiAgentServer

FILES = 300
# a lease long enough that a test waiting it out would time out (the run's own subprocess
# timeout is shorter): the next run must know the last one ended, not wait for its leases
LONG_LEASE = "60"
NEXT_RUN_TIMEOUT = 40


def start_run(
    url: str, server: MaiAgentServer, cwd: Path, *extra: str, boot: str = ""
) -> subprocess.Popen[str]:
    """`uploader run` against `url` in a process of its own (`boot`: Python run first)."""
    return spawn(url, *run_args(server, *extra), boot=boot, text=True, cwd=cwd)


def done_count(url: str) -> int:
    return int(pg_rows(url, "SELECT count(*) AS n FROM jobs WHERE state = 'done'")[0]["n"])


def wait_until_done(url: str, count: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while done_count(url) < count:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.05)


def terminate_connections(server: PgServer) -> int:
    """pg_terminate_backend of every connection of uploader's (its application_name)."""
    rows = pg_rows(
        server.url("postgres"),
        "SELECT pg_terminate_backend(pid) AS t FROM pg_stat_activity"
        " WHERE application_name = 'uploader' AND pid <> pg_backend_pid()",
    )
    return len(rows)


def assert_every_file_once(server: MaiAgentServer, url: str, names: list[str]) -> None:
    assert sorted(e["filename"] for e in server.entries(KB)) == sorted(names)
    assert Counter(j["state"] for j in pg_rows(url)) == {"done": len(names)}
    runs = pg_rows(url, "SELECT ended_at FROM runs")
    assert all(r["ended_at"] is not None for r in runs), runs


def assert_clean(output: str) -> None:
    assert "Traceback" not in output, output
    assert PASSWORD not in output


def run_a_fifth(
    url: str, server: MaiAgentServer, tmp_path: Path, *extra: str
) -> tuple[list[str], subprocess.Popen[str]]:
    """FILES enqueued and a run of them in a process of its own, a fifth of them done."""
    names = make_flat_files(tmp_path / "data", FILES)
    result = invoke(url, "enqueue", str(tmp_path / "data"), "--kb", KB)  # type: ignore[arg-type]
    assert result.exit_code == 0, result.output
    proc = start_run(url, server, tmp_path, "--lease", LONG_LEASE, *extra)
    wait_until_done(url, FILES // 5, proc)
    return names, proc


def assert_finished(
    proc: subprocess.Popen[str], timeout: float, server: MaiAgentServer, url: str, names: list[str]
) -> None:
    """The run ends by itself, exit 0, with every file uploaded once."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out + err
    assert_clean(out + err)
    assert_every_file_once(server, url, names)


@pytest.mark.slow
def test_a_postgresql_restart_mid_run_is_waited_for_and_the_run_goes_on(
    tmp_path: Path,
    pg_server: PgServer,
    pg_url: str,
    maiagent_factory: Callable[..., MaiAgentServer],
) -> None:
    server = maiagent_factory(latency=0.02)
    names, proc = run_a_fifth(pg_url, server, tmp_path)

    pg_server.restart()

    assert_finished(proc, 90, server, pg_url, names)


@pytest.mark.slow
def test_connections_terminated_ten_times_mid_run_are_made_again(
    tmp_path: Path,
    pg_server: PgServer,
    pg_url: str,
    maiagent_factory: Callable[..., MaiAgentServer],
) -> None:
    server = maiagent_factory(latency=0.02)
    names, proc = run_a_fifth(pg_url, server, tmp_path)

    for _ in range(10):
        terminate_connections(pg_server)
        time.sleep(0.1)

    assert_finished(proc, 90, server, pg_url, names)


@pytest.mark.slow
def test_a_database_away_past_db_timeout_stops_the_run_in_one_line_and_the_next_finishes(
    tmp_path: Path,
    pg_server: PgServer,
    pg_url: str,
    maiagent_factory: Callable[..., MaiAgentServer],
) -> None:
    server = maiagent_factory(latency=0.02)
    names, proc = run_a_fifth(pg_url, server, tmp_path, "--db-timeout", "2")

    pg_server.pause()
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        pg_server.resume()

    assert proc.returncode == 4, out + err
    assert_clean(out + err)
    errors = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "--db-timeout" in errors[0], err
    # the next run closes the record of the one that gave up and takes its rows back at
    # once (its lock proves it dead), instead of waiting out their 60 s leases
    again = start_run(pg_url, server, tmp_path, "--lease", LONG_LEASE)
    assert_finished(again, NEXT_RUN_TIMEOUT, server, pg_url, names)


def test_a_pool_task_that_dies_takes_the_run_down(tmp_path: Path, maiagent: MaiAgentServer) -> None:
    """The writer dies of an error nobody expected (before: its lease keeper went on renewing
    the leases of the rows it held while every upload waited for it, for ever)."""
    db = tmp_path / "queue.db"
    make_flat_files(tmp_path / "data", 20)
    assert invoke(db, "enqueue", str(tmp_path / "data"), "--kb", KB).exit_code == 0
    boot = (
        "import uploader.queue.sqlite_jobs as m\n"
        "async def broken(*args, **kwargs):\n"
        "    raise RuntimeError('the writer broke')\n"
        "m.JobsMixin.begin_register = broken\n"
    )
    proc = start_run(str(db), maiagent, tmp_path, boot=boot)
    out, err = proc.communicate(timeout=60)

    assert proc.returncode != 0
    assert "the writer broke" in err
    assert maiagent.entries(KB) == []


def sqlite_done(db: Path, count: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while len(rows(db, "SELECT id FROM jobs WHERE state = 'done'")) < count:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.02)


def sqlite_run_a_fifth(
    tmp_path: Path, server: MaiAgentServer, *extra: str
) -> tuple[Path, list[str], subprocess.Popen[str]]:
    """SQLITE_FILES enqueued into share/queue.db and a run of them in a process of its own,
    a fifth of them done."""
    db = tmp_path / "share" / "queue.db"
    db.parent.mkdir(exist_ok=True)
    names = make_flat_files(tmp_path / "data", SQLITE_FILES)
    enqueue(db, tmp_path / "data")
    proc = start_run(str(db), server, tmp_path, "--lease", LONG_LEASE, *extra)
    sqlite_done(db, SQLITE_FILES // 5, proc)
    return db, names, proc


def assert_sqlite_finished(
    proc: subprocess.Popen[str], server: MaiAgentServer, db: Path, names: list[str]
) -> None:
    out, err = proc.communicate(timeout=NEXT_RUN_TIMEOUT)
    assert proc.returncode == 0, out + err
    assert "Traceback" not in out + err
    assert rows(db, "PRAGMA integrity_check") == [{"integrity_check": "ok"}]
    assert sorted(e["filename"] for e in server.entries(KB)) == sorted(names)
    assert Counter(j["state"] for j in rows(db)) == {"done": len(names)}


SQLITE_FILES = 150


@pytest.mark.posix_only("renames a folder holding open files (refused on Windows)")
def test_a_sqlite_folder_gone_past_db_timeout_stops_the_run_in_one_line_and_the_next_finishes(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """Before, the run went on writing into a file no path led to, and ended with exit 0:
    had the folder been a share unmounted for good, every row it wrote was lost."""
    server = maiagent_factory(latency=0.02)
    db, names, proc = sqlite_run_a_fifth(tmp_path, server, "--db-timeout", "2")

    away = tmp_path / "share-away"
    db.parent.rename(away)
    out, err = proc.communicate(timeout=60)

    assert proc.returncode == 4, out + err
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "gone" in errors[0] and "--db-timeout" in errors[0], err
    away.rename(db.parent)  # the share is back
    # its rows, leased to it for a minute, are taken back at once (its lock proves it dead)
    again = start_run(str(db), server, tmp_path, "--lease", LONG_LEASE)
    assert_sqlite_finished(again, server, db, names)


@pytest.mark.posix_only("renames a folder holding open files (refused on Windows)")
def test_a_sqlite_folder_gone_for_a_moment_is_waited_for_and_the_run_goes_on(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(latency=0.02)
    db, names, proc = sqlite_run_a_fifth(tmp_path, server)

    away = tmp_path / "share-away"
    db.parent.rename(away)
    time.sleep(1.0)
    away.rename(db.parent)

    assert_sqlite_finished(proc, server, db, names)


# EXT4_IOC_SHUTDOWN (_IOR('X', 125, __u32)) with EXT4_GOING_FLAGS_DEFAULT: the file system's
# data is synced, then every read and write on it fails with EIO, as on a disk or share gone
EXT4_IOC_SHUTDOWN = 0x8004587D


class LoopDisk:
    """A small ext4 file system in an image, mounted at `path` (Linux, as root)."""

    def __init__(self, image: Path, path: Path) -> None:
        self.image, self.path = image, path

    def mount(self) -> None:
        subprocess.run(["mount", "-o", "loop", str(self.image), str(self.path)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)

    def fail(self) -> None:
        import fcntl  # POSIX only

        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", 0))
        finally:
            os.close(fd)


@pytest.fixture
def loop_disk(tmp_path: Path) -> Iterator[LoopDisk]:
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("mounting an ext4 image needs root on Linux")
    image, path = tmp_path / "disk.img", tmp_path / "share"
    path.mkdir()
    with open(image, "wb") as out:
        out.truncate(32 << 20)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, check=False)
    disk = LoopDisk(image, path)
    try:
        disk.mount()
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount an ext4 image here ({made.returncode}): {exc}")
    try:
        yield disk
    finally:
        disk.unmount()


@pytest.mark.posix_only("mounts an ext4 image and shuts it down (Linux, as root)")
def test_a_sqlite_disk_failing_mid_run_stops_the_run_in_one_line_and_the_next_finishes(
    tmp_path: Path, loop_disk: LoopDisk, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """'disk I/O error' (SQLITE_IOERR) on every write: before, a traceback of the pool's
    claim and exit 2, the writer warning every few milliseconds meanwhile."""
    server = maiagent_factory(latency=0.02)
    db, names, proc = sqlite_run_a_fifth(tmp_path, server, "--timeout", "3")

    loop_disk.fail()
    out, err = proc.communicate(timeout=60)

    assert proc.returncode == 4, out + err
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "cannot be read or written" in errors[0], err
    loop_disk.unmount()  # the disk comes back
    loop_disk.mount()
    again = start_run(str(db), server, tmp_path, "--lease", LONG_LEASE, "--timeout", "3")
    assert_sqlite_finished(again, server, db, names)
