"""Every HTTP call of the uploader, and what each outcome means for the job that made it.

The worker never looks at status codes or aiohttp exceptions: it gets a return value or an
`ApiError` whose `kind` says whether to retry, give up on the file, or stop the run.
"""

from __future__ import annotations

import asyncio
import copy
import email.utils
import errno
import functools
import html
import io
import ipaddress
import itertools
import json
import logging
import math
import os
import re
import stat
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, TypeVar
from urllib.parse import quote, unquote, urljoin, urlsplit

from . import network, osfiles
from .bandwidth import Bandwidth, Progress, idle_watch
from .clock import ServiceClock
from .content import digest_of
from .errors import ApiError
from .i18n import _
from .limits import is_out_of_files, out_of_files_message
from .model import ErrorKind, Severity
from .transport import AiohttpTransport, Request, Timeout, TooLarge, Transport

if TYPE_CHECKING:
    # aiohttp is imported where a request is made (forms.py says why)
    import aiohttp

Method = Literal["PATCH", "POST"]
LabelForm = Literal["objects", "ids"]
T = TypeVar("T")

_log = logging.getLogger("uploader.http")

MIB = 1024 * 1024
SMALL_FILE = 256 * 1024  # read whole: one executor hop instead of a streamed payload
_CONNECT_TIMEOUT = 10.0  # separate from the total so a failed connect is known not to have sent
_MAX_PAUSE = 300.0  # a silly Retry-After must not freeze the pool for hours
_DETAIL_CHARS = 200
_REDACT_MIN = 8  # shortest part of the API key that error messages are scrubbed of
_JSON_SEPARATORS = (",", ":")
_S3_OK = frozenset((200, 201, 204))
_XML_TAG = re.compile(rb"<(Code|Message)>(.*?)</\1>", re.S)
MAX_BODY = 16 * MIB  # an API answer larger than this is garbage, not something to hold in memory
_ERROR_BODY = 64 * 1024  # of an error answer only the explanation at its head is used
_NUMBER = re.compile(r"\d+(\.\d*)?")
# The docs' "Duplicate File Upload" 400; MaiAgent is a Taiwanese service, so its own words too.
_DUPLICATE = re.compile(r"duplicat|already exist|重複|已存在", re.I)
# A 400 about the name shown rather than the key: a field error on `filename` (DRF's shape,
# alone or per file of the list), or a message naming it.
_FILENAME = re.compile(r"file ?name|檔名|文件名", re.I)
# The docs' 400 "unsupported file type" (and the service's own words for it).
_UNSUPPORTED = re.compile(
    r"unsupported (file )?type|file ?type .{0,40}not (supported|allowed|accepted)"
    r"|不支援的檔案|不支持的文件|檔案類型不支援",
    re.I,
)
# Keys a latest-failed-reason answer may carry its text under (the shape is not documented).
_REASON_KEYS = ("reason", "failedReason", "failed_reason", "latestFailedReason", "message", "error")


class Gate(Protocol):
    """What the client asks of a pool-wide outage gate (`outage.OutageGate`): wait before
    every request while the service is down, and hear of every answer."""

    async def wait_open(self) -> None: ...

    def record_success(self, sent_at: float | None = None) -> None: ...


class RateLimiter:
    """Pacing shared by all workers, so one 429 slows the whole pool rather than one job.

    A steady rate is a token bucket of capacity one (requests evenly spaced, no bursts);
    `pause` sets a time before which nobody sends. With no rate and no pause in force,
    `acquire` returns without sleeping or locking.
    """

    def __init__(self, rate: float | None = None) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate limit must be positive")  # a programming error, not shown
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
    # Checked here, once: every later use of the URL would raise these as a traceback.
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # "Invalid IPv6 URL": a '[' without its ']'
        raise ValueError(
            _("base URL {url!r} cannot be used: {why}").format(url=url, why=exc)
        ) from None
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number from 0 to 65535
    except ValueError:
        raise ValueError(
            _("base URL {url!r}: its port must be a number from 0 to 65535").format(url=url)
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            _("base URL must look like https://host/path/, got {url!r}").format(url=url)
        )
    if parts.scheme == "https" or _is_loopback(parts.hostname):
        return None
    if not insecure:
        raise ValueError(
            _(
                "refusing to send the API key over plain http to {host}; use https, or "
                "--allow-http if you really mean it"
            ).format(host=parts.hostname)
        )
    return _("the API key goes over plain http to {host}").format(host=parts.hostname)


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

    @property
    def key(self) -> str:
        return self.fields["key"]


class Uploaded(NamedTuple):
    """What was actually sent to S3: the open file's size and mtime, identical before and
    after streaming, so the caller records the content that is behind the key, and the
    content hash of the bytes sent (`content.py`; computed as they were read: no second read)."""

    size: int
    mtime_ns: int
    content_hash: str


class Label(NamedTuple):
    id: str
    name: str | None = None


class RemoteEntry(NamedTuple):
    """A knowledge-base file entry, read from any shape either source shows.

    `file` is the entry's `file` as served (the S3 key, or a media URL whose path ends with
    it); `key` is the path part of it, percent-decoded, without a leading slash: equal to the
    registered key when the media host serves keys at its root, ending with it otherwise. Match
    keys with `has_key`, never with `==`. `created_at` is epoch seconds; `status` the code.
    """

    id: str
    filename: str
    key: str | None
    size: int | None
    status: str | None
    created_at: float | None
    labels: tuple[Label, ...] = ()
    metadata: dict[str, Any] | None = None
    file: str | None = None
    status_message: str | None = None  # the docs' status object's `message`

    def has_key(self, key: str) -> bool:
        return key_matches(self.file, key)


class FilePage(NamedTuple):
    """One page of a listing as served: however many entries the service chose to send.

    `next` is absolute (a relative one is resolved against the page's URL) but not yet
    checked: `MaiAgentClient.next_files` refuses one that leaves the API's host.
    """

    entries: list[RemoteEntry]
    count: int | None  # type: ignore[assignment]  # a field, beside tuple's count()
    next: str | None

    def newest_first(self) -> bool:
        """createdAt never increases down the page (entries without one are not evidence)."""
        times = [e.created_at for e in self.entries if e.created_at is not None]
        return all(a >= b for a, b in itertools.pairwise(times))


class KnowledgeBase(NamedTuple):
    id: str
    name: str
    files_count: int | None


class Forms(NamedTuple):
    """How one answer spelled what the uploader reads, as `uploader check` reports it: the
    sources disagree, and only the service itself can say which it speaks. A field is None
    when the answer held no entry, or its first entry no such field."""

    answer: Literal["list", "page"]
    file: Literal["key", "url", "path"] | None
    status: Literal["string", "object"] | None
    created_at: Literal["int", "float", "digits", "iso"] | None
    size_field: str | None


