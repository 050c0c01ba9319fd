"""File names are data, not commands to the operator's terminal (issue 23): a name may hold
escape sequences (CSI clears the screen, OSC sets the title or writes the clipboard), a carriage
return, a bell, or a line break followed by what looks like a log line. Whatever prints a name
(the run's failure list, `status --failed`, the run log, stderr) shows its control characters
escaped, so no control byte of a name reaches stdout, stderr or the log, and no name forges a
line of the log."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.helpers import FAST, child_env, command, enqueue, service
from uploader.localserver import MaiAgentServer
from uploader.printable import printable

FORGED = "2026-12-03T09:46:12.001+00:00 INFO uploader.run: run 9 ended: uploaded 5, all fine"
HOSTILE = [
    "clear\x1b[2Jscreen.txt",  # CSI: clears the screen
    "title\x1b]0;pwned\x07.txt",  # OSC ... BEL: sets the window title
    "clip\x1b]52;c;ZXZpbA==\x1b\\.txt",  # OSC 52 ... ST: writes the clipboard
    "car\rriage.txt",
    "bell\x07.txt",
    "c1\x9b2J.txt",  # the one-character CSI of C1
    f"line\n{FORGED}.txt",
]
# What a line of output may hold: printable text and the line end.
_CONTROL = re.compile(rb"[\x00-\x09\x0b-\x1f\x7f]|\xc2[\x80-\x9f]")


def _controls(data: bytes) -> list[bytes]:
    return _CONTROL.findall(data)


def _uploader(db: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        command(db, *args), env=child_env(), capture_output=True, timeout=60, check=False
    )


def test_names_with_control_characters_reach_no_terminal_and_no_log_raw(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    # Half of the hostile names vanish after enqueue (failed: missing), half are refused by
    # the service for the ESC in them (failed: name_refused, an error that names the file).
    server = maiagent_factory(refuse_names="\x1b")
    data = tmp_path / "data"
    data.mkdir()
    for name in HOSTILE:
        (data / name).write_bytes(name.encode())
    (data / "plain.txt").write_bytes(b"plain")
    db = tmp_path / "queue.db"
    enqueue(db, data)
    for name in HOSTILE[3:]:
        (data / name).unlink()
    log = tmp_path / "run.log"

    ran = _uploader(db, "-v", "run", *service(server), *FAST, "--log-file", str(log))
    failed = _uploader(db, "status", "--failed")
    text = log.read_bytes()

    assert ran.returncode == 1, ran.stderr
    for where, data_out in (
        ("run stdout", ran.stdout),
        ("run stderr", ran.stderr),
        ("log", text),
        ("status --failed", failed.stdout),
    ):
        assert _controls(data_out) == [], (where, data_out)
        assert not re.search(rb"^2026-12-03T09:46:12", data_out, re.M), (where, data_out)
    # every failed name is there, escaped as `--json` would show it
    for name in HOSTILE:
        assert printable(name).encode() in failed.stdout, failed.stdout
    assert printable(HOSTILE[-1]).encode() in text
    assert b"plain.txt" not in failed.stdout


def test_printable_escapes_controls_and_keeps_every_other_character() -> None:
    assert printable("a\x1b[2Jb\rc\nd\te\x07\x7f\x9b") == "a\\x1b[2Jb\\rc\\nd\\te\\x07\\x7f\\x9b"
    assert printable("合約 › 二〇二四 › 租賃合約.pdf") == "合約 › 二〇二四 › 租賃合約.pdf"
    assert printable("évite\u2028x\u202ey") == "évite\\u2028x\\u202ey"


def test_the_skipped_and_pending_lists_escape_names(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in HOSTILE:
        (data / name).write_bytes(b"x" * 2048)  # over --max-size: skipped
        (data / f"small-{name}").write_bytes(b"x")  # pending
    db = tmp_path / "queue.db"
    enqueue(db, data, "--max-size", "1K")

    for flag in ("--skipped", "--pending"):
        shown = _uploader(db, "status", flag)

        assert shown.returncode == 0, shown.stderr
        assert _controls(shown.stdout) == [], (flag, shown.stdout)
        assert printable(HOSTILE[0]).encode() in shown.stdout, (flag, shown.stdout)
