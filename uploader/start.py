"""The `uploader` program's entry point, light to import: it takes SIGTERM before the rest of
the program is imported (a good part of a second on a busy machine), so that a signal in the
first moments ends it as it does later, exit 130 in one line, never a KeyboardInterrupt
traceback or a silent death by the signal (143)."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys

from .exitcodes import ExitCode

_taken = False  # whether this process took SIGTERM (the program, not a test importing the CLI)
_taken_hangup = False  # and SIGHUP (not when nohup made this process ignore it)


def _as_ctrl_c(_signum: int, _frame: object) -> None:
    """SIGTERM means what Ctrl+C means: it is handed to whoever handles SIGINT at the time
    (Python's KeyboardInterrupt, asyncio's cancel of the command's coroutine). Sent, so that
    it is handled after this handler returns, as a Ctrl+C would be; on Windows raised, since
    os.kill there ends the process instead of signalling it."""
    if sys.platform == "win32":
        signal.raise_signal(signal.SIGINT)
    else:
        os.kill(os.getpid(), signal.SIGINT)


def _hung_up(_signum: int, frame: object) -> None:
    detach_terminal()
    _as_ctrl_c(_signum, frame)


def detach_terminal() -> None:
    """The terminal closed (SIGHUP): every write to it fails from now on (EIO), which would
    break the stop half-way. stdout and stderr that were it write to nothing instead; the run's
    log and its record in the database keep what it would have said."""
    if sys.platform == "win32":
        return  # no hangup there: a closed console window ends the process
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        nothing = os.fstat(devnull).st_rdev
        for fd in (1, 2):
            with contextlib.suppress(OSError):
                # a hung-up terminal is no tty any more (isatty fails), still a device
                st = os.fstat(fd)
                if stat.S_ISCHR(st.st_mode) and st.st_rdev != nothing:
                    os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def take_signals() -> None:
    """SIGTERM (and Windows' Ctrl+Break, which would end the process at once) as Ctrl+C,
    unless the parent made this process ignore it."""
    global _taken, _taken_hangup
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _as_ctrl_c)
        _taken = True
    if sys.platform == "win32" and signal.getsignal(signal.SIGBREAK) is signal.SIG_DFL:
        signal.signal(signal.SIGBREAK, _as_ctrl_c)
    # The terminal closed: what SIGTERM does (not under nohup, which makes it ignored)
    if sys.platform != "win32" and signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:
        signal.signal(signal.SIGHUP, _hung_up)
        _taken_hangup = True


def signals_back() -> None:
    """Take SIGTERM again after an event loop that handled it has closed: asyncio gives it
    back to the system's default then, which would kill the command by the signal."""
    if _taken:
        signal.signal(signal.SIGTERM, _as_ctrl_c)
    if _taken_hangup and sys.platform != "win32":
        signal.signal(signal.SIGHUP, _hung_up)


def main() -> None:
    take_signals()
    try:
        from .cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        # during the imports (the CLI's own ends are cli.Interrupted's, in the same words)
        sys.stderr.write("Error: interrupted\n")
        sys.exit(ExitCode.INTERRUPTED)
