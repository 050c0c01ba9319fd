"""The outage gate against a real aiohttp server on 127.0.0.1 that is stopped and restarted on
the same port, driven by a pool of tasks with a real aiohttp client; and its closing rule, fed
real errors in a fixed order."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from tests.helpers import async_test
from uploader.client import ApiError
from uploader.model import ErrorKind, Severity
from uploader.outage import Evidence, GateState, OutageGate, ServiceUnreachable, classify

# Short, but not a timing assertion: every wait below is on an event, with a generous limit.
_FAST = {"probe_delay": 0.02, "probe_delay_cap": 0.1, "probe_timeout": 2.0}
_LIMIT = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Service:
    """A tiny service that can be stopped and started again on the same port. It records
    every worker request that arrives while the gate is not open (none should)."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.gate: OutageGate | None = None
        self.work_while_closed = 0
        self.probes_answered = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/work", self._work)
        app.router.add_get("/bad", self._bad)
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()
        self._runner = None

    async def _work(self, request: web.Request) -> web.Response:
        if self.gate is not None and not self.gate.is_open:
            self.work_while_closed += 1
        return web.Response(text="ok")

    async def _bad(self, request: web.Request) -> web.Response:
        return web.Response(status=503, text="this one file breaks the service")

    async def _health(self, request: web.Request) -> web.Response:
        self.probes_answered += 1
        return web.Response(text="ok")


@dataclass
class Pool:
    """N tasks sending through the gate as the worker will: wait, send, record."""

    session: aiohttp.ClientSession
    gate: OutageGate
    url: str
    successes: int = 0
    charged: int = 0  # failures an attempt would be charged for
    uncharged: int = 0  # failures handed back because an outage covers them
    sends_while_closed: int = 0
    stopped_by: list[ServiceUnreachable] = field(default_factory=list)
    progress: asyncio.Event = field(default_factory=asyncio.Event)

    async def worker(self, job: int, path: str = "/work") -> None:
        while True:
            try:
                await self.gate.wait_open()
            except ServiceUnreachable as exc:
                self.stopped_by.append(exc)
                return
            if not self.gate.is_open:
                self.sends_while_closed += 1
            try:
                async with self.session.get(self.url + path) as resp:
                    await resp.read()
                    resp.raise_for_status()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                if self.gate.record_failure(exc, job):
                    self.uncharged += 1
                else:
                    self.charged += 1
                    await asyncio.sleep(0.005)  # the worker's backoff, in miniature
            else:
                self.gate.record_success()
                self.successes += 1
                self.progress.set()
            await asyncio.sleep(0)

    async def until(self, condition: Callable[[], bool]) -> None:
        async def poll() -> None:
            while not condition():
                self.progress.clear()
                await self.progress.wait()

        await asyncio.wait_for(poll(), _LIMIT)


class States:
    """The gate's on_change callback, awaitable."""

    def __init__(self) -> None:
        self.seen: list[GateState] = []
        self.messages: list[str] = []
        self._changed = asyncio.Event()

    def __call__(self, state: GateState, outage: object) -> None:
        self.seen.append(state)
        self.messages.append(getattr(outage, "message", ""))
        self._changed.set()

    async def reach(self, state: GateState) -> None:
        async def wait() -> None:
            while not self.seen or self.seen[-1] is not state:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), _LIMIT)


def _gate(session: aiohttp.ClientSession, service: Service, states: States, **kw: float):
    probes: list[int] = []

    async def probe() -> None:
        probes.append(1)
        async with session.get(service.url + "/health") as resp:
            resp.raise_for_status()

    gate = OutageGate(probe, on_change=states, **{**_FAST, **kw})
    service.gate = gate
    return gate, probes


@async_test
async def test_the_pool_pauses_through_a_restart_and_resumes_by_itself() -> None:
    service, states = Service(), States()
    await service.start()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        gate, probes = _gate(session, service, states, outage_timeout=_LIMIT)
        pool = Pool(session, gate, service.url)
        tasks = [asyncio.create_task(pool.worker(job)) for job in range(8)]
        await pool.until(lambda: pool.successes >= 50)

        await service.stop()
        await states.reach(GateState.CLOSED)
        await asyncio.wait_for(_until(lambda: len(probes) >= 3), _LIMIT)
        assert gate.closed_since is not None
        assert gate.outage is not None
        assert f"cannot reach 127.0.0.1:{service.port} (connection refused)" in gate.outage.reason
        before = pool.successes
        await service.start()
        await states.reach(GateState.OPEN)
        await pool.until(lambda: pool.successes >= before + 50)

        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await gate.aclose()
    await service.stop()
    assert states.seen == [GateState.CLOSED, GateState.OPEN]
    assert pool.sends_while_closed == 0
    assert service.work_while_closed == 0, "a worker request reached the service while paused"
    assert service.probes_answered >= 1
    assert pool.charged < 3, "only the failures before the gate closed may be charged"
    assert pool.uncharged >= 1
    assert gate.closed_since is None