def forms_of(answer: Any) -> Forms:
    """The forms of an answer already parsed without error (so every field is usable)."""
    results = answer if isinstance(answer, list) else answer.get("results") or []
    first = results[0] if results else {}
    file, status, created = first.get("file"), first.get("status"), first.get("createdAt")
    return Forms(
        answer="list" if isinstance(answer, list) else "page",
        file=None if not file else _file_form(file),
        status=None if status is None else "object" if isinstance(status, dict) else "string",
        created_at=None if created is None else _created_form(created),
        size_field=next((k for k in ("size", "fileSize", "file_size") if k in first), None),
    )


def _file_form(value: str) -> Literal["key", "url", "path"]:
    parts = urlsplit(value)
    if parts.scheme and parts.netloc:
        return "url"
    return "path" if value.startswith("/") else "key"


def _created_form(value: Any) -> Literal["int", "float", "digits", "iso"]:
    if isinstance(value, str):
        return "digits" if _NUMBER.fullmatch(value.strip()) else "iso"
    return "int" if isinstance(value, int) else "float"


@dataclass(frozen=True)
class RegisterItem:
    """One file of a register call: the S3 key, the name shown, and the optional extras the
    docs list per file (label ids, user-defined metadata, a parser id)."""

    key: str
    filename: str
    labels: tuple[str, ...] = ()
    metadata: Mapping[str, Any] | None = field(default=None, hash=False)
    parser: str | None = None

    def body(self, label_form: LabelForm) -> dict[str, Any]:
        item: dict[str, Any] = {"file": self.key, "filename": self.filename}
        if self.labels:
            item["labels"] = _label_body(self.labels, label_form)
        if self.metadata is not None:
            item["rawUserDefineMetadata"] = dict(self.metadata)
        if self.parser is not None:
            item["parser"] = self.parser
        return item


@dataclass(frozen=True)
class _Due:
    """A payload made by a register's fence: its body, and the time (wall clock) by which its
    request must be over."""

    body: object
    by: float


# Awaited just before a register is sent: the items that may still go, and the time of their
# (earliest) write-ahead, which bounds when the request may still be made (see `register`).
Fence = Callable[[Sequence[RegisterItem]], Awaitable[tuple[Sequence[RegisterItem], float]]]


def key_matches(file_or_key: str | None, key: str) -> bool:
    """Whether an entry's `file` names `key`: equal to it, or a URL (or path) whose
    percent-decoded path is the key or ends with "/" + key. Only the path counts: a signed
    media URL's query string never makes a match."""
    if not file_or_key or not key:
        return False
    if file_or_key == key:
        return True
    path = _file_path_of(file_or_key)
    want = key.lstrip("/")
    return path is not None and (path == want or path.endswith("/" + want))


def _file_path_of(value: str) -> str | None:
    """The key part of a `file` value: a URL's percent-decoded path (Django encodes it), a
    decoded absolute path ("/media/..." under a relative MEDIA_URL), or else the value itself
    (the examples' bare key, which nobody encoded); None for a URL that does not parse."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    if parts.scheme and parts.netloc:
        return unquote(parts.path).lstrip("/")
    if value.startswith("/"):
        return unquote(value).lstrip("/")
    return value


class _Bad(Exception):
    """A field of an answer that is not what the code relies on; becomes a bad_response
    naming the call and the field."""


def _label_body(ids: Sequence[str], form: LabelForm) -> list[Any]:
    return [{"id": i} for i in ids] if form == "objects" else list(ids)


def _id(value: Any, where: str) -> str:
    """Ids are non-empty strings (integers are taken as their digits): `"id": null` must
    never become a file id "None"."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _Bad(_("{where} is {what}, not an id").format(where=where, what=_what(value)))
    text = str(value)
    if not text.strip():
        raise _Bad(_("{where} is an empty id").format(where=where))
    return text


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _Bad(_("{where} is {what}, not a string").format(where=where, what=_what(value)))
    return value


def _what(value: Any) -> str:
    if value is None:
        return _("null")
    return {bool: _("a boolean"), dict: _("an object"), list: _("a list"), str: _("a string")}.get(
        type(value), _("a number") if isinstance(value, (int, float)) else type(value).__name__
    )


def _count(value: Any, where: str) -> int | None:
    """A count or size: a non-negative integer (or its digits), absent allowed."""
    if value is None:
        return None
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Bad(_("{where} is {what}, not a count").format(where=where, what=_what(value)))
    return value


def _status(value: Any, where: str) -> str | None:
    """A string (examples) or an object with a `code` (docs); unknown codes kept as they are."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("code")
        where += ".code"
    return _str(value, where)


def _status_message(value: Any) -> str | None:
    """The text beside a status code (docs: `{"code", "message"}`); None when there is none."""
    if isinstance(value, dict) and isinstance(value.get("message"), str):
        return _one_line(value["message"]) or None
    return None


def _created(value: Any, where: str) -> float | None:
    """Epoch milliseconds as a number or a string of digits, or an ISO 8601 string (taken as
    UTC when it has no offset); returns epoch seconds."""
    if value is None:
        return None
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value) / 1000.0
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isfinite(value):
            return value / 1000.0
    elif isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            return when.timestamp()
    raise _Bad(
        _("{where} is {what} that is not epoch ms or ISO 8601: {value!r:.40}").format(
            where=where, what=_what(value), value=value
        )
    )


def _labels(value: Any, where: str) -> tuple[Label, ...]:
    """`[{"id", "name"}]` objects (docs) or bare ids (one example)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _Bad(_("{where} is {what}, not a list").format(where=where, what=_what(value)))
    labels = []
    for n, item in enumerate(value):
        if isinstance(item, dict):
            name = item.get("name")
            labels.append(
                Label(
                    _id(item.get("id"), f"{where}[{n}].id"),
                    None if name is None else _str(name, f"{where}[{n}].name"),
                )
            )
        else:
            labels.append(Label(_id(item, f"{where}[{n}]")))
    return tuple(labels)


def parse_entry(raw: Any, where: str = "entry") -> RemoteEntry:
    """One entry in either source's shape; `_Bad` names the first field that is not usable."""
    if not isinstance(raw, dict):
        raise _Bad(_("{where} is {what}, not an object").format(where=where, what=_what(raw)))
    file = raw.get("file")
    if file is not None:
        file = _str(file, f"{where}.file")
    size = next((raw[k] for k in ("size", "fileSize", "file_size") if raw.get(k) is not None), None)
    metadata = raw.get("rawUserDefineMetadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise _Bad(
            _("{where} is {what}, not an object").format(
                where=f"{where}.rawUserDefineMetadata", what=_what(metadata)
            )
        )
    return RemoteEntry(
        id=_id(raw.get("id"), f"{where}.id"),
        filename=_str(raw.get("filename"), f"{where}.filename"),
        key=_file_path_of(file) if file else None,
        size=_count(size, f"{where}.size"),
        status=_status(raw.get("status"), f"{where}.status"),
        created_at=_created(raw.get("createdAt"), f"{where}.createdAt"),
        labels=_labels(raw.get("labels"), f"{where}.labels"),
        metadata=metadata,
        file=file,
        status_message=_status_message(raw.get("status")),
    )


