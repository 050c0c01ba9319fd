"""Closing the terminal (issue 23): the terminal's hangup (SIGHUP) killed a run at once, exit
129, no summary, rows left `running` until their lease ran out. It is taken as SIGTERM is:
in-flight files finish, the rest go back to pending, the run's record is closed and its log
says it was interrupted, though the terminal it would print to is gone."""

from __future__ import annotations

import fcntl
import os
import pty
import subprocess
import sys
import termios
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import FAST, child_env, command, enqueue, make_files, rows, service
from tests.test_run_outage import _done, _wait_until
from uploader.localserver import MaiAgentServer

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no SIGHUP on Windows")


def _controlling_terminal() -> None:
    """In the child: a session of its own whose controlling terminal is the pty on stdin, so
    that closing the pty's far side hangs it up as closing a terminal window does."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def test_closing_the_terminal_stops_the_run_as_sigterm_does(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(latency=0.05)
    make_files(tmp_path / "data", 400)
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")
    log = tmp_path / "run.log"
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        command(db, "run", *service(server), *FAST, "--workers", "2", "--log-file", str(log)),
        env=child_env(),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=_controlling_terminal,
    )
    os.close(slave)
    _wait_until(lambda: _done(db) >= 5)

    os.close(master)  # the terminal window closed
    code = proc.wait(timeout=60)

    assert code == 130, code
    jobs = rows(db)
    assert not [j for j in jobs if j["state"] == "running"]
    assert 5 <= sum(j["state"] == "done" for j in jobs) < 400
    (run,) = rows(db, "SELECT ended_at, exit_code FROM runs")
    assert run["ended_at"] is not None and run["exit_code"] == 130
    text = log.read_text()
    assert "Traceback" not in text
    assert "stopping: finishing in-flight uploads" in text
    assert "WARNING uploader.run: run interrupted" in text
