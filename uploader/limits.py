"""The process's open-file limit. A run holds, per worker, a file being read, a connection or
two and its share of the database's files; a soft limit below that turns into errors that are
neither the files' nor the service's (EMFILE). So a run first raises the soft limit to the
hard one (as Go programs do at start), and an EMFILE that still happens stops the run with the
one thing to change instead of failing files or pausing for an outage.

Only POSIX systems have such a limit (`resource`); Windows has none to raise (its C runtime
allows thousands of descriptors, and sockets are not counted with them)."""

from __future__ import annotations

import errno
import sys

from .i18n import _

OUT_OF_FILES = frozenset({errno.EMFILE, errno.ENFILE})


def raise_open_files_limit() -> int | None:
    """Lift the soft limit to the hard one where the kernel allows; the soft limit in force
    (None: this system has no such limit)."""
    if sys.platform == "win32":
        return None
    try:
        import resource
    except ImportError:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft
        return hard
    return soft


def _soft_limit() -> int | None:
    if sys.platform == "win32":
        return None
    try:
        import resource
    except ImportError:
        return None
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def is_out_of_files(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in OUT_OF_FILES


def out_of_files_message(exc: OSError) -> str:
    if exc.errno == errno.ENFILE:
        return _("too many open files on this system: lower --workers or close other programs")
    soft = _soft_limit()
    if soft is None:
        return _("too many open files: lower --workers")
    return _(
        "too many open files (this process may open {n}): lower --workers or raise the limit "
        "(ulimit -n)"
    ).format(n=soft)