def _parse_kb(raw: Any, where: str) -> KnowledgeBase:
    if not isinstance(raw, dict):
        raise _Bad(_("{where} is {what}, not an object").format(where=where, what=_what(raw)))
    files = raw.get("filesCount", raw.get("files_count"))
    return KnowledgeBase(
        _id(raw.get("id"), f"{where}.id"),
        _str(raw.get("name"), f"{where}.name"),
        _count(files, f"{where}.filesCount"),
    )


def _parse_label(raw: Any, where: str) -> Label:
    if not isinstance(raw, dict):
        raise _Bad(_("{where} is {what}, not an object").format(where=where, what=_what(raw)))
    return Label(_id(raw.get("id"), f"{where}.id"), _str(raw.get("name"), f"{where}.name"))


def _paginated(answer: Any, url: str) -> tuple[list[Any], int | None, str | None]:
    """(items, count, next) of a bare list or a `{"count", "next", "results"}` object; a
    relative `next` is resolved against the URL the page came from."""
    if isinstance(answer, list):
        return answer, len(answer), None
    if not isinstance(answer, dict):
        raise _Bad(_("the answer is {what}, not a list or a page").format(what=_what(answer)))
    results = answer.get("results")
    if not isinstance(results, list):
        raise _Bad(
            _("{where} is missing").format(where="results")
            if results is None
            else _("{where} is {what}").format(where="results", what=_what(results))
        )
    following = answer.get("next")
    if following is not None:
        following = _resolve(url, _str(following, "next")) if following else None
    return results, _count(answer.get("count"), "count"), following


def _resolve(base: str, link: str) -> str:
    """`link` made absolute against the page it came from; one that does not parse is kept
    as it is, for `MaiAgentClient._follow` to refuse when somebody asks for it."""
    try:
        return urljoin(base, link)
    except ValueError:
        return link


def _file_types(answer: Any) -> frozenset[str]:
    """The extensions of a supported-file-types answer: a list (or a page's results) of
    `{"fileType": "pdf", ...}` objects (the docs) or of bare strings; lower case, no dot."""
    results, _count, _next = _paginated(answer, "")
    types = set()
    for n, item in enumerate(results):
        if isinstance(item, dict):
            item = next(
                (item[k] for k in ("fileType", "file_type", "type", "extension") if k in item),
                None,
            )
        text = _str(item, f"results[{n}].fileType").strip().lstrip(".").lower()
        if text:
            types.add(text)
    if not types:
        raise _Bad(_("no file type in the answer"))
    return frozenset(types)


def _reason(answer: Any) -> str | None:
    """The text of a latest-failed-reason answer, whatever its shape: a string, or an object
    with the reason under one of _REASON_KEYS (a nested status object's message too)."""
    if isinstance(answer, str):
        return _one_line(answer) or None
    if isinstance(answer, dict):
        for key in _REASON_KEYS:
            value = answer.get(key)
            if isinstance(value, (str, dict)):
                found = _reason(value)
                if found:
                    return found
        status = answer.get("status")
        if isinstance(status, dict):
            return _status_message(status)
    return None


def _presigned(answer: Any) -> Presigned:
    if not isinstance(answer, dict):
        raise _Bad(_("the answer is {what}, not an object").format(what=_what(answer)))
    url = _str(answer.get("url"), "url")
    if not _is_http_url(url):
        raise _Bad(_("url is not an http(s) URL with a host: {url!r:.80}").format(url=url))
    fields = answer.get("fields")
    if not isinstance(fields, dict):
        raise _Bad(_("{where} is {what}, not an object").format(where="fields", what=_what(fields)))
    for name, value in fields.items():
        _str(value, f"fields.{name}")
    if not fields.get("key"):
        raise _Bad(_("{where} is missing").format(where="fields.key"))
    return Presigned(url, dict(fields))


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def _field(answer: Any, name: str) -> Any:
    if not isinstance(answer, dict):
        raise _Bad(_("the answer is {what}, not an object").format(what=_what(answer)))
    return answer.get(name)


def _entries(answer: Any) -> list[RemoteEntry]:
    results, _count, _next = _paginated(answer, "")
    return [parse_entry(raw, f"entry {n}") for n, raw in enumerate(results)]


def _items_page(
    answer: Any, url: str, parse: Callable[[Any, str], T]
) -> tuple[list[T], str | None]:
    results, _count, following = _paginated(answer, url)
    return [parse(raw, f"results[{n}]") for n, raw in enumerate(results)], following


def _file_page(answer: Any, url: str) -> FilePage:
    results, count, following = _paginated(answer, url)
    entries = [parse_entry(raw, f"results[{n}]") for n, raw in enumerate(results)]
    return FilePage(entries, count, following)


class _Gone:
    """The answer of a 404 that means "that entry is gone"."""


_GONE = _Gone()


