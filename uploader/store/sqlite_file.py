"""A SQLite database whose file goes away under a run: a network share that vanishes, a
removable disk unplugged, a folder unmounted (`umount -l`), removed or renamed. SQLite keeps
writing through the file it holds open, so a run went on "successfully" into a file nobody
could see any more, and every row it wrote was lost with it; a share gone for good answers
"disk I/O error" instead, a raw error and a traceback.

Before each write transaction the engine checks that its path still leads to the file it
opened (one stat); while it does not, the database is out of reach (reach.py): waited for
with backoff up to --db-timeout, the run going on if the file comes back, else stopping in
one line (exit 4) with its rows left leased to it, given back by the next run once the
database is there again (its run lock, beside the database, proves the run dead). A "disk
I/O error" stops the run the same way at once: SQLite's handles stay broken even when a share
comes back."""

from __future__ import annotations

import os
import sqlite3

from ..i18n import _
from .reach import DatabaseLost, DatabaseUnreachable

# SQLite's primary codes of a file that cannot be read, written or opened any more
SQLITE_CANTOPEN = 14
SQLITE_IOERR = 10


class FileIdentity:
    """The file a database path led to when it was opened (device and inode)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._opened = _identity(path)

    def in_place(self) -> bool:
        """The path still leads to that file (where inodes are not known, a file is there)."""
        if self._opened is None:
            return True
        now = _identity(self.path)
        if now is None or self._opened[1] == 0:
            return now is not None
        return now == self._opened

    async def check(self) -> None:
        """DatabaseLost while the path does not lead to the file (for Reach to wait out)."""
        if not self.in_place():
            raise gone(self.path)


def _identity(path: str) -> tuple[int, int] | None:
    if path == ":memory:":
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def gone(path: str) -> DatabaseLost:
    return DatabaseLost(
        _(
            "database {path} is gone from its folder (a share or disk unmounted, the folder "
            "removed or renamed?)"
        ).format(path=path)
    )


def is_io_error(exc: BaseException) -> bool:
    """SQLite could not read, write or open its files any more (its code where Python 3.11+
    gives it, else its words)."""
    if not isinstance(exc, sqlite3.Error):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in (SQLITE_IOERR, SQLITE_CANTOPEN)
    return "disk I/O error" in str(exc)


def unreadable(path: str) -> str | None:
    """Why the database file cannot even be opened and read (its disk or share failing), or
    None when it can."""
    try:
        with open(path, "rb") as db:
            db.read(100)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def io_lost(path: str, why: object) -> DatabaseUnreachable:
    """A file SQLite can no longer read or write through its handle: no later try of this
    run gets past that (its handles stay broken when a share comes back), so the run stops at
    once, its rows left to the next run."""
    return DatabaseUnreachable(
        _("database {path} cannot be read or written ({why}): its disk or share gone?").format(
            path=path, why=why
        )
    )
