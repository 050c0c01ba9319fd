"""Every HTTP call of the uploader, and what each outcome means for the job that made it.

The worker never looks at status codes or aiohttp exceptions: it gets a return value or an
`ApiError` whose `kind` says whether to retry, give up on the file, or stop the run.
"""

from __future__ import annotations

import asyncio
import email.utils
import html
import io
import ipaddress
import json
import logging
import math
import os
import random
import re
import stat
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import aiohttp
from aiohttp.abc import AbstractStreamWriter

Kind = Literal["transient", "permanent", "fatal"]

_log = logging.getLogger("uploader.http")

MIB = 1024 * 1024
SMALL_FILE = 256 * 1024  # read whole: one executor hop instead of a streamed payload
_CHUNK = 256 * 1024  # large chunks: fewer executor hops per streamed file
_CONNECT_TIMEOUT = 10.0  # separate from the total so a failed connect is known not to have sent
_MAX_PAUSE = 300.0  # a silly Retry-After must not freeze the pool for hours
_DETAIL_CHARS = 200
_REDACT_MIN = 8  # shortest API key that error messages are scrubbed of
_JSON_SEPARATORS = (",", ":")
_S3_OK = frozenset((200, 201, 204))
_XML_TAG = re.compile(rb"<(Code|Message)>(.*?)</\1>", re.S)


class ApiError(Exception):
    """A failed call, classified so the worker can act on it without knowing HTTP.

    `kind`: transient (retry later), permanent (this file fails), fatal (stop the run).
    `error_kind`: a short stable label stored in the database and used by `retry-failed --kind`.
    `maybe_applied`: the register call may have taken effect although it did not answer success,
    so the caller must look in the knowledge-base listing before registering again.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: Kind,
        error_kind: str,
        status: int | None = None,
        retry_after: float | None = None,
        maybe_applied: bool = False,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.error_kind = error_kind
        self.status = status
        self.retry_after = retry_after
        self.maybe_applied = maybe_applied


class RateLimiter:
    """Pacing shared by all workers, so one 429 slows the whole pool rather than one job.

    A steady rate is a token bucket of capacity one (requests evenly spaced, no bursts);
    `pause` sets a time before which nobody sends. With no rate and no pause in force,
    `acquire` returns without sleeping or locking.
    """

    def __init__(self, rate: float | None = None) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate limit must be positive")
        self._interval = 1.0 / rate if rate else 0.0
        self._next_slot = 0.0
        self._resume_at = 0.0

    def pause(self, seconds: float) -> None:
        """Hold every sender until `seconds` from now (an earlier, longer pause stays)."""
        self._resume_at = max(self._resume_at, time.monotonic() + seconds)

    async def acquire(self) -> None:
        if self._resume_at > time.monotonic():
            await self._sleep_through_pause()
        if self._interval:
            await self._take_slot()

    async def _sleep_through_pause(self) -> None:
        # A pause may be extended while we sleep: look again on waking.
        while (left := self._resume_at - time.monotonic()) > 0:
            await asyncio.sleep(left)

    async def _take_slot(self) -> None:
        # Reserving the slot before sleeping keeps callers in order without a lock.
        now = time.monotonic()
        slot = max(now, self._next_slot)
        self._next_slot = slot + self._interval
        if slot > now:
            await asyncio.sleep(slot - now)
            await self._sleep_through_pause()


def check_base_url(url: str, insecure: bool) -> str | None:
    """Refuse to send the API key in clear text except to this machine.

    Returns a warning to show when plain http to another host is allowed by `insecure`.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base URL must look like https://host/path/, got {url!r}")
    if parts.scheme == "https" or _is_loopback(parts.hostname):
        return None
    if not insecure:
        raise ValueError(
            f"refusing to send the API key over plain http to {parts.hostname};"
            " use https, or --insecure if you really mean it"
        )
    return f"the API key goes over plain http to {parts.hostname}"


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Presigned:
    url: str
    fields: dict[str, str]