class MaiAgentClient:
    """The MaiAgent API and the S3 POST, every request sent through one `Transport`
    (transport.py: aiohttp over one shared session, or a test's in-memory service).

    Every answer is read in whichever shape either source shows (MaiAgent's documentation or
    its example code; docs/localserver.md's dialects show both) and validated field by field:
    a caller gets typed values or an `ApiError`, never a dict.
    """

    def __init__(
        self,
        transport: Transport | aiohttp.ClientSession,
        base_url: str,
        api_key: str,
        limiter: RateLimiter,
        timeout: float = 60.0,
        throttle_retries: int = 8,
        max_body: int = MAX_BODY,
        bandwidth: Bandwidth | None = None,
        *,
        gate: Gate | None = None,
    ) -> None:
        """`transport` sends the requests (a session: through `AiohttpTransport`); `timeout`
        bounds each API request, and is the S3 upload's idle timeout: an upload is cut only
        when none of its bytes moved for that long (bandwidth.py); `bandwidth` (--bwlimit)
        paces every upload's bytes together; `gate`, the pool's outage gate, is waited on
        before every request and hears of every answer below 500 (`with_gate`)."""
        import aiohttp

        if isinstance(transport, aiohttp.ClientSession):
            transport = AiohttpTransport(transport)
        self._transport = transport
        self._gate = gate
        self._base = base_url if base_url.endswith("/") else base_url + "/"
        self._origin = _origin(self._base)
        self._key = api_key
        self._limiter = limiter
        self._timeout = timeout
        self._throttle_retries = throttle_retries
        self._max_body = max_body
        self._api_timeout = Timeout(timeout, min(timeout, _CONNECT_TIMEOUT))
        # no total: a slow uplink's upload takes what it takes, the idle watch cuts a stall
        self._upload_timeout = Timeout(None, min(timeout, _CONNECT_TIMEOUT))
        self._bandwidth = bandwidth
        # Built once: aiohttp copies them per request anyway.
        self._get_headers = {"Authorization": f"Api-Key {api_key}", "Accept": "application/json"}
        self._post_headers = {**self._get_headers, "Content-Type": "application/json"}
        self._upload_url: str | None = None  # the S3 endpoint last posted to, for `probe`
        self.clock = ServiceClock()
        """The API's clock against ours, from every API answer's Date header."""

    def with_gate(self, gate: Gate | None) -> MaiAgentClient:
        """This client behind `gate` (None: behind none): the same transport, limiter and
        clock, so one pool's requests share them with the rest of the run."""
        gated = copy.copy(self)
        gated._gate = gate
        return gated

    # --- uploading ---

    @property
    def timeout(self) -> float:
        """Seconds per API request (--timeout)."""
        return self._timeout

    async def presign(self, filename: str, size: int) -> Presigned:
        body = {
            "filename": filename,
            "modelName": "chatbot-file",
            "fieldName": "file",
            "fileSize": size,
        }
        answer = await self._api_json("POST", "upload-presigned-url/", "presign", body)
        return self._parse("presign", _presigned, answer)

    async def upload(
        self,
        p: Presigned,
        path: str | bytes,
        size: int,
        filename: str,
        *,
        follow_symlinks: bool = False,
    ) -> Uploaded:
        """POST the file to S3, streamed from disk unless it is small; returns what was sent.

        The file is opened without following a symbolic link in its last component (a link
        swapped in after enqueue would upload its target); `follow_symlinks` is for files
        enqueued with --follow-symlinks. Its size must still be `size` (the presign carried
        it) and its size, mtime and ctime must not move while it is read: otherwise the
        upload is not one version of the file, and a transient `changed` tells the caller
        to stat again and upload what is there now, never to register this key.
        """
        from . import forms

        if size <= SMALL_FILE:
            opened = _open_content(path, size, follow_symlinks)  # cheaper than a thread hop
        else:
            opened = await asyncio.get_running_loop().run_in_executor(
                None, _open_content, path, size, follow_symlinks
            )
        content, before = opened
        self._upload_url = p.url
        try:
            try:
                progress = Progress()
                form, part = await forms.form_of(
                    p.fields, content, size, filename, progress, self._bandwidth
                )
                status, body, retry_after = await self._post_watched(p.url, form, progress)
            except (ApiError, forms.Shrank) as exc:
                # A file cut short mid-stream shows up as a failed request: say what it was.
                if not isinstance(content, bytes):
                    _same_file(content.fileno(), before)
                if isinstance(exc, forms.Shrank):
                    raise _changed(size, _("it shrank while it was read")) from None
                raise
            if not isinstance(content, bytes):
                _same_file(content.fileno(), before)
        finally:
            if not isinstance(content, bytes):
                content.close()
        if status not in _S3_OK:
            raise self._s3_error(status, body, retry_after)
        if isinstance(content, bytes):
            digest = digest_of(content)
        else:
            assert isinstance(part, forms.FilePart) and part.content_hash is not None
            digest = part.content_hash
        return Uploaded(before.st_size, before.st_mtime_ns, digest)

    async def _post_watched(
        self, url: str, form: aiohttp.Payload, progress: Progress
    ) -> tuple[int, bytes, float | None]:
        """The S3 POST, cut only once its bytes stop moving for --timeout seconds: a stalled
        upload is a timeout (outage-like: nothing moves), a slow one is never cut."""
        where = urlsplit(url).path
        sending = asyncio.ensure_future(
            self._send("POST", url, where, form, None, self._upload_timeout, "S3 upload", False)
        )
        try:
            await idle_watch(progress, self._timeout, sending)
        except TimeoutError:
            await asyncio.gather(sending, return_exceptions=True)
            message = _("S3 upload stalled: no bytes moved for {seconds:g} s").format(
                seconds=self._timeout
            )
            raise self._error(message, Severity.TRANSIENT, ErrorKind.TIMEOUT) from None
        finally:
            if not sending.done():  # this task was cancelled: so is its upload
                sending.cancel()
            # its error is read here when this task is cancelled after the upload failed (a
            # gate giving up stops the run): else asyncio logs it as never retrieved
            await asyncio.gather(sending, return_exceptions=True)
        return sending.result()

    async def register(
        self,
        kb_id: str,
        items: Sequence[RegisterItem],
        label_form: LabelForm = "objects",
        *,
        fence: Fence | None = None,
    ) -> list[RemoteEntry]:
        """Register uploaded keys; returns the entries the answer shows (a bare list in the
        examples, a page's `results` in the docs), which need not be all or in order: match
        them with `RemoteEntry.has_key`.

        `fence`, when given, is awaited immediately before each send (after the rate limiter,
        a 429 pause, an outage pause) with the items, and returns those that may still be
        sent: only they go (none: the call raises the fence's error). The request must be over
        by the write-ahead's time it returns plus the timeout: a run that takes the rows over
        believes a register of theirs over by then (and a margin), and then registers the keys
        itself. A send delayed past it after the fence (a stopped or starved process, an outage
        pause) is not made (a `lease` error), and one under way is cut at it.

        A 400 saying the key is already in the knowledge base is `duplicate_key`: transient
        and maybe applied, since it means an earlier register of ours took effect.
        """
        entries, _forms = await self.register_forms(kb_id, items, label_form, fence=fence)
        return entries

    async def register_forms(
        self,
        kb_id: str,
        items: Sequence[RegisterItem],
        label_form: LabelForm = "objects",
        *,
        fence: Fence | None = None,
    ) -> tuple[list[RemoteEntry], Forms]:
        """`register`, and the forms its answer took (for `uploader check`)."""

        async def payload() -> object:
            if fence is None:
                return {"files": [item.body(label_form) for item in items]}
            sending, since = await fence(items)
            body = {"files": [item.body(label_form) for item in sending]}
            return _Due(body, since + self._timeout)

        answer = await self._api_json(
            "POST", _kb_path(kb_id), "register", payload, kb_id=kb_id, unsafe=True
        )
        return self._parse("register", _entries, answer, unsafe=True), forms_of(answer)

    # --- knowledge-base files ---

    async def list_files(self, kb_id: str, page: int, page_size: int) -> FilePage:
        """One page by number.

        Only `page_size` is sent: it is what the examples send for this endpoint, while
        `pageSize` belongs to older endpoints, and whether a server that does not know a
        parameter ignores it or refuses the request cannot be tried from here. The page size
        served is whatever comes back.
        """
        page_read, _forms = await self.list_files_forms(kb_id, page, page_size)
        return page_read

    async def list_files_forms(
        self, kb_id: str, page: int, page_size: int
    ) -> tuple[FilePage, Forms]:
        """`list_files`, and the forms its answer took (for `uploader check`)."""
        path = f"{_kb_path(kb_id)}?page={page}&page_size={page_size}"
        answer = await self._api_json("GET", path, "list files", kb_id=kb_id)
        url = self._base + path
        return self._parse("list files", lambda a: _file_page(a, url), answer), forms_of(answer)

    async def next_files(self, kb_id: str, next_url: str) -> FilePage:
        """The page a listing's `next` names; refused (bad_response) when it is not on the
        API's own scheme, host and port, since the request carries the API key."""
        return await self._file_page(self._follow(next_url, "list files"), kb_id)

    async def get_file(self, kb_id: str, file_id: str) -> RemoteEntry | None:
        """One entry, or None when it is gone."""
        answer = await self._api_json("GET", _file_path(kb_id, file_id), "get file", gone_ok=True)
        if answer is _GONE:
            return None
        return self._parse("get file", parse_entry, answer)

    async def delete_file(self, kb_id: str, file_id: str) -> None:
        """Delete one file; one already gone counts as deleted."""
        await self._api("DELETE", _file_path(kb_id, file_id), "delete file", gone_ok=True)

    async def batch_delete(self, kb_id: str, ids: list[str]) -> None:
        if not ids:
            return  # an empty list may mean "delete all" to the service
        path = _kb_path(kb_id) + "batch-delete/"
        await self._api("POST", path, "batch delete", {"ids": ids}, kb_id=kb_id)

    async def supported_file_types(self) -> frozenset[str] | None:
        """The file types the service accepts (`GET parsers/supported-file-types/`), or None
        when it has no such call (404 or 405: an older or on-premise deployment)."""
        op = "supported file types"
        raw = await self._offered("GET", "parsers/supported-file-types/", op)
        if raw is None:
            return None
        return self._parse(op, _file_types, self._json(raw, op))

    async def latest_failed_reason(self, kb_id: str, file_id: str) -> tuple[bool, str | None]:
        """(offered, reason): why an entry's parsing failed, from
        `.../files/{id}/latest-failed-reason/`. Not offered (False) on a 404 or a 405: the
        call is documented for chatbot files, its knowledge-base twin is not proven."""
        path = _file_path(kb_id, file_id) + "latest-failed-reason/"
        raw = await self._offered("GET", path, "latest failed reason")
        if raw is None:
            return False, None
        try:
            answer = json.loads(raw or b"")
        except ValueError:
            answer = raw.decode("utf-8", "replace")
        return True, _reason(answer)

    async def batch_reparse(self, kb_id: str, items: Sequence[tuple[str, str | None]]) -> bool:
        """Parse these entries again in place (`PATCH .../files/batch-reparse/` with
        `[{"id", "parser"}]`, the parser only when given): same id, labels and metadata, no
        upload. False when the service has no such call (404 or 405); any 2xx answer is
        taken as accepted, whatever its body."""
        if not items:
            return True
        body = [{"id": i, **({"parser": p} if p else {})} for i, p in items]
        path = _kb_path(kb_id) + "batch-reparse/"
        return await self._offered("PATCH", path, "batch reparse", body) is not None

    async def _offered(
        self, method: str, path: str, op: str, payload: object = None
    ) -> bytes | None:
        """A call an older or on-premise deployment may lack: its answer's body, or None when
        the service has no such call (404 or 405)."""
        try:
            return await self._api(method, path, op, payload, gone_ok=True)
        except ApiError as exc:
            if exc.error_kind is ErrorKind.METHOD_NOT_ALLOWED:
                return None
            raise

    async def probe(self, kb_id: str) -> None:
        """Is the service there? A one-entry listing and, once an upload was made, a GET of
        the S3 endpoint; any answer but a 5xx counts (the outage gate's probe: an API that
        answers while S3 is down must not reopen the gate)."""
        await self.check_kb(kb_id)
        if self._upload_url is not None:
            where = urlsplit(self._upload_url).path
            status, body, _retry_after = await self._send(
                "GET", self._upload_url, where, None, None, self._api_timeout, "S3 probe", False
            )
            if status >= 500:
                raise self._s3_error(status, body, None)

    async def check_kb(self, kb_id: str) -> int:
        """One cheap listing, so a bad key or unknown knowledge base fails the run at once."""
        page = await self.list_files(kb_id, 1, 1)
        return page.count if page.count is not None else len(page.entries)

    async def update_metadata(
        self,
        kb_id: str,
        file_id: str,
        labels: Sequence[str] | None,
        metadata: Mapping[str, Any] | None,
        method: Method = "PATCH",
        label_form: LabelForm = "objects",
    ) -> RemoteEntry | None:
        """Set an entry's labels and/or metadata (None leaves that part out of the request).

        The sources disagree on the method (PATCH in the examples, POST in the docs' index)
        and on the label form (`[{"id"}]` objects, or bare ids in one example): the caller
        picks, and on a refusal tries the other. A 405 is `method_not_allowed`; a 400 keeps
        `http_4xx` with status 400 and the service's message. Returns the entry when the
        answer is one (no field of it is needed), else None.
        """
        body: dict[str, Any] = {}
        if labels is not None:
            body["labels"] = _label_body(labels, label_form)
        if metadata is not None:
            body["rawUserDefineMetadata"] = dict(metadata)
        path = _file_path(kb_id, file_id) + "update-metadata/"
        raw = await self._api(method, path, "update metadata", body)
        try:
            answer = json.loads(raw or b"")
        except ValueError:
            return None
        if isinstance(answer, dict) and "id" in answer:
            return self._parse("update metadata", parse_entry, answer)
        return None

    # --- knowledge bases and labels ---

    async def list_knowledge_bases(self) -> list[KnowledgeBase]:
        """Every knowledge base the key can see, following `next` (same host only)."""
        return await self._all("knowledge-bases/", "list knowledge bases", _parse_kb)

    async def get_knowledge_base(self, kb_id: str) -> KnowledgeBase:
        path = f"knowledge-bases/{quote(str(kb_id), safe='')}/"
        answer = await self._api_json("GET", path, "get knowledge base", kb_id=kb_id)
        return self._parse("get knowledge base", lambda a: _parse_kb(a, "knowledge base"), answer)

    async def list_labels(self, kb_id: str) -> list[Label]:
        path = f"knowledge-bases/{quote(str(kb_id), safe='')}/labels/"
        return await self._all(path, "list labels", _parse_label, kb_id)

    async def create_label(self, kb_id: str, name: str) -> Label:
        """Create a label; a 400 saying the name exists is `label_exists` (another worker or
        run made it first: list the labels again)."""
        path = f"knowledge-bases/{quote(str(kb_id), safe='')}/labels/"
        answer = await self._api_json("POST", path, "create label", {"name": name}, kb_id=kb_id)
        label = self._parse("create label", lambda a: _id(_field(a, "id"), "id"), answer)
        return Label(label, name)

    # --- the machinery ---

    async def _file_page(self, target: str, kb_id: str) -> FilePage:
        answer = await self._api_json("GET", target, "list files", kb_id=kb_id)
        url = target if "://" in target else self._base + target
        return self._parse("list files", lambda a: _file_page(a, url), answer)

    async def _all(
        self, path: str, op: str, parse: Callable[[Any, str], T], kb_id: str | None = None
    ) -> list[T]:
        """Every item of a paginated (or bare list) answer, page after page by `next`."""
        items: list[T] = []
        target: str | None = path
        seen: set[str] = set()
        while target is not None:
            url = target if "://" in target else self._base + target
            if url in seen:
                raise self._bad_response(op, _("next points back to a page already read"))
            seen.add(url)
            answer = await self._api_json("GET", target, op, kb_id=kb_id)
            parse_page = functools.partial(_items_page, url=url, parse=parse)
            page, following = self._parse(op, parse_page, answer)
            items.extend(page)
            target = self._follow(following, op) if following and page else None
        return items

    def _follow(self, next_url: str, op: str) -> str:
        if not _is_http_url(next_url) or _origin(next_url) != self._origin:
            shown = urlsplit(next_url).hostname if _is_http_url(next_url) else next_url[:80]
            raise self._bad_response(
                op, _("next points away from the API host ({host})").format(host=shown)
            )
        return next_url

    def _parse(self, op: str, parse: Callable[[Any], T], answer: Any, unsafe: bool = False) -> T:
        try:
            return parse(answer)
        except _Bad as bad:
            raise self._bad_response(op, _("bad answer: {why}").format(why=bad), unsafe) from None

    async def _api_json(
        self,
        method: str,
        target: str,
        op: str,
        payload: object = None,
        *,
        kb_id: str | None = None,
        gone_ok: bool = False,
        unsafe: bool = False,
    ) -> Any:
        body = await self._api(
            method, target, op, payload, kb_id=kb_id, gone_ok=gone_ok, unsafe=unsafe
        )
        if body is None:
            return _GONE
        return self._json(body, op, unsafe)

    async def _api(
        self,
        method: str,
        target: str,
        op: str,
        payload: object = None,
        *,
        kb_id: str | None = None,
        gone_ok: bool = False,
        unsafe: bool = False,
    ) -> bytes | None:
        """Send one API request, re-sending it through 429s; returns the 2xx body.

        `target` is a path under the base URL, or an absolute URL already checked to be on
        the API's host. `kb_id` makes a 404 mean "no such knowledge base"; `gone_ok` makes it
        mean "that file is gone" (returns None); `unsafe` marks a call that must not be
        repeated blindly.
        """
        headers = self._get_headers if payload is None else self._post_headers
        if "://" in target:
            url, parts = target, urlsplit(target)
            where = parts.path + (f"?{parts.query}" if parts.query else "")
        else:
            url, where = self._base + target, target
        for attempt in range(self._throttle_retries + 1):
            await self._limiter.acquire()
            data, due = await self._encode(payload)
            status, body, retry_after = await self._send(
                method, url, where, data, headers, self._api_timeout, op, unsafe, due
            )
            if status != 429:
                break
            pause = retry_after if retry_after is not None else _default_pause(attempt)
            self._limiter.pause(pause)
        else:
            message = _("{op}: still throttled after {n} retries (HTTP 429)").format(
                op=op, n=self._throttle_retries
            )
            raise self._error(
                message, Severity.TRANSIENT, ErrorKind.THROTTLED, status=429, retry_after=pause
            )
        if 200 <= status < 300:
            return body
        if status == 404 and gone_ok:
            return None
        raise self._status_error(op, status, body, kb_id, unsafe)

    async def _encode(self, payload: object) -> tuple[bytes | None, float | None]:
        """The request body, and the time by which its request must be over (None: any); a
        callable payload is made now, after every wait before the send (see `register`'s
        fence), and so again for each re-send."""
        due = None
        if callable(payload):
            if self._gate is not None:
                await self._gate.wait_open()
            payload = await payload()
            if isinstance(payload, _Due):
                due = payload.by
                payload = payload.body
        if payload is None:
            return None, due
        return json.dumps(payload, separators=_JSON_SEPARATORS).encode(), due

    async def _send(
        self,
        method: str,
        url: str,
        where: str,
        data: Any,
        headers: dict[str, str] | None,
        timeout: Timeout,
        op: str,
        unsafe: bool,
        due: float | None = None,
    ) -> tuple[int, bytes, float | None]:
        """One request through the transport; returns (status, body, Retry-After seconds of
        a 429). `due` (wall clock): the request is not made after it, and cut at it.

        A success body is read up to `max_body` and an error body up to 64 KiB, chunk by
        chunk: a proxy's 400 MB answer costs a closed connection, not the memory.
        """
        import aiohttp

        gate = self._gate
        if gate is not None:
            await gate.wait_open()
        if due is not None:
            timeout = self._until(due, timeout)
        sent_at = time.monotonic()
        sent_wall = time.time()
        start = time.perf_counter()
        request = Request(method, url, headers, data, timeout, self._max_body, _ERROR_BODY)
        try:
            resp = await self._transport(request)
        except TooLarge:
            _log_request(method, where, "too large", start)
            message = _("{op}: bad answer: larger than {n} MiB").format(
                op=op, n=self._max_body // MIB or 1
            )
            raise self._error(
                message, Severity.TRANSIENT, ErrorKind.BAD_RESPONSE, maybe_applied=unsafe
            ) from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            _log_request(method, where, type(exc).__name__, start)
            limit = timeout.total if timeout.total is not None else timeout.connect
            raise self._network_error(op, exc, limit, unsafe) from exc
        if url.startswith(self._base):
            self.clock.observe_date(resp.headers.get("Date"), sent_wall, resp.answered_at)
        location = resp.headers.get("Location") if 300 <= resp.status < 400 else None
        _log_request(method, where, resp.status, start)
        if gate is not None and resp.status < 500:
            gate.record_success(sent_at)
        if 300 <= resp.status < 400:
            raise self._redirected(op, resp.status, url, location)
        retry_after = _retry_after(resp.headers.get("Retry-After")) if resp.status == 429 else None
        return resp.status, resp.body, retry_after

    def _until(self, due: float, timeout: Timeout) -> Timeout:
        """`timeout` cut so that the request is over by `due`; refused (nothing sent) when
        `due` has passed: the write-ahead that let it go no longer protects it."""
        left = due - time.time()
        if left <= 0:
            message = _(
                "not registered: this run's lease on the file ended (another run may hold it)"
            )
            raise self._error(message, Severity.TRANSIENT, ErrorKind.LEASE)
        total = left if timeout.total is None else min(timeout.total, left)
        return Timeout(total, min(timeout.connect, total))

    def _json(self, body: bytes | None, op: str, unsafe: bool = False) -> Any:
        try:
            return json.loads(body or b"")
        except ValueError:
            raise self._bad_response(op, _("the answer is not JSON"), unsafe) from None

    def _status_error(
        self, op: str, status: int, body: bytes, kb_id: str | None, unsafe: bool
    ) -> ApiError:
        detail = _detail(body)
        suffix = _(": {detail}").format(detail=detail) if detail else ""
        if status in (401, 403):
            return self._error(
                _("API key rejected (HTTP {status}){detail}").format(status=status, detail=suffix),
                Severity.FATAL,
                ErrorKind.AUTH,
                status,
            )
        if status == 407:
            return self._error(
                f"{op}: {_proxy_refused(status)}", Severity.FATAL, ErrorKind.PROXY, status
            )
        if status == 404 and kb_id is not None:
            message = _(
                "knowledge base {kb} not found (HTTP 404): check --kb and that --base-url ends "
                "in /api/v1/"
            ).format(kb=kb_id)
            return self._error(message, Severity.FATAL, ErrorKind.KB_NOT_FOUND, status)
        message = _("{op} failed (HTTP {status}){detail}").format(
            op=op, status=status, detail=suffix
        )
        if status == 408:
            return self._error(message, Severity.TRANSIENT, ErrorKind.TIMEOUT, status)
        if status >= 500:
            return self._error(
                message, Severity.TRANSIENT, ErrorKind.HTTP_5XX, status, maybe_applied=unsafe
            )
        if status == 400 and _DUPLICATE.search(_body_text(body)):
            if op == "register":
                # The key is in the knowledge base already: a lost answer's register landed.
                return self._error(
                    message, Severity.TRANSIENT, ErrorKind.DUPLICATE_KEY, status, maybe_applied=True
                )
            if op == "create label":
                return self._error(message, Severity.PERMANENT, ErrorKind.LABEL_EXISTS, status)
        if status == 400 and op == "register" and _UNSUPPORTED.search(_body_text(body)):
            return self._error(message, Severity.PERMANENT, ErrorKind.UNSUPPORTED_TYPE, status)
        if status == 400 and op in ("register", "presign") and _about_filename(body):
            return self._error(message, Severity.PERMANENT, ErrorKind.NAME_REFUSED, status)
        if status == 405:
            return self._error(message, Severity.PERMANENT, ErrorKind.METHOD_NOT_ALLOWED, status)
        return self._error(message, Severity.PERMANENT, ErrorKind.HTTP_4XX, status)

    def _redirected(self, op: str, status: int, url: str, location: str | None) -> ApiError:
        """A redirect is never followed (the API key must not go where it points): the error
        says where it pointed, so that a wrong --base-url (http for https, a missing /api/v1/,
        a login page) shows itself, without the query or the user info a secret may hide in."""
        where = _shown_location(url, location) if location else _("nowhere (no Location)")
        message = _(
            "{op}: the service answered HTTP {status}, a redirect to {where} (not followed)"
        ).format(op=op, status=status, where=where)
        return self._error(message, Severity.PERMANENT, ErrorKind.HTTP_3XX, status)

    def _s3_error(self, status: int, body: bytes, retry_after: float | None) -> ApiError:
        code, detail = _s3_code(body), _detail(body)
        suffix = _(": {detail}").format(detail=detail or code) if detail or code else ""
        if status == 429 or status >= 500:
            message = _("S3 upload failed (HTTP {status}){detail}").format(
                status=status, detail=suffix
            )
            label = ErrorKind.THROTTLED if status == 429 else ErrorKind.HTTP_5XX
            return self._error(message, Severity.TRANSIENT, label, status, retry_after=retry_after)
        message = _("S3 upload rejected (HTTP {status}){detail}").format(
            status=status, detail=suffix
        )
        if status == 403 and "expired" in detail.lower():
            return self._error(message, Severity.TRANSIENT, ErrorKind.POLICY_EXPIRED, status)
        if code == "RequestTimeout" or status == 408:
            return self._error(message, Severity.TRANSIENT, ErrorKind.TIMEOUT, status)
        if code == "EntityTooLarge":
            return self._error(message, Severity.PERMANENT, ErrorKind.TOO_LARGE, status)
        return self._error(message, Severity.PERMANENT, ErrorKind.S3_REJECTED, status)

    def _network_error(
        self, op: str, exc: BaseException, seconds: float | None, unsafe: bool
    ) -> ApiError:
        import aiohttp

        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            return self._error(f"{op}: {_untrusted(exc)}", Severity.FATAL, ErrorKind.TLS)
        if isinstance(exc, aiohttp.ClientHttpProxyError) and exc.status < 500:
            return self._error(
                f"{op}: {_proxy_refused(exc.status)}", Severity.FATAL, ErrorKind.PROXY
            )
        if is_out_of_files(exc):
            return out_of_files(exc)  # type: ignore[arg-type]
        # Failing to connect is the one case where the request surely never left.
        never_sent = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
        connected = not isinstance(exc, never_sent)
        maybe = unsafe and connected
        if isinstance(exc, asyncio.TimeoutError):
            timed_out = (
                _("{op} timed out (limit {seconds:g} s)")
                if connected
                else _("{op} timed out while connecting (limit {seconds:g} s)")
            )
            message = timed_out.format(op=op, seconds=seconds)
            return self._error(message, Severity.TRANSIENT, ErrorKind.TIMEOUT, maybe_applied=maybe)
        reason = _one_line(str(exc)) or type(exc).__name__
        if isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)):
            message = _("{op}: connection failed ({why})").format(op=op, why=reason)
            return self._error(message, Severity.TRANSIENT, ErrorKind.NETWORK, maybe_applied=maybe)
        message = _("{op}: bad response ({why})").format(op=op, why=reason)
        return self._error(message, Severity.TRANSIENT, ErrorKind.BAD_RESPONSE, maybe_applied=maybe)

    def _bad_response(self, op: str, why: str, unsafe: bool = False) -> ApiError:
        return self._error(
            f"{op}: {why}", Severity.TRANSIENT, ErrorKind.BAD_RESPONSE, maybe_applied=unsafe
        )

    def _error(
        self,
        message: str,
        kind: Severity,
        error_kind: ErrorKind,
        status: int | None = None,
        *,
        retry_after: float | None = None,
        maybe_applied: bool = False,
    ) -> ApiError:
        """Every error about a request leaves through here, so none can carry the API key,
        whole or its start (`_scrub_key`)."""
        message = _scrub_key(message, self._key)
        return ApiError(
            message,
            kind=kind,
            error_kind=error_kind,
            status=status,
            retry_after=retry_after,
            maybe_applied=maybe_applied,
        )


