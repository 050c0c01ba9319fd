"""The retries' one vocabulary: `backoff`, the jittered exponential wait every retry takes
(a job's persisted retries over runs too, with the job's own count), a `Retry` policy (how many
tries, how long between them) and `retrying`, which calls a function until it succeeds, fails
for good or runs out of tries. The pool-wide 429 pause (`client.RateLimiter`, shared by every
worker) is not these: it outlives one call. Nothing here imports the client (nor aiohttp):
the store retries a busy database with it."""

from __future__ import annotations

import asyncio
import enum
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

BACKOFF_CAP = 60.0


def backoff(attempt: int, base: float, retry_after: float | None) -> float:
    """Exponential backoff with full jitter, never shorter than the server's Retry-After."""
    delay = random.uniform(0, min(BACKOFF_CAP, base * 2 ** max(attempt - 1, 0)))
    return max(delay, retry_after or 0.0)


class Growth(enum.Enum):
    """How the waits between tries grow."""

    # backoff: a random wait up to first x 2^(n-1) (capped), so that callers failing
    # together (one outage) do not come back together
    DOUBLING = "doubling"
    # first, 2 x first, 3 x first ...: a lock held by another process of ours, where jitter
    # buys nothing and a short first wait often finds it free
    LINEAR = "linear"


@dataclass(frozen=True)
class Retry:
    """`tries` attempts in all (the first included), waiting `wait(n)` before the n+1-th."""

    tries: int
    first: float  # seconds: the first wait (DOUBLING: its upper bound)
    growth: Growth = Growth.DOUBLING

    def wait(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds before retry number `retry` (1 after the first failure), never shorter
        than the service's Retry-After."""
        if self.growth is Growth.DOUBLING:
            return backoff(retry, self.first, retry_after)
        return max(self.first * retry, retry_after or 0.0)


async def retrying(
    fn: Callable[[], Awaitable[T]],
    policy: Retry,
    should_retry: Callable[[Exception], bool],
    on_retry: Callable[[Exception, int], None] | None = None,
) -> T:
    """`fn()`'s result, calling it again after an exception that `should_retry` accepts, at
    most `policy.tries` times in all; the last exception, or one not to retry, is raised as
    it is. An exception carrying `retry_after` (an ApiError's Retry-After) waits at least
    that long. `on_retry(exception, n)` hears of retry number n before its wait."""
    for attempt in range(1, policy.tries + 1):
        try:
            return await fn()
        except Exception as exc:
            if attempt == policy.tries or not should_retry(exc):
                raise
            if on_retry is not None:
                on_retry(exc, attempt)
            await asyncio.sleep(policy.wait(attempt, getattr(exc, "retry_after", None)))
    # a programming error, not shown
    raise ValueError(f"a retry policy needs at least one try, not {policy.tries}")
