"""`sync --watch`: waiting between cycles for the next one. A cycle starts when a rescan is
due (`--every`, the only way on network shares, whose changes raise no events) or, where the
file system raises events (watchfiles), once the folders have stopped changing for SETTLE
seconds, so that a file being written is uploaded when it is whole, not at its first bytes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

from .i18n import _

SETTLE = 3.0  # seconds without an event before a change starts a cycle
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$", re.IGNORECASE)
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """`--every`: 90, 90s, 10m, 1h, 1d (rclone's units), at least one second."""
    found = _DURATION.match(text)
    if not found:
        raise ValueError(_("{text!r} is not a duration (e.g. 30s, 10m, 1h)").format(text=text))
    seconds = float(found.group(1)) * _UNIT[(found.group(2) or "s").lower()]
    if seconds < 1:
        raise ValueError(_("{text!r} is less than a second").format(text=text))
    return seconds


def wait(folders: Sequence[str], seconds: float, events: bool) -> str:
    """Until the next cycle is due: "changes" when the folders changed and then stayed still
    for SETTLE seconds, "timer" when `seconds` passed. Ctrl+C (and SIGTERM) raise
    KeyboardInterrupt, as anywhere in the program."""
    deadline = time.monotonic() + seconds
    if events:
        try:
            import watchfiles
        except ImportError:
            events = False
    if events:
        left = deadline - time.monotonic()
        try:
            for changes in watchfiles.watch(
                *folders,
                step=int(SETTLE * 1000),
                debounce=int(max(left, SETTLE) * 1000) + 1000,
                rust_timeout=int(max(left, 0.1) * 1000),
                yield_on_timeout=True,
            ):
                if changes:
                    return "changes"
                if time.monotonic() >= deadline:
                    return "timer"
        except (OSError, RuntimeError):
            pass  # no events here (a network share, a limit of watches): the timer only
    time.sleep(max(deadline - time.monotonic(), 0.0))
    return "timer"
