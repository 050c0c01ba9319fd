"""A run that waits says why (issue 23): a register whose answer was lost may still take effect
until --timeout and a margin after it was sent, and the run proves it did not (the listing
shows no entry) before it registers that file again. Such a wait is said once, above the bar
and in the run's log, with the registers it waits for and how long; the other files are
uploaded meanwhile; and the ETA counts the wait down instead of claiming the upload rate."""

from __future__ import annotations

import io
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import (
    FAST,
    KB,
    TIMEOUT,
    enqueue,
    execute,
    invoke,
    make_flat_files,
    rows,
    run_args,
)
from uploader import progress
from uploader.localserver import MaiAgentServer

DOUBTFUL = 4
OTHERS = 30
# seconds from the end of the set-up until the doubtful registers settle: their deadline
# (their send plus the sender's --timeout, 8) 3 s away, and the margin of 2 s after it
SETTLES_IN = 5.0
WAIT_LINE = re.compile(
    r"^waiting (\d+) s to settle (\d+) registers whose answers were lost", re.MULTILINE
)


def _lost_answers_then_more_files(tmp_path: Path, server: MaiAgentServer) -> Path:
    """Four files whose registers the service failed (a 500: it may have registered them,
    the row keeps its key and its doubt), put back by retry-failed, and more files queued."""
    data = tmp_path / "data"
    (data / "docs").mkdir(parents=True)
    for i in range(DOUBTFUL):
        (data / "docs" / f"report{i}.docx").write_bytes(f"report {i}\n".encode())
    db = tmp_path / "queue.db"
    enqueue(db, data / "docs")
    first = invoke(db, *run_args(server, "--max-retries", "0"))
    assert first.exit_code == 1, first.output
    doubtful = rows(db, "SELECT id FROM jobs WHERE state = 'failed' AND unknown_since IS NOT NULL")
    assert len(doubtful) == DOUBTFUL, rows(db)
    server.faults.failing_types = ""
    assert invoke(db, "retry-failed").exit_code == 0
    make_flat_files(data / "more", OTHERS)
    enqueue(db, data / "more")
    deadline = time.time() + SETTLES_IN - 2.0
    execute(
        db,
        "UPDATE jobs SET unknown_since = ?, register_due = ? WHERE unknown_since IS NOT NULL",
        (deadline - 8.0, deadline),
    )
    return db


def test_a_run_waiting_for_lost_register_answers_says_so_and_uploads_the_rest_meanwhile(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(failing_types="docx")
    db = _lost_answers_then_more_files(tmp_path, server)

    ran = invoke(db, "run", "--base-url", server.base_url, *FAST, *TIMEOUT, "--name", "relpath")

    assert ran.exit_code == 0, ran.output
    said = WAIT_LINE.findall(ran.stderr)
    assert len(said) == 1, ran.stderr
    seconds, registers = map(int, said[0])
    assert registers == DOUBTFUL and 1 <= seconds <= SETTLES_IN, ran.stderr
    (log,) = (tmp_path / "logs").glob("*_run2.log")
    assert re.search(r"INFO uploader\.run: waiting \d+ s to settle 4 registers", log.read_text())
    jobs = rows(db)
    names = sorted(r["filename"] for r in server.records(KB))
    assert {j["state"] for j in jobs} == {"done"} and names == sorted(j["relpath"] for j in jobs)
    settled = min(j["finished_at"] for j in jobs if j["relpath"].endswith(".docx"))
    others = max(j["finished_at"] for j in jobs if j["relpath"].endswith(".txt"))
    assert others < settled, "the other files waited for the doubtful registers to settle"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_eta_counts_the_wait_down_instead_of_the_upload_rate(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Six of ten files uploaded in a moment, four waiting a minute: the ETA is that minute,
    on the bar and on the plain line, not four files at the rate of the first six."""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = progress.Progress(10, 1000)
    bar.add(done=6, nbytes=600)

    bar.settling(60.0, 4)
    bar.close()

    frames = terminal.getvalue().split("\r")
    assert "waiting 60 s to settle 4 registers whose answers were lost" in terminal.getvalue()
    assert re.search(r"6/10 \[00:00<(00:5\d|01:00), ", frames[-1]), frames[-1]
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    lines = progress.Progress(10, 1000)
    lines.add(done=6, nbytes=600)
    lines.settling(60.0, 4)
    lines.print_line()
    assert re.search(r"Progress: 6/10 .* ETA: (59|60)s$", capsys.readouterr().out, re.M)


def test_the_eta_counts_rows_settling_while_other_files_upload(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before the run has nothing else to do, rows settling a minute from now already bound
    its time left (a run cannot end before them), without a line about a wait not begun."""
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    lines = progress.Progress(10, 1000)
    lines.add(done=6, nbytes=600)

    lines.not_before(60.0)
    lines.print_line()

    assert re.search(r"Progress: 6/10 .* ETA: (59|60)s$", capsys.readouterr().out, re.M)
    assert sys.stderr.getvalue() == ""
