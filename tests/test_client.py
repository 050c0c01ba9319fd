"""The HTTP client against real sockets: a scripted stand-in server and moto's S3."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import subprocess
import sys
import time
import tracemalloc
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.helpers import ROOT, S3_BUCKET, async_test, without_dac_override
from uploader.client import (
    MAX_BODY,
    ApiError,
    FilePage,
    MaiAgentClient,
    Presigned,
    RateLimiter,
    RegisterItem,
    RemoteEntry,
    _retry_after,
    check_base_url,
    make_session,
)
from uploader.forms import small_form
from uploader.model import ErrorKind, Severity
from uploader.queue import open_queue
from uploader.reconcile import RemoteIndex
from uploader.registrar import Registrar

KEY = "sk-live-THE-SECRET-KEY-0123456789"
KB = "kb-x"
Action = Callable[[web.Request], Awaitable[web.StreamResponse]]


def reply(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Action:
    async def act(request: web.Request) -> web.StreamResponse:
        if isinstance(body, (dict, list)):
            return web.json_response(body, status=status, headers=headers)
        return web.Response(status=status, body=body, headers=headers)

    return act


def hang(seconds: float) -> Action:
    async def act(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.Response(status=500)

    return act


async def drop(request: web.Request) -> web.StreamResponse:
    assert request.transport is not None
    request.transport.close()
    return web.Response()


def s3_xml(code: str, message: str) -> bytes:
    return f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    at: float
    body: bytes = b""
    parts: list[str] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    file_sha256: str = ""
    trailing: bytes = b""


class Fake:
    """MaiAgent and S3 in one scripted server that records what it received."""

    def __init__(self) -> None:
        self.scripts: defaultdict[str, deque[Action]] = defaultdict(deque)
        self.seen: list[Seen] = []
        self.root = ""

    def on(self, path: str, *actions: Action) -> None:
        self.scripts[path].extend(actions)

    def requests(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["tail"].removeprefix("api/v1/")
        seen = Seen(request.method, path, request.query_string, dict(request.headers), 0.0)
        seen.at = time.monotonic()
        self.seen.append(seen)
        if path == "s3/":
            await self._read_form(request, seen)
        else:
            seen.body = await request.read()
        script = self.scripts[path]
        action = script.popleft() if script else self._default(path)
        return await action(request)

    def _default(self, path: str) -> Action:
        if path == "s3/":
            return reply(204)
        if path == PRESIGN:
            return reply(200, {"url": f"{self.root}/s3/", "fields": {"key": "k", "policy": "P"}})
        return reply(500, b"unscripted")

    @staticmethod
    async def _read_form(request: web.Request, seen: Seen) -> None:
        """Stream the multipart body (never whole in memory), recording parts in order."""
        reader = await request.multipart()
        async for part in reader:
            seen.parts.append(part.name or "")
            if part.name == "file":
                digest = hashlib.sha256()
                while chunk := await part.read_chunk(64 * 1024):
                    digest.update(chunk)
                seen.file_sha256 = digest.hexdigest()
            else:
                seen.fields[part.name or ""] = await part.text()
        seen.trailing = await request.content.read()


@contextlib.asynccontextmanager
async def harness(
    timeout: float = 5.0,
    throttle_retries: int = 8,
    limiter: RateLimiter | None = None,
    max_body: int = MAX_BODY,
) -> AsyncIterator[tuple[Fake, MaiAgentClient]]:
    fake = Fake()
    app = web.Application(client_max_size=1024**3)
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.root = f"http://127.0.0.1:{port}"
    session = make_session(4)
    # No trailing slash on purpose: the client adds it.
    base = f"{fake.root}/api/v1"
    client = MaiAgentClient(
        session, base, KEY, limiter or RateLimiter(), timeout, throttle_retries, max_body
    )
    try:
        yield fake, client
    finally:
        await session.close()
        await runner.cleanup()


async def fails(call: Awaitable[Any]) -> ApiError:
    with pytest.raises(ApiError) as info:
        await call
    assert KEY not in str(info.value)
    return info.value


def write_file(tmp_path: Any, name: str | bytes, size: int) -> tuple[str | bytes, bytes]:
    data = os.urandom(size)
    path = os.path.join(os.fsencode(tmp_path) if isinstance(name, bytes) else str(tmp_path), name)
    with open(path, "wb") as f:
        f.write(data)
    return path, data


# --- classification of API answers ---------------------------------------------------------

LISTING = {"count": 3, "next": None, "previous": None, "results": []}
KB_FILES = f"knowledge-bases/{KB}/files/"
PRESIGN = "upload-presigned-url/"

API_CASES = [
    # (call, path, answer, kind, error_kind, maybe_applied)
    ("presign", PRESIGN, reply(401, {"detail": "bad"}), Severity.FATAL, ErrorKind.AUTH, False),
    ("presign", PRESIGN, reply(403, {"detail": "no"}), Severity.FATAL, ErrorKind.AUTH, False),
    (
        "list",
        KB_FILES,
        reply(404, {"detail": "Not found."}),
        Severity.FATAL,
        ErrorKind.KB_NOT_FOUND,
        False,
    ),
    (
        "presign",
        PRESIGN,
        reply(400, {"detail": "x"}),
        Severity.PERMANENT,
        ErrorKind.HTTP_4XX,
        False,
    ),
    ("presign", PRESIGN, reply(503, b"busy"), Severity.TRANSIENT, ErrorKind.HTTP_5XX, False),
    ("presign", PRESIGN, reply(408), Severity.TRANSIENT, ErrorKind.TIMEOUT, False),
    ("presign", PRESIGN, reply(200, b"<html>"), Severity.TRANSIENT, ErrorKind.BAD_RESPONSE, False),
    ("presign", PRESIGN, drop, Severity.TRANSIENT, ErrorKind.NETWORK, False),
    ("register", KB_FILES, reply(503), Severity.TRANSIENT, ErrorKind.HTTP_5XX, True),
    (
        "register",
        KB_FILES,
        reply(502, b"<html>oops</html>"),
        Severity.TRANSIENT,
        ErrorKind.HTTP_5XX,
        True,
    ),
    (
        "register",
        KB_FILES,
        reply(400, {"files": ["bad"]}),
        Severity.PERMANENT,
        ErrorKind.HTTP_4XX,
        False,
    ),
    ("register", KB_FILES, reply(404), Severity.FATAL, ErrorKind.KB_NOT_FOUND, False),
    ("register", KB_FILES, reply(401), Severity.FATAL, ErrorKind.AUTH, False),
    (
        "register",
        KB_FILES,
        reply(201, {"id": "1"}),
        Severity.TRANSIENT,
        ErrorKind.BAD_RESPONSE,
        True,
    ),
    (
        "register",
        KB_FILES,
        reply(201, b"not json"),
        Severity.TRANSIENT,
        ErrorKind.BAD_RESPONSE,
        True,
    ),
    ("register", KB_FILES, drop, Severity.TRANSIENT, ErrorKind.NETWORK, True),
    (
        "batch_delete",
        KB_FILES + "batch-delete/",
        reply(404),
        Severity.FATAL,
        ErrorKind.KB_NOT_FOUND,
        False,
    ),
    ("list", KB_FILES, reply(200, {"count": 1}), Severity.TRANSIENT, ErrorKind.BAD_RESPONSE, False),
]


def call(client: MaiAgentClient, name: str) -> Awaitable[Any]:
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "presign": lambda: client.presign("a.txt", 3),
        "register": lambda: client.register(KB, [RegisterItem("media/k1", "a.txt")]),
        "list": lambda: client.list_files(KB, 1, 100),
        "batch_delete": lambda: client.batch_delete(KB, ["1", "2"]),
    }
    return calls[name]()


@pytest.mark.parametrize(("name", "path", "answer", "kind", "error_kind", "maybe"), API_CASES)
@async_test
async def test_api_outcomes_are_classified(
    name: str, path: str, answer: Action, kind: Severity, error_kind: ErrorKind, maybe: bool
) -> None:
    async with harness() as (fake, client):
        fake.on(path, answer)
        err = await fails(call(client, name))
    assert (err.kind, err.error_kind, err.maybe_applied) == (kind, error_kind, maybe)
    assert "\n" not in str(err)


@async_test
async def test_messages_are_short_and_say_what_happened() -> None:
    async with harness() as (fake, client):
        fake.on(KB_FILES, reply(404, {"detail": "Not found."}))
        fake.on(PRESIGN, reply(401), reply(400, {"detail": "y" * 5000}))
        assert str(await fails(client.check_kb(KB))) == (
            "knowledge base kb-x not found (HTTP 404): check --kb and that --base-url ends in"
            " /api/v1/"
        )
        assert str(await fails(client.presign("a", 1))) == "API key rejected (HTTP 401)"
        long = await fails(client.presign("a", 1))
    assert str(long).startswith("presign failed (HTTP 400): yyy")
    assert len(str(long)) < 250
    assert long.status == 400


@async_test
async def test_the_key_never_appears_in_an_error_even_when_the_server_echoes_it() -> None:
    async with harness() as (fake, client):
        fake.on(PRESIGN, reply(401, {"detail": f"Invalid key {KEY}"}))
        fake.on(KB_FILES, reply(400, f"you sent Api-Key {KEY}".encode()))
        auth = await fails(client.presign("a", 1))
        other = await fails(client.register(KB, [RegisterItem("k", "a")]))
    assert "[redacted]" in str(auth) and "[redacted]" in str(other)


@async_test
async def test_a_redirect_is_not_followed_and_its_error_names_where_it_pointed() -> None:
    """A 302 (http for https, a login page in front of the API): the error says where it
    pointed, without the query, user info or key a secret may hide in."""
    signed = f"https://user:pw@login.example.com/sso/start?token=s3cr3t&key={KEY}#frag"
    async with harness() as (fake, client):
        fake.on(PRESIGN, reply(302, headers={"Location": signed}))
        fake.on(KB_FILES, reply(301, headers={"Location": f"/v2/{KB_FILES}"}))
        away = await fails(client.presign("a", 1))
        moved = await fails(client.check_kb(KB))
    assert str(away) == (
        "presign: the service answered HTTP 302, a redirect to "
        "https://login.example.com/sso/start?[redacted] (not followed)"
    )
    assert (away.kind, away.error_kind, away.status) == (
        Severity.PERMANENT,
        ErrorKind.HTTP_3XX,
        302,
    )
    assert f"a redirect to {fake.root}/v2/{KB_FILES} (not followed)" in str(moved)
    assert "s3cr3t" not in str(away) and "pw" not in str(away)


@async_test
async def test_every_api_call_carries_the_key_and_json() -> None:
    async with harness() as (fake, client):
        fake.on(KB_FILES, reply(201, [{"id": "f1", "filename": "a.txt"}]))
        created = await client.register(
            KB, [RegisterItem("media/k1", "a.txt"), RegisterItem("media/k2", "b.txt")]
        )
        presigned = await client.presign("a.txt", 42)
    assert created == [RemoteEntry("f1", "a.txt", None, None, None, None)]
    assert presigned.url.endswith("/s3/")
    register, presign = fake.seen
    assert register.headers["Authorization"] == f"Api-Key {KEY}"
    assert register.headers["Content-Type"] == "application/json"
    assert register.body == (
        b'{"files":[{"file":"media/k1","filename":"a.txt"},{"file":"media/k2","filename":"b.txt"}]}'
    )
    assert presign.body == (
        b'{"filename":"a.txt","modelName":"chatbot-file","fieldName":"file","fileSize":42}'
    )


@async_test
async def test_listing_get_delete_and_check() -> None:
    async with harness() as (fake, client):
        fake.on(KB_FILES, reply(200, LISTING), reply(200, LISTING))
        f1 = {"id": "f1", "filename": "a"}
        fake.on(KB_FILES + "f1/", reply(200, f1), reply(404), reply(204), reply(404))
        fake.on(KB_FILES + "batch-delete/", reply(204))
        assert await client.list_files(KB, 2, 50) == FilePage([], 3, None)
        assert await client.check_kb(KB) == 3
        assert await client.get_file(KB, "f1") == RemoteEntry("f1", "a", None, None, None, None)
        assert await client.get_file(KB, "f1") is None
        assert await client.delete_file(KB, "f1") is None
        assert await client.delete_file(KB, "f1") is None  # already gone
        await client.batch_delete(KB, ["f1", "f2"])
    assert [s.query for s in fake.requests(KB_FILES)] == [
        "page=2&page_size=50",
        "page=1&page_size=1",
    ]
    assert [s.method for s in fake.requests(KB_FILES + "f1/")] == ["GET", "GET", "DELETE", "DELETE"]
    assert fake.requests(KB_FILES + "batch-delete/")[0].body == b'{"ids":["f1","f2"]}'


# --- throttling -----------------------------------------------------------------------------


@async_test
async def test_429_is_resent_until_it_succeeds() -> None:
    async with harness() as (fake, client):
        throttled = reply(429, {"detail": "slow down"}, {"Retry-After": "0"})
        fake.on(KB_FILES, throttled, throttled, reply(201, [{"id": "f1", "filename": "a"}]))
        [entry] = await client.register(KB, [RegisterItem("k", "a")])
    assert entry.id == "f1"
    assert len(fake.requests(KB_FILES)) == 3


@async_test
async def test_429_forever_becomes_transient_throttled() -> None:
    async with harness(throttle_retries=2) as (fake, client):
        throttled = reply(429, None, {"Retry-After": "0"})
        fake.on(KB_FILES, throttled, throttled, throttled, throttled)
        err = await fails(client.register(KB, [RegisterItem("k", "a")]))
    assert (err.kind, err.error_kind, err.status, err.retry_after) == (
        Severity.TRANSIENT,
        ErrorKind.THROTTLED,
        429,
        0.0,
    )
    assert not err.maybe_applied
    assert len(fake.requests(KB_FILES)) == 3


@async_test
async def test_a_429_holds_back_the_whole_pool() -> None:
    async with harness() as (fake, client):
        fake.on(PRESIGN, reply(429, None, {"Retry-After": "0.4"}))
        fake.on(KB_FILES, reply(200, LISTING))

        async def later_listing() -> None:
            await asyncio.sleep(0.1)
            await client.list_files(KB, 1, 10)

        await asyncio.gather(client.presign("a", 1), later_listing())
    first_429 = fake.requests(PRESIGN)[0].at
    assert fake.requests(KB_FILES)[0].at - first_429 >= 0.35


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert _retry_after("2") == 2.0
    assert _retry_after("0.5") == 0.5
    assert _retry_after(formatdate(time.time() - 60, usegmt=True)) == 0.0
    assert 25 < _retry_after(formatdate(time.time() + 30, usegmt=True)) <= 30  # type: ignore[operator]
    assert _retry_after("99999") == 300.0
    assert _retry_after("soon") is None
    assert _retry_after("nan") is None
    assert _retry_after(None) is None


@async_test
async def test_rate_limiter_spaces_requests() -> None:
    limiter = RateLimiter(20)
    start = time.monotonic()
    await asyncio.gather(*(limiter.acquire() for _ in range(6)))
    assert time.monotonic() - start >= 0.24


@async_test
async def test_rate_limiter_off_is_free_and_pause_holds_everyone() -> None:
    limiter = RateLimiter(None)
    start = time.monotonic()
    for _ in range(20000):
        await limiter.acquire()
    assert time.monotonic() - start < 0.5
    limiter.pause(0.2)
    limiter.pause(0.05)  # a shorter pause does not cut the longer one
    start = time.monotonic()
    await asyncio.gather(limiter.acquire(), limiter.acquire())
    assert time.monotonic() - start >= 0.19


def test_rate_limiter_rejects_a_non_positive_rate() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0)


# --- connection failures and timeouts -------------------------------------------------------


@async_test
async def test_timeouts_are_transient_and_doubtful_only_for_register() -> None:
    async with harness(timeout=0.2) as (fake, client):
        fake.on(KB_FILES, hang(1))
        fake.on(PRESIGN, hang(1))
        register = await fails(client.register(KB, [RegisterItem("k", "a")]))
        presign = await fails(client.presign("a", 1))
    assert (register.kind, register.error_kind, register.maybe_applied) == (
        Severity.TRANSIENT,
        ErrorKind.TIMEOUT,
        True,
    )
    assert (presign.error_kind, presign.maybe_applied) == (ErrorKind.TIMEOUT, False)


@async_test
async def test_a_register_stalled_past_its_write_ahead_and_timeout_is_not_sent(
    tmp_path: Path,
) -> None:
    """A process stopped (SIGSTOP, starved) after a register's write-ahead, before its bytes
    left: a run that takes the row over believes that register over by the write-ahead's time
    plus the timeout (and a margin), then registers the key itself. The late send must not go."""
    async with harness(timeout=0.3) as (fake, client), await open_queue(str(tmp_path / "q")) as q:
        registrar = Registrar(client, RemoteIndex(q, client), 1, 0.0)

        async def written_then_stopped() -> float | None:
            since = time.time()  # the write-ahead commits...
            await asyncio.sleep(0.5)  # ...and the process stops before the send
            return since

        fake.on(KB_FILES, reply(200, [{"id": "e1", "filename": "a", "file": "k"}]))
        stopped = await fails(registrar.register(KB, RegisterItem("k", "a"), written_then_stopped))
        assert fake.requests(KB_FILES) == []
    assert (stopped.error_kind, stopped.maybe_applied) == (ErrorKind.LEASE, False)


@async_test
async def test_refused_connection_is_known_not_to_have_registered() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    session = make_session(1)
    async with session:
        client = MaiAgentClient(session, f"http://127.0.0.1:{port}/", KEY, RateLimiter())
        err = await fails(client.register(KB, [RegisterItem("k", "a")]))
    assert (err.kind, err.error_kind, err.maybe_applied) == (
        Severity.TRANSIENT,
        ErrorKind.NETWORK,
        False,
    )


# --- upload to the stand-in S3 --------------------------------------------------------------

FIELDS = {
    "key": "media/abc/a.bin",
    "x-amz-algorithm": "AWS4-HMAC-SHA256",
    "x-amz-credential": "AKIA/20240101/us-east-1/s3/aws4_request",
    "x-amz-date": "20240101T000000Z",
    "policy": "POLICY-SECRET",
    "x-amz-signature": "SIGNATURE-SECRET",
}


@pytest.mark.parametrize("size", [0, 10, 256 * 1024, 256 * 1024 + 1, 1024 * 1024 + 123])
@async_test
async def test_upload_sends_fields_then_file_with_a_content_length(
    tmp_path: Any, size: int
) -> None:
    path, data = write_file(tmp_path, "a.bin", size)
    async with harness() as (fake, client):
        await client.upload(Presigned(f"{fake.root}/s3/", FIELDS), path, size, "a.bin")
    (seen,) = fake.requests("s3/")
    assert seen.parts == [*FIELDS, "file"]
    assert seen.fields == FIELDS
    assert seen.file_sha256 == hashlib.sha256(data).hexdigest()
    assert "Authorization" not in seen.headers
    # A declared length, not chunked, and the body ended exactly there.
    assert int(seen.headers["Content-Length"]) > size
    assert "Transfer-Encoding" not in seen.headers
    assert seen.trailing == b""


@async_test
async def test_content_length_is_exactly_the_bytes_on_the_wire(tmp_path: Any) -> None:
    size = 300 * 1024 + 5  # above the small-file threshold: the streamed path
    path, data = write_file(tmp_path, "a.bin", size)
    got: dict[str, Any] = {}

    async def raw_s3(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        lines = head.split("\r\n")[1:]
        headers = {k.lower(): v for k, _, v in (x.partition(": ") for x in lines if x)}
        body = await reader.readexactly(int(headers["content-length"]))
        try:
            extra = await asyncio.wait_for(reader.read(1), 0.1)
        except asyncio.TimeoutError:
            extra = b""
        got.update(headers=headers, body=body, extra=extra)
        writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(raw_s3, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, harness() as (_, client):
        await client.upload(Presigned(f"http://127.0.0.1:{port}/", FIELDS), path, size, "a")
    boundary = got["headers"]["content-type"].split("boundary=")[1].strip('"')
    assert "transfer-encoding" not in got["headers"]
    assert got["extra"] == b""  # nothing after the declared length
    assert got["body"].endswith(data + f"\r\n--{boundary}--\r\n".encode())


@async_test
async def test_a_big_upload_is_streamed_not_read_into_memory(tmp_path: Any) -> None:
    size = 24 * 1024 * 1024
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:
        f.truncate(size)
    async with harness() as (fake, client):
        tracemalloc.start()
        try:
            await client.upload(Presigned(f"{fake.root}/s3/", FIELDS), str(path), size, "big")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert fake.requests("s3/")[0].file_sha256 == hashlib.sha256(bytes(size)).hexdigest()
    assert peak < 6 * 1024 * 1024


@async_test
async def test_upload_accepts_a_non_utf8_file_name(tmp_path: Any) -> None:
    path, data = write_file(tmp_path, b"caf\xe9.txt", 5)
    async with harness() as (fake, client):
        await client.upload(Presigned(f"{fake.root}/s3/", FIELDS), path, 5, os.fsdecode(path))
    assert fake.requests("s3/")[0].file_sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("fields", "filename"),
    [
        (FIELDS, "a.bin"),
        ({"key": "media/合約/é x.pdf", "acl": ""}, '合約 "二〇二四";\\ › x.pdf'),
        ({"x-amz-meta-ünï": "v", "policy": "a b\r\nc"}, "caf\ufffd.txt"),
    ],
)
@async_test
async def test_a_small_form_is_the_bytes_aiohttps_multipart_writer_makes(
    fields: dict[str, str], filename: str
) -> None:
    """The small upload's form is joined by hand (forms.small_form) for its CPU: byte for
    byte what aiohttp's writer makes of the same fields, file and name."""
    data = b"%PDF-1.7 \r\n--x--\r\n" + bytes(range(256))
    writer = aiohttp.MultipartWriter("form-data", boundary="0123abcd")
    for name, value in fields.items():
        writer.append(value).set_content_disposition("form-data", name=name)
    part = aiohttp.BytesPayload(data)
    part.set_content_disposition("form-data", name="file", filename=filename)
    writer.append_payload(part)

    assert small_form("0123abcd", fields, data, filename) == await writer.as_bytes()


