"""A pool-wide outage gate: a service that is down is not a property of the files.

Whoever sends requests calls `await gate.wait_open()` first (like `RateLimiter.acquire`) and
reports each outcome with `record_success()` or `record_failure(error, job)`.

**When the gate closes.** After `failures_to_close` outage-like failures (connection errors,
timeouts, 5xx) in a row, from at least `jobs_to_close` different jobs, with no answer from the
service between them. "In a row with no answer between" is what "all in-flight requests are
failing" looks like from the outside, without having to bracket every request to know what is
in flight: while any request still gets an answer, the streak keeps being reset. "Different
jobs" is what tells a down service from one bad file: a file that makes the service fail
(a 5xx on that one register) retries alone and never closes the gate, however often it fails.
Any answer counts as "the service is there": a 4xx or a 429 is a verdict on the request, not
an outage; a local file error says nothing either way.

**A 5xx is an answer too.** A request that could not connect or got no answer says the service
is gone; a 5xx says only that this request failed, and a service broken for one kind of file
(every `.docx` register answers 500) fails many files in a row while answering everything
else. So a streak made of 5xx answers alone does not close the gate: it asks the probe first
(one confirmation, while requests go on). The probe failing too closes the gate; the probe
answering proves the 5xx are the files' own: the streak is dropped and each of those files
spends its own retries.

**While closed.** Nobody sends. `record_failure` returns True for an outage-like failure (the
request was in flight when the service went away): the caller hands its job back without
charging an attempt. One prober task re-tries the cheap read the caller supplied, with capped
exponential backoff (one prober, so no jitter is needed); the first answer opens the gate.
Inside the probe `wait_open` does not wait and `record_*` are ignored, so a probe may go
through the same client code as every request.

**Giving up.** Closed for longer than `outage_timeout`: the gate gives up; `gave_up` holds the
outage (when it began, the latest reason) and every `wait_open` raises `ServiceUnreachable`,
so the run can put its rows back to pending and stop with its own exit code.

State changes reach `on_change(state, outage)` (it must not raise): the CLI draws "paused:
service unreachable". The gate is as good as its probe: one gate per service, each probed by
a read of that service (an API gate probed by an S3 read would reopen at once).
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import errno
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from uploader import network
from uploader.errors import ApiError, Unreachable
from uploader.i18n import _
from uploader.model import ErrorKind

if TYPE_CHECKING:
    import aiohttp  # imported where an error is judged (forms.py says why)

log = logging.getLogger("uploader.outage")

_REASON_CHARS = 200
# Set in the prober's own task (a task runs in a copy of its creator's context, so nothing
# else sees it): requests made by the probe pass the gate.
_PROBING: contextvars.ContextVar[bool] = contextvars.ContextVar("probing", default=False)


class GateState(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"
    GAVE_UP = "gave_up"


class Evidence(enum.Enum):
    """What one failed request says about the service."""

    OUTAGE = "outage"  # no answer: the connection failed or the request timed out
    SERVER_ERROR = "server_error"  # a 5xx: this request failed, the service may be there
    ANSWER = "answer"  # the service answered (4xx, 429): it is there
    NEUTRAL = "neutral"  # nothing about the service (a local file error, a bad answer body)

    @property
    def outage_like(self) -> bool:
        """May mean the service is down: counted in the streak that closes the gate."""
        return self in (Evidence.OUTAGE, Evidence.SERVER_ERROR)


@dataclass(frozen=True)
class Outage:
    """One outage: `since` (epoch seconds) is the first failure of the streak that closed the
    gate; `reason` the latest failure seen, one line."""

    since: float
    reason: str

    @property
    def message(self) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(self.since))
        return _("service unreachable since {clock}: {why}").format(clock=clock, why=self.reason)


class ServiceUnreachable(Unreachable):
    """Raised by `wait_open` once the gate has given up: stop the run (exit code 4). A fatal
    `ApiError` (`errors.Unreachable`), so an attempt that meets it stops the run with its rows
    released, as a refused key does; `message` replaces the outage's own line (a run that never
    reached the service says "cannot reach HOST:PORT (…)", not "unreachable since")."""

    def __init__(self, outage: Outage, message: str | None = None) -> None:
        super().__init__(message or outage.message)
        self.outage = outage

    @classmethod
    def at_start(cls, error: BaseException) -> ServiceUnreachable:
        """A service the run could not reach at all: "cannot reach HOST:PORT (why)"."""
        reason = describe(error)
        message = reason  # "cannot reach HOST:PORT (why)", "cannot resolve HOST (why)"
        if _connector_error(error) is None:
            message = _("service unreachable: {why}").format(why=reason)
        return cls(Outage(time.time(), reason), message)


Probe = Callable[[], Awaitable[object]]
OnChange = Callable[[GateState, Outage], None]


def classify(error: BaseException) -> Evidence:
    """The uploader's own errors by their kind; raw aiohttp and socket errors by their type."""
    import aiohttp

    if isinstance(error, ApiError):
        if error.unanswered:
            return Evidence.OUTAGE
        if error.error_kind is ErrorKind.HTTP_5XX:
            return Evidence.SERVER_ERROR
        return Evidence.ANSWER if error.status is not None else Evidence.NEUTRAL
    if isinstance(error, aiohttp.ClientResponseError):
        return Evidence.SERVER_ERROR if error.status >= 500 else Evidence.ANSWER
    if isinstance(error, (aiohttp.ClientConnectionError, asyncio.TimeoutError, ConnectionError)):
        return Evidence.OUTAGE
    return Evidence.NEUTRAL


