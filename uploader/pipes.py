"""Whether the reader of a pipe has gone, asked without writing to it: only `poll` can tell
(POLLERR on a pipe's writing end), and only POSIX has it. Without it (Windows) the answer is
"no", and a reader that went away is found by the next write, which fails with
BrokenPipeError, or on Windows also with EINVAL (the C runtime's word for "the pipe is being
closed")."""

from __future__ import annotations

import errno
import os
import select
import stat
import sys


def reader_gone(fd: int) -> bool:
    """Whether `fd`, a pipe's writing end, has lost its reader."""
    if sys.platform == "win32" or not hasattr(select, "poll"):
        return False
    poll = select.poll()
    poll.register(fd, 0)  # POLLERR is always reported: on a pipe, its reader is gone
    return any(events & select.POLLERR for _fd, events in poll.poll(0))


def reader_went_away(exc: OSError) -> bool:
    """Whether a failed write to stdout means that its reader has gone."""
    if isinstance(exc, BrokenPipeError):
        return True
    return sys.platform == "win32" and exc.errno == errno.EINVAL and _stdout_is_a_pipe()


def _stdout_is_a_pipe() -> bool:
    try:
        return stat.S_ISFIFO(os.fstat(sys.stdout.fileno()).st_mode)
    except (OSError, ValueError):
        return False
