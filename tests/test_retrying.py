"""The in-process retries' helper (issue 11, step 5): how many times it calls, how long it
waits at least, and what it does not retry."""

from __future__ import annotations

import asyncio
import time

import pytest

from uploader.retrying import Growth, Retry, retrying


class Flaky(Exception):
    def __init__(self, retry_after: float | None = None) -> None:
        super().__init__("flaky")
        self.retry_after = retry_after


class Broken(Exception):
    pass


def _failing(times: int, error: Exception, calls: list[int]):
    async def fn() -> str:
        calls.append(len(calls) + 1)
        if len(calls) <= times:
            raise error
        return "ok"

    return fn


def _is_flaky(exc: Exception) -> bool:
    return isinstance(exc, Flaky)


NO_WAIT = Retry(tries=4, first=0.0)


def test_it_calls_again_until_the_call_succeeds() -> None:
    calls: list[int] = []
    heard: list[int] = []

    got = asyncio.run(
        retrying(_failing(3, Flaky(), calls), NO_WAIT, _is_flaky, lambda _e, n: heard.append(n))
    )

    assert got == "ok" and calls == [1, 2, 3, 4] and heard == [1, 2, 3]


def test_the_last_try_raises_its_own_exception() -> None:
    calls: list[int] = []
    error = Flaky()

    with pytest.raises(Flaky) as raised:
        asyncio.run(retrying(_failing(10, error, calls), NO_WAIT, _is_flaky))

    assert raised.value is error and len(calls) == NO_WAIT.tries


def test_an_exception_not_to_retry_stops_at_once() -> None:
    calls: list[int] = []

    with pytest.raises(Broken):
        asyncio.run(retrying(_failing(1, Broken(), calls), NO_WAIT, _is_flaky))

    assert calls == [1]


def test_retry_after_is_waited_at_least() -> None:
    calls: list[int] = []
    started = time.monotonic()

    got = asyncio.run(retrying(_failing(2, Flaky(retry_after=0.2), calls), NO_WAIT, _is_flaky))

    assert got == "ok" and len(calls) == 3
    assert time.monotonic() - started >= 0.4


def test_the_waits_of_each_growth() -> None:
    doubling = Retry(tries=5, first=0.5)
    for retry in range(1, 5):
        waits = [doubling.wait(retry) for _ in range(200)]
        assert min(waits) >= 0 and max(waits) <= 0.5 * 2 ** (retry - 1)
        assert doubling.wait(retry, retry_after=7.0) >= 7.0
    linear = Retry(tries=7, first=0.2, growth=Growth.LINEAR)
    assert [linear.wait(n) for n in range(1, 7)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.2])
    assert linear.wait(1, retry_after=3.0) == 3.0