def _connector_error(error: BaseException) -> aiohttp.ClientConnectorError | None:
    """The connection that could not be made, also behind the client's `ApiError`."""
    import aiohttp

    cause = error.__cause__
    if isinstance(error, ApiError) and isinstance(cause, aiohttp.ClientConnectorError):
        return cause
    return error if isinstance(error, aiohttp.ClientConnectorError) else None


def describe(error: BaseException) -> str:
    """One line for the outage message: "cannot reach 127.0.0.1:8080 (connection refused)"
    rather than aiohttp's "Cannot connect to host … ssl:default [Connect call failed …]"
    (also when the client's `ApiError` wraps that error: it is the error's cause)."""
    connector = _connector_error(error)
    if connector is not None:
        error = connector
        os_error = connector.os_error
        via = network.is_proxy_host(error.host)
        if isinstance(os_error, socket.gaierror):
            return network.unresolved(error.host, os_error, via)
        code = os_error.errno if isinstance(os_error, OSError) else None
        why = os.strerror(code).lower() if code else _("connection failed")
        if code == errno.ECONNREFUSED:
            why = _("connection refused")
        cannot = (
            _("cannot reach the proxy {host}:{port} ({why})")
            if via
            else _("cannot reach {host}:{port} ({why})")
        )
        return cannot.format(host=connector.host, port=connector.port, why=why)
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:_REASON_CHARS]


