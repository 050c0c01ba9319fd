"""The client through an in-memory transport (transport.py's seam): every request is one call of
an async function standing for the service, so an answer's shape, a 429's Retry-After, an
answer lost after the service acted, and the outage gate's part are played without a socket.
The same client over real sockets is tests/test_client.py and tests/test_client_shapes.py."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from tests.helpers import async_test
from tests.test_client_shapes import KEY_SENT, MS, docs_entry, examples_entry, page
from uploader.client import ApiError, MaiAgentClient, RateLimiter, RegisterItem
from uploader.model import ErrorKind, Severity
from uploader.transport import Request, Response, TooLarge

BASE = "https://api.example.test/api/v1/"
KB = "kb-1"
KEY = "memory-test-key-0123456789"
ITEM = RegisterItem(KEY_SENT, "report.xlsx")
Handler = Callable[[Request], Awaitable[Response]]


def answer(status: int, body: Any = None, **headers: str) -> Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Response(status, {k.replace("_", "-"): v for k, v in headers.items()}, data, time.time())


class Service:
    """Plays the answers given, in order, and keeps every request it got."""

    def __init__(self, *answers: Response | BaseException) -> None:
        self.answers = list(answers)
        self.requests: list[Request] = []

    async def __call__(self, request: Request) -> Response:
        self.requests.append(request)
        played = self.answers.pop(0)
        if isinstance(played, BaseException):
            raise played
        return played


class Limiter(RateLimiter):
    """Hears of the pauses without holding anyone: a test asserts the pause, not a wait."""

    def __init__(self) -> None:
        super().__init__()
        self.paused: list[float] = []

    def pause(self, seconds: float) -> None:
        self.paused.append(seconds)


def client(service: Service, limiter: RateLimiter | None = None, **kw: Any) -> MaiAgentClient:
    return MaiAgentClient(service, BASE, KEY, limiter or RateLimiter(), **kw)


async def fails(call: Awaitable[Any]) -> ApiError:
    try:
        await call
    except ApiError as exc:
        assert KEY not in str(exc)
        return exc
    raise AssertionError("no ApiError")


@async_test
async def test_both_dialects_read_as_the_same_entry() -> None:
    """The docs' page (status object, createdAt digits, media URL) and the examples' bare list
    (status string, createdAt a number, the key itself) give one typed entry each."""
    docs = Service(answer(201, page([docs_entry()])))
    examples = Service(answer(201, [examples_entry()]))

    (from_docs,) = await client(docs).register(KB, [ITEM])
    (from_examples,) = await client(examples).register(KB, [ITEM])

    for entry in (from_docs, from_examples):
        assert entry.has_key(KEY_SENT) and entry.filename == "report.xlsx"
        assert entry.created_at == MS / 1000
    assert (from_docs.status, from_examples.status) == ("initial", "done")
    sent = docs.requests[0]
    assert (sent.method, sent.url) == ("POST", f"{BASE}knowledge-bases/{KB}/files/")
    assert json.loads(sent.body) == {"files": [{"file": KEY_SENT, "filename": "report.xlsx"}]}
    assert sent.headers is not None and sent.headers["Authorization"] == f"Api-Key {KEY}"


@async_test
async def test_a_429_pauses_everyone_for_its_retry_after_and_the_call_goes_again() -> None:
    limiter = Limiter()
    service = Service(answer(429, {"detail": "slow down"}, Retry_After="7"), answer(201, []))

    entries = await client(service, limiter).register(KB, [ITEM])

    assert entries == []
    assert limiter.paused == [7.0]
    assert len(service.requests) == 2


@async_test
async def test_a_429_that_never_ends_is_throttled_with_its_last_retry_after() -> None:
    throttled = [answer(429, None, Retry_After="3") for _ in range(3)]

    err = await fails(client(Service(*throttled), Limiter(), throttle_retries=2).presign("a", 1))

    assert (err.kind, err.error_kind, err.status) == (Severity.TRANSIENT, ErrorKind.THROTTLED, 429)
    assert err.retry_after == 3.0


@async_test
async def test_a_register_whose_answer_is_lost_may_have_been_applied() -> None:
    """The service took the register (its state changed), then the connection dropped: the
    caller must look in the listing before registering again. A presign lost the same way is
    only to be asked again."""
    registered: list[str] = []

    async def takes_then_drops(request: Request) -> Response:
        if request.url.endswith("/files/"):
            registered.extend(f["file"] for f in json.loads(request.body)["files"])
        raise aiohttp.ServerDisconnectedError()

    api = MaiAgentClient(takes_then_drops, BASE, KEY, RateLimiter())
    register = await fails(api.register(KB, [ITEM]))
    presign = await fails(api.presign("a", 1))

    assert registered == [KEY_SENT]
    assert (register.kind, register.error_kind) == (Severity.TRANSIENT, ErrorKind.NETWORK)
    assert register.maybe_applied and not presign.maybe_applied


@async_test
async def test_a_register_that_never_connected_was_not_applied() -> None:
    service = Service(aiohttp.ConnectionTimeoutError())

    err = await fails(client(service, timeout=5.0).register(KB, [ITEM]))

    assert (err.error_kind, err.maybe_applied) == (ErrorKind.TIMEOUT, False)
    assert "timed out while connecting (limit 5 s)" in str(err)


@async_test
async def test_an_answer_larger_than_the_cap_is_a_bad_response() -> None:
    service = Service(TooLarge())

    err = await fails(client(service, max_body=1024 * 1024).list_files(KB, 1, 10))

    assert err.error_kind == ErrorKind.BAD_RESPONSE and "larger than 1 MiB" in str(err)
    assert service.requests[0].max_body == 1024 * 1024


class Gate:
    def __init__(self) -> None:
        self.waits = 0
        self.answers: list[float | None] = []

    async def wait_open(self) -> None:
        self.waits += 1

    def record_success(self, sent_at: float | None = None) -> None:
        self.answers.append(sent_at)


@async_test
async def test_the_gate_is_given_at_construction_and_hears_of_answers_below_500() -> None:
    gate = Gate()
    service = Service(answer(200, page([])), answer(503, b"busy"), answer(200, page([])))
    gated = client(service, gate=gate)
    plain = gated.with_gate(None)

    await gated.list_files(KB, 1, 1)
    err = await fails(gated.list_files(KB, 1, 1))
    await plain.list_files(KB, 1, 1)

    assert err.error_kind == ErrorKind.HTTP_5XX
    assert gate.waits == 2 and len(gate.answers) == 1  # the 503 is not an answer; plain waits not
    assert plain.clock is gated.clock


@async_test
async def test_the_service_clock_is_read_from_the_date_of_api_answers() -> None:
    ahead = email.utils.formatdate(time.time() + 3600, usegmt=True)
    api = client(Service(answer(200, page([]), Date=ahead)))

    await api.list_files(KB, 1, 1)

    assert 3590 < api.clock.offset < 3610
