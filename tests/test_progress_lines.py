"""Lines written while the progress bar is drawn (issue 23): on a terminal a warning or a
pause/resume line used to land on the bar's tail (`…22.3 kB/s]W`, then `ARNING uploader.outage:
…` on the next line), and each outage was reported twice (the CLI's `paused:` line and the
outage logger's warning). Each line now goes above the bar, and each outage event is said once."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from tests.helpers import FAST, service, spawn
from tests.test_progress import _WAIT, _Terminal
from tests.test_run_outage import _done, _queued, _wait_until
from uploader.localserver import MaiAgentServer


def _shown_so_far(terminal: _Terminal) -> str:
    return b"".join(terminal._chunks).decode("utf-8", "replace")


def test_outage_lines_go_above_the_bar_and_are_said_once(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(latency=0.01)
    db, _relpaths = _queued(tmp_path, 300)
    terminal = _Terminal()
    proc = spawn(
        db, "run", *service(server), *FAST, "--workers", "6", stderr=terminal.slave, text=True
    )
    _wait_until(lambda: _done(db) >= 30)

    server.shutdown()
    _wait_until(lambda: "probing until it answers" in _shown_so_far(terminal))
    time.sleep(0.5)  # the bar is drawn again below the line
    server.restart()
    out, _err = proc.communicate(timeout=_WAIT)
    shown = terminal.text()

    assert proc.returncode == 0, shown
    assert "uploaded 300, failed 0" in out
    said = [m.start() for m in re.finditer(r"paused: service unreachable since", shown)]
    resumed = [m.start() for m in re.finditer(r"resumed: the service answers again", shown)]
    assert said and len(said) == len(resumed), shown
    # each at the start of a line: the bar was cleared (\r) before it, not written after
    for start in said + resumed:
        assert shown[start - 1] in "\r\n", repr(shown[max(0, start - 80) : start + 40])
    for warning in re.finditer(r"(WARNING|ERROR) uploader", shown):
        assert shown[warning.start() - 1] in "\r\n", shown
    # the outage logger's own words stay in the log file
    assert "pausing every request" not in shown
