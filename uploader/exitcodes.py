"""The exit codes of every `uploader` command, rclone-like, in one place: scripts branch on
them, so a number means the same thing whichever command returns it (the README's table is
this enum), and one function (`exit_code`) decides it from what a command came to, with one
order of precedence for every command."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from .errors import ApiError, Unreachable
from .model import ErrorKind
from .store.reach import DatabaseUnreachable
from .store.space import DiskFull


class ExitCode(IntEnum):
    """What a command's exit status says."""

    OK = 0  # done: every file uploaded, the check passed, ...
    FAILED = 1  # some files failed (or entries could not be deleted, a check failed)
    USAGE = 2  # bad input: an option, a path, a pattern, a database that cannot be used
    REFUSED = 3  # the service refused the run: the API key, an unknown knowledge base
    # the service could not be reached (at the start, or past --outage-timeout), or the
    # database (past --db-timeout)
    UNREACHABLE = 4
    # --delete-removed refused: more files gone than --max-delete allows, or a folder that
    # holds no file at all (an unmounted share) where the job had uploaded files
    DELETIONS_REFUSED = 5
    # the disk holding the database is full: nothing more could be recorded (no row lost)
    DISK_FULL = 6
    NOTHING_TO_DO = 9  # nothing pending, with --error-on-nothing-to-do (rclone's 9)
    INTERRUPTED = 130  # Ctrl+C or SIGTERM (128 + SIGINT, as shells report it)
    CLOSED_PIPE = 141  # stdout's reader went away (`export-report -o - | head`): 128 + SIGPIPE


@dataclass(frozen=True)
class Ending:
    """What a command came to, in the terms its exit status depends on: each command fills in
    what it knows (a run its result, verify the service's error, check its steps)."""

    error: Exception | None = None  # what stopped the command, if anything did
    unreachable: bool = False  # the service never answered (an outage-like error, no answer)
    interrupted: bool = False
    refused: bool = False  # some knowledge bases were refused while the others went on
    failed: bool = False  # files failed, a check failed, a probe entry was left behind

    @classmethod
    def of(cls, error: ApiError) -> Ending:
        """A command stopped by this error alone: no answer (or only 5xx) is unreachable."""
        return cls(error=error, unreachable=not error.fatal and error.outage_like)


def _error_kind(ending: Ending) -> ErrorKind | None:
    return ending.error.error_kind if isinstance(ending.error, ApiError) else None


def _fatal(ending: Ending) -> bool:
    return isinstance(ending.error, ApiError) and ending.error.fatal


# The first rule that holds decides. What stopped the command comes before an interruption
# (a refused key stays exit 3 when Ctrl+C followed), which comes before what the work came to.
# A new code is a new rule at its place here (and a row of the README's table).
RULES: tuple[tuple[ExitCode, Callable[[Ending], bool]], ...] = (
    # this process ran out of file descriptors (--workers beyond the limit): bad input
    (ExitCode.USAGE, lambda e: _error_kind(e) is ErrorKind.OPEN_FILES),
    # told apart from an outage: the service may be fine
    (ExitCode.DISK_FULL, lambda e: isinstance(e.error, DiskFull)),
    (ExitCode.UNREACHABLE, lambda e: isinstance(e.error, Unreachable) or e.unreachable),
    # the database stayed out of reach past --db-timeout (or its file cannot be read any more)
    (ExitCode.UNREACHABLE, lambda e: isinstance(e.error, DatabaseUnreachable)),
    (ExitCode.REFUSED, _fatal),
    (ExitCode.INTERRUPTED, lambda e: e.interrupted),
    (ExitCode.REFUSED, lambda e: e.refused),
    (ExitCode.FAILED, lambda e: e.failed or e.error is not None),
)


def exit_code(ending: Ending | ApiError) -> ExitCode:
    """The exit status of a command that came to `ending` (or was stopped by this error)."""
    if isinstance(ending, ApiError):
        ending = Ending.of(ending)
    return next((code for code, holds in RULES if holds(ending)), ExitCode.OK)


def worst(codes: list[ExitCode]) -> ExitCode:
    """One status for several commands' (sync's jobs): the highest code, except that 'nothing
    to do' holds only when it holds for every one (a job that uploaded, or failed, did
    something)."""
    done = [code for code in codes if code is not ExitCode.NOTHING_TO_DO]
    if codes and not done:
        return ExitCode.NOTHING_TO_DO
    return max(done, default=ExitCode.OK)