class _FilePart(aiohttp.Payload):
    """A file streamed from disk whose length is fixed when it is opened.

    aiohttp computes Content-Length from `size` before sending (S3 refuses chunked POSTs);
    sending exactly that many bytes keeps the request well-formed even if the file grows
    meanwhile, and a file that shrinks fails the request instead of stalling it.
    """

    def __init__(self, file: io.FileIO, size: int) -> None:
        super().__init__(file, content_type="application/octet-stream")
        self._size = size

    async def write(self, writer: AbstractStreamWriter) -> None:
        # pread, not read: when an early answer lets the caller close the file while a read
        # still runs in its thread, that read cannot move the position of whatever file
        # reuses the descriptor number.
        loop = asyncio.get_running_loop()
        fd, offset = self._value.fileno(), 0
        while offset < self._size:
            length = min(self._size - offset, _CHUNK)
            chunk = await loop.run_in_executor(None, os.pread, fd, length, offset)
            if not chunk:
                raise OSError("file shrank while it was being uploaded")
            await writer.write(chunk)
            offset += len(chunk)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a streamed file part is never decoded")


class MaiAgentClient:
    """The MaiAgent API and the S3 POST, over one shared session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        api_key: str,
        limiter: RateLimiter,
        timeout: float = 60.0,
        throttle_retries: int = 8,
    ) -> None:
        self._session = session
        self._base = base_url if base_url.endswith("/") else base_url + "/"
        self._key = api_key
        self._limiter = limiter
        self._timeout = timeout
        self._throttle_retries = throttle_retries
        self._api_timeout = _timeout(timeout)
        # Built once: aiohttp copies them per request anyway.
        self._get_headers = {"Authorization": f"Api-Key {api_key}", "Accept": "application/json"}
        self._post_headers = {**self._get_headers, "Content-Type": "application/json"}

    async def presign(self, filename: str, size: int) -> Presigned:
        body = {
            "filename": filename,
            "modelName": "chatbot-file",
            "fieldName": "file",
            "fileSize": size,
        }
        answer = self._json(
            await self._api("POST", "upload-presigned-url/", "presign", body), "presign"
        )
        if not isinstance(answer, dict):
            raise self._bad_response("presign", "the answer is not an object")
        url, fields = answer.get("url"), answer.get("fields")
        if not isinstance(url, str) or not isinstance(fields, dict):
            raise self._bad_response("presign", "no url and fields in the answer")
        return Presigned(url, {str(k): str(v) for k, v in fields.items()})

    async def upload(self, p: Presigned, path: str | bytes, size: int, filename: str) -> None:
        """POST the file to S3, streamed from disk unless it is small."""
        if size <= SMALL_FILE:
            content = _open_content(path, size)  # a local read costs less than a thread hop
        else:
            content = await asyncio.get_running_loop().run_in_executor(
                None, _open_content, path, size
            )
        try:
            form, headers = await _form(p.fields, content, size, filename)
            timeout = _timeout(self._timeout + size / MIB)
            where = urlsplit(p.url).path
            status, body, retry_after = await self._send(
                "POST", p.url, where, form, headers, timeout, "S3 upload", False
            )
        finally:
            if not isinstance(content, bytes):
                content.close()
        if status not in _S3_OK:
            raise self._s3_error(status, body, retry_after)

    async def register(self, kb_id: str, items: list[tuple[str, str]]) -> list[dict]:
        files = [{"file": key, "filename": name} for key, name in items]
        body = await self._api(
            "POST", _kb_path(kb_id), "register", {"files": files}, kb_id=kb_id, unsafe=True
        )
        created = self._json(body, "register", unsafe=True)
        if not isinstance(created, list) or not all(
            isinstance(entry, dict) and "id" in entry for entry in created
        ):
            raise self._bad_response("register", "not a list of entries with ids", unsafe=True)
        return created

    async def list_files(self, kb_id: str, page: int, page_size: int) -> dict:
        path = f"{_kb_path(kb_id)}?page={page}&page_size={page_size}"
        listing = self._json(await self._api("GET", path, "list files", kb_id=kb_id), "list files")
        if not isinstance(listing, dict) or not isinstance(listing.get("results"), list):
            raise self._bad_response("list files", "no results list in the answer")
        return listing

    async def get_file(self, kb_id: str, file_id: str) -> dict | None:
        path = _file_path(kb_id, file_id)
        body = await self._api("GET", path, "get file", gone_ok=True)
        if body is None:
            return None
        entry = self._json(body, "get file")
        if not isinstance(entry, dict):
            raise self._bad_response("get file", "not an object")
        return entry

    async def delete_file(self, kb_id: str, file_id: str) -> None:
        """Delete one file; one already gone counts as deleted."""
        await self._api("DELETE", _file_path(kb_id, file_id), "delete file", gone_ok=True)

    async def batch_delete(self, kb_id: str, ids: list[str]) -> None:
        path = _kb_path(kb_id) + "batch-delete/"
        await self._api("POST", path, "batch delete", {"ids": ids}, kb_id=kb_id)

    async def check_kb(self, kb_id: str) -> int:
        """One cheap listing, so a bad key or unknown knowledge base fails the run at once."""
        count = (await self.list_files(kb_id, 1, 1)).get("count")
        if not isinstance(count, int):
            raise self._bad_response("list files", "no count in the answer")
        return count

    async def _api(
        self,
        method: str,
        path: str,
        op: str,
        payload: object = None,
        *,
        kb_id: str | None = None,
        gone_ok: bool = False,
        unsafe: bool = False,
    ) -> bytes | None:
        """Send one API request, re-sending it through 429s; returns the 2xx body.

        `kb_id` makes a 404 mean "no such knowledge base"; `gone_ok` makes it mean "that file
        is gone" (returns None); `unsafe` marks a call that must not be repeated blindly.
        """
        data = (
            None if payload is None else json.dumps(payload, separators=_JSON_SEPARATORS).encode()
        )
        headers = self._get_headers if data is None else self._post_headers
        url = self._base + path
        for attempt in range(self._throttle_retries + 1):
            await self._limiter.acquire()
            status, body, retry_after = await self._send(
                method, url, path, data, headers, self._api_timeout, op, unsafe
            )
            if status != 429:
                break
            pause = retry_after if retry_after is not None else _default_pause(attempt)
            self._limiter.pause(pause)
        else:
            message = f"{op}: still throttled after {self._throttle_retries} retries (HTTP 429)"
            raise self._error(message, "transient", "throttled", status=429, retry_after=pause)
        if 200 <= status < 300:
            return body
        if status == 404 and gone_ok:
            return None
        raise self._status_error(op, status, body, kb_id, unsafe)

    async def _send(
        self,
        method: str,
        url: str,
        where: str,
        data: Any,
        headers: dict[str, str] | None,
        timeout: aiohttp.ClientTimeout,
        op: str,
        unsafe: bool,
    ) -> tuple[int, bytes, float | None]:
        """One request on the wire; returns (status, body, Retry-After seconds of a 429)."""
        start = time.perf_counter()
        try:
            async with self._session.request(
                method, url, data=data, headers=headers, timeout=timeout, allow_redirects=False
            ) as resp:
                body = await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            _log_request(method, where, type(exc).__name__, start)
            raise self._network_error(op, exc, timeout.total, unsafe) from exc
        _log_request(method, where, resp.status, start)
        retry_after = _retry_after(resp.headers.get("Retry-After")) if resp.status == 429 else None
        return resp.status, body, retry_after

    def _json(self, body: bytes | None, op: str, unsafe: bool = False) -> Any:
        try:
            return json.loads(body or b"")
        except ValueError:
            raise self._bad_response(op, "the answer is not JSON", unsafe) from None

    def _status_error(
        self, op: str, status: int, body: bytes, kb_id: str | None, unsafe: bool
    ) -> ApiError:
        detail = _detail(body)
        suffix = f": {detail}" if detail else ""
        if status in (401, 403):
            return self._error(f"API key rejected (HTTP {status}){suffix}", "fatal", "auth", status)
        if status == 404 and kb_id is not None:
            message = (
                f"knowledge base {kb_id} not found (HTTP 404):"
                " check --kb and that --base-url ends in /api/v1/"
            )
            return self._error(message, "fatal", "kb_not_found", status)
        message = f"{op} failed (HTTP {status}){suffix}"
        if status == 408:
            return self._error(message, "transient", "timeout", status)
        if status >= 500:
            return self._error(message, "transient", "http_5xx", status, maybe_applied=unsafe)
        return self._error(message, "permanent", f"http_{status // 100}xx", status)

    def _s3_error(self, status: int, body: bytes, retry_after: float | None) -> ApiError:
        code, detail = _s3_code(body), _detail(body)
        suffix = f": {detail or code}" if detail or code else ""
        if status == 429 or status >= 500:
            message = f"S3 upload failed (HTTP {status}){suffix}"
            label = "throttled" if status == 429 else "http_5xx"
            return self._error(message, "transient", label, status, retry_after=retry_after)
        message = f"S3 upload rejected (HTTP {status}){suffix}"
        if status == 403 and "expired" in detail.lower():
            return self._error(message, "transient", "policy_expired", status)
        if code == "RequestTimeout" or status == 408:
            return self._error(message, "transient", "timeout", status)
        if code == "EntityTooLarge":
            return self._error(message, "permanent", "too_large", status)
        return self._error(message, "permanent", "s3_rejected", status)

    def _network_error(
        self, op: str, exc: BaseException, seconds: float | None, unsafe: bool
    ) -> ApiError:
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            return self._error(f"{op}: TLS certificate rejected ({exc})", "fatal", "tls")
        # Failing to connect is the one case where the request surely never left.
        never_sent = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
        connected = not isinstance(exc, never_sent)
        maybe = unsafe and connected
        if isinstance(exc, asyncio.TimeoutError):
            phase = "" if connected else " while connecting"
            message = f"{op} timed out{phase} (limit {seconds:g} s)"
            return self._error(message, "transient", "timeout", maybe_applied=maybe)
        reason = _one_line(str(exc)) or type(exc).__name__
        if isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)):
            message = f"{op}: connection failed ({reason})"
            return self._error(message, "transient", "network", maybe_applied=maybe)
        message = f"{op}: bad response ({reason})"
        return self._error(message, "transient", "bad_response", maybe_applied=maybe)

    def _bad_response(self, op: str, why: str, unsafe: bool = False) -> ApiError:
        return self._error(f"{op}: {why}", "transient", "bad_response", maybe_applied=unsafe)

    def _error(
        self,
        message: str,
        kind: Kind,
        error_kind: str,
        status: int | None = None,
        *,
        retry_after: float | None = None,
        maybe_applied: bool = False,
    ) -> ApiError:
        """Every error about a request leaves through here, so none can carry the API key.

        A key too short to tell from ordinary text is left alone: replacing it would mangle
        the message (key "k" in ".../knowledge-bases/") and hide nothing worth hiding.
        """
        if len(self._key) >= _REDACT_MIN:
            message = message.replace(self._key, "[redacted]")
        return ApiError(
            message,
            kind=kind,
            error_kind=error_kind,
            status=status,
            retry_after=retry_after,
            maybe_applied=maybe_applied,
        )


def make_session(workers: int) -> aiohttp.ClientSession:
    """One session for the whole run (call it inside the event loop), pooled to the workers."""
    connector = aiohttp.TCPConnector(limit=workers * 2 + 4, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(),
        raise_for_status=False,
        cookie_jar=aiohttp.DummyCookieJar(),
    )


def _timeout(total: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=total, sock_connect=min(total, _CONNECT_TIMEOUT))


def _kb_path(kb_id: str) -> str:
    return f"knowledge-bases/{quote(str(kb_id), safe='')}/files/"


def _file_path(kb_id: str, file_id: str) -> str:
    return f"{_kb_path(kb_id)}{quote(str(file_id), safe='')}/"


def _open_content(path: str | bytes, size: int) -> bytes | io.FileIO:
    """Open the file (a big one in a worker thread): its bytes if small, else the open file.

    O_NONBLOCK keeps a FIFO that slipped into the queue from hanging the thread.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError as exc:
        raise _file_error("missing", exc) from exc
    except OSError as exc:
        raise _file_error("unreadable", exc) from exc
    try:
        _check_file(fd, size)
    except BaseException:
        os.close(fd)
        raise
    file = io.FileIO(fd, "rb")
    if size > SMALL_FILE:
        return file
    with file:
        try:
            data = file.readall()
        except OSError as exc:
            raise _file_error("unreadable", exc) from exc
    if len(data) != size:
        raise _changed(size, len(data))
    return data