class OutageGate:
    """See the module docstring. Create and use it inside the running event loop."""

    def __init__(
        self,
        probe: Probe,
        *,
        outage_timeout: float = 600.0,
        failures_to_close: int = 3,
        jobs_to_close: int = 2,
        probe_delay: float = 0.5,
        probe_delay_cap: float = 30.0,
        probe_timeout: float = 30.0,
        on_change: OnChange | None = None,
    ) -> None:
        if failures_to_close < 1 or jobs_to_close < 1:
            # a programming error, not shown
            raise ValueError("failures_to_close and jobs_to_close must be at least 1")
        if outage_timeout <= 0 or probe_delay <= 0 or probe_timeout <= 0:
            # a programming error, not shown
            raise ValueError("outage_timeout, probe_delay and probe_timeout must be positive")
        self._probe = probe
        self._outage_timeout = outage_timeout
        self._failures_to_close = failures_to_close
        self._jobs_to_close = jobs_to_close
        self._probe_delay = probe_delay
        self._probe_delay_cap = max(probe_delay_cap, probe_delay)
        self._probe_timeout = probe_timeout
        self._on_change = on_change
        self._state = GateState.OPEN
        self._opened = asyncio.Event()
        self._opened.set()
        self._streak = 0
        self._streak_jobs: set[Hashable] = set()
        self._streak_since = 0.0
        self._streak_began = 0.0  # the same moment, monotonic
        self._streak_unanswered = 0  # failures of the streak that got no answer at all
        self._streak_reason = ""  # the latest failure of the streak, one line
        # A streak of 5xx answers alone: the probe asked whether the service is down.
        self._confirming: asyncio.Task[None] | None = None
        self._outage: Outage | None = None
        self._closed_at = 0.0  # monotonic, for the timeout and the "after 42 s" line
        self.closed_since: float | None = None
        """Epoch seconds the gate closed, None while open (kept after giving up)."""
        self._prober: asyncio.Task[None] | None = None
        # Resolved when the current streak ends: True if it closed the gate, False if an
        # answer broke it (made by the first `covers` that waits for it).
        self._verdict: asyncio.Future[bool] | None = None

    @property
    def state(self) -> GateState:
        return self._state

    @property
    def is_open(self) -> bool:
        return self._state is GateState.OPEN

    @property
    def outage(self) -> Outage | None:
        """The outage in progress, or the last one."""
        return self._outage

    @property
    def gave_up(self) -> Outage | None:
        """The outage the gate gave up on (the run must stop), else None."""
        return self._outage if self._state is GateState.GAVE_UP else None

    async def wait_open(self) -> None:
        """Return when requests may be sent; raise ServiceUnreachable once the gate gave up.
        Open, it returns without waiting; inside the probe it never waits."""
        while self._state is not GateState.OPEN and not _PROBING.get():
            if self._state is GateState.GAVE_UP:
                assert self._outage is not None
                raise ServiceUnreachable(self._outage)
            await self._opened.wait()

    def record_success(self, sent_at: float | None = None) -> None:
        """A request was answered. Only the prober opens a closed gate: a late answer to a
        request sent before the outage says little about the service now. For the same
        reason, given when the request was sent (`time.monotonic()`), an answer to one sent
        before the current streak of failures began does not break the streak (a server
        going down finishes the requests it holds while refusing new ones)."""
        if self._streak and sent_at is not None and sent_at < self._streak_began:
            return
        if self._state is GateState.OPEN and not _PROBING.get():
            if self._streak:
                self._resolve(False)
            self._streak = 0
            self._streak_jobs.clear()

    def record_failure(self, error: BaseException, job: Hashable) -> bool:
        """Count a failed request of `job`. True means an outage covers it (the gate is
        closed, maybe by this very failure): hand the job back without charging an attempt.
        False: an ordinary failure of that file, to be handled as usual."""
        if _PROBING.get():
            return True
        evidence = classify(error)
        if self._state is not GateState.OPEN:
            if evidence.outage_like and self._outage is not None:
                self._outage = Outage(self._outage.since, describe(error))
            return evidence.outage_like
        if evidence is Evidence.ANSWER:
            self.record_success()
            return False
        if evidence is Evidence.NEUTRAL:
            return False
        if self._streak == 0:
            self._streak_since = time.time()
            self._streak_began = time.monotonic()
            self._streak_unanswered = 0
        self._streak += 1
        self._streak_unanswered += evidence is Evidence.OUTAGE
        self._streak_reason = describe(error)
        self._streak_jobs.add(job)
        if self._streak < self._failures_to_close or len(self._streak_jobs) < self._jobs_to_close:
            return False
        if self._streak_unanswered:
            self._close(self._streak_reason)
            return True
        if self._confirming is None:
            self._confirming = asyncio.get_running_loop().create_task(self._confirm())
        return False

    async def covers(self, error: BaseException, job: Hashable, wait: float) -> bool:
        """`record_failure`, except that an outage-like failure which does not close the gate
        yet waits up to `wait` seconds for the streak's verdict: the failures that close the
        gate are then all uncharged, not just the last (the service went down for every
        request in flight, not for the first ones to notice). True: hand the job back."""
        if self.record_failure(error, job):
            return True
        if not classify(error).outage_like or self._state is not GateState.OPEN:
            return False
        if self._verdict is None or self._verdict.done():
            self._verdict = asyncio.get_running_loop().create_future()
        if self._confirming is not None:
            wait = max(wait, self._probe_timeout)  # the probe is the verdict: hear it
        try:
            return await asyncio.wait_for(asyncio.shield(self._verdict), wait)
        except asyncio.TimeoutError:
            return False

    def _resolve(self, closed: bool) -> None:
        if self._verdict is not None and not self._verdict.done():
            self._verdict.set_result(closed)

    async def aclose(self) -> None:
        """Stop the prober, at the end of the run once the senders have stopped (a sender still
        in `wait_open` of a closed gate would wait on)."""
        for task in (self._prober, self._confirming):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._prober = self._confirming = None

    # --- transitions -----------------------------------------------------------------------

    def _close(self, reason: str) -> None:
        self._state = GateState.CLOSED
        self._opened.clear()
        self._closed_at = time.monotonic()
        self.closed_since = time.time()
        self._outage = Outage(self._streak_since, reason)
        self._resolve(True)
        log.warning("%s: pausing every request and probing the service", self._outage.message)
        self._prober = asyncio.get_running_loop().create_task(self._probe_until_answered())
        self._notify()

    def _open(self) -> None:
        seconds = time.monotonic() - self._closed_at
        self._state = GateState.OPEN
        self._streak = 0
        self._streak_jobs.clear()
        self.closed_since = None
        self._opened.set()
        log.info("service answered again after %.0f s", seconds)
        self._notify()

    def _give_up(self) -> None:
        self._state = GateState.GAVE_UP
        self._opened.set()  # wake every waiter: each raises ServiceUnreachable
        assert self._outage is not None
        log.error("%s: gave up after %.0f s", self._outage.message, self._outage_timeout)
        self._notify()

    def _notify(self) -> None:
        if self._on_change is not None and self._outage is not None:
            self._on_change(self._state, self._outage)

    # --- the prober ------------------------------------------------------------------------

    async def _confirm(self) -> None:
        """A streak of 5xx answers: down only if the probe fails too. Answered, the 5xx were
        the files' own (each spends its retries) and the streak starts again."""
        _PROBING.set(True)
        try:
            failed = await self._probe_once(self._probe_timeout)
        finally:
            self._confirming = None
        if self._state is not GateState.OPEN or not self._streak:
            return  # closed meanwhile by failures without an answer, or an answer broke it
        if failed is not None:
            self._streak_reason = failed
            self._close(failed)
            return
        log.info(
            "%d requests of %d files failed (%s) while the service answers: "
            "counted as those files' failures",
            self._streak,
            len(self._streak_jobs),
            self._streak_reason,
        )
        self._streak = 0
        self._streak_jobs.clear()
        self._resolve(False)

    async def _probe_until_answered(self) -> None:
        _PROBING.set(True)
        deadline = self._closed_at + self._outage_timeout
        delay = self._probe_delay
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(delay, left))
            left = deadline - time.monotonic()
            if left <= 0:
                break
            failed = await self._probe_once(min(self._probe_timeout, left))
            if failed is None:
                self._open()
                return
            assert self._outage is not None
            self._outage = Outage(self._outage.since, failed)
            delay = min(delay * 2, self._probe_delay_cap)
        self._give_up()

    async def _probe_once(self, timeout: float) -> str | None:
        """None when the service answered (success, or a refusal that is an answer), else
        why not, one line."""
        try:
            await asyncio.wait_for(self._probe(), timeout)
        except asyncio.TimeoutError:
            return _("the probe had no answer within {seconds:.3g} s").format(seconds=timeout)
        except Exception as exc:
            evidence = classify(exc)
            if evidence is Evidence.ANSWER:
                return None
            if evidence is Evidence.NEUTRAL:
                log.warning("outage probe failed oddly: %s", describe(exc))
            return describe(exc)
        return None
