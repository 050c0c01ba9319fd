"""Where the client's requests meet the network: one callable, a `Transport`, takes a `Request`
and returns its `Response` (status, headers, the body read up to a cap), or raises aiohttp's
connection and timeout errors for the client to classify. Everything above it (what a request
means, how its answer or failure is classified, the 429 pauses, the outage gate) is the
client's and does not know how the bytes travel.

`AiohttpTransport` is the real one, over the run's shared session and the proxy routes of
`network`. Tests give the client an async function instead, so every answer and failure of
the service (either dialect, a 429 with Retry-After, a lost answer) plays in memory, as
httpx's `MockTransport` does; the tests through real sockets stay beside them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import network

if TYPE_CHECKING:
    # imported by the first request: a sixth of a second that commands which never make one
    # would pay at their start (forms.py)
    import aiohttp

_READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Timeout:
    """Seconds: `total` for the whole request (None: no limit, an upload cut by its idle
    watch instead), `connect` for the connection alone (a failed connect is known not to have
    sent anything)."""

    total: float | None
    connect: float


@dataclass(frozen=True)
class Request:
    """One request as the client means it. `body` is bytes, or for an S3 upload an aiohttp
    payload that streams the file; `max_body` caps a 2xx answer's body (past it, `TooLarge`)
    and `max_error_body` any other's (its head is kept: only the explanation is used)."""

    method: str
    url: str
    headers: Mapping[str, str] | None
    body: Any
    timeout: Timeout
    max_body: int
    max_error_body: int


@dataclass(frozen=True)
class Response:
    """An answer: `answered_at` is our wall clock when its headers came (for the service's
    clock against ours, `clock.ServiceClock`)."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    answered_at: float


Transport = Callable[[Request], Awaitable[Response]]


class TooLarge(Exception):
    """A 2xx answer's body is larger than the request's `max_body`."""


class AiohttpTransport:
    """Requests over one aiohttp session, each through the proxy `network` routes its URL to
    (chosen per request: NO_PROXY hosts go direct), never following a redirect (the API key
    must not go where one points)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        self._router = network.Router(network.current())

    async def __call__(self, request: Request) -> Response:
        import aiohttp

        route = self._router.route(request.url)
        headers = request.headers
        if route.headers:
            headers = {**(headers or {}), **route.headers}
        timeout = aiohttp.ClientTimeout(
            total=request.timeout.total, sock_connect=request.timeout.connect
        )
        async with self._session.request(
            request.method,
            request.url,
            data=request.body,
            headers=headers,
            timeout=timeout,
            allow_redirects=False,
            proxy=route.proxy,
            proxy_headers=route.proxy_headers,
        ) as resp:
            answered_at = time.time()
            ok = 200 <= resp.status < 300
            cap = request.max_body if ok else request.max_error_body
            body = await _read_capped(resp, cap, ok)
            return Response(resp.status, resp.headers, body, answered_at)


async def _read_capped(resp: aiohttp.ClientResponse, cap: int, strict: bool) -> bytes:
    """The body, read chunk by chunk and never beyond `cap`: past it, `strict` raises
    `TooLarge` and otherwise the head is kept (the connection is not reused either way)."""
    declared = resp.content_length
    if strict and declared is not None and declared > cap:
        resp.close()
        raise TooLarge
    chunks: list[bytes] = []
    total = 0
    while chunk := await resp.content.read(_READ_CHUNK):
        chunks.append(chunk)
        total += len(chunk)
        if total > cap:
            resp.close()
            if strict:
                raise TooLarge
            break
    return b"".join(chunks)[:cap]
