"""The exit codes of every `uploader` command, rclone-like, in one place: scripts branch on
them, so a number means the same thing whichever command returns it (the README's table is
this enum)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What a command's exit status says."""

    OK = 0  # done: every file uploaded, the check passed, ...
    FAILED = 1  # some files failed (or entries could not be deleted, a check failed)
    USAGE = 2  # bad input: an option, a path, a pattern, a database that cannot be used
    REFUSED = 3  # the service refused the run: the API key, an unknown knowledge base
    UNREACHABLE = 4  # the service could not be reached (at the start, or past --outage-timeout)
    # --delete-removed refused: more files gone than --max-delete allows, or a folder that
    # holds no file at all (an unmounted share) where the job had uploaded files
    DELETIONS_REFUSED = 5
    NOTHING_TO_DO = 9  # nothing pending, with --error-on-nothing-to-do (rclone's 9)
    INTERRUPTED = 130  # Ctrl+C or SIGTERM (128 + SIGINT, as shells report it)
    CLOSED_PIPE = 141  # stdout's reader went away (`export-report -o - | head`): 128 + SIGPIPE