S3_CASES = [
    (
        reply(403, s3_xml("AccessDenied", "Policy expired")),
        Severity.TRANSIENT,
        ErrorKind.POLICY_EXPIRED,
    ),
    (
        reply(400, s3_xml("EntityTooLarge", "Your proposed upload")),
        Severity.PERMANENT,
        ErrorKind.TOO_LARGE,
    ),
    (reply(403, s3_xml("SignatureDoesNotMatch", "no")), Severity.PERMANENT, ErrorKind.S3_REJECTED),
    (reply(400, s3_xml("RequestTimeout", "Idle")), Severity.TRANSIENT, ErrorKind.TIMEOUT),
    (reply(503, s3_xml("SlowDown", "Reduce your rate")), Severity.TRANSIENT, ErrorKind.HTTP_5XX),
    (reply(429), Severity.TRANSIENT, ErrorKind.THROTTLED),
    (drop, Severity.TRANSIENT, ErrorKind.NETWORK),
]


@pytest.mark.parametrize(("answer", "kind", "error_kind"), S3_CASES)
@async_test
async def test_s3_outcomes_are_classified(
    tmp_path: Any, answer: Action, kind: Severity, error_kind: ErrorKind
) -> None:
    path, _ = write_file(tmp_path, "a.bin", 300 * 1024)
    async with harness() as (fake, client):
        fake.on("s3/", answer)
        err = await fails(
            client.upload(Presigned(f"{fake.root}/s3/", FIELDS), path, 300 * 1024, "a")
        )
    assert (err.kind, err.error_kind, err.maybe_applied) == (kind, error_kind, False)
    assert "POLICY-SECRET" not in str(err) and "SIGNATURE-SECRET" not in str(err)
    assert len(fake.requests("s3/")) == 1


