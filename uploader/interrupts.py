"""Ctrl+C and SIGTERM (and Ctrl+Break on Windows) handed to a callback in the event loop, on
every system, so that a command stops its own way ("finish what is in flight, then stop")
instead of by a KeyboardInterrupt at whatever line it was.

Where the loop has signal handlers (POSIX) the signals go through them. Where it has not
(Windows' loop: `add_signal_handler` raises NotImplementedError) they go through
`signal.signal`, whose handler runs in the loop's thread between two steps and only schedules
the callback (`call_soon_threadsafe` also wakes a loop waiting for I/O). Either way the
callback runs in the loop, as one of its steps, and the handlers before are put back after.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from types import FrameType, TracebackType

from . import start

Handler = Callable[[int, FrameType | None], object] | int | None


def _signals() -> tuple[signal.Signals, ...]:
    """SIGHUP (the terminal closed) where it exists: a run stops as for SIGTERM, recorded."""
    if sys.platform == "win32":
        return (signal.SIGINT, signal.SIGTERM, signal.SIGBREAK)
    return (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupts:
    """Used as `with`: from the first `on_interrupt` to the end of the block, every such
    signal calls the callback of the moment; before it they do what they did."""

    def __init__(self) -> None:
        self._callback: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._before: dict[signal.Signals, Handler] = {}

    def on_interrupt(self, callback: Callable[[], None]) -> None:
        """Take the signals (the first time; in the running loop), for `callback` from now."""
        if self._callback is None:
            self._take(asyncio.get_running_loop())
        self._callback = callback

    def __enter__(self) -> Interrupts:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._loop is not None and not self._loop.is_closed():
            for sig in _signals():
                self._loop.remove_signal_handler(sig)
            start.signals_back()  # the loop gave SIGTERM back to the system's default
        self._loop = None
        for sig, handler in self._before.items():
            signal.signal(sig, handler)
        self._before.clear()

    def _take(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            for sig in _signals():
                loop.add_signal_handler(sig, self._fire, sig)
        except NotImplementedError:
            self._through_signal_module(loop)
        else:
            self._loop = loop

    def _through_signal_module(self, loop: asyncio.AbstractEventLoop) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            loop.call_soon_threadsafe(self._fire, signum)

        for sig in _signals():
            try:
                self._before[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread: signals stay as they are
                return

    def _fire(self, signum: int) -> None:
        if sys.platform != "win32" and signum == signal.SIGHUP:
            start.detach_terminal()  # the callback's words would fail on a closed terminal
        if self._callback is not None:
            self._callback()