@async_test
async def test_a_service_that_never_returns_makes_the_gate_give_up_with_its_reason() -> None:
    service, states = Service(), States()
    await service.start()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        gate, probes = _gate(session, service, states, outage_timeout=0.5)
        pool = Pool(session, gate, service.url)
        tasks = [asyncio.create_task(pool.worker(job)) for job in range(4)]
        await pool.until(lambda: pool.successes >= 10)
        await service.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), _LIMIT)
        await gate.aclose()
    assert states.seen == [GateState.CLOSED, GateState.GAVE_UP]
    assert gate.state is GateState.GAVE_UP and gate.gave_up is not None
    reason = f"cannot reach 127.0.0.1:{service.port} (connection refused)"
    assert gate.gave_up.reason == reason
    assert gate.gave_up.message.startswith("service unreachable since ")
    assert gate.gave_up.message.endswith(f": {reason}")
    assert len(pool.stopped_by) == 4, "every worker is told to stop"
    assert all(str(exc) == gate.gave_up.message for exc in pool.stopped_by)
    assert pool.sends_while_closed == 0
    assert 1 <= len(probes) <= 20, "the prober backs off rather than spinning"


@async_test
async def test_one_failing_job_among_succeeding_ones_never_closes_the_gate() -> None:
    service, states = Service(), States()
    await service.start()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        gate, probes = _gate(session, service, states, outage_timeout=_LIMIT)
        pool = Pool(session, gate, service.url)
        tasks = [asyncio.create_task(pool.worker(job)) for job in range(1, 6)]
        tasks.append(asyncio.create_task(pool.worker(0, "/bad")))
        await pool.until(lambda: pool.charged >= 30)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await gate.aclose()
    await service.stop()
    assert states.seen == []
    assert pool.uncharged == 0
    assert probes == []


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


# --- the closing rule, fed errors in a fixed order -------------------------------------------


def _down() -> ApiError:
    return ApiError(
        "list files: connection failed (refused)",
        kind=Severity.TRANSIENT,
        error_kind=ErrorKind.NETWORK,
    )


def _5xx() -> ApiError:
    return ApiError(
        "register failed (HTTP 502)",
        kind=Severity.TRANSIENT,
        error_kind=ErrorKind.HTTP_5XX,
        status=502,
    )


def _refused_file() -> ApiError:
    return ApiError(
        "register failed (HTTP 400)",
        kind=Severity.PERMANENT,
        error_kind=ErrorKind.HTTP_4XX,
        status=400,
    )


def _local() -> ApiError:
    return ApiError(
        "local file missing (gone)", kind=Severity.PERMANENT, error_kind=ErrorKind.MISSING
    )


