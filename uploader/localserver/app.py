"""The server: its routes, the gate every API and S3 request passes (counters, the request-wide
fault knobs, auth, throttling), and its lifecycle (start, stop, outage, restart, a thread)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import aiohttp
from aiohttp import web

from uploader.localserver.api import KnowledgeBaseApi
from uploader.localserver.control import Control
from uploader.localserver.faults import OUTAGE_MODES
from uploader.localserver.s3 import CHUNK, PACED_CHUNK, S3Store
from uploader.localserver.state import running_loop
from uploader.localserver.wire import API_PREFIX, answer, csv_set, detail, drop, read_json, s3_error

_PADDING = b" " * CHUNK
log = logging.getLogger("uploader.localserver")


@web.middleware
async def _went_away(
    request: web.Request, handler: Callable[[web.Request], Any]
) -> web.StreamResponse:
    """A client killed mid-request (kill -9 of a run, a dropped connection) is said in one
    line: aiohttp logged a traceback of its own internals for each, which buried what a demo
    or a test printed. The answer goes nowhere: aiohttp drops a write to a closed connection."""
    try:
        return await handler(request)
    except ConnectionError as exc:
        log.warning("%s %s: the client went away (%s)", request.method, request.path, exc)
        return web.Response(status=400)


class MaiAgentServer(Control, KnowledgeBaseApi, S3Store):
    """In-memory MaiAgent knowledge-base API plus an S3 POST endpoint, with fault knobs.

    `kbs`: knowledge-base ids (named after themselves) or a mapping id -> name.
    `dialect`: "docs" or "examples" (see the package docstring); may be changed while running.
    """

    def make_app(self) -> web.Application:
        # under s3_bandwidth a connection reads ahead little (see _narrow_socket)
        narrow = {"read_bufsize": PACED_CHUNK} if self.faults.s3_bandwidth > 0 else {}
        app = web.Application(middlewares=[_went_away, self._middleware], handler_args=narrow)
        kbs = API_PREFIX + "knowledge-bases/"
        files = kbs + "{kb}/files/"
        app.add_routes(
            [
                web.post(API_PREFIX + "upload-presigned-url/", self._presign, name="presign"),
                web.post("/s3/{bucket}/", self._s3_post, name="s3"),
                web.get(kbs, self._kbs, name="kbs"),
                web.get(kbs + "{kb}/", self._kb, name="kb"),
                web.get(kbs + "{kb}/labels/", self._list_labels, name="labels"),
                web.post(kbs + "{kb}/labels/", self._create_label, name="label_create"),
                web.post(files, self._register, name="register"),
                web.get(files, self._list, name="list"),
                web.post(files + "batch-delete/", self._batch_delete, name="batch_delete"),
                web.patch(files + "batch-reparse/", self._reparse, name="reparse"),
                web.get(
                    files + "{id}/latest-failed-reason/",
                    self._failed_reason,
                    name="failed_reason",
                ),
                web.get(
                    API_PREFIX + "parsers/supported-file-types/",
                    self._supported_types,
                    name="supported_types",
                ),
                web.get(files + "{id}/", self._get, name="get"),
                web.delete(files + "{id}/", self._delete, name="delete"),
                web.route(
                    "*",
                    files + "{id}/update-metadata/",
                    self._update_metadata,
                    name="update_metadata",
                ),
                web.get("/{key:media/.+}", self._media, name="media"),
                web.get("/_control/stats", self._control_stats),
                web.delete("/_control/stats", self._control_reset_stats),
                web.get("/_control/entries", self._control_entries),
                web.post("/_control/entries", self._control_add_entry),
                web.post("/_control/fill", self._control_fill),
                web.delete("/_control/entries/{id}", self._control_delete_entry),
                web.get("/_control/entries/{id}/content", self._control_entry_content),
                web.get("/_control/records", self._control_records),
                web.get("/_control/keys", self._control_keys),
                web.post("/_control/faults", self._control_faults),
                web.post("/_control/outage", self._control_outage),
                web.get("/_control/objects/{key:.+}", self._control_object),
            ]
        )
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on the running loop; `base_url` is valid afterwards."""
        self._host, self._port = host, port
        self._loop = asyncio.get_running_loop()
        await self._listen()

    async def stop(self) -> None:
        await self._unlisten()
        for task in list(self._tasks):
            task.cancel()
        self._loop = None

    async def _listen(self) -> None:
        """Open the port (the same one after a restart: `_port` is fixed by the first start)."""
        if self._runner is not None:
            return
        runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        if self.faults.s3_bandwidth > 0:
            await web.SockSite(runner, self._narrow_socket(), ssl_context=self._ssl).start()
        else:
            await web.TCPSite(
                runner, self._host, self._port, backlog=1024, ssl_context=self._ssl
            ).start()
        self._runner = runner
        self._port = runner.addresses[0][1]
        scheme = "https" if self._ssl else "http"
        self._origin = f"{scheme}://{self._host}:{self._port}"
        self.base_url = self._origin + API_PREFIX

    def _narrow_socket(self) -> socket.socket:
        """A listening socket whose connections take little into their receive buffers
        (s3_bandwidth, set at start): the bytes then wait on the client's side, as behind a
        slow link, instead of a loopback buffer grown to megabytes taking a file at once."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, PACED_CHUNK)
        sock.bind((self._host, self._port))
        return sock

    async def _unlisten(self) -> None:
        """Close the port and every connection: clients see connection refused until _listen."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def shutdown(self) -> None:
        """Stop listening, keeping port and state: every request is refused until `restart()`."""
        self._await_on_loop(self._unlisten())

    def restart(self) -> None:
        """Listen again on the same port, with everything stored before `shutdown()`."""
        self._await_on_loop(self._listen())

    def outage(self, seconds: float, mode: str = "refuse") -> None:
        """For `seconds` from now: "refuse" closes the port (connection refused), "503" answers
        every API and S3 request 503. Returns at once; the service comes back by itself."""
        if mode not in OUTAGE_MODES:
            raise ValueError(f"mode must be one of {OUTAGE_MODES}")
        self._await_on_loop(self._outage(seconds, mode))

    async def _outage(self, seconds: float, mode: str) -> None:
        if mode == "503":
            self._unavailable_until = time.monotonic() + seconds
            return
        await self._unlisten()
        loop = asyncio.get_running_loop()
        loop.call_later(seconds, lambda: self._spawn(self._listen()))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @contextlib.contextmanager
    def run_in_thread(self) -> Iterator[MaiAgentServer]:
        """Serve from a daemon thread with its own loop, so sync and async tests can both use it."""
        ready = threading.Event()
        errors: list[BaseException] = []
        thread = threading.Thread(
            target=self._thread_main, args=(ready, errors), name="maiagent-server", daemon=True
        )
        thread.start()
        ready.wait()
        if errors:
            raise errors[0]
        try:
            yield self
        finally:
            loop, stopping = self._loop, self._stopping
            if loop is not None and stopping is not None:
                loop.call_soon_threadsafe(stopping.set)
            thread.join(timeout=10)
            if errors:
                raise errors[0]

    def _thread_main(self, ready: threading.Event, errors: list[BaseException]) -> None:
        try:
            asyncio.run(self._serve_until_stopped(ready))
        except BaseException as exc:
            errors.append(exc)
        finally:
            ready.set()

    async def _serve_until_stopped(self, ready: threading.Event) -> None:
        self._stopping = asyncio.Event()
        await self.start()
        ready.set()
        try:
            await self._stopping.wait()
        finally:
            await self.stop()

    def _await_on_loop(self, coro: Coroutine[Any, Any, None]) -> None:
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("the server is not running")
        if running_loop() is loop:
            self._spawn(coro)
            return
        asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=10)

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        if request.path.startswith("/_control/"):
            return await handler(request)
        stats = self._stats
        name = request.match_info.route.name
        if name == "media":
            stats["media"] += 1
            return await handler(request)
        stats["total"] += 1
        if name in stats:
            stats[name] += 1
        if name in csv_set(self._shape("missing_calls")):
            return detail(404, "Not found.")
        faults = self.faults
        if faults.latency > 0:
            await asyncio.sleep(faults.latency)
        is_api = request.path.startswith(API_PREFIX)
        if self._chance(faults.drop_rate):
            return drop(request)
        if (
            faults.unavailable
            or (self._unavailable_until and time.monotonic() < self._unavailable_until)
            or self._chance(faults.error_rate)
        ):
            if is_api:
                return detail(503, "Service temporarily unavailable, try again later.")
            return s3_error(503, "SlowDown", "Please reduce your request rate.")
        if is_api and faults.redirect_to:
            return web.Response(status=302, headers={"Location": faults.redirect_to})
        if is_api:
            # DRF authenticates before it throttles.
            if request.headers.get("Authorization") != self._auth:
                return detail(401, "Invalid API key")
            if self._throttled():
                return answer(
                    {"detail": "Request was throttled."}, 429, headers={"Retry-After": "1"}
                )
        response = await handler(request)
        if faults.huge_answer_bytes > 0 and name in csv_set(faults.huge_answer_on):
            return await self._padded(request, response)
        return response

    async def _padded(
        self, request: web.Request, response: web.StreamResponse
    ) -> web.StreamResponse:
        """The same answer behind `huge_answer_bytes` of leading whitespace (still valid JSON),
        streamed chunk by chunk so the server never holds it."""
        transport = request.transport
        if not isinstance(response, web.Response) or transport is None or transport.is_closing():
            return response
        stream = web.StreamResponse(status=response.status)
        stream.content_type = response.content_type
        stream.enable_chunked_encoding()
        try:
            await stream.prepare(request)
            left = self.faults.huge_answer_bytes
            while left > 0:
                await stream.write(_PADDING[: min(left, CHUNK)])
                left -= CHUNK
            if isinstance(response.body, bytes):
                await stream.write(response.body)
            await stream.write_eof()
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            pass  # the client stopped reading: what a body cap should do
        return stream

    def _throttled(self) -> bool:
        """Sliding one-second window; like DRF, refused requests do not use up the budget."""
        limit = self.faults.rps_limit
        if limit <= 0:
            return False
        now = time.monotonic()
        window = self._window
        while window and window[0] <= now - 1.0:
            window.popleft()
        if len(window) >= limit:
            return True
        window.append(now)
        return False

    async def _control_outage(self, request: web.Request) -> web.Response:
        """{"seconds": s, "mode": "refuse"|"503"}; a refusal starts just after this answer."""
        body = await read_json(request)
        seconds = body.get("seconds") if isinstance(body, dict) else None
        mode = body.get("mode", "refuse") if isinstance(body, dict) else None
        if not isinstance(seconds, (int, float)) or mode not in OUTAGE_MODES:
            return detail(400, f'Expected {{"seconds": s, "mode": one of {OUTAGE_MODES}}}.')
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, lambda: self._spawn(self._outage(seconds, mode)))
        return web.Response(status=204)
