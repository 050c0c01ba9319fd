"""What users' folders and disks really hold: files that change or vanish after enqueue,
names no one expected, huge flat folders, deep trees, and a database that is locked, on a full
disk, deleted or corrupted. Each case ends in an upload or a clear one-line message."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import KB, enqueue, invoke, rows, run_args, run_cli, spawn
from uploader.exitcodes import ExitCode
from uploader.localserver import MaiAgentServer
from uploader.store import sqlite as queue_sqlite


def assert_one_line_error(output: str, *needles: str) -> None:
    assert "Traceback" not in output
    assert output.strip(), "no message at all"
    for needle in needles:
        assert needle in output


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the file changes under us ---------------------------------------------------------------


def test_file_deleted_after_enqueue_fails_as_missing_without_retries(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "gone.txt").write_text("soon gone")
    (tmp_path / "data" / "kept.txt").write_text("still here")
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")
    (tmp_path / "data" / "gone.txt").unlink()

    result = invoke(db, *run_args(maiagent))

    assert result.exit_code == 1, result.output
    by_name = {j["relpath"]: j for j in rows(db)}
    gone = by_name["gone.txt"]
    assert (gone["state"], gone["error_kind"], gone["attempts"]) == ("failed", "missing", 1)
    assert by_name["kept.txt"]["state"] == "done"
    assert [e["filename"] for e in maiagent.entries(KB)] == ["kept.txt"]


def test_file_modified_after_enqueue_uploads_its_current_content(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    path = tmp_path / "data" / "notes.txt"
    path.parent.mkdir()
    path.write_bytes(b"first draft")
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")
    now = b"the final version, longer than the draft"
    path.write_bytes(now)
    os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))

    result = invoke(db, *run_args(maiagent))

    assert result.exit_code == 0, result.output
    (job,) = rows(db)
    assert job["state"] == "done"
    assert (job["size"], job["mtime_ns"]) == (len(now), 1_700_000_000_000_000_000)
    stored = maiagent.object(job["s3_key"])
    assert stored is not None
    assert (stored["size"], stored["sha256"]) == (len(now), sha256(now))
    (entry,) = maiagent.entries(KB)
    assert (entry["id"], entry["size"]) == (job["file_id"], len(now))


@pytest.mark.posix_only("needs file modes that bind (chmod)")
def test_file_made_unreadable_after_enqueue_fails_as_unreadable(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    (tmp_path / "data").mkdir()
    secret = tmp_path / "data" / "locked.txt"
    secret.write_text("no peeking")
    (tmp_path / "data" / "open.txt").write_text("fine")
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")
    secret.chmod(0)

    proc = run_cli(db, *run_args(maiagent), privileged=False, timeout=60)

    assert proc.returncode == 1, proc.stderr
    by_name = {j["relpath"]: j for j in rows(db)}
    locked = by_name["locked.txt"]
    assert (locked["state"], locked["error_kind"], locked["attempts"]) == (
        "failed",
        "unreadable",
        1,
    )
    assert by_name["open.txt"]["state"] == "done"
    assert [e["filename"] for e in maiagent.entries(KB)] == ["open.txt"]


@pytest.mark.posix_only("makes symbolic links (a privilege on Windows)")
def test_file_replaced_by_a_symlink_loop_fails_as_unreadable(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    path = tmp_path / "data" / "loop.txt"
    path.parent.mkdir()
    path.write_text("soon a loop")
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")
    path.unlink()
    path.symlink_to(path.name)

    result = invoke(db, *run_args(maiagent))

    assert result.exit_code == 1, result.output
    (job,) = rows(db)
    assert (job["state"], job["error_kind"]) == ("failed", "unreadable")
    assert maiagent.entries(KB) == []


def test_file_replaced_by_a_folder_fails_without_hanging_the_run(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    path = tmp_path / "data" / "became_a_folder.txt"
    path.parent.mkdir()
    path.write_text("a file for now")
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")
    path.unlink()
    path.mkdir()

    result = invoke(db, *run_args(maiagent))

    assert result.exit_code == 1, result.output
    (job,) = rows(db)
    assert job["state"] == "failed"
    assert job["error_kind"] in ("unreadable", "missing")
    assert maiagent.entries(KB) == []


# --- hostile names and sizes -----------------------------------------------------------------

UNICODE_NAMES = [
    "quarterly report  2024 (final).pdf",
    "報告書 第一版.txt",
    "회의록 요약.md",
    "🎉 party plan 🎈.txt",
    "עברית-العربية.txt",
]
NOT_UTF8 = b"caf\xe9 latin-1 \xff.txt"


def test_unicode_and_undecodable_names_and_empty_files(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    contents = {}
    for i, name in enumerate(UNICODE_NAMES):
        contents[name] = f"content {i}".encode()
        (data / name).write_bytes(contents[name])
    (data / "empty.txt").write_bytes(b"")
    contents["empty.txt"] = b""
    fd = os.open(os.fsencode(data) + b"/" + NOT_UTF8, os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"bytes in a name that is not UTF-8")
    os.close(fd)
    escaped = NOT_UTF8.decode("utf-8", "backslashreplace")
    db = tmp_path / "queue.db"

    enqueue(db, data)
    result = invoke(db, "-q", "run", "--base-url", maiagent.base_url, "--retry-delay", "0.01")

    assert result.exit_code == 0, result.output
    jobs = {j["relpath"]: j for j in rows(db)}
    assert jobs[escaped]["path"] == os.fsencode(data) + b"/" + NOT_UTF8  # lossless
    # never sent as escape codes: skipped until --filename-encoding (test_filename_encoding)
    assert jobs.pop(escaped)["state"] == "skipped"
    assert all(j["state"] == "done" for j in jobs.values())
    entries = {e["filename"]: e for e in maiagent.records(KB)}
    assert sorted(entries) == sorted(contents)
    for name, data_bytes in contents.items():
        assert entries[name]["id"] == jobs[name]["file_id"]
        stored = maiagent.object(entries[name]["key"])
        assert stored is not None
        assert (stored["size"], stored["sha256"]) == (len(data_bytes), sha256(data_bytes))

    report = invoke(db, "export-report", "-o", str(tmp_path / "report.json"))
    assert report.exit_code == 0, report.output
    written = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    names = {os.path.basename(f["file_path"]) for f in written["successful_files"]}
    assert names == set(contents)


def test_a_tree_200_levels_deep(tmp_path: Path, maiagent: MaiAgentServer) -> None:
    rel = "/".join(f"L{i}" for i in range(200)) + "/bottom.txt"
    path = tmp_path / "data" / rel
    path.parent.mkdir(parents=True)
    path.write_text("deep down")
    (tmp_path / "data" / "top.txt").write_text("up here")
    db = tmp_path / "queue.db"

    enqueue(db, tmp_path / "data")
    result = invoke(db, *run_args(maiagent))

    assert result.exit_code == 0, result.output
    assert sorted(e["filename"] for e in maiagent.entries(KB)) == sorted([rel, "top.txt"])
    assert {j["state"] for j in rows(db)} == {"done"}


def _flat_folder(folder: Path, count: int) -> None:
    """`count` empty files in one folder. Most are hard links (of a few files: a file has at
    most 65,000 links on ext4): the scan sees as many regular files, made three times faster."""
    folder.mkdir()
    fd = os.open(folder, os.O_RDONLY)
    try:
        for i in range(count):
            name = f"f{i:07d}.txt"
            if i % 50_000 == 0:
                source = name
                os.close(os.open(source, os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
            else:
                os.link(source, name, src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        os.close(fd)


@pytest.mark.slow
def test_enqueue_100000_files_in_one_folder(tmp_path: Path) -> None:
    _flat_folder(tmp_path / "flat", 100_000)
    db = tmp_path / "queue.db"

    result = invoke(db, "enqueue", str(tmp_path / "flat"), "--kb", KB)

    assert result.exit_code == 0, result.output
    assert "100000 new" in result.output
    (count,) = rows(db, "SELECT COUNT(*) AS n FROM jobs WHERE state = 'pending'")
    assert count["n"] == 100_000


# --- the database under stress ---------------------------------------------------------------


@contextlib.contextmanager
def write_locked(db: Path, seconds: float | None = None) -> Iterator[None]:
    """Another writer holding the database: BEGIN IMMEDIATE for `seconds`, or for the whole
    block when None."""
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    timer = None
    if seconds is not None:
        timer = threading.Timer(seconds, conn.execute, ("ROLLBACK",))
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.join()
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()


def test_a_lock_held_a_few_seconds_is_waited_out(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("a")
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")
    (tmp_path / "data" / "b.txt").write_text("b")

    with write_locked(db, seconds=3.0):
        started = time.monotonic()
        result = invoke(db, "enqueue", str(tmp_path / "data"), "--kb", KB)
        waited = time.monotonic() - started

    assert result.exit_code == 0, result.output
    assert waited >= 2.5
    assert sorted(j["relpath"] for j in rows(db)) == ["a.txt", "b.txt"]


def test_a_lock_held_beyond_the_busy_timeout_is_a_clear_message(
    tmp_path: Path, maiagent: MaiAgentServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real wait is 5 s x 7 tries; the same path with a short one."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("a")
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")
    monkeypatch.setattr(queue_sqlite, "BUSY_TIMEOUT_MS", 100)
    monkeypatch.setattr(queue_sqlite, "LOCKED", dataclasses.replace(queue_sqlite.LOCKED, tries=3))

    with write_locked(db):
        result = invoke(db, *run_args(maiagent))
        enqueued = invoke(db, "enqueue", str(tmp_path / "data"), "--kb", KB)

    for outcome in (result, enqueued):
        assert outcome.exit_code == 2, outcome.output
        assert_one_line_error(outcome.output, "locked by another process", "try again")
    assert [j["state"] for j in rows(db)] == ["pending"]
    assert maiagent.entries(KB) == []


def _open_files_limit(limit: int) -> Callable[[], None]:
    """A child whose soft and hard open-file limits are `limit`, so raising the soft limit to
    the hard one (what a run does first) cannot help it."""

    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


@pytest.mark.posix_only("sets the child's open-file limit (resource)")
def test_too_few_open_files_for_the_workers_stops_the_run_and_burns_no_file(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    """Running out of file descriptors is this process's limit, not the file's or the
    service's: no row may end failed (or the service be declared unreachable), the run stops
    with one line saying what to change, and a run within the limit finishes the rest."""
    (tmp_path / "data").mkdir()
    for i in range(300):
        (tmp_path / "data" / f"f{i:03}.txt").write_text(f"file {i}")
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")

    child = spawn(db, *run_args(maiagent, "--workers", "50"), preexec_fn=_open_files_limit(40))
    _, stderr = child.communicate(timeout=60)
    err = stderr.decode()

    assert child.returncode == ExitCode.USAGE, err
    assert "Traceback" not in err and "Logging error" not in err
    last = err.strip().splitlines()[-1]
    assert "too many open files" in last and "--workers" in last, err
    assert "unreachable" not in err
    jobs = rows(db)
    assert {job["state"] for job in jobs} <= {"done", "pending"}, err
    assert all(job["attempts"] == 0 for job in jobs if job["state"] == "pending")
    (run,) = rows(db, "SELECT * FROM runs")
    assert run["ended_at"] is not None and "too many open files" in run["fatal"]
    assert run["exit_code"] == ExitCode.USAGE

    again = invoke(db, *run_args(maiagent))

    assert again.exit_code == 0, again.output
    assert {job["state"] for job in rows(db)} == {"done"}
    assert len(maiagent.entries(KB)) == 300


def test_a_run_stopped_by_a_lock_held_mid_run_is_ended_by_the_next_run(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stopped run cannot record its end (the database is locked); it leaves its run lock
    file as the proof that it is gone, so the next run ends its record and takes its rows
    back at once, and no lock file is left behind."""
    server = maiagent_factory(latency=0.05)
    (tmp_path / "data").mkdir()
    for i in range(40):
        (tmp_path / "data" / f"f{i:02}.txt").write_text(f"file {i}")
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")
    monkeypatch.setattr(queue_sqlite, "BUSY_TIMEOUT_MS", 100)
    monkeypatch.setattr(queue_sqlite, "LOCKED", dataclasses.replace(queue_sqlite.LOCKED, tries=3))
    blocker = threading.Thread(target=_hold_write_lock_mid_run, args=(db, server))
    blocker.start()
    try:
        first = invoke(db, *run_args(server, "--workers", "2", "--lease", "600"))
    finally:
        blocker.join()

    assert first.exit_code == ExitCode.USAGE, first.output
    assert "locked by another process" in first.output
    monkeypatch.undo()
    second = invoke(db, *run_args(server, "--lease", "600"))

    assert second.exit_code == 0, second.output
    runs = rows(db, "SELECT * FROM runs ORDER BY id")
    assert [r["ended_at"] is not None for r in runs] == [True, True]
    assert "lost" in runs[0]["counts"] and runs[0]["exit_code"] is None
    assert {job["state"] for job in rows(db)} == {"done"}
    assert len(server.entries(KB)) == 40
    assert list(Path(f"{db}.runs").iterdir()) == []