def _check_file(fd: int, size: int) -> None:
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise _file_error("unreadable", exc) from exc
    if not stat.S_ISREG(st.st_mode):
        raise _file_error("unreadable", None, "not a regular file")
    if st.st_size != size:
        raise _changed(size, st.st_size)


def _file_error(label: str, exc: OSError | None, why: str = "") -> ApiError:
    reason = why or (exc.strerror if exc and exc.strerror else str(exc))
    return ApiError(f"local file {label} ({reason})", kind="permanent", error_kind=label)


def _changed(queued: int, now: int) -> ApiError:
    # Sending other bytes than were queued would break the size the KB entry is matched by.
    message = f"local file changed since it was queued ({queued} bytes then, {now} now)"
    return ApiError(message, kind="permanent", error_kind="changed")


async def _form(
    fields: dict[str, str], content: bytes | io.FileIO, size: int, filename: str
) -> tuple[bytes | aiohttp.MultipartWriter, dict[str, str] | None]:
    """The form body and its headers: the policy fields first, the file last (S3 ignores
    whatever follows the file).

    A small form goes as one buffer: written part by part it costs a send() per piece.
    """
    form = aiohttp.MultipartWriter("form-data")
    for name, value in fields.items():
        form.append(value).set_content_disposition("form-data", name=name)
    if isinstance(content, bytes):
        part: aiohttp.Payload = aiohttp.BytesPayload(content)
    else:
        part = _FilePart(content, size)
    # A non-UTF-8 name arrives with surrogates, which cannot be quoted into a header.
    shown = filename.encode("utf-8", "replace").decode("utf-8")
    part.set_content_disposition("form-data", name="file", filename=shown)
    form.append_payload(part)
    if isinstance(content, bytes):
        return await form.as_bytes(), {"Content-Type": form.content_type}
    return form, None