def _shown_location(url: str, location: str) -> str:
    """A redirect's target made absolute, without user info, query or fragment (a signed
    URL's signature, a token), which are shown as [redacted] when present."""
    try:
        parts = urlsplit(urljoin(url, location))
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return _("an address that does not parse")
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    shown = f"{parts.scheme}://{host}{port}{parts.path}" if parts.scheme else parts.path
    secret = parts.username or parts.password or parts.query or parts.fragment
    return _one_line(shown + ("?[redacted]" if secret else ""))


def _scrub_key(text: str, key: str) -> str:
    """`text` with the key, and every start of it at least _REDACT_MIN characters long,
    replaced by [redacted]: a service or a gateway in front of it that quotes the
    Authorization header it got often quotes only its first characters (a header parser's
    first 90, a proxy's first 20), and those are most of a short key.

    A key shorter than that is left alone: replacing it would mangle the message (key "k"
    in ".../knowledge-bases/") and hide nothing worth hiding.
    """
    if len(key) < _REDACT_MIN:
        return text
    head = key[:_REDACT_MIN]
    kept: list[str] = []
    done = 0
    while (start := text.find(head, done)) != -1:
        end = start + _REDACT_MIN
        while end < len(text) and end - start < len(key) and text[end] == key[end - start]:
            end += 1
        kept += [text[done:start], "[redacted]"]
        done = end
    return "".join(kept) + text[done:]