def _hold_write_lock_mid_run(db: Path, server: MaiAgentServer) -> None:
    """Once the run has registered a file (it is mid-run, whatever its start took)."""
    deadline = time.monotonic() + 30
    while not server.entries(KB) and time.monotonic() < deadline:
        time.sleep(0.05)
    _hold_write_lock(db, 3.0)


def _hold_write_lock(db: Path, seconds: float) -> None:
    conn = sqlite3.connect(db, isolation_level=None, timeout=30)
    try:
        conn.execute("BEGIN IMMEDIATE")
        time.sleep(seconds)
        conn.execute("ROLLBACK")
    finally:
        conn.close()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a disk that really fills up (needs root to mount)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def _fill(folder: Path, leave: int) -> Path:
    """Fill the file system of `folder` until `leave` bytes are free."""
    filler = folder / "filler"
    free = shutil.disk_usage(folder).free
    with open(filler, "wb") as out:
        out.write(b"\0" * max(free - leave, 0))
    return filler


def test_a_log_on_a_disk_that_fills_up_is_one_warning_and_the_run_goes_on(
    tmp_path: Path, tiny_disk: Path, maiagent: MaiAgentServer
) -> None:
    (tmp_path / "data").mkdir()
    for i in range(200):
        (tmp_path / "data" / f"f{i:03}.txt").write_text(f"file {i}")
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")
    _fill(tiny_disk, leave=4 << 10)
    log = tiny_disk / "run.log"

    result = run_cli(db, *run_args(maiagent, "--log-file", str(log), "--log-level", "DEBUG")[1:])

    assert result.returncode == 0, result.stderr
    assert "Logging error" not in result.stderr and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"the log {log} cannot be written any more" in line
    assert {job["state"] for job in rows(db)} == {"done"}
    assert log.stat().st_size > 0  # it did log until the disk was full


