"""A full disk under the database, told apart from every other failure: SQLite says only
"database or disk is full", which a run took for one more error to wait out (its writer
warning every few milliseconds, its claims failing, the run's uploads cut off and the cut-off
requests taken for a service outage). No later try gets past it until someone frees space,
so the command stops at once in one line that names the disk and the database (exit 6), and
the rows stay as the last transaction left them (SQLite rolls a failed one back whole).

SQLite does not always say "full": a database opened on a full disk (every command) fails on
its shared-memory file, which cannot grow, as a "disk I/O error" (SQLITE_IOERR_SHMSIZE). An
I/O error where the disk has next to no space left is taken for the full disk it most likely
is."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3

from ..i18n import _
from .engine import DatabaseFatal
from .sqlite_file import is_io_error

# out of space, or out of the user's quota on it
_NO_SPACE = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
SQLITE_FULL = 13  # sqlite3.SQLITE_FULL from Python 3.11 on
# less free than this, an I/O error is the full disk (SQLite's pages are 4 KiB, its
# shared-memory file grows by 32 KiB)
NEARLY_FULL = 1 << 20


class DiskFull(DatabaseFatal):
    """The disk holding the database is full (SQLite's, or a PostgreSQL server's): the
    command stops (exit 6)."""


def is_full(exc: BaseException, path: str) -> bool:
    """`exc` (met on the database at `path`) is its disk full: SQLite's SQLITE_FULL (its text
    on Python 3.10, which lacks the code), ENOSPC, or an I/O error on a disk without room."""
    if said_full(exc):
        return True
    if not is_io_error(exc):
        return False
    free = _free_bytes(os.path.dirname(os.path.abspath(path)))
    return free is not None and free < NEARLY_FULL


def said_full(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None:
            return bool(code & 0xFF == SQLITE_FULL)
        return "database or disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in _NO_SPACE


def disk_full(path: str) -> DiskFull:
    """The error for the database at `path`, naming the disk it is on and what is free."""
    folder = os.path.dirname(os.path.abspath(path))
    return DiskFull(
        _(
            "the disk is full: database {path} cannot be written ({disk} has {free} free); "
            "free some space, then run the command again (no row was lost)"
        ).format(path=path, disk=mount_point(folder), free=_shown(_free_bytes(folder)))
    )


def server_disk_full(db: str, why: str) -> DiskFull:
    """The error for a database server whose disk is full (PostgreSQL's SQLSTATE 53100):
    its disk is the server's, named by the server's own words."""
    return DiskFull(
        _(
            "the disk is full: database {db} cannot be written ({why}); free some space on "
            "the database server, then run the command again (no row was lost)"
        ).format(db=db, why=why)
    )


def mount_point(folder: str) -> str:
    """The mount point (POSIX) or drive (Windows) `folder` is on: the disk to free."""
    path = os.path.realpath(folder)
    while not os.path.ismount(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _free_bytes(folder: str) -> int | None:
    """What this user may still write there (a disk's reserve for root left out)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _shown(free: int | None) -> str:
    if free is None:
        return "?"
    size = float(free)
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    power = 0
    while size >= 1024 and power < len(units) - 1:
        size /= 1024
        power += 1
    return f"{size:.0f} B" if power == 0 else f"{size:.1f} {units[power]}"