@async_test
async def test_s3_policy_expired_message(tmp_path: Any) -> None:
    path, _ = write_file(tmp_path, "a", 3)
    async with harness() as (fake, client):
        fake.on("s3/", reply(403, s3_xml("AccessDenied", "Policy expired")))
        err = await fails(client.upload(Presigned(f"{fake.root}/s3/", FIELDS), path, 3, "a"))
    assert str(err) == "S3 upload rejected (HTTP 403): Policy expired"


@pytest.mark.posix_only("makes a FIFO")
@async_test
async def test_local_file_problems_are_permanent_and_send_nothing(tmp_path: Any) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    small, _ = write_file(tmp_path, "small", 10)
    cases = [
        (str(tmp_path / "nope"), 1, ErrorKind.MISSING),
        (str(tmp_path), 1, ErrorKind.UNREADABLE),  # a directory
        (str(fifo), 1, ErrorKind.UNREADABLE),  # would block a thread forever without O_NONBLOCK
        (os.path.join(small, "x"), 1, ErrorKind.UNREADABLE),  # a file used as a directory
    ]
    async with harness() as (fake, client):
        for path, size, label in cases:
            err = await fails(client.upload(Presigned(f"{fake.root}/s3/", FIELDS), path, size, "x"))
            assert (err.kind, err.error_kind) == (Severity.PERMANENT, label), path
    assert fake.requests("s3/") == []