def test_disk_full_while_writing_the_report(tmp_path: Path, tiny_disk: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(600):
        (data / f"some-longish-file-name-{i:04d}.txt").write_text("too big for --max-size 1")
    built = tmp_path / "queue.db"
    result = invoke(built, "enqueue", str(data), "--kb", KB, "--max-size", "1")
    assert result.exit_code == 0, result.output
    db = tiny_disk / "queue.db"
    shutil.copyfile(built, db)
    filler = _fill(tiny_disk, leave=64 << 10)

    result = invoke(db, "export-report")

    assert result.exit_code == 2, result.output
    assert_one_line_error(result.output, "cannot write report", "No space left on device")
    assert list((tiny_disk / "reports").iterdir()) == []  # no half-written report
    filler.unlink()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT COUNT(*) FROM jobs WHERE state = 'skipped'").fetchone() == (
            600,
        )
    finally:
        conn.close()
    again = invoke(db, "export-report", "-o", str(tiny_disk / "report.json"))
    assert again.exit_code == 0, again.output
    assert len(json.loads((tiny_disk / "report.json").read_text())["skipped_files"]) == 600


@pytest.fixture(scope="module")
def used_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database after a real enqueue and run of 300 files, made once for the module."""
    root = tmp_path_factory.mktemp("used")
    data = root / "data"
    data.mkdir()
    for i in range(300):
        (data / f"f{i:03d}.txt").write_text(f"file {i}" * 20)
    db = root / "queue.db"
    enqueue(db, data)
    with MaiAgentServer(dialect="docs").run_in_thread() as server:
        result = invoke(db, *run_args(server))
    assert result.exit_code == 0, result.output
    return db


@pytest.fixture
def used_db(tmp_path: Path, used_once: Path) -> Path:
    """A copy of `used_once` for the test to break."""
    db = tmp_path / "queue.db"
    shutil.copy2(used_once, db)
    return db


COMMANDS: list[Callable[[Path, MaiAgentServer], list[str]]] = [
    lambda db, server: ["status"],
    lambda db, server: run_args(server),
    lambda db, server: ["export-report", "-o", str(db.parent / "report.json")],
    lambda db, server: ["retry-failed"],
]


def test_database_deleted_between_runs(used_db: Path, maiagent: MaiAgentServer) -> None:
    used_db.unlink()

    for command in COMMANDS:
        result = invoke(used_db, *command(used_db, maiagent))
        assert result.exit_code == 2, result.output
        assert_one_line_error(result.output, "no database at", "uploader enqueue")
    assert not used_db.exists()


def _scribble(db: Path, offset: int, length: int) -> None:
    with open(db, "r+b") as f:
        f.seek(offset)
        f.write(bytes(range(256)) * (length // 256))


def test_database_with_a_garbage_header(used_db: Path, maiagent: MaiAgentServer) -> None:
    _scribble(used_db, 0, 256)
    before = used_db.read_bytes()

    for command in COMMANDS:
        result = invoke(used_db, *command(used_db, maiagent))
        assert result.exit_code == 2, (command(used_db, maiagent), result.output)
        assert_one_line_error(result.output, "not a usable uploader database", "move it aside")
    assert used_db.read_bytes() == before  # left for the user to inspect


def _jobs_page(db: Path) -> int:
    """The offset of a page in the middle of the jobs table's leaves: where the middle of the
    file falls depends on the schema's other tables and on timing."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        leaves = [
            n
            for (n,) in conn.execute(
                "SELECT pageno FROM dbstat WHERE name = 'jobs' AND pagetype = 'leaf'"
                " ORDER BY pageno"
            )
        ]
    return (leaves[len(leaves) // 2] - 1) * size


def test_database_with_garbage_in_the_middle(used_db: Path, maiagent: MaiAgentServer) -> None:
    """Commands that never read the broken pages may work; none may crash, and the report,
    which reads every row, must say what to do."""
    _scribble(used_db, _jobs_page(used_db), 8192)

    for command in COMMANDS:
        result = invoke(used_db, *command(used_db, maiagent))
        assert "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            command(used_db, maiagent),
            repr(result.exception),
        )
        assert result.exit_code in (0, 2), result.output
    report = invoke(used_db, "export-report", "-o", str(used_db.parent / "report.json"))
    assert report.exit_code == 2, report.output
    assert_one_line_error(report.output, "not a usable uploader database", "move it aside")
