"""The CLI's drawing of what the library reports: a run's progress (a tqdm bar where it is
drawn, stderr, is a terminal, a plain line every few seconds elsewhere, on stdout as the
reference script printed it) and verify's and dedupe's (listing and parse bars, or a line
per poll). Only cli.py makes these; the library sees the protocols it reports to."""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from .i18n import _, ngettext
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


TICK = 1.0  # seconds between two drawings of the bar when nothing else redraws it


def settle_wait(seconds: float, registers: int) -> str:
    return ngettext(
        "waiting {seconds} s to settle {n} register whose answer was lost",
        "waiting {seconds} s to settle {n} registers whose answers were lost",
        registers,
    ).format(seconds=math.ceil(seconds), n=registers)


class _RunBar(tqdm):  # type: ignore[type-arg]
    """tqdm's bar whose time left is at least `wait_until - now` (a wait the run is in, which
    the rate of the uploads before it knows nothing of)."""

    # tqdm's own layout, spelled out so that its time left is the one given below
    FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.wait_until = 0.0  # time.monotonic()
        super().__init__(*args, bar_format=self.FORMAT, **kwargs)

    @property
    def format_dict(self) -> dict[str, Any]:
        shown = super().format_dict
        wait = self.wait_until - time.monotonic()
        if wait > 0 and shown.get("total") and shown["n"] < shown["total"]:
            rate = shown.get("rate")
            uploads = (shown["total"] - shown["n"]) / rate if rate else 0.0
            # passed on to format_meter, where it stands for the time left it computes
            shown["remaining"] = tqdm.format_interval(max(wait, uploads))
        return shown


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
        self._wait_until = 0.0  # time.monotonic() when the wait the run is in ends
        self._bar: _RunBar | None = None  # None: plain lines
        # The bar goes to stderr, so stderr decides: `uploader run 2>err` on a terminal gets
        # plain lines, not a file of bar frames.
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if sys.stderr.isatty():
            self._bar = _RunBar(
                total=total, unit=_("file"), dynamic_ncols=True, smoothing=0.1, file=sys.stderr
            )
            self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
            self._ticker.start()

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

    def _tick(self) -> None:
        """Drawn again every second, files finishing or not: on a slow service the first
        file takes many seconds, and a bar whose elapsed time stands still looks hung. A
        thread, so that it ticks while the run's loop is busy too."""
        while not self._stop.wait(TICK):
            bar = self._bar
            if bar is None:
                return
            bar.set_postfix_str(self._postfix(), refresh=False)
            bar.refresh()

    def not_before(self, seconds: float) -> None:
        """The time left is at least `seconds` (rows wait that long to settle)."""
        self._wait_until = time.monotonic() + seconds
        if self._bar is not None:
            self._bar.wait_until = self._wait_until

    def settling(self, seconds: float, registers: int) -> None:
        """The run waits for registers whose answers were lost: said above the bar (or on
        stderr), and the time left is at least that wait."""
        self.not_before(seconds)
        write(settle_wait(seconds, registers))
        if self._bar is not None:
            self._bar.refresh()

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
        eta = max(eta, self._wait_until - time.monotonic())
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
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
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
