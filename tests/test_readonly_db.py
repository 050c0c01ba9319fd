"""A database that can be read and not written (issue 23): a file of mode 0444, a read-only
folder, a share mounted read-only. `status` and `export-report`, which only read, work on it;
a command that writes says in one line that the database is read-only."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import FAST, enqueue, invoke, make_flat_files, run_cli, service
from uploader.localserver import MaiAgentServer


@pytest.fixture
def uploaded(tmp_path: Path, maiagent: MaiAgentServer) -> Iterator[Path]:
    """A database beside nothing else, with 3 files uploaded; its folder made writable again
    after the test (pytest removes it)."""
    folder = tmp_path / "db"
    folder.mkdir()
    db = folder / "queue.db"
    make_flat_files(tmp_path / "data", 3)
    enqueue(db, tmp_path / "data")
    assert invoke(db, "-q", "run", *service(maiagent), *FAST, "--no-report").exit_code == 0
    yield db
    folder.chmod(0o700)
    for path in folder.iterdir():
        path.chmod(0o600)


def _read_only(db: Path, folder_too: bool) -> None:
    db.chmod(stat.S_IRUSR | stat.S_IRGRP)
    if folder_too:
        db.parent.chmod(0o500)


@pytest.mark.parametrize("folder_too", [False, True], ids=["file", "folder"])
def test_status_and_export_report_read_a_read_only_database(
    uploaded: Path, folder_too: bool
) -> None:
    _read_only(uploaded, folder_too)

    status = run_cli(uploaded, "status", "--json", privileged=False)
    report = run_cli(uploaded, "export-report", "-o", "-", privileged=False)

    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)
    assert "unable to open" not in status.stderr
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["summary"]["successful_uploads"] == 3


def test_a_command_that_writes_says_the_database_is_read_only(uploaded: Path) -> None:
    _read_only(uploaded, folder_too=True)

    forgot = run_cli(uploaded, "forget", "--kb", "kb-test", "--yes", privileged=False)

    assert forgot.returncode == 2, forgot.stderr
    [line] = forgot.stderr.strip().splitlines()
    assert "read-only" in line and os.fspath(uploaded) in line


def test_a_share_mounted_read_only(uploaded: Path, tmp_path: Path) -> None:
    """A file system mounted read-only (EROFS, whatever the modes say): where this machine
    lets the test mount one (root on Linux), else skipped."""
    mount = tmp_path / "share"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip("cannot mount a file system here")
    try:
        shutil.copy(uploaded, mount / "queue.db")
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)

        status = run_cli(mount / "queue.db", "status")
        forgot = run_cli(mount / "queue.db", "forget", "--kb", "kb-test", "--yes")

        assert status.returncode == 0, status.stderr
        assert "3" in status.stdout
        assert forgot.returncode == 2 and "read-only" in forgot.stderr, forgot.stderr
    finally:
        subprocess.run(["umount", str(mount)], check=False)