class _Blocked:
    """A probe that never answers until the test says so."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        await self.release.wait()


@async_test
async def test_failures_interleaved_with_answers_never_close() -> None:
    gate = OutageGate(_Blocked(), **_FAST)
    for _ in range(50):
        assert gate.record_failure(_down(), "a") is False
        assert gate.record_failure(_5xx(), "b") is False
        gate.record_success()
    for _ in range(50):
        assert gate.record_failure(_down(), "a") is False
        assert gate.record_failure(_down(), "b") is False
        assert gate.record_failure(_refused_file(), "c") is False  # an answer resets the streak
    assert gate.is_open


@async_test
async def test_one_job_failing_alone_never_closes() -> None:
    gate = OutageGate(_Blocked(), **_FAST)
    assert not any(gate.record_failure(_down(), "only") for _ in range(100))
    assert gate.is_open


@async_test
async def test_three_in_a_row_from_two_jobs_close_and_cover_the_rest() -> None:
    probe = _Blocked()
    states = States()
    gate = OutageGate(probe, on_change=states, **_FAST)
    assert gate.record_failure(_down(), "a") is False
    assert gate.record_failure(_local(), "c") is False  # says nothing: the streak goes on
    assert gate.record_failure(_5xx(), "a") is False
    assert gate.record_failure(_down(), "b") is True
    assert gate.state is GateState.CLOSED
    assert gate.record_failure(_down(), "d") is True  # in flight when it went away: uncharged
    assert gate.record_failure(_refused_file(), "e") is False  # a verdict on that file
    gate.record_success()  # a late answer does not open the gate
    assert gate.state is GateState.CLOSED
    waiter = asyncio.create_task(gate.wait_open())
    await asyncio.wait_for(_until(lambda: probe.calls >= 1), _LIMIT)
    assert not waiter.done()
    probe.release.set()
    await asyncio.wait_for(waiter, _LIMIT)
    assert states.seen == [GateState.CLOSED, GateState.OPEN]
    await gate.aclose()


@async_test
async def test_requests_made_inside_the_probe_pass_the_gate() -> None:
    holder: list[OutageGate] = []

    async def probe() -> None:
        await holder[0].wait_open()  # the client's own wait_open must not deadlock the probe
        holder[0].record_failure(_down(), "probe")  # and its own records are ignored

    states = States()
    gate = OutageGate(probe, on_change=states, **_FAST)
    holder.append(gate)
    for job in ("a", "b", "c"):
        gate.record_failure(_down(), job)
    await states.reach(GateState.OPEN)
    await gate.aclose()


@async_test
async def test_a_probe_that_hangs_still_gives_up_on_time() -> None:
    states = States()
    gate = OutageGate(_Blocked(), on_change=states, outage_timeout=0.3, **_FAST)
    for job in ("a", "b", "c"):
        gate.record_failure(_down(), job)
    await states.reach(GateState.GAVE_UP)
    assert gate.gave_up is not None
    assert "the probe had no answer within" in gate.gave_up.reason
    with pytest.raises(ServiceUnreachable):
        await gate.wait_open()
    await gate.aclose()


def test_what_counts_as_an_outage() -> None:
    assert classify(_down()) is Evidence.OUTAGE
    assert classify(_5xx()) is Evidence.SERVER_ERROR  # an answer, about that request
    assert (
        classify(ApiError("t", kind=Severity.TRANSIENT, error_kind=ErrorKind.TIMEOUT))
        is Evidence.OUTAGE
    )
    assert classify(_refused_file()) is Evidence.ANSWER
    throttled = ApiError("429", kind=Severity.TRANSIENT, error_kind=ErrorKind.THROTTLED, status=429)
    assert classify(throttled) is Evidence.ANSWER
    assert classify(_local()) is Evidence.NEUTRAL
    assert classify(ConnectionResetError()) is Evidence.OUTAGE
    assert classify(ValueError("bug")) is Evidence.NEUTRAL


@async_test
async def test_an_answer_to_a_request_sent_before_the_failures_does_not_break_the_streak() -> None:
    gate = OutageGate(_Blocked(), **_FAST)
    sent_before = time.monotonic()
    gate.record_failure(_down(), "a")
    gate.record_failure(_down(), "b")
    gate.record_success(sent_before)  # a server going down finishes what it holds
    assert gate.record_failure(_down(), "c") is True
    assert gate.state is GateState.CLOSED
    await gate.aclose()


@async_test
async def test_an_answer_sent_after_the_failures_began_breaks_the_streak() -> None:
    gate = OutageGate(_Blocked(), **_FAST)
    gate.record_failure(_down(), "a")
    gate.record_failure(_down(), "b")
    gate.record_success(time.monotonic())
    assert gate.record_failure(_down(), "c") is False
    assert gate.is_open


@async_test
async def test_covers_uncharges_every_failure_of_the_streak_that_closes_the_gate() -> None:
    gate = OutageGate(_Blocked(), **_FAST)
    first = asyncio.create_task(gate.covers(_down(), "a", _LIMIT))
    second = asyncio.create_task(gate.covers(_5xx(), "b", _LIMIT))
    await asyncio.sleep(0)
    assert not first.done() and not second.done(), "they wait for the verdict"
    assert await gate.covers(_down(), "c", _LIMIT) is True
    assert await first is True and await second is True
    await gate.aclose()


@async_test
async def test_covers_charges_failures_that_an_answer_proves_to_be_the_files_own() -> None:
    gate = OutageGate(_Blocked(), **_FAST)
    waiting = asyncio.create_task(gate.covers(_5xx(), "a", _LIMIT))
    await asyncio.sleep(0)
    gate.record_success(time.monotonic())
    assert await waiting is False
    assert await gate.covers(_refused_file(), "b", _LIMIT) is False, "an answer never waits"
    assert await gate.covers(_down(), "c", 0.01) is False, "no verdict in time: charged"
    assert gate.is_open


class _Answers:
    """A probe the service answers at once."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1


@async_test
async def test_5xx_of_many_files_while_the_probe_answers_are_the_files_own() -> None:
    """A parser broken for one type: every such register answers 500, the service answers
    everything else. The streak asks the probe, which answers: charged, never a pause."""
    probe = _Answers()
    states = States()
    gate = OutageGate(probe, on_change=states, **_FAST)
    failures = [gate.covers(_5xx(), f"file{n}", _LIMIT) for n in range(3)]
    assert await asyncio.gather(*failures) == [False, False, False]
    assert probe.calls == 1
    for round_ in range(10):
        more = [gate.covers(_5xx(), f"more{round_}.{n}", _LIMIT) for n in range(3)]
        assert await asyncio.gather(*more) == [False, False, False]
    assert gate.is_open and states.seen == []
    await gate.aclose()


@async_test
async def test_5xx_of_many_files_while_the_probe_fails_too_close_the_gate() -> None:
    """A service answering 503 to everything: the probe fails as well, so it is down."""

    async def probe() -> None:
        raise _5xx()

    states = States()
    gate = OutageGate(probe, on_change=states, **_FAST)
    failures = [gate.covers(_5xx(), f"file{n}", _LIMIT) for n in range(3)]
    assert await asyncio.gather(*failures) == [True, True, True]
    assert gate.state is GateState.CLOSED
    await gate.aclose()