async def upload_unreadable(path: str) -> None:
    """The test below, run in a child process that cannot read past file modes."""
    async with harness() as (fake, client):
        err = await fails(client.upload(Presigned(f"{fake.root}/s3/", FIELDS), path, 10, "x"))
    assert (err.kind, err.error_kind) == (Severity.PERMANENT, ErrorKind.UNREADABLE)


@pytest.mark.posix_only("needs file modes that bind (chmod)")
def test_a_file_without_read_permission_is_unreadable(tmp_path: Any) -> None:
    """In a child process without root's right to read any file, so the mode bites."""
    path, _ = write_file(tmp_path, "secret", 10)
    os.chmod(path, 0)
    script = (
        "import asyncio, sys; from tests.test_client import upload_unreadable;"
        " asyncio.run(upload_unreadable(sys.argv[1]))"
    )
    done = subprocess.run(
        [*without_dac_override(), sys.executable, "-c", script, os.fsdecode(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@async_test
async def test_debug_log_has_one_line_per_request_and_no_secrets(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="uploader.http")
    path, _ = write_file(tmp_path, "a", 3)
    async with harness() as (fake, client):
        fake.on(PRESIGN, reply(200, {"url": f"{fake.root}/s3/", "fields": FIELDS}))
        presigned = await client.presign("a", 3)
        await client.upload(presigned, path, 3, "a")
    lines = [r.getMessage() for r in caplog.records if r.name == "uploader.http"]
    assert len(lines) == 2
    assert lines[0].startswith("POST upload-presigned-url/ 200 ")
    assert lines[1].startswith("POST /s3/ 204 ")
    for secret in (KEY, "POLICY-SECRET", "SIGNATURE-SECRET"):
        assert all(secret not in line for line in lines)


# --- upload to moto's S3 --------------------------------------------------------------------


@pytest.mark.parametrize("size", [1000, 1024 * 1024 + 7])
@async_test
async def test_upload_is_accepted_by_s3_and_stores_the_exact_bytes(
    s3: Any, tmp_path: Any, size: int
) -> None:
    path, data = write_file(tmp_path, "doc.pdf", size)
    key = f"media/kb/{size}/doc.pdf"
    post = s3.generate_presigned_post(
        S3_BUCKET, key, Conditions=[["content-length-range", 1, size]], ExpiresIn=600
    )
    async with harness() as (_, client):
        await client.upload(Presigned(post["url"], post["fields"]), path, size, "doc.pdf")
    assert s3.get_object(Bucket=S3_BUCKET, Key=key)["Body"].read() == data


# --- base URL -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://api.maiagent.ai/api/v1/",
        "http://127.0.0.1:8000/api/v1/",
        "http://127.9.9.9/",
        "http://localhost:8000",
        "http://[::1]:8000/api/",
    ],
)
def test_https_and_loopback_need_no_warning(url: str) -> None:
    assert check_base_url(url, insecure=False) is None


def test_plain_http_elsewhere_is_refused_unless_insecure() -> None:
    with pytest.raises(ValueError, match="plain http"):
        check_base_url("http://api.example.com/api/v1/", insecure=False)
    warning = check_base_url("http://api.example.com/api/v1/", insecure=True)
    assert warning is not None and "api.example.com" in warning


@pytest.mark.parametrize("url", ["ftp://host/", "api.maiagent.ai/api/v1/", "https:///x"])
def test_a_malformed_base_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError):
        check_base_url(url, insecure=True)