def _default_pause(attempt: int) -> float:
    return min(2.0**attempt, 30.0)


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header, given as seconds or as an HTTP date."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), _MAX_PAUSE)


def _detail(body: bytes) -> str:
    """The server's own explanation: JSON `detail`, XML `<Message>`, or the text itself."""
    head = body[:4096]
    if head.lstrip().startswith(b"<"):
        return _one_line(
            html.unescape(_xml_tags(head).get(b"Message", b"").decode("utf-8", "replace"))
        )
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and "detail" in parsed:
        return _one_line(str(parsed["detail"]))
    return _one_line(head.decode("utf-8", "replace"))


def _s3_code(body: bytes) -> str:
    return _xml_tags(body[:4096]).get(b"Code", b"").decode("ascii", "replace")


def _xml_tags(head: bytes) -> dict[bytes, bytes]:
    return {m.group(1): m.group(2) for m in _XML_TAG.finditer(head)}


def _one_line(text: str) -> str:
    return " ".join(text.split())[:_DETAIL_CHARS]


def _log_request(method: str, where: str, outcome: int | str, start: float) -> None:
    if _log.isEnabledFor(logging.DEBUG):
        elapsed = (time.perf_counter() - start) * 1000
        _log.debug("%s %s %s %.0f ms", method, where, outcome, elapsed)


BACKOFF_CAP = 60.0


def backoff(attempt: int, base: float, retry_after: float | None) -> float:
    """Exponential backoff with full jitter, never shorter than the server's Retry-After."""
    delay = random.uniform(0, min(BACKOFF_CAP, base * 2 ** max(attempt - 1, 0)))
    return max(delay, retry_after or 0.0)
