"""The run's log file, for the operator who reads it the next morning: one file per run, named
with the run's id (two runs started in the same second never share one), every line with an
ISO 8601 time and a level (WARNING for a retry, ERROR for a failure or a fatal stop, so that
`grep ERROR` finds what went wrong), rclone's level names, and a log that cannot be written
costing the run nothing but the file."""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable

from . import printable
from .i18n import _

NOTICE = 25  # rclone's default level: warnings and errors, not every file's progress
logging.addLevelName(NOTICE, "NOTICE")
LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "NOTICE": NOTICE, "ERROR": logging.ERROR}
ROOT = "uploader"


class _Formatter(printable.Formatter):
    """`2026-12-03T09:41:07.123+00:00 WARNING uploader.attempt: …`: local time with its offset,
    so lines of hosts in different zones sort and compare; a name in a message escaped, so
    that `grep ERROR` shows it and it cannot forge a line."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        when = dt.datetime.fromtimestamp(record.created).astimezone()
        return when.isoformat(timespec="milliseconds")


FORMATTER = _Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


class RunLog(logging.FileHandler):
    """A run's file. Once it cannot be written (disk full, the folder removed) it says so once
    through `on_broken` and stays silent: never the stdlib's "--- Logging error ---"
    traceback per line."""

    def __init__(self, path: str, level: int, on_broken: Callable[[str], None]) -> None:
        super().__init__(path, encoding="utf-8")
        self.setLevel(level)
        self.setFormatter(FORMATTER)
        self._on_broken = on_broken
        self._broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self._broken:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802
        self._break()

    def close(self) -> None:
        """The last buffered lines are written here too, so a full disk can strike here."""
        try:
            super().close()
        except OSError:
            self._break()

    def _break(self) -> None:
        if not self._broken:
            self._broken = True
            self._on_broken(
                _("the log {path} cannot be written any more").format(path=self.baseFilename)
            )


def default_path(anchor: str) -> str:
    """logs/ beside the database (or in the current folder for a server), a name of its own
    until the run has an id (`name_for_run`)."""
    folder = os.path.join(os.path.dirname(os.path.abspath(anchor)), "logs")
    return os.path.join(folder, f"upload_log_{dt.datetime.now():%Y%m%d_%H%M%S}_{os.getpid()}.log")


def name_for_run(handler: RunLog, run_id: int) -> str:
    """Rename a default-named log after its run: `upload_log_<time>_run<id>.log`. The open
    file follows the rename; on failure the log keeps its first name."""
    old = handler.baseFilename
    folder, name = os.path.split(old)
    stem = name.rsplit("_", 1)[0]
    new = os.path.join(folder, f"{stem}_run{run_id}.log")
    try:
        os.rename(old, new)
    except OSError:
        return old
    handler.baseFilename = new
    return new


def open_file(path: str, level: int, on_broken: Callable[[str], None]) -> RunLog:
    """The run's log at `path`, appended to, owner-only; raises OSError when it cannot be made
    (a file named logs, a read-only folder): the caller warns and logs to stderr only."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600))
    handler = RunLog(path, level, on_broken)
    root = logging.getLogger(ROOT)
    root.addHandler(handler)
    root.setLevel(min(root.level, level))
    return handler


def close(handler: RunLog) -> None:
    logging.getLogger(ROOT).removeHandler(handler)
    handler.close()


def readable(options: dict[str, object]) -> str:
    """Options as `name=value` pairs, sorted: what a reader greps for (`workers=10`), not a
    Python dict. The API key is never among them."""
    shown = []
    for name, value in sorted(options.items()):
        if value is None:
            value = "off"
        elif isinstance(value, bool):
            value = "yes" if value else "no"
        shown.append(f"{name}={value}")
    return " ".join(shown)


FILE_ONLY = {"file_only": True}  # `extra=` of a line the terminal shows otherwise (as "Error: …")
PER_FILE = "uploader.attempt"  # the logger of each file's retries and failures


OUTAGE = "uploader.outage"  # its pauses and resumes: the CLI says them (`paused: …`, `resumed: …`)


def for_the_terminal(record: logging.LogRecord) -> bool:
    """stderr without -v: not a line per file's retry or failure (thousands in an outage;
    the file has them, the summary names the failed), nor what the CLI prints itself (an
    outage said twice, once in the CLI's words and once in the logger's)."""
    return record.name not in (PER_FILE, OUTAGE) and not getattr(record, "file_only", False)
