"""Whether the reader of a pipe has gone, asked without writing to it: only `poll` can tell
(POLLERR on a pipe's writing end), and only POSIX has it. Without it (Windows) the answer is
"no", and a reader that went away is found by the next write (BrokenPipeError), as before."""

from __future__ import annotations

import select
import sys


def reader_gone(fd: int) -> bool:
    """Whether `fd`, a pipe's writing end, has lost its reader."""
    if sys.platform == "win32" or not hasattr(select, "poll"):
        return False
    poll = select.poll()
    poll.register(fd, 0)  # POLLERR is always reported: on a pipe, its reader is gone
    return any(events & select.POLLERR for _fd, events in poll.poll(0))
