"""An exclusive lock on an open file that the system drops when its holder dies, on every
system: `flock` where there is `fcntl` (Linux, macOS), `msvcrt.locking` on Windows.

Both are released by the operating system when the process ends however it ends, which is
what lets `liveness` prove a run dead. Their differences stay here: a Windows lock covers a
byte range (the first byte: the holder may still write the file), and Windows keeps an open
file from being renamed or removed by anyone (`PINNED_WHILE_OPEN`), so the file must be
made under its final name and closed before it is removed.
"""

from __future__ import annotations

import errno
import os
import sys

# Windows: an open file (os.open shares neither delete nor rename) can be neither renamed nor
# removed, by its holder or anyone else, until every descriptor of it is closed.
PINNED_WHILE_OPEN = sys.platform == "win32"


class NoLocks(OSError):
    """This system or file system has no such locks (a mount without locking, a system
    without `fcntl`): the caller's answer is "unknown", not an error."""


_NO_LOCKS = frozenset((errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS))


def try_lock(fd: int) -> bool:
    """Take the exclusive lock of the open file `fd` without waiting: True taken, False held
    by another open file (another process, or another descriptor here). Raises NoLocks where
    there are none, OSError for any other failure."""
    if sys.platform == "win32":
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EDEADLK):
                return False
            raise
        return True
    try:
        import fcntl
    except ImportError:
        raise NoLocks(errno.ENOSYS, "no file locks on this system") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in _NO_LOCKS:
            raise NoLocks(exc.errno, exc.strerror) from None
        raise
    return True
