"""Opening files the same way on every system: without following a symbolic link in the last
component, in binary mode, not inherited by child programs.

Where the system has `O_NOFOLLOW` (Linux, macOS, the BSDs) the kernel refuses the link at the
open, atomically. Where it has not (Windows), the path is `lstat`ed before the open and the
open file `fstat`ed after it: a link found before is refused, and a link (or any other file)
swapped in between the two is caught because the file opened is not the one looked at (device
and inode differ). Both refusals are the same `OSError` (ELOOP), so callers keep one rule.

Windows opens a descriptor in text mode unless told `O_BINARY`: its reads would turn CR LF
into LF and stop at a Ctrl+Z byte, so every `os.open` of a file's bytes goes through here.
"""

from __future__ import annotations

import errno
import os
import stat
import sys

# The flags exist on some systems only: getattr, and 0 where a system has no such flag.
_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)
# keeps a FIFO that slipped into the queue from hanging a reader (Windows has none on disk)
NONBLOCK: int = getattr(os, "O_NONBLOCK", 0)
# os.open's descriptors are not inherited by child programs anyway; O_CLOEXEC makes it atomic
_CLOEXEC: int = getattr(os, "O_CLOEXEC", 0)
_BINARY: int = getattr(os, "O_BINARY", 0)

Path = str | bytes | os.PathLike[str]


def open_file(path: Path, flags: int, mode: int = 0o777) -> int:
    """`os.open` in binary mode, not inherited (links followed: for files the uploader makes)."""
    return os.open(path, flags | _BINARY | _CLOEXEC, mode)


def open_nofollow(path: Path, flags: int, mode: int = 0o777) -> int:
    """`open_file` refusing a symbolic link as the last component (ELOOP). With O_CREAT, only
    together with O_EXCL (which refuses any existing name, a link too)."""
    if _NOFOLLOW or flags & os.O_EXCL:
        return open_file(path, flags | _NOFOLLOW, mode)
    before = os.lstat(path)
    if stat.S_ISLNK(before.st_mode):
        raise _link(path)
    fd = open_file(path, flags, mode)
    try:
        after = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if (before.st_dev, before.st_ino) != (after.st_dev, after.st_ino):
        os.close(fd)
        raise _link(path)
    return fd


def _link(path: Path) -> OSError:
    return OSError(errno.ELOOP, os.strerror(errno.ELOOP), os.fsdecode(path))


def read_at(fd: int, length: int, offset: int) -> bytes:
    """Up to `length` bytes at `offset`, leaving the file's position alone where the system
    can (`pread`): a read still running when its file is closed then cannot move the position
    of whatever file reuses the descriptor number. Windows has no pread: there the position
    is set, then read from (the file is the caller's alone until it closes it)."""
    if sys.platform != "win32" and hasattr(os, "pread"):
        return os.pread(fd, length, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, length)