def make_session(workers: int) -> aiohttp.ClientSession:
    """One session for the whole run (call it inside the event loop), pooled to the workers;
    it trusts the CAs `network.current()` names (the proxy is chosen per request)."""
    import aiohttp

    connector = aiohttp.TCPConnector(
        limit=workers * 2 + 4,
        ttl_dns_cache=300,
        ssl=network.ssl_context(network.current().ca_bundle),
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(),
        raise_for_status=False,
        cookie_jar=aiohttp.DummyCookieJar(),
    )


def _untrusted(exc: aiohttp.ClientConnectorCertificateError) -> str:
    """A certificate the trusted CAs do not vouch for: behind a company proxy that inspects
    TLS, the usual cause is the company's CA, which the user can add."""
    cause = exc.certificate_error
    why = getattr(cause, "verify_message", None) or _one_line(str(cause))
    return _(
        "the TLS certificate of {host}:{port} is not trusted ({why}); if a company proxy "
        "inspects TLS, trust its CA with --ca-bundle FILE (or SSL_CERT_FILE)"
    ).format(host=exc.host, port=exc.port, why=why)


def _proxy_refused(status: int) -> str:
    if status == 407:
        return _(
            "the proxy asks for a user and password (HTTP 407): put them in the proxy URL, "
            "http://USER:PASSWORD@HOST:PORT (--proxy or HTTPS_PROXY)"
        )
    return _("the proxy refused the connection (HTTP {status})").format(status=status)


