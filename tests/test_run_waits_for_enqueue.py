"""A run started in the same instant as an enqueue of a large folder (issue 24, "a run beside
a big walk"): the enqueue's scan is not yet recorded, its database perhaps not yet made, when
the run looks. The run must wait for that enqueue and upload its files, not exit with
"nothing pending"."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import FAST, KB, enqueue, execute, make_files, rows, service, spawn
from uploader.localserver import MaiAgentServer

# enough that the enqueue's walk and the run overlap; the run looks before the database or the
# scan exists because the slow --kb check holds the enqueue, whatever the count
_FILES = 1000
_WAIT = 300.0


def _walk(db: Path, folder: Path, checker: MaiAgentServer) -> subprocess.Popen[str]:
    """`enqueue FOLDER` in a process of its own, as a user runs it: with a key, it first asks
    `checker` whether --kb exists."""
    return spawn(
        db,
        "enqueue",
        str(folder),
        "--kb",
        KB,
        *service(checker),
        env={"UPLOADER_NO_KB_CHECK": None},
        text=True,
    )


@pytest.mark.timeout(600)
@pytest.mark.parametrize("database", ["none yet", "made, empty"])
def test_a_run_started_with_an_enqueue_waits_for_it_and_uploads_its_files(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer], database: str
) -> None:
    server = maiagent_factory()
    # Where enqueue checks --kb: a service slow to answer holds the enqueue before its
    # database is made, so a run started with it certainly looks before then.
    checker = maiagent_factory(latency=1.0)
    make_files(tmp_path / "data", _FILES)
    db = tmp_path / "queue.db"
    if database == "made, empty":  # the run opens it at once and finds no row and no scan
        (tmp_path / "empty").mkdir()
        enqueue(db, tmp_path / "empty")

    walker = _walk(db, tmp_path / "data", checker)
    runner = spawn(
        db,
        "-q",
        "run",
        *service(server),
        *FAST,
        "--workers",
        "8",
        "--register-batch",
        "20",
        text=True,
    )
    walked, walk_err = walker.communicate(timeout=_WAIT)
    out, err = runner.communicate(timeout=_WAIT)

    assert walker.returncode == 0, walk_err
    assert f"scanned {_FILES}: {_FILES} new" in walked
    assert runner.returncode == 0, err
    assert "nothing pending" not in out + err
    assert f"uploaded {_FILES}, failed 0" in out
    assert rows(db, "SELECT COUNT(*) AS n FROM jobs WHERE state = 'done'") == [{"n": _FILES}]
    assert len(server.records(KB)) == _FILES


@pytest.mark.timeout(300)
def test_a_run_started_with_an_enqueue_waits_for_it_where_the_knowledge_base_has_done_files(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """Last week's files are done: the queue holds rows of the knowledge base, none pending,
    no scan recorded yet. The enqueue said it is starting, so the run waits for its scan
    (held up by a slow --kb check) instead of exiting with 'nothing pending'."""
    server = maiagent_factory()
    checker = maiagent_factory(latency=1.5)
    db = tmp_path / "queue.db"
    make_files(tmp_path / "old", 3)
    enqueue(db, tmp_path / "old")
    execute(db, "UPDATE jobs SET state = 'done', file_id = 'f-' || id")
    files = 60
    make_files(tmp_path / "data", files)

    walker = _walk(db, tmp_path / "data", checker)
    announced = tmp_path / "queue.db.scans"
    deadline = time.monotonic() + 60
    while not list(announced.glob("*.lock")) and time.monotonic() < deadline:
        time.sleep(0.02)  # the enqueue has said it is starting: its check of --kb comes next
    runner = spawn(db, "-q", "run", *service(server), *FAST, "--workers", "4", text=True)
    walked, walk_err = walker.communicate(timeout=_WAIT)
    out, err = runner.communicate(timeout=_WAIT)

    assert walker.returncode == 0, walk_err
    assert runner.returncode == 0, err
    assert "nothing pending" not in out + err
    assert f"uploaded {files}, failed 0" in out
    assert len(server.records(KB)) == files
    assert not list(announced.glob("*.lock"))  # the enqueue took its word back
