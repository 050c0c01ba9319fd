"""Progress of a run: a tqdm bar on a terminal, a plain line every few seconds elsewhere."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class Progress:
    """Counts what the writer has committed; draws nothing when quiet."""

    def __init__(self, total: int, total_bytes: int, quiet: bool, interval: float = 5.0) -> None:
        self.total = total
        self.total_bytes = total_bytes
        self.done = 0
        self.failed = 0
        self.bytes_done = 0
        self.started = time.monotonic()
        self._interval = interval
        self._last_line = self.started
        self._last_printed = -1
        self._bar: tqdm | None = None
        self._plain = not quiet and not sys.stdout.isatty()
        if not quiet and not self._plain:
            self._bar = tqdm(total=total, unit="file", dynamic_ncols=True, smoothing=0.1)

    def add(self, done: int = 0, failed: int = 0, nbytes: int = 0) -> None:
        self.done += done
        self.failed += failed
        self.bytes_done += nbytes
        if self._bar is not None:
            self._bar.update(done + failed)
            self._bar.set_postfix_str(
                f"failed={self.failed} {self.mb_per_s():.1f}MB/s", refresh=False
            )
        elif self._plain and time.monotonic() - self._last_line >= self._interval:
            self.print_line()

    def elapsed(self) -> float:
        return max(time.monotonic() - self.started, 1e-9)

    def rate(self) -> float:
        return (self.done + self.failed) / self.elapsed()

    def mb_per_s(self) -> float:
        return self.bytes_done / 1e6 / self.elapsed()

    def print_line(self) -> None:
        """The reference script's line, so existing log readers keep working."""
        self._last_line = time.monotonic()
        finished = self.done + self.failed
        self._last_printed = finished
        pct = 100.0 * finished / self.total if self.total else 100.0
        rate = self.rate()
        eta = (self.total - finished) / rate if rate > 0 else 0.0
        print(
            f"Progress: {finished}/{self.total} ({pct:.1f}%) | Success: {self.done} | "
            f"Failed: {self.failed} | Rate: {rate:.1f} files/s | ETA: {eta:.0f}s",
            flush=True,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._plain and self.total and self._last_printed != self.done + self.failed:
            self.print_line()