def _kb_path(kb_id: str) -> str:
    return f"knowledge-bases/{quote(str(kb_id), safe='')}/files/"


def _file_path(kb_id: str, file_id: str) -> str:
    return f"{_kb_path(kb_id)}{quote(str(file_id), safe='')}/"


def _open_content(
    path: str | bytes, size: int, follow: bool
) -> tuple[bytes | io.FileIO, os.stat_result]:
    """Open the file (a big one in a worker thread): its bytes if small, else the open file;
    with the fstat that every later look at it is compared with.

    O_NONBLOCK keeps a FIFO that slipped into the queue from hanging the thread; O_NOFOLLOW
    refuses a symbolic link in the last component, which the scan did not queue.
    """
    flags = os.O_RDONLY | osfiles.NONBLOCK
    try:
        fd = osfiles.open_file(path, flags) if follow else osfiles.open_nofollow(path, flags)
    except FileNotFoundError as exc:
        raise _file_error(ErrorKind.MISSING, exc) from exc
    except OSError as exc:
        if is_out_of_files(exc):
            raise out_of_files(exc) from exc
        if exc.errno == errno.ELOOP and not follow:
            raise _file_error(
                ErrorKind.UNREADABLE, exc, _("a symbolic link, not followed")
            ) from exc
        raise _file_error(ErrorKind.UNREADABLE, exc) from exc
    try:
        before = _check_file(fd, size)
    except BaseException:
        os.close(fd)
        raise
    file = io.FileIO(fd, "rb")
    if size > SMALL_FILE:
        return file, before
    with file:
        try:
            data = file.readall()
        except OSError as exc:
            raise _file_error(ErrorKind.UNREADABLE, exc) from exc
        if len(data) != size:
            raise _changed(size, _("{n} bytes read").format(n=len(data)))
        _same_file(fd, before)
    return data, before


