"""Progress that tells the truth (issue 12, point 8): the bar's terminal check is on stderr,
where it is drawn (a pty in a child process shows it), rates in the unit that shows their
digits, a resumed run says how many were done before, an interrupted run says what is pending
and how to resume, and during an outage the line says "paused: service unreachable"."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import struct
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

if sys.platform != "win32":  # a pseudo-terminal: POSIX only
    import fcntl
    import pty
    import termios

from tests.helpers import (
    API_KEY,
    FAST,
    KB,
    enqueue,
    execute,
    invoke,
    make_files,
    make_flat_files,
    run_args,
    service,
    spawn,
    upload,
)
from tests.test_run_outage import Run, _done, _queued, _wait_until
from uploader import queue, runner, worker
from uploader.exitcodes import exit_code
from uploader.localserver import MaiAgentServer
from uploader.model import HostScope
from uploader.options import RunOptions
from uploader.progress import rate_text

_WAIT = 60.0


class _Terminal:
    """A pty whose far side a child process writes to; everything it wrote, read as it comes."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        # 24 x 120, as a terminal window has: a pty starts 0 columns wide
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # EIO: every writer has closed its side
                return
            if not chunk:
                return
            self._chunks.append(chunk)

    def text(self) -> str:
        os.close(self.slave)
        self._reader.join(timeout=_WAIT)
        os.close(self.master)
        return b"".join(self._chunks).decode("utf-8", "replace")


def _queued_files(tmp_path: Path, count: int) -> Path:
    make_flat_files(tmp_path / "data", count)
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")
    return db


