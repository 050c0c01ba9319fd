"""The service's clock as seen from this host: how far it is from ours, and how well known.

Deciding that a doubtful register did not happen compares the service's `createdAt` with our
clock; a host off NTP (or a VM resumed from a snapshot) is minutes off. Every answer's HTTP
`Date` header bounds the offset: the service stamped it between our send and our receipt, to
the second below. The bounds of all answers are intersected, so the offset is soon known to
about a second; where it is not known, callers rely on the key alone.
"""

from __future__ import annotations

import email.utils
import logging
import math

log = logging.getLogger("uploader.clock")

NOTABLE = 5.0  # seconds of offset worth one line in the log


class ServiceClock:
    """offset = service time - our time, within [low, high] as learned so far."""

    def __init__(self) -> None:
        self.low = -math.inf
        self.high = math.inf
        self._said = False
        # the last Date header read and its time: every answer of one second carries the
        # same text, parsed once (a run at 0 ms latency gets hundreds a second)
        self._date: tuple[str, float] | None = None

    @property
    def known(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    @property
    def offset(self) -> float:
        """Our best guess (0.0 while nothing is known)."""
        return (self.low + self.high) / 2 if self.known else 0.0

    @property
    def uncertainty(self) -> float:
        """How far the true offset may be from `offset` (infinite while unknown)."""
        return (self.high - self.low) / 2 if self.known else math.inf

    def to_service(self, ours: float) -> float:
        """A time of our clock on the service's clock (unchanged while the offset is unknown)."""
        return ours + self.offset

    def observe_date(self, header: str | None, sent: float, received: float) -> None:
        """An answer's `Date` header (RFC 7231, whole seconds), sent and received by our clock."""
        if not header:
            return
        if self._date is not None and self._date[0] == header:
            stamped = self._date[1]
        else:
            try:
                stamped = email.utils.parsedate_to_datetime(header).timestamp()
            except (TypeError, ValueError, IndexError, OverflowError):
                return
            self._date = (header, stamped)
        self.observe(stamped - received, stamped + 1.0 - sent)

    def observe(self, low: float, high: float) -> None:
        """The offset is within [low, high]. Bounds that contradict what is known (a clock
        stepped meanwhile, here or there) replace it: the newest answer is the truth now."""
        if low > self.high or high < self.low:
            self.low, self.high = low, high
        else:
            self.low, self.high = max(self.low, low), min(self.high, high)
        if not self._said and self.known and abs(self.offset) > NOTABLE:
            self._said = True
            log.warning(
                "this host's clock is %+.0f s off the service's (by its answers' Date): "
                "every comparison with the service's times is corrected by it",
                -self.offset,
            )