def _check_file(fd: int, size: int) -> os.stat_result:
    st = _fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise _file_error(ErrorKind.UNREADABLE, None, _("not a regular file"))
    if st.st_size != size:
        raise _changed(size, _("{n} bytes now").format(n=st.st_size))
    return st


def _fstat(fd: int) -> os.stat_result:
    try:
        return os.fstat(fd)
    except OSError as exc:
        raise _file_error(ErrorKind.UNREADABLE, exc) from exc


def _same_file(fd: int, before: os.stat_result) -> None:
    """Size, mtime and ctime as they were at the open: else what was read may mix versions
    (ctime too, since a rewrite that restores the mtime still moves it)."""
    after = _fstat(fd)
    then = (before.st_size, before.st_mtime_ns, before.st_ctime_ns)
    if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != then:
        raise _changed(before.st_size, _("it was written to while it was read"))


def _file_error(label: ErrorKind, exc: OSError | None, why: str = "") -> ApiError:
    reason = why or (exc.strerror if exc and exc.strerror else str(exc))
    shown = (
        _("local file missing ({why})")
        if label == ErrorKind.MISSING
        else _("local file unreadable ({why})")
    )
    return ApiError(shown.format(why=reason), kind=Severity.PERMANENT, error_kind=label)


def out_of_files(exc: OSError) -> ApiError:
    """Fatal: every other file and connection of the run would fail the same way."""
    return ApiError(out_of_files_message(exc), kind=Severity.FATAL, error_kind=ErrorKind.OPEN_FILES)


def _changed(queued: int, now: str) -> ApiError:
    """Transient: the next attempt stats the file again and uploads its current content;
    these bytes, whatever reached S3, are never registered."""
    message = _("local file changed while being uploaded ({size} bytes expected, {now})").format(
        size=queued, now=now
    )
    return ApiError(message, kind=Severity.TRANSIENT, error_kind=ErrorKind.CHANGED)


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


def _about_filename(body: bytes) -> bool:
    try:
        parsed = json.loads(body[:65536])
    except ValueError:
        return bool(_FILENAME.search(_body_text(body)))
    if isinstance(parsed, dict) and isinstance(parsed.get("detail"), str):
        return bool(_FILENAME.search(parsed["detail"]))
    return _has_field_error(parsed, "filename")


def _has_field_error(node: object, name: str) -> bool:
    """Whether a DRF error body (dicts of lists, nested per item) holds an error on `name`."""
    if isinstance(node, dict):
        return name in node or any(_has_field_error(v, name) for v in node.values())
    if isinstance(node, list):
        return any(_has_field_error(v, name) for v in node)
    return False


def _body_text(body: bytes) -> str:
    """The head of an error body as text, JSON escapes undone (a `\\u91cd` is a 重)."""
    head = body[:4096]
    try:
        return json.dumps(json.loads(head), ensure_ascii=False)
    except ValueError:
        return head.decode("utf-8", "replace")


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