@pytest.mark.posix_only("draws on a pseudo-terminal (pty)")
def test_the_bar_is_drawn_when_stderr_is_a_terminal(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db = _queued_files(tmp_path, 20)
    terminal = _Terminal()

    proc = spawn(db, "run", *service(maiagent), *FAST, stderr=terminal.slave, text=True)
    out, _err = proc.communicate(timeout=_WAIT)
    shown = terminal.text()

    assert proc.returncode == 0, shown
    assert re.search(r"100%\|[^|]*\| 20/20 \[.*failed=0 [\d.]+ (B|kB)/s\]", shown), shown
    assert "Progress:" not in out
    assert re.search(r"uploaded 20, failed 0, skipped 0 in .* files/s, [\d.]+ (B|kB)/s\)", out)


@pytest.mark.posix_only("draws on a pseudo-terminal (pty)")
def test_verify_draws_its_listing_and_parse_bars_on_a_terminal(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """The CLI draws what verify reports (issue 11, step 4): on a terminal a listing bar and a
    parsed/total bar on stderr; piped, a line per --wait poll instead."""
    server = maiagent_factory(parse_delay=0.5)
    db, _ = upload(tmp_path, server, 30)
    terminal = _Terminal()

    proc = spawn(db, "verify", *service(server), "--wait", stderr=terminal.slave, text=True)
    out, _err = proc.communicate(timeout=_WAIT)
    shown = terminal.text()
    piped = invoke(db, "verify", *service(server), "--wait")

    assert proc.returncode == 0, shown
    assert re.search(r"listing kb-test: +\d+%\|", shown), shown
    assert re.search(r"parsed kb-test: 100%\|[^|]*\| 30/30 \[.*failed 0, initial 0", shown)
    assert "parsed 30/30 (initial 0, processing 0)" not in shown and "OK:" in out
    assert (
        piped.exit_code == 0 and "kb-test: parsed 30/30 (initial 0, processing 0)" in piped.output
    )


@pytest.mark.posix_only("draws on a pseudo-terminal (pty)")
def test_stderr_to_a_file_on_a_terminal_gets_plain_lines_not_bar_frames(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db = _queued_files(tmp_path, 20)
    terminal = _Terminal()
    err = tmp_path / "err"

    with err.open("w") as err_file:
        proc = spawn(db, "run", *service(maiagent), *FAST, stdout=terminal.slave, stderr=err_file)
        proc.wait(timeout=_WAIT)
    shown = terminal.text()

    assert proc.returncode == 0, shown
    assert err.read_text() == ""
    assert "Progress: 20/20 (100.0%) | Success: 20 | Failed: 0 | Rate: " in shown


def test_rates_take_the_unit_that_shows_their_digits() -> None:
    assert [rate_text(r) for r in (0, 512, 1_500, 41_234, 3_400_000, 2.5e9)] == [
        "0 B/s",
        "512 B/s",
        "1.50 kB/s",
        "41.2 kB/s",
        "3.40 MB/s",
        "2.50 GB/s",
    ]


def test_a_resumed_run_says_how_many_were_done_before(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    """Only after a run that stopped before its end (issue 23: a weekly incremental run said
    "resuming" as if the last one had broken)."""
    db = _queued_files(tmp_path, 3)
    assert invoke(db, *run_args(maiagent)).exit_code == 0
    make_flat_files(tmp_path / "more", 2)
    enqueue(db, tmp_path / "more")

    routine = invoke(db, *run_args(maiagent)[1:])

    assert routine.exit_code == 0, routine.output
    assert "resuming" not in routine.output
    make_flat_files(tmp_path / "last", 1)
    enqueue(db, tmp_path / "last")
    execute(db, "UPDATE runs SET exit_code = 130 WHERE id = (SELECT MAX(id) FROM runs)")

    again = invoke(db, *run_args(maiagent)[1:])

    assert again.exit_code == 0, again.output
    assert again.stdout.splitlines()[0] == "resuming: 5 of 6 files were uploaded before"


@pytest.mark.posix_only("sends a POSIX signal to a child process")
def test_an_interrupted_run_says_what_is_pending_and_how_to_resume(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(latency=0.05)
    make_files(tmp_path / "data", 400)
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")
    proc = spawn(db, "run", *service(server), *FAST, "--workers", "2", "--grace", "1", text=True)
    _wait_until(lambda: _done(db) >= 5)

    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=_WAIT)

    assert proc.returncode == 130, err
    pending = re.search(
        r"^interrupted: (\d+) files pending; `uploader --db (\S+) run` resumes$", out, re.M
    )
    assert pending, out
    assert 0 < int(pending.group(1)) < 400 and pending.group(2) == str(db)
    assert "stopping: finishing in-flight uploads" in err


def test_the_plain_line_says_paused_during_an_outage(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(latency=0.01)
    db, _relpaths = _queued(tmp_path, 300)
    run = Run(db, server, "--max-retries", "1")
    _wait_until(lambda: _done(db) >= 30)

    server.shutdown()
    run.wait_for_line("paused: ")
    server.restart()
    code, out = run.finish()

    assert code == 0, "\n".join(run.lines)
    assert re.search(
        r"^Progress: \d+/300 \([\d.]+%\) \| Success: \d+ \| Failed: 0 \| paused: service "
        r"unreachable$",
        out,
        re.M,
    ), out


def test_a_run_as_a_library_draws_nothing(
    tmp_path: Path, maiagent: MaiAgentServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Output belongs to the CLI (issue 11, step 4): `runner.run` given no hooks uploads
    everything and prints nothing; the CLI's drawing is passed in."""
    db = _queued_files(tmp_path, 12)
    options = RunOptions(maiagent.base_url, API_KEY, kb_id=KB, workers=4, retry_delay=0.01)

    async def upload() -> worker.RunResult:
        async with queue.opened(str(db), create=False, scope=HostScope(socket.gethostname())) as q:
            return (await runner.run(q, options)).result

    capsys.readouterr()
    result = asyncio.run(upload())

    assert result.uploaded == 12 and exit_code(result.ending()) == 0
    assert capsys.readouterr() == ("", "")


@pytest.mark.posix_only("draws on a pseudo-terminal (pty)")
def test_the_bar_ticks_on_a_slow_service_before_a_file_is_done(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """Issue 23: each request answered after 0.5 s, a file done after three of them; the bar
    at 0/3 all that time is drawn again every second, its elapsed time going on (it stood at
    00:00 until the first file was done, as if the run hung)."""
    server = maiagent_factory(latency=0.5)
    db = _queued_files(tmp_path, 3)
    terminal = _Terminal()

    proc = spawn(db, "run", *service(server), *FAST, stderr=terminal.slave, text=True)
    proc.communicate(timeout=_WAIT)
    shown = terminal.text()

    assert proc.returncode == 0, shown
    assert len(set(re.findall(r"\| 0/3 \[(\d\d:\d\d)<", shown))) >= 2, shown
