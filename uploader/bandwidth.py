"""The S3 leg over a slow uplink: `--bwlimit` (rclone's name and syntax) and the idle watch
that times an upload out only when its bytes stop moving.

A 50 MB PDF over a 20 Mbit/s office uplink shared by ten workers takes minutes; a deadline
proportional to the size cannot know the uplink, so it cut uploads whose bytes were moving and
the run never ended. An upload is timed out only when nothing moves for `--timeout` seconds,
as rclone's `--timeout` (an IO idle timeout) does. "Moving" is counted as bytes the peer
took: bytes handed to the socket minus those still waiting in its send queue (where the system
tells: Linux; elsewhere the bytes handed to the socket, which is what rclone counts too).
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from typing import Any

from .i18n import _

_RATE = re.compile(r"\s*(\d+(?:\.\d*)?)\s*([bkmgtp]?)(?:i?b)?\s*", re.I)
_UNITS = {"b": 1, "": 1 << 10, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
SLICE = 64 * 1024  # bytes written at a time under a limit, so the pace stays even


def _unacknowledged(fd: int) -> int | None:
    """Bytes of the socket's send queue the peer has not acknowledged (Linux's SIOCOUTQ);
    None where the system does not tell (Windows, macOS): the bytes handed are counted."""
    if sys.platform != "linux":
        return None
    try:
        import fcntl
        import termios
    except ImportError:  # a Python built without them
        return None
    try:
        answer = fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return None
    return int.from_bytes(answer, "little")


def parse_bwlimit(text: str) -> float | None:
    """`--bwlimit` as rclone reads it: KiB/s by default, or a suffix B, K, M, G, T, P (binary,
    `2M` = 2 MiB/s, `512k`); `off` or 0 for none. Bytes per second, None for no limit."""
    if text.strip().lower() == "off":
        return None
    match = _RATE.fullmatch(text)
    if not match:
        raise ValueError(
            _(
                "invalid rate {text!r}: use a number of KiB/s, or one with a suffix B, K, M or G"
                " (2M = 2 MiB/s), or off"
            ).format(text=text)
        )
    rate = float(match.group(1)) * _UNITS[match.group(2).lower()]
    return rate or None


class Bandwidth:
    """One budget of bytes per second shared by every upload of the run (a token bucket that
    holds at most one second of bytes, so a pause is not made up by a burst)."""

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            # a programming error, not shown
            raise ValueError("a bandwidth limit must be positive")
        self._rate = rate
        self._next = 0.0  # monotonic: when the next byte may go

    async def take(self, nbytes: int) -> None:
        now = time.monotonic()
        start = max(now - 1.0, self._next)
        self._next = start + nbytes / self._rate
        if self._next > now:
            await asyncio.sleep(self._next - now)


class Progress:
    """How far one upload's bytes got: `handed` to the socket, and, once the payload knows its
    socket, how many of those the peer took. `moved()` grows while the upload is alive."""

    def __init__(self) -> None:
        self.handed = 0
        self._fd: int | None = None

    def attach(self, transport: Any) -> None:
        """The connection the body goes through (from the payload's writer)."""
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None:
            self._fd = sock.fileno()

    def moved(self) -> int:
        queued = None if self._fd is None else _unacknowledged(self._fd)
        return self.handed if queued is None else max(self.handed - queued, 0)


async def idle_watch(progress: Progress, idle: float, work: asyncio.Future[Any]) -> None:
    """Cancel `work` once `progress` has not moved for `idle` seconds; return when it is done.
    Raises TimeoutError after cancelling it (the caller says what stalled)."""
    step = min(1.0, idle / 4)
    last, since = -1, time.monotonic()
    while not work.done():
        await asyncio.wait({work}, timeout=step)
        if work.done():
            return
        moved = progress.moved()
        now = time.monotonic()
        if moved != last:
            last, since = moved, now
        elif now - since >= idle:
            work.cancel()
            raise TimeoutError
