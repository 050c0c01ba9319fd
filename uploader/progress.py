"""The CLI's drawing of what the library reports: a run's progress (a tqdm bar where it is
drawn, stderr, is a terminal, a plain line every few seconds elsewhere, on stdout as the
reference script printed it) and verify's and dedupe's (listing and parse bars, or a line
per poll). Only cli.py makes these; the library sees the protocols it reports to."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

from tqdm import tqdm

from .i18n import _
from .reconcile import UNSETTLED


def paused() -> str:
    return _("paused: service unreachable")


def write(text: str) -> None:
    """A line for stderr that goes above a bar drawn there (cleared, the line written, drawn
    again): written after the bar's last frame, it would start on the bar's tail (`…]paused:`)."""
    tqdm.write(text, file=sys.stderr)
    sys.stderr.flush()


class AboveTheBar(logging.StreamHandler):  # type: ignore[type-arg]
    """The terminal's log handler: each line above the bars, as `write`."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 (logging's own contract: a line lost, never the run)
            self.handleError(record)


def rate_text(bytes_per_second: float) -> str:
    """A transfer rate in the unit that shows its digits: 512 B/s, 41.2 kB/s, 3.40 MB/s (small
    files at `0.0MB/s` said nothing)."""
    for unit in ("B/s", "kB/s", "MB/s", "GB/s"):
        if bytes_per_second < 1000 or unit == "GB/s":
            if unit == "B/s":
                return f"{bytes_per_second:.0f} {unit}"
            return f"{bytes_per_second:.{1 if bytes_per_second >= 10 else 2}f} {unit}"
        bytes_per_second /= 1000
    raise AssertionError("unreachable")


class Progress:
    """A run's progress (a worker.RunProgress): counts what the writer has committed and
    draws it. The CLI makes one only where it is to be drawn (not with -q or --json)."""

    def __init__(self, total: int, total_bytes: int, interval: float = 5.0) -> None:
        self.total = total
        self.total_bytes = total_bytes
        self.done = 0
        self.failed = 0
        self.bytes_done = 0
        self.paused = False
        self.started = time.monotonic()
        self._interval = interval
        self._last_line = self.started
        self._last_printed = -1
        self._bar: tqdm | None = None  # None: plain lines
        # The bar goes to stderr, so stderr decides: `uploader run 2>err` on a terminal gets
        # plain lines, not a file of bar frames.
        if sys.stderr.isatty():
            self._bar = tqdm(
                total=total, unit=_("file"), dynamic_ncols=True, smoothing=0.1, file=sys.stderr
            )

    def add(self, done: int = 0, failed: int = 0, nbytes: int = 0) -> None:
        self.done += done
        self.failed += failed
        self.bytes_done += nbytes
        if self.done + self.failed > self.total:  # an enqueue still adds rows under the run
            self.total = self.done + self.failed
            if self._bar is not None:
                self._bar.total = self.total
        if self._bar is not None:
            self._bar.update(done + failed)
            self._bar.set_postfix_str(self._postfix(), refresh=False)
        elif time.monotonic() - self._last_line >= self._interval:
            self.print_line()

    def pause(self, paused: bool) -> None:
        """The pool paused for an outage (or resumed): the rate would be a lie meanwhile."""
        self.paused = paused
        if self._bar is not None:
            self._bar.set_postfix_str(self._postfix())
        else:
            self.print_line()

    def _postfix(self) -> str:
        after = paused() if self.paused else rate_text(self.bytes_per_s())
        return _("failed={n} {after}").format(n=self.failed, after=after)

    def elapsed(self) -> float:
        return max(time.monotonic() - self.started, 1e-9)

    def rate(self) -> float:
        return (self.done + self.failed) / self.elapsed()

    def bytes_per_s(self) -> float:
        return self.bytes_done / self.elapsed()

    def print_line(self) -> None:
        """The reference script's line, so existing log readers keep working; while paused
        it says so instead of a rate and an ETA."""
        self._last_line = time.monotonic()
        finished = self.done + self.failed
        self._last_printed = finished
        pct = 100.0 * finished / self.total if self.total else 100.0
        rate = self.rate()
        eta = (self.total - finished) / rate if rate > 0 else 0.0
        tail = (
            paused()
            if self.paused
            else _("Rate: {rate:.1f} files/s | ETA: {eta:.0f}s").format(rate=rate, eta=eta)
        )
        line = _(
            "Progress: {finished}/{total} ({pct:.1f}%) | Success: {done} | Failed: {failed} | "
            "{tail}"
        )
        print(
            line.format(
                finished=finished,
                total=self.total,
                pct=pct,
                done=self.done,
                failed=self.failed,
                tail=tail,
            ),
            flush=True,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.total and self._last_printed != self.done + self.failed:
            self.print_line()


class ReadBars:
    """verify's and dedupe's reading back (a reconcile.ReadProgress): a listing bar per
    listing and a parsed/total bar on a terminal; elsewhere one line per --wait poll to
    `lines` (None: none)."""

    # No rate: the count jumps at each poll, files per second would mean nothing.
    PARSED = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"

    def __init__(self, bars: bool, lines: Callable[[str], None] | None = None) -> None:
        self._bars = bars
        self._lines = lines
        self._listing: tqdm | None = None
        self._parsed: tqdm | None = None

    def listing(self, kb_id: str, stored: int, total: int) -> None:
        if not self._bars:
            return
        if self._listing is None:
            self._listing = tqdm(
                total=total,
                initial=stored,
                unit=_("entry"),
                desc=_("listing {kb}").format(kb=kb_id),
                leave=False,
                dynamic_ncols=True,
            )
        else:
            self._listing.update(stored - self._listing.n)

    def listing_done(self, kb_id: str) -> None:
        if self._listing is not None:
            self._listing.close()
            self._listing = None

    def parsing(self, kb_id: str, files: dict[str, int]) -> None:
        total = sum(n for status, n in files.items() if status != "missing")
        parsed = files.get("done", 0) + files.get("failed", 0)
        detail = ", ".join(f"{s} {files.get(s, 0)}" for s in UNSETTLED)
        if self._bars:
            if self._parsed is None:
                self._parsed = tqdm(
                    total=total,
                    initial=parsed,
                    desc=_("parsed {kb}").format(kb=kb_id),
                    bar_format=self.PARSED,
                )
            self._parsed.total = total
            self._parsed.n = parsed
            self._parsed.set_postfix_str(
                _("failed {n}, {detail}").format(n=files.get("failed", 0), detail=detail)
            )
        elif self._lines is not None:
            self._lines(
                _("{kb}: parsed {parsed}/{total} ({detail})").format(
                    kb=kb_id, parsed=parsed, total=total, detail=detail
                )
            )

    def parsing_done(self, kb_id: str) -> None:
        if self._parsed is not None:
            self._parsed.close()
            self._parsed = None
