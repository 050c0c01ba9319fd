"""A MaiAgent-compatible server for tests, `make demo` and `make bench`.

It speaks the subset of the MaiAgent API the uploader uses (presign, S3 POST, register,
list/get/delete/reparse knowledge-base files, a file's latest failed reason, the supported file
types, knowledge bases, labels, update-metadata) and adds
fault knobs, so the uploader can be exercised against the things that go wrong at scale: lost
answers, throttling, dropped connections, slow or failed parsing, late commits, garbage answers,
outages. Everything lives in memory; uploaded files are only hashed unless they are small, so a
benchmark can push gigabytes through it.

Run in-process with `MaiAgentServer().run_in_thread()`, or as a process with
`python -m tests.maiagent_server --port 0` (prints `listening on <base url>`).

Dialects (`dialect=` / `--dialect`): the two sources of what MaiAgent answers disagree, so the
server speaks either. `docs` (the default) answers as MaiAgent's public documentation shows:

    register  201 {"count": n, "next": null, "previous": null, "results": [entry, ...]}
    entry     {"id", "filename", "file": "http://127.0.0.1:PORT/<key, percent-encoded as
              Django's filepath_to_uri does>", "fileType": "txt", "knowledgeBase": kb,
              "size": 5, "status": {"code": "done", "message": "..."},
              "createdAt": "1728104372000", "labels": [{"id", "name"}],
              "rawUserDefineMetadata": {...}, "parser": uuid | null}
    keys      media/chatbots/chatbot-file/<uuid>.<ext>   (no filename in the key)
    listing   page size 20 by default, 100 at most, whatever is asked (`page_size`; `pageSize`
              is ignored); a key registered twice in one knowledge base is refused with
              400 {"detail": "Duplicate File Upload"}

`examples` keeps the shapes of MaiAgent's example code (what this server always spoke):

    register  201 [entry, ...]
    entry     {"id", "filename", "file": "<key>", "size": 5, "status": "done",
              "createdAt": 1728104372000, "labels": [{"id", "name"}], "rawUserDefineMetadata"}
    keys      media/chatbot-file/<uuid>/<filename>
    listing   page size 10 by default, 1000 at most; duplicate keys are registered again
    calls     no `parsers/supported-file-types/` and no `latest-failed-reason/` (404), as an
              older or on-premise deployment; batch-reparse is served

The size field is `size` in both (the api notes say one example reads `file_size`: knob
`size_field`). Every shape can also be overridden alone by a knob ("" = the dialect's choice).

Knobs (fields of `Faults`; each is a keyword of `maiagent_factory`, a `--flag-name` on the
command line, and settable while running via `server.faults.x = ...` or POST /_control/faults):
  latency: seconds every API/S3 request waits before it is served
  error_rate: share of requests answered 503 (S3: XML SlowDown)
  drop_rate: share of requests whose connection is closed before anything happens
  lost_register_rate: share of register calls that take effect but whose answer is lost
  rps_limit: API requests per second (sliding window, 429 with Retry-After: 1); 0 = unlimited
  parse_delay: seconds an entry spends initial (first half) then processing
  parse_failure_rate: share of entries whose parsing ends failed
  list_size: False leaves the size field out of every entry
  delete_conflict_while_processing: DELETE of an initial/processing entry answers 409
  delete_500_rate: share of DELETEs that delete and then answer 500
  delete_conflict_first: the first N DELETEs of each entry answer 409 (nothing deleted)
  delete_delay: seconds a DELETE of one entry waits before it is served (a crash mid-delete)
  policy_ttl: seconds a presigned policy stays valid
  max_file_size: the presigned policy's content-length-range maximum (S3: EntityTooLarge)
  keep_bytes: uploads up to this size keep their bytes (content checks); bigger, only a hash
  register_first_only: a register of several files creates (and answers) only the first
  register_effect_delay: seconds after the request a register takes effect (entries appear)
  register_answer_early: with a delay, answer at once (listing lags) instead of at the effect
  file_types: comma list of extensions register accepts (e.g. "txt,pdf"); "" = any; else 400
    {"detail": "Unsupported file type: ..."}
  supported_types: comma list GET parsers/supported-file-types/ answers ("" = the 12 the docs
    list: doc docx txt pdf md xls xlsx csv ppt pptx json jsonl)
  missing_calls: comma list of calls answered 404 as a service without them: supported_types,
    failed_reason, reparse ("" = the dialect's choice, "none" = every call served)
  reparse_failure_rate: share of reparsed entries whose parsing fails again (-1: as
    parse_failure_rate); a reparse with an OCR parser (OCR_PARSER) always succeeds
  stuck_rate: share of new entries that stay `processing` for ever (until reparsed)
  delete_phase: seconds a deleted entry stays listed as `deleting` before it is gone
  failure_reason: what latest-failed-reason/ answers for a failed entry ({"reason": text})
  failing_types: comma list of extensions whose register answers 500, nothing registered (a
              parser broken for one type); "" = none
  s3_bandwidth: bytes per second the S3 endpoint reads of all uploads together (a slow
              uplink); 0 = unlimited
  redirect_to: every API request answers 302 with this Location ("" = never)
  refuse_names: register refuses a filename containing this text with a field error
              400 {"files": [{}, {"filename": ["..."]}]} ("" = refuse none)
  list_order: listing order: newest (docs' promise), oldest, random (a fixed arbitrary order)
  null_id_rate: share of register answers whose entries carry "id": null
  bad_presign_url_rate: share of presign answers whose url is "http://[::1" (unparseable)
  huge_answer_bytes: pad answers of huge_answer_on endpoints with this many bytes of
    leading JSON whitespace (streamed, chunked); 0 = off
  huge_answer_on: comma list of endpoint names (see ENDPOINTS) that huge_answer_bytes pads
  filename_list_rate: share of listed/got entries whose "filename" is a list
  drop_fields: comma list of entry fields left out of every answer (e.g. "file" or "id")
  unavailable: every API and S3 request answers 503 while True (see also `outage()`)
  update_metadata_methods: comma list of methods update-metadata accepts; others get 405
  update_metadata_label_forms: accepted update-metadata label forms, "objects" ([{"id"}])
    and/or "ids" (["<id>"]); the other answers 400
  register_answer: "list" | "page" — shape of the register answer
  file_field: "key" | "url" — what an entry's "file" holds
  status_form: "string" | "object" — an entry's "status"
  created_at_form: "int" | "string" | "float" | "iso" — an entry's "createdAt"
  size_field: "size" | "file_size" | "fileSize" — the name of an entry's size
  key_form: "filename" | "uuid" — presigned keys with or without the filename
  duplicate_keys: "allow" | "refuse" — a key already in the knowledge base at register
  duplicate_error: "detail" | "files" | "non_field" — body of the duplicate 400:
    {"detail": M}, {"files": [{"file": [M]} or {}, ...]}, {"non_field_errors": [M]}
  page_size_default / page_size_max: the listing's page sizes; 0 = the dialect's
  page_size_params: comma list of query parameters read as the page size ("" = page_size)
  list_shift: after each listing answer, this many entries of someone else are added (newest
    first, the pages read next shift down: what a knowledge base others write to does)
  list_count: the listing's `count` says this instead of the truth (0 = the truth): a stale
    cache in front of the service
  seed: seeds every random choice (reseeded when changed)

Beyond knobs: `outage(seconds, mode)` ("refuse": the port is closed, connections refused;
"503": every request answers 503), `shutdown()`/`restart()` (same port, same state), request
counters per endpoint (`stats()`, `reset_stats()`, GET/DELETE /_control/stats), a knowledge base
pre-filled with entries of someone else (`fill(kb, n)`, POST /_control/fill), what is stored
(`records`, `entries_by_key`, `content`, `entry_content`, GET /media/<key>, /_control/...).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import hmac
import json
import os
import random
import secrets
import signal
import socket
import ssl
import threading
import time
import urllib.parse
import uuid
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from typing import Any, TypeVar
from xml.sax.saxutils import escape

import aiohttp.multipart
from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.multipart import parse_content_disposition as _parse_content_disposition
from yarl import URL

API_PREFIX = "/api/v1/"
BUCKET = "maiagent-test"
ACCESS_KEY = "AKIAMAIAGENTTEST"
ALGORITHM = "AWS4-HMAC-SHA256"
DIALECTS = ("docs", "examples")
ENDPOINTS = (
    "presign",
    "s3",
    "register",
    "list",
    "get",
    "delete",
    "batch_delete",
    "reparse",
    "failed_reason",
    "supported_types",
    "kbs",
    "kb",
    "labels",
    "label_create",
    "update_metadata",
)
# update_metadata counted once more by method; media (GET of a stored file) is not API traffic
# register_lost: register calls that took effect but whose answer was dropped (lost_register_rate)
COUNTERS = (
    *ENDPOINTS,
    "update_metadata_patch",
    "update_metadata_post",
    "media",
    "total",
    "register_lost",
)
STATUSES = ("initial", "processing", "done", "failed", "deleting")
STATUS_MESSAGES = {
    "initial": "File uploaded, waiting to be processed.",
    "processing": "File is being processed.",
    "done": "File processed successfully.",
    "failed": "File processing failed.",
    "deleting": "File is being deleted.",
}
# The file types MaiAgent's docs list as supported, and the parsers the supported-types call
# names for each (the default one, and an OCR one that reads scanned PDFs).
DOCUMENTED_TYPES = "doc,docx,txt,pdf,md,xls,xlsx,csv,ppt,pptx,json,jsonl"
DEFAULT_PARSER = "0b7c6c1e-5f0a-4b59-9d1a-000000000001"
OCR_PARSER = "0b7c6c1e-5f0a-4b59-9d1a-000000000002"
CALLS = ("supported_types", "failed_reason", "reparse")
FAILURE_REASON = "No text could be extracted from the file (a scanned document needs an OCR parser)"
DUPLICATE = "Duplicate File Upload"
BAD_URL = "http://[::1"
POLICY_FIELDS = ("key", "x-amz-algorithm", "x-amz-credential", "x-amz-date", "policy")
SIGNED_FIELDS = (*POLICY_FIELDS, "x-amz-signature")
SMALL_OBJECT = 1 << 20  # objects up to this size keep their bytes by default
MAX_FIELD = 64 << 10  # a non-file form part bigger than this is a client bug, not a field
CHUNK = 256 << 10
_PACED_CHUNK = 16 << 10
_PADDING = b" " * CHUNK
_URI_SAFE = "/~!*()'"  # django.utils.encoding.filepath_to_uri

# The shape knobs and what each dialect picks when a knob is "" (or 0).
SHAPES: dict[str, dict[str, Any]] = {
    "docs": {
        "register_answer": "page",
        "file_field": "url",
        "status_form": "object",
        "created_at_form": "string",
        "size_field": "size",
        "key_form": "uuid",
        "duplicate_keys": "refuse",
        "page_size_default": 20,
        "page_size_max": 100,
        "page_size_params": "page_size",
        "missing_calls": "none",
    },
    "examples": {
        "register_answer": "list",
        "file_field": "key",
        "status_form": "string",
        "created_at_form": "int",
        "size_field": "size",
        "key_form": "filename",
        "duplicate_keys": "allow",
        "page_size_default": 10,
        "page_size_max": 1000,
        "page_size_params": "page_size",
        "missing_calls": "supported_types,failed_reason",
    },
}
CHOICES: dict[str, tuple[str, ...]] = {
    "register_answer": ("list", "page"),
    "file_field": ("key", "url"),
    "status_form": ("string", "object"),
    "created_at_form": ("int", "string", "float", "iso"),
    "size_field": ("size", "file_size", "fileSize"),
    "key_form": ("filename", "uuid"),
    "duplicate_keys": ("allow", "refuse"),
    "duplicate_error": ("detail", "files", "non_field"),
    "list_order": ("newest", "oldest", "random"),
}
OUTAGE_MODES = ("refuse", "503")

_dumps = functools.partial(json.dumps, separators=(",", ":"), ensure_ascii=False)
T = TypeVar("T")


@dataclasses.dataclass
class Faults:
    """Knobs that make the server misbehave; mutable while it runs (rates are 0..1).
    One line each in the module docstring."""

    latency: float = 0.0
    error_rate: float = 0.0
    drop_rate: float = 0.0
    lost_register_rate: float = 0.0
    rps_limit: int = 0  # API requests per second; 0 means unlimited
    parse_delay: float = 0.0
    parse_failure_rate: float = 0.0
    list_size: bool = True
    delete_conflict_while_processing: bool = False
    delete_500_rate: float = 0.0
    delete_conflict_first: int = 0
    delete_delay: float = 0.0
    policy_ttl: float = 300.0
    max_file_size: int = 10 << 30
    keep_bytes: int = SMALL_OBJECT
    # a service that registers only the first file of a list (the real one's batch support
    # is not documented): the uploader must notice and fall back to one file per call
    register_first_only: bool = False
    register_effect_delay: float = 0.0
    register_answer_early: bool = False
    file_types: str = ""
    supported_types: str = ""
    missing_calls: str = ""
    reparse_failure_rate: float = -1.0
    stuck_rate: float = 0.0
    delete_phase: float = 0.0
    failure_reason: str = FAILURE_REASON
    failing_types: str = ""
    s3_bandwidth: int = 0
    redirect_to: str = ""
    refuse_names: str = ""
    list_order: str = "newest"
    null_id_rate: float = 0.0
    bad_presign_url_rate: float = 0.0
    huge_answer_bytes: int = 0
    huge_answer_on: str = "register"
    filename_list_rate: float = 0.0
    drop_fields: str = ""
    unavailable: bool = False
    update_metadata_methods: str = "PATCH,POST"
    update_metadata_label_forms: str = "objects,ids"
    register_answer: str = ""
    file_field: str = ""
    status_form: str = ""
    created_at_form: str = ""
    size_field: str = ""
    key_form: str = ""
    duplicate_keys: str = ""
    duplicate_error: str = "detail"
    page_size_default: int = 0
    page_size_max: int = 0
    page_size_params: str = ""
    list_shift: int = 0
    list_count: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        self._check(dataclasses.asdict(self))

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply knob changes all-or-nothing, so a typo in a test fails instead of being ignored."""
        unknown = set(changes) - {field.name for field in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown fault knobs: {sorted(unknown)}")
        self._check(changes)
        for name, value in changes.items():
            setattr(self, name, value)

    @staticmethod
    def _check(values: Mapping[str, Any]) -> None:
        for name, allowed in CHOICES.items():
            value = values.get(name, "")
            if value and value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, not {value!r}")
        calls = _csv(values.get("missing_calls", "")) - {"none"}
        if calls - set(CALLS):
            raise ValueError(f"missing_calls takes {CALLS} or none, not {sorted(calls)}")


@dataclasses.dataclass(eq=False)
class _Entry:
    """A knowledge-base file; identity equality keeps list.remove cheap."""

    id: str
    kb: str
    filename: str
    key: str
    url_path: str  # "/" + the key percent-encoded: the entry's media URL without the origin
    file_type: str
    size: int
    created_at: int  # epoch ms
    parse_start: float
    parse_fails: bool
    forced_status: str | None = None
    labels: list[str] = dataclasses.field(default_factory=list)  # label ids
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    parser: str | None = None
    delete_attempts: int = 0
    stuck: bool = False  # stays processing until reparsed (stuck_rate)
    deleting: bool = False  # deleted, still listed as `deleting` (delete_phase)


@dataclasses.dataclass
class _Object:
    size: int
    sha256: str
    data: bytes | None


@dataclasses.dataclass(frozen=True)
class _Render:
    """How entries look in one answer, resolved once per request from dialect and knobs."""

    docs: bool
    url: bool
    status_object: bool
    created: str
    size_field: str | None
    drop: frozenset[str]


class _S3Error(Exception):
    """Raised anywhere in the S3 POST path; turned into an S3-style XML answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class _BadRequest(Exception):
    """A register/update-metadata body the service refuses; the payload is the 400 body."""

    def __init__(self, body: Any) -> None:
        super().__init__(str(body))
        self.body = body


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        text=_dumps(data), status=status, content_type="application/json", headers=headers
    )


def _detail(status: int, detail: str) -> web.Response:
    return _json({"detail": detail}, status)


def _s3_error(status: int, code: str, message: str) -> web.Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>"
    )
    return web.Response(text=body, status=status, content_type="application/xml")


async def _read_json(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise web.HTTPBadRequest(
            text=_dumps({"detail": "JSON parse error."}), content_type="application/json"
        ) from None


def _drop(request: web.Request) -> web.Response:
    """Close the connection so the client sees a disconnection and no answer.

    aiohttp then fails to write the returned response to the closed transport and treats it as
    a premature client disconnection, which it ignores quietly.
    """
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=204)


def _page_url(url: URL, page: int) -> str:
    """DRF drops the page parameter for the first page."""
    return str(url.without_query_params("page") if page == 1 else url.update_query(page=page))


def _iso_to_datetime(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _created(ms: int, form: str) -> Any:
    if form == "int":
        return ms
    if form == "string":
        return str(ms)
    if form == "float":
        return ms / 1
    moment = dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _csv(text: str) -> set[str]:
    return {item.strip() for item in text.split(",") if item.strip()}


def _extension(name: str) -> str:
    return os.path.splitext(name)[1].lstrip(".")


def _is_uuid(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=256)
def _cached_content_disposition(header: str | None) -> tuple[str | None, dict[str, str]]:
    return _parse_content_disposition(header)


def _fast_content_disposition(header: str | None) -> tuple[str | None, dict[str, str]]:
    """Patched into aiohttp: its parser rebuilds a regex on every call and MultipartReader.next()
    calls it for every part. Form headers repeat from one upload to the next, so caching cut the
    server's CPU time per upload by 45% in the benchmark. Same results; the copy keeps callers
    from sharing a dict."""
    disposition, params = _cached_content_disposition(header)
    return disposition, dict(params)


aiohttp.multipart.parse_content_disposition = _fast_content_disposition


async def _read_field(part: BodyPartReader) -> str:
    """Read a form field, refusing to buffer what is really a misnamed file."""
    data = bytearray()
    while chunk := await part.read_chunk(MAX_FIELD):
        data += chunk
        if len(data) > MAX_FIELD:
            raise _S3Error(
                400,
                "MaxPostPreDataLengthExceeded",
                "Your POST request fields preceding the upload file were too large.",
            )
    return data.decode()


async def _consume_file(
    part: BodyPartReader, keep: int, pace: Callable[[int], Coroutine[Any, Any, None]] | None = None
) -> tuple[int, str, bytes | None]:
    """Hash the file part while streaming it; keep the bytes only up to `keep` bytes. `pace`
    is awaited after each chunk (a slow uplink: the bytes are read no faster than it allows)."""
    digest = hashlib.sha256()
    size = 0
    kept: bytearray | None = bytearray()
    while chunk := await part.read_chunk(CHUNK if pace is None else _PACED_CHUNK):
        if pace is not None:
            await pace(len(chunk))
        digest.update(chunk)
        size += len(chunk)
        if kept is not None and size <= keep:
            kept += chunk
        else:
            kept = None
    return size, digest.hexdigest(), None if kept is None else bytes(kept)


def _label_ids(labels: Any, forms: set[str]) -> list[str]:
    """The label ids of a `labels` value, in either form the sources show, as DRF refuses them."""
    if not isinstance(labels, list):
        kind = type(labels).__name__
        raise _BadRequest({"labels": [f'Expected a list of items but got type "{kind}".']})
    ids: list[str] = []
    for item in labels:
        if isinstance(item, dict) and isinstance(item.get("id"), str):
            if "objects" not in forms:
                raise _BadRequest({"labels": ["Incorrect type. Expected pk value, received dict."]})
            ids.append(item["id"])
        elif isinstance(item, str):
            if "ids" not in forms:
                msg = "Invalid data. Expected a dictionary, but got str."
                raise _BadRequest({"labels": [{"non_field_errors": [msg]}]})
            ids.append(item)
        else:
            raise _BadRequest({"labels": ['Expected a label id or {"id": ...}.']})
    return ids


class MaiAgentServer:
    """In-memory MaiAgent knowledge-base API plus an S3 POST endpoint, with fault knobs.

    `kbs`: knowledge-base ids (named after themselves) or a mapping id -> name.
    `dialect`: "docs" or "examples" (see the module docstring); may be changed while running.
    """

    def __init__(
        self,
        api_key: str = "test-key",
        kbs: Iterable[str] | Mapping[str, str] = ("kb-test",),
        faults: Faults | None = None,
        dialect: str = "docs",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {DIALECTS}, not {dialect!r}")
        self.dialect = dialect
        self.faults = faults if faults is not None else Faults()
        self.base_url = ""
        self._origin = ""
        self._host = "127.0.0.1"
        self._port = 0
        self._ssl = ssl_context  # serve https with it
        self.s3_origin: str | None = None
        """The origin presigned S3 URLs name (another host name for this server, say);
        default the origin the presign was asked at."""
        self._auth = f"Api-Key {api_key}"
        self._secret = secrets.token_bytes(32)
        names = dict(kbs) if isinstance(kbs, Mapping) else {kb: kb for kb in kbs}
        self._kb_names: dict[str, str] = names
        self._lists: dict[str, list[_Entry]] = {kb: [] for kb in names}
        self._by_id: dict[str, _Entry] = {}
        self._by_key: dict[tuple[str, str], list[_Entry]] = {}
        self._pending: Counter[tuple[str, str]] = Counter()
        self._labels: dict[str, dict[str, str]] = {kb: {} for kb in names}  # kb: id -> name
        self._versions: Counter[str] = Counter()
        self._shuffled: dict[str, tuple[int, int | None, list[_Entry]]] = {}
        self._objects: dict[str, _Object] = {}
        self._stats = dict.fromkeys(COUNTERS, 0)
        self._window: deque[float] = deque()
        self._seed = self.faults.seed
        self._rng = random.Random(self._seed)
        self._last_ms = 0
        self._unavailable_until = 0.0
        self._s3_next_byte = 0.0  # monotonic: when s3_bandwidth lets the next byte in
        self._tasks: set[asyncio.Future[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None

    # ----- lifecycle -----

    def make_app(self) -> web.Application:
        # under s3_bandwidth a connection reads ahead little (see _narrow_socket)
        narrow = {"read_bufsize": _PACED_CHUNK} if self.faults.s3_bandwidth > 0 else {}
        app = web.Application(middlewares=[self._middleware], handler_args=narrow)
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
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _PACED_CHUNK)
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

    # ----- thread-safe inspection for tests -----

    def entries(self, kb: str) -> list[dict[str, Any]]:
        """All entries of `kb`, oldest first, as the dialect shows them (always with size)."""
        return self._on_loop(self._entries_view, kb)

    def records(self, kb: str) -> list[dict[str, Any]]:
        """All entries of `kb`, oldest first, the same in every dialect: id, kb, filename, key,
        size, status (the code), createdAt (int ms), labels, rawUserDefineMetadata, parser."""
        return self._on_loop(lambda: [self._record(e) for e in self._lists[kb]])

    def entries_by_key(self, kb: str) -> dict[str, list[dict[str, Any]]]:
        """The records of `kb` grouped by S3 key (more than one: a duplicate by key)."""
        return self._on_loop(self._records_by_key, kb)

    def stats(self) -> dict[str, int]:
        """Requests per endpoint (COUNTERS); `total` counts every API and S3 request."""
        return self._on_loop(dict, self._stats)

    def reset_stats(self) -> None:
        self._on_loop(self._stats.update, dict.fromkeys(COUNTERS, 0))

    def add_entry(
        self,
        kb: str,
        filename: str,
        size: int,
        status: str | None = None,
        key: str | None = None,
    ) -> dict[str, Any]:
        """Create an entry as if registered by someone else; `status` pins it (e.g. "failed",
        or any code the service might invent); `key` makes it point at that S3 key."""
        return self._on_loop(self._inject, kb, filename, size, status, key)

    def fill(self, kb: str, count: int) -> None:
        """`count` entries made as if by someone else (a knowledge base that is not new)."""
        self._on_loop(self._fill, kb, count)

    def delete_entry(self, entry_id: str) -> bool:
        return self._on_loop(self._remove_id, entry_id)

    def add_label(self, kb: str, name: str) -> dict[str, str]:
        """A label made as if in the web interface (not counted as a request)."""
        return self._on_loop(self._new_label, kb, name)

    def labels(self, kb: str) -> list[dict[str, str]]:
        return self._on_loop(lambda: [{"id": i, "name": n} for i, n in self._labels[kb].items()])

    def object(self, key: str) -> dict[str, Any] | None:
        """An uploaded object: size, sha256 and, up to `keep_bytes`, data."""
        return self._on_loop(self._object_view, key, True)

    def content(self, key: str) -> bytes | None:
        """The bytes stored under `key` (None: never uploaded, or too big to keep)."""
        obj = self._on_loop(self._objects.get, key)
        return None if obj is None else obj.data

    def entry_content(self, entry_id: str) -> bytes | None:
        """The bytes behind an entry: what was uploaded to the key it was registered with."""
        entry = self._on_loop(self._by_id.get, entry_id)
        return None if entry is None else self.content(entry.key)

    def _on_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Run on the server loop so tests never see state in the middle of a request."""
        loop = self._loop
        if loop is None or _running_loop() is loop:
            return fn(*args)

        async def call() -> T:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=10)

    def _await_on_loop(self, coro: Coroutine[Any, Any, None]) -> None:
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("the server is not running")
        if _running_loop() is loop:
            self._spawn(coro)
            return
        asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=10)

    # ----- state -----

    def _random(self) -> float:
        """Reseed when the seed knob changes, so a test can set it after start."""
        if self.faults.seed != self._seed:
            self._seed = self.faults.seed
            self._rng = random.Random(self._seed)
        return self._rng.random()

    async def _s3_pace(self, nbytes: int) -> None:
        """One shared uplink for every upload: `nbytes` more take their share of the time."""
        rate = self.faults.s3_bandwidth
        if rate <= 0:
            return
        now = time.monotonic()
        slot = max(now, self._s3_next_byte)
        self._s3_next_byte = slot + nbytes / rate
        if slot > now:
            await asyncio.sleep(slot - now)

    def _chance(self, rate: float) -> bool:
        return rate > 0 and self._random() < rate

    def _shape(self, name: str) -> Any:
        return getattr(self.faults, name) or SHAPES[self.dialect][name]

    def _new_key(self, filename: str) -> str:
        if self._shape("key_form") == "uuid":
            ext = _extension(filename)
            return f"media/chatbots/chatbot-file/{uuid.uuid4()}" + (f".{ext}" if ext else "")
        return f"media/chatbot-file/{uuid.uuid4()}/{filename}"

    def _new_entry(self, kb: str, filename: str, key: str, size: int, **extra: Any) -> _Entry:
        return _Entry(
            id=str(uuid.uuid4()),
            kb=kb,
            filename=filename,
            key=key,
            url_path="/" + urllib.parse.quote(key, safe=_URI_SAFE),
            file_type=_extension(filename).lower(),
            size=size,
            created_at=0,
            parse_start=0.0,
            parse_fails=self._chance(self.faults.parse_failure_rate),
            stuck=self._chance(self.faults.stuck_rate),
            **extra,
        )

    def _insert(self, entry: _Entry) -> None:
        """Make an entry visible. createdAt never goes backwards, so append order is newest-last
        and listing can slice. A late commit keeps the time its early answer announced."""
        self._last_ms = max(entry.created_at or int(time.time() * 1000), self._last_ms)
        entry.created_at = self._last_ms
        entry.parse_start = time.monotonic()
        self._lists[entry.kb].append(entry)
        self._by_id[entry.id] = entry
        self._by_key.setdefault((entry.kb, entry.key), []).append(entry)
        self._versions[entry.kb] += 1

    def _status(self, entry: _Entry, now: float) -> str:
        if entry.forced_status is not None:
            return entry.forced_status
        if entry.deleting:
            return "deleting"
        elapsed, delay = now - entry.parse_start, self.faults.parse_delay
        if elapsed < delay / 2:
            return "initial"
        if elapsed < delay or entry.stuck:
            return "processing"
        return "failed" if entry.parse_fails else "done"

    def _render(self, with_size: bool | None = None, garbage: bool = True) -> _Render:
        faults = self.faults
        if with_size is None:
            with_size = faults.list_size
        return _Render(
            docs=self.dialect == "docs",
            url=self._shape("file_field") == "url",
            status_object=self._shape("status_form") == "object",
            created=self._shape("created_at_form"),
            size_field=self._shape("size_field") if with_size else None,
            drop=frozenset(_csv(faults.drop_fields)) if garbage else frozenset(),
        )

    def _public(self, entry: _Entry, now: float, render: _Render) -> dict[str, Any]:
        view: dict[str, Any] = {
            "id": entry.id,
            "filename": entry.filename,
            "file": self._origin + entry.url_path if render.url else entry.key,
        }
        if render.docs:
            view["fileType"] = entry.file_type
            view["knowledgeBase"] = entry.kb
        if render.size_field is not None:
            view[render.size_field] = entry.size
        code = self._status(entry, now)
        if render.status_object:
            view["status"] = {"code": code, "message": STATUS_MESSAGES.get(code, code)}
        else:
            view["status"] = code
        view["createdAt"] = _created(entry.created_at, render.created)
        view["labels"] = self._label_views(entry)
        view["rawUserDefineMetadata"] = dict(entry.metadata)
        if render.docs:
            view["parser"] = entry.parser
        for name in render.drop:
            view.pop(name, None)
        return view

    def _label_views(self, entry: _Entry) -> list[dict[str, str]]:
        names = self._labels[entry.kb]
        return [{"id": i, "name": names.get(i, "")} for i in entry.labels]

    def _record(self, entry: _Entry) -> dict[str, Any]:
        return {
            "id": entry.id,
            "kb": entry.kb,
            "filename": entry.filename,
            "key": entry.key,
            "size": entry.size,
            "status": self._status(entry, time.monotonic()),
            "createdAt": entry.created_at,
            "labels": self._label_views(entry),
            "rawUserDefineMetadata": dict(entry.metadata),
            "parser": entry.parser,
        }

    def _records_by_key(self, kb: str) -> dict[str, list[dict[str, Any]]]:
        grouped: dict[str, list[dict[str, Any]]] = {}
        for entry in self._lists[kb]:
            grouped.setdefault(entry.key, []).append(self._record(entry))
        return grouped

    def _lookup(self, kb: str, entry_id: str) -> _Entry | None:
        entry = self._by_id.get(entry_id)
        return entry if entry is not None and entry.kb == kb else None

    def _remove(self, entry: _Entry) -> None:
        del self._by_id[entry.id]
        self._lists[entry.kb].remove(entry)
        self._forget_key(entry)

    def _forget_key(self, entry: _Entry) -> None:
        same = self._by_key[(entry.kb, entry.key)]
        same.remove(entry)
        if not same:
            del self._by_key[(entry.kb, entry.key)]
        self._versions[entry.kb] += 1

    def _remove_id(self, entry_id: str) -> bool:
        entry = self._by_id.get(entry_id)
        if entry is not None:
            self._remove(entry)
        return entry is not None

    def _entries_view(self, kb: str) -> list[dict[str, Any]]:
        now, render = time.monotonic(), self._render(with_size=True, garbage=False)
        return [self._public(entry, now, render) for entry in self._lists[kb]]

    def _inject(
        self, kb: str, filename: str, size: int, status: str | None, key: str | None
    ) -> dict[str, Any]:
        if status is not None and (not isinstance(status, str) or not status):
            raise ValueError("status must be a non-empty string")
        entry = self._new_entry(kb, filename, key or self._new_key(filename), size)
        entry.forced_status = status
        self._insert(entry)
        return self._public(entry, time.monotonic(), self._render(with_size=True, garbage=False))

    def _fill(self, kb: str, count: int, prefix: str = "existing") -> None:
        for i in range(count):
            name = f"{prefix}-{len(self._lists[kb]):07d}-{i}.txt"
            self._insert(self._new_entry(kb, name, self._new_key(name), 1000))

    def _new_label(self, kb: str, name: str) -> dict[str, str]:
        if name in self._labels[kb].values():
            raise ValueError(f"label {name!r} exists")
        label_id = str(uuid.uuid4())
        self._labels[kb][label_id] = name
        return {"id": label_id, "name": name}

    def _object_view(self, key: str, with_data: bool) -> dict[str, Any] | None:
        obj = self._objects.get(key)
        if obj is None:
            return None
        view: dict[str, Any] = {"size": obj.size, "sha256": obj.sha256}
        if with_data:
            view["data"] = obj.data
        return view

    def _ordered(self, kb: str) -> list[_Entry]:
        """The entries of `kb` in a fixed arbitrary order, stable until the next change."""
        version, seed = self._versions[kb], self.faults.seed
        cached = self._shuffled.get(kb)
        if cached is None or cached[:2] != (version, seed):
            order = list(self._lists[kb])
            random.Random(seed).shuffle(order)
            cached = (version, seed, order)
            self._shuffled[kb] = cached
        return cached[2]

    # ----- faults, auth, throttling -----

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
        if name in _csv(self._shape("missing_calls")):
            return _detail(404, "Not found.")
        faults = self.faults
        if faults.latency > 0:
            await asyncio.sleep(faults.latency)
        is_api = request.path.startswith(API_PREFIX)
        if self._chance(faults.drop_rate):
            return _drop(request)
        if (
            faults.unavailable
            or (self._unavailable_until and time.monotonic() < self._unavailable_until)
            or self._chance(faults.error_rate)
        ):
            if is_api:
                return _detail(503, "Service temporarily unavailable, try again later.")
            return _s3_error(503, "SlowDown", "Please reduce your request rate.")
        if is_api and faults.redirect_to:
            return web.Response(status=302, headers={"Location": faults.redirect_to})
        if is_api:
            # DRF authenticates before it throttles.
            if request.headers.get("Authorization") != self._auth:
                return _detail(401, "Invalid API key")
            if self._throttled():
                return _json(
                    {"detail": "Request was throttled."}, 429, headers={"Retry-After": "1"}
                )
        response = await handler(request)
        if faults.huge_answer_bytes > 0 and name in _csv(faults.huge_answer_on):
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

    # ----- pagination -----

    def _page_request(self, request: web.Request) -> tuple[int, int]:
        """Page number (0 when invalid) and size, DRF-style: an invalid size falls back to the
        default, a big one is clamped to the maximum, unknown spellings are ignored."""
        try:
            page = int(request.query.get("page", "1"))
        except ValueError:
            page = 0
        default, maximum = self._shape("page_size_default"), self._shape("page_size_max")
        size = default
        for param in _csv(self._shape("page_size_params")):
            raw = request.query.get(param)
            if raw is None:
                continue
            try:
                asked = int(raw)
            except ValueError:
                continue
            if asked > 0:
                size = min(asked, maximum)
        return page, size

    def _page(
        self,
        request: web.Request,
        count: int,
        rows: Callable[[int, int], list[Any]],
        said: int | None = None,
    ) -> web.Response:
        """A paginated answer; `rows(start, stop)` gives the results of that slice; `said`
        is the count the answer claims (the true one unless a knob lies)."""
        page, size = self._page_request(request)
        start = (page - 1) * size
        if page < 1 or (start >= count and page > 1):
            return _detail(404, "Invalid page.")
        stop = min(start + size, count)
        return _json(
            {
                "count": count if said is None else said,
                "next": _page_url(request.url, page + 1) if stop < count else None,
                "previous": _page_url(request.url, page - 1) if page > 1 else None,
                "results": rows(start, stop),
            }
        )

    # ----- presign and S3 -----

    def _signature(self, policy: str) -> str:
        return hmac.new(self._secret, policy.encode(), hashlib.sha256).hexdigest()

    def _presigned_fields(self, key: str) -> dict[str, str]:
        now = dt.datetime.now(dt.timezone.utc)
        expiration = now + dt.timedelta(seconds=self.faults.policy_ttl)
        fields = {
            "key": key,
            "x-amz-algorithm": ALGORITHM,
            "x-amz-credential": f"{ACCESS_KEY}/{now:%Y%m%d}/us-east-1/s3/aws4_request",
            "x-amz-date": f"{now:%Y%m%dT%H%M%SZ}",
        }
        document = {
            "expiration": expiration.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "conditions": [
                {"bucket": BUCKET},
                *({name: value} for name, value in fields.items()),
                ["content-length-range", 0, self.faults.max_file_size],
            ],
        }
        fields["policy"] = base64.b64encode(_dumps(document).encode()).decode()
        fields["x-amz-signature"] = self._signature(fields["policy"])
        return fields

    async def _presign(self, request: web.Request) -> web.Response:
        body = await _read_json(request)
        if not isinstance(body, dict):
            return _detail(400, "Expected a JSON object.")
        filename = body.get("filename")
        if not isinstance(filename, str) or not filename:
            return _detail(400, "filename is required.")
        size = body.get("fileSize")
        if type(size) is not int or size < 0:
            return _detail(400, "fileSize must be a non-negative integer.")
        url = f"{self.s3_origin or request.url.origin()}/s3/{BUCKET}/"
        if self._chance(self.faults.bad_presign_url_rate):
            url = BAD_URL
        return _json({"url": url, "fields": self._presigned_fields(self._new_key(filename))})

    def _check_policy(self, fields: dict[str, str]) -> tuple[int, int]:
        """Validate the signed fields like S3 does; returns the allowed size range."""
        missing = [name for name in SIGNED_FIELDS if name not in fields]
        if missing:
            raise _S3Error(
                400, "InvalidArgument", f"Bucket POST must contain a field named '{missing[0]}'."
            )
        expected = self._signature(fields["policy"]).encode()
        if not hmac.compare_digest(expected, fields["x-amz-signature"].encode()):
            raise _S3Error(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
        document = json.loads(base64.b64decode(fields["policy"]))
        if _iso_to_datetime(document["expiration"]) <= dt.datetime.now(dt.timezone.utc):
            raise _S3Error(403, "AccessDenied", "Invalid according to Policy: Policy expired.")
        low, high = 0, self.faults.max_file_size
        for condition in document["conditions"]:
            if isinstance(condition, list):
                _, low, high = condition
                continue
            for name, value in condition.items():
                if name != "bucket" and fields.get(name) != value:
                    raise _S3Error(
                        403,
                        "AccessDenied",
                        f'Invalid according to Policy: Policy Condition failed: ["eq", "${name}", '
                        f'"{value}"]',
                    )
        return low, high

    async def _s3_post(self, request: web.Request) -> web.Response:
        if request.match_info["bucket"] != BUCKET:
            return _s3_error(404, "NoSuchBucket", "The specified bucket does not exist")
        if "Authorization" in request.headers:
            return _s3_error(400, "InvalidArgument", "Only one auth mechanism allowed.")
        try:
            return await self._receive_upload(request)
        except _S3Error as exc:
            return _s3_error(exc.status, exc.code, exc.message)

    async def _receive_upload(self, request: web.Request) -> web.Response:
        try:
            reader = await request.multipart()
        except ValueError:
            raise _S3Error(
                400,
                "InvalidArgument",
                "Bucket POST must be of the enclosure-type multipart/form-data.",
            ) from None
        fields: dict[str, str] = {}
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise _S3Error(400, "InvalidArgument", "Nested multipart is not supported.")
            if part.name == "file":
                return await self._store_file(reader, part, fields)
            fields[(part.name or "").lower()] = await _read_field(part)
        raise _S3Error(400, "InvalidArgument", "POST requires exactly one file upload per request.")

    async def _store_file(
        self, reader: MultipartReader, part: BodyPartReader, fields: dict[str, str]
    ) -> web.Response:
        low, high = self._check_policy(fields)
        pace = self._s3_pace if self.faults.s3_bandwidth > 0 else None
        size, sha256, data = await _consume_file(part, self.faults.keep_bytes, pace)
        if await reader.next() is not None:
            # S3 would silently ignore such parts; failing loudly catches client bugs.
            raise _S3Error(400, "InvalidArgument", "The file must be the last part of the form.")
        if size > high:
            raise _S3Error(
                400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size"
            )
        if size < low:
            raise _S3Error(
                400,
                "EntityTooSmall",
                "Your proposed upload is smaller than the minimum allowed size",
            )
        self._objects[fields["key"]] = _Object(size, sha256, data)
        return web.Response(status=204)

    async def _media(self, request: web.Request) -> web.Response:
        """The stored bytes behind an entry's `file` URL (when small enough to be kept)."""
        obj = self._objects.get(request.match_info["key"])
        if obj is None or obj.data is None:
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        return web.Response(body=obj.data, content_type="application/octet-stream")

    # ----- knowledge bases and labels -----

    def _kb_view(self, kb: str) -> dict[str, Any]:
        return {"id": kb, "name": self._kb_names[kb], "filesCount": len(self._lists[kb])}

    async def _kbs(self, request: web.Request) -> web.Response:
        kbs = list(self._kb_names)
        return self._page(request, len(kbs), lambda a, b: [self._kb_view(k) for k in kbs[a:b]])

    async def _kb(self, request: web.Request) -> web.Response:
        kb = request.match_info["kb"]
        if kb not in self._lists:
            return _detail(404, "Not found.")
        return _json(self._kb_view(kb))

    async def _list_labels(self, request: web.Request) -> web.Response:
        kb = request.match_info["kb"]
        if kb not in self._lists:
            return _detail(404, "Not found.")
        labels = list(self._labels[kb].items())
        return self._page(
            request, len(labels), lambda a, b: [{"id": i, "name": n} for i, n in labels[a:b]]
        )

    async def _create_label(self, request: web.Request) -> web.Response:
        kb = request.match_info["kb"]
        if kb not in self._lists:
            return _detail(404, "Not found.")
        body = await _read_json(request)
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name.strip():
            return _json({"name": ["This field is required."]}, 400)
        try:
            label = self._new_label(kb, name)
        except ValueError:
            return _json({"name": ["A label with this name already exists."]}, 400)
        return _json(label, 201)

    # ----- knowledge-base files -----

    def _check_register(self, kb: str, files: list[Any]) -> list[dict[str, Any]]:
        """The files of a register body, validated as the docs list (400 on the first fault)."""
        if not files or not all(_is_file_ref(f) for f in files):
            raise _BadRequest({"detail": 'Expected {"files": [{"file": key, "filename": name}]}.'})
        types = {t.lower().lstrip(".") for t in _csv(self.faults.file_types)}
        labels = self._labels[kb]
        for f in files:
            key = f["file"]
            if key not in self._objects:
                raise _BadRequest({"detail": f"File {key!r} has not been uploaded."})
            if types and _extension(f["filename"]).lower() not in types:
                raise _BadRequest({"detail": f"Unsupported file type: {f['filename']!r}."})
            if "labels" in f:
                unknown = [i for i in _label_ids(f["labels"], {"objects"}) if i not in labels]
                if unknown:
                    msg = f'Invalid pk "{unknown[0]}" - object does not exist.'
                    raise _BadRequest({"labels": [msg]})
            meta = f.get("rawUserDefineMetadata")
            if meta is not None and not isinstance(meta, dict):
                raise _BadRequest({"rawUserDefineMetadata": ["Expected a dictionary of items."]})
            parser = f.get("parser")
            if parser is not None and not _is_uuid(parser):
                raise _BadRequest({"parser": ["Must be a valid UUID."]})
            if f.get("knowledgeBase", kb) != kb:
                raise _BadRequest({"knowledgeBase": ["Does not match the knowledge base."]})
        refused = self.faults.refuse_names
        if refused and any(refused in f["filename"] for f in files):
            bad = [refused in f["filename"] for f in files]
            field = {"filename": ["File name contains characters that are not allowed."]}
            raise _BadRequest({"files": [field if b else {} for b in bad]})
        if self._shape("duplicate_keys") == "refuse":
            self._refuse_duplicates(kb, files)
        return files

    def _refuse_duplicates(self, kb: str, files: list[dict[str, Any]]) -> None:
        seen: set[str] = set()
        errors: list[dict[str, Any]] = []
        for f in files:
            key = f["file"]
            taken = key in seen or (kb, key) in self._by_key or self._pending[(kb, key)] > 0
            seen.add(key)
            errors.append({"file": [DUPLICATE]} if taken else {})
        if not any(errors):
            return
        style = self.faults.duplicate_error
        if style == "files":
            raise _BadRequest({"files": errors})
        if style == "non_field":
            raise _BadRequest({"non_field_errors": [DUPLICATE]})
        raise _BadRequest({"detail": DUPLICATE})

    async def _register(self, request: web.Request) -> web.Response:
        kb = request.match_info["kb"]
        if kb not in self._lists:
            return _detail(404, "Not found.")
        body = await _read_json(request)
        files = body.get("files") if isinstance(body, dict) else None
        try:
            files = self._check_register(kb, files if isinstance(files, list) else [])
        except _BadRequest as exc:
            return _json(exc.body, 400)
        faults = self.faults
        broken = {t.lower().lstrip(".") for t in _csv(faults.failing_types)}
        if broken and any(_extension(f["filename"]).lower() in broken for f in files):
            return _detail(500, "Internal Server Error")
        if faults.register_first_only:
            files = files[:1]
        created = [
            self._new_entry(
                kb,
                f["filename"],
                f["file"],
                self._objects[f["file"]].size,
                labels=_label_ids(f.get("labels", []), {"objects"}),
                metadata=dict(f.get("rawUserDefineMetadata") or {}),
                parser=f.get("parser"),
            )
            for f in files
        ]
        delay = faults.register_effect_delay
        lost = self._chance(faults.lost_register_rate)
        if delay <= 0:
            for entry in created:
                self._insert(entry)
        else:
            await self._register_later(created, delay, faults.register_answer_early)
        if lost:
            self._stats["register_lost"] += 1
            return _drop(request)
        render = self._render()
        now = time.monotonic()
        views = [self._public(entry, now, render) for entry in created]
        if self._chance(faults.null_id_rate):
            for view in views:
                view["id"] = None
        if self._shape("register_answer") == "page":
            page = {"count": len(views), "next": None, "previous": None, "results": views}
            return _json(page, 201)
        return _json(views, 201)

    async def _register_later(self, created: list[_Entry], delay: float, early: bool) -> None:
        """A slow commit: the entries appear `delay` seconds from now whatever happens to the
        request (a client that gave up does not undo it). Returns then, or at once if `early`."""
        loop = asyncio.get_running_loop()
        committed = loop.create_future()
        predicted = int((time.time() + delay) * 1000)
        for entry in created:
            entry.created_at = predicted
            self._pending[(entry.kb, entry.key)] += 1

        def commit() -> None:
            for entry in created:
                self._pending[(entry.kb, entry.key)] -= 1
                self._insert(entry)
            if not committed.done():
                committed.set_result(None)

        loop.call_later(delay, commit)
        if not early:
            await asyncio.shield(committed)

    async def _list(self, request: web.Request) -> web.Response:
        kb = request.match_info["kb"]
        if kb not in self._lists:
            return _detail(404, "Not found.")
        entries = self._lists[kb]
        order = self.faults.list_order
        count = len(entries)
        render, now = self._render(), time.monotonic()
        rate = self.faults.filename_list_rate

        def rows(start: int, stop: int) -> list[dict[str, Any]]:
            if order == "newest":  # page 1 is the tail of the list
                chunk = entries[count - stop : count - start]
                chunk.reverse()
            elif order == "oldest":
                chunk = entries[start:stop]
            else:
                chunk = self._ordered(kb)[start:stop]
            views = [self._public(entry, now, render) for entry in chunk]
            if rate > 0:
                for view in views:
                    if self._chance(rate) and "filename" in view:
                        view["filename"] = [view["filename"]]
            return views

        answer = self._page(request, count, rows, self.faults.list_count or count)
        if self.faults.list_shift > 0:
            self._fill(kb, self.faults.list_shift, "shift")
        return answer

    async def _get(self, request: web.Request) -> web.Response:
        entry = self._lookup(request.match_info["kb"], request.match_info["id"])
        if entry is None:
            return _detail(404, "Not found.")
        view = self._public(entry, time.monotonic(), self._render())
        if self._chance(self.faults.filename_list_rate) and "filename" in view:
            view["filename"] = [view["filename"]]
        return _json(view)

    async def _delete(self, request: web.Request) -> web.Response:
        if self.faults.delete_delay > 0:
            await asyncio.sleep(self.faults.delete_delay)
        entry = self._lookup(request.match_info["kb"], request.match_info["id"])
        if entry is None:
            return _detail(404, "Not found.")
        faults = self.faults
        entry.delete_attempts += 1
        if entry.delete_attempts <= faults.delete_conflict_first or (
            faults.delete_conflict_while_processing
            and self._status(entry, time.monotonic()) in ("initial", "processing")
        ):
            return _detail(409, "File is being processed and cannot be deleted yet.")
        self._delete_entry(entry)
        if self._chance(faults.delete_500_rate):
            return _detail(500, "A server error occurred.")
        return web.Response(status=204)

    async def _batch_delete(self, request: web.Request) -> web.Response:
        kb = request.match_info["kb"]
        if kb not in self._lists:
            return _detail(404, "Not found.")
        body = await _read_json(request)
        ids = body.get("ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return _detail(400, 'Expected {"ids": [id, ...]}.')
        if not ids:
            return _json({"ids": ["This list may not be empty."]}, 400)
        doomed = {i for i in ids if self._lookup(kb, i) is not None}
        if doomed and self.faults.delete_phase > 0:
            for entry_id in doomed:
                self._delete_entry(self._by_id[entry_id])
        elif doomed:
            for entry_id in doomed:
                self._forget_key(self._by_id.pop(entry_id))
            self._lists[kb][:] = [e for e in self._lists[kb] if e.id not in doomed]
        return web.Response(status=204)

    def _delete_entry(self, entry: _Entry) -> None:
        """Gone at once, or with `delete_phase` listed as `deleting` that long first."""
        phase = self.faults.delete_phase
        if phase <= 0:
            self._remove(entry)
            return
        if entry.deleting:
            return
        entry.deleting = True
        entry.forced_status = None

        def gone() -> None:
            if self._by_id.get(entry.id) is entry:
                self._remove(entry)

        asyncio.get_running_loop().call_later(phase, gone)

    async def _reparse(self, request: web.Request) -> web.Response:
        kb = request.match_info["kb"]
        if kb not in self._lists:
            return _detail(404, "Not found.")
        body = await _read_json(request)
        if not isinstance(body, list) or not all(
            isinstance(item, dict) and isinstance(item.get("id"), str) for item in body
        ):
            return _detail(400, 'Expected [{"id": id, "parser": ...}, ...].')
        now, render, reparsed = time.monotonic(), self._render(), []
        rate = self.faults.reparse_failure_rate
        if rate < 0:
            rate = self.faults.parse_failure_rate
        for item in body:
            entry = self._lookup(kb, item["id"])
            if entry is not None and not entry.deleting:
                parser = item.get("parser")
                if isinstance(parser, str) and parser:
                    entry.parser = parser
                entry.parse_start = now
                entry.parse_fails = parser != OCR_PARSER and self._chance(rate)
                entry.stuck = False
                entry.forced_status = None
                reparsed.append(self._public(entry, now, render))
        return _json(reparsed)

    async def _failed_reason(self, request: web.Request) -> web.Response:
        entry = self._lookup(request.match_info["kb"], request.match_info["id"])
        if entry is None:
            return _detail(404, "Not found.")
        failed = self._status(entry, time.monotonic()) == "failed"
        return _json({"reason": self.faults.failure_reason if failed else None})

    async def _supported_types(self, request: web.Request) -> web.Response:
        types = _csv(self.faults.supported_types or DOCUMENTED_TYPES)
        parsers = [
            {"id": DEFAULT_PARSER, "name": "MaiAgent", "provider": "maiagent", "isDefault": True},
            {"id": OCR_PARSER, "name": "OCR", "provider": "azure", "isDefault": False},
        ]
        return _json([{"fileType": t, "parsers": parsers} for t in sorted(types)])

    async def _update_metadata(self, request: web.Request) -> web.Response:
        method = request.method
        allowed = {m.upper() for m in _csv(self.faults.update_metadata_methods)}
        if method in ("PATCH", "POST"):
            self._stats[f"update_metadata_{method.lower()}"] += 1
        if method not in allowed or method not in ("PATCH", "POST"):
            headers = {"Allow": ", ".join(sorted(allowed & {"PATCH", "POST"}))}
            return _json({"detail": f'Method "{method}" not allowed.'}, 405, headers)
        kb = request.match_info["kb"]
        entry = self._lookup(kb, request.match_info["id"])
        if entry is None:
            return _detail(404, "Not found.")
        body = await _read_json(request)
        if not isinstance(body, dict) or not ({"labels", "rawUserDefineMetadata"} & set(body)):
            return _detail(400, 'Expected {"labels": [...], "rawUserDefineMetadata": {...}}.')
        try:
            labels = None
            if "labels" in body:
                forms = _csv(self.faults.update_metadata_label_forms)
                labels = _label_ids(body["labels"], forms)
                unknown = [i for i in labels if i not in self._labels[kb]]
                if unknown:
                    msg = f'Invalid pk "{unknown[0]}" - object does not exist.'
                    raise _BadRequest({"labels": [msg]})
            meta = body.get("rawUserDefineMetadata", entry.metadata)
            if not isinstance(meta, dict):
                raise _BadRequest({"rawUserDefineMetadata": ["Expected a dictionary of items."]})
        except _BadRequest as exc:
            return _json(exc.body, 400)
        if labels is not None:
            entry.labels = labels
        entry.metadata = dict(meta)
        return _json(self._public(entry, time.monotonic(), self._render()))

    # ----- control (no auth, no faults) -----

    async def _control_stats(self, request: web.Request) -> web.Response:
        return _json(self._stats)

    async def _control_reset_stats(self, request: web.Request) -> web.Response:
        self._stats.update(dict.fromkeys(COUNTERS, 0))
        return web.Response(status=204)

    async def _control_entries(self, request: web.Request) -> web.Response:
        kb = request.query.get("kb", "")
        if kb not in self._lists:
            return _detail(404, "Not found.")
        return _json(self._entries_view(kb))

    async def _control_records(self, request: web.Request) -> web.Response:
        kb = request.query.get("kb", "")
        if kb not in self._lists:
            return _detail(404, "Not found.")
        return _json([self._record(e) for e in self._lists[kb]])

    async def _control_keys(self, request: web.Request) -> web.Response:
        """Entry ids per S3 key: {key: [id, ...]}."""
        kb = request.query.get("kb", "")
        if kb not in self._lists:
            return _detail(404, "Not found.")
        grouped = self._records_by_key(kb)
        return _json({key: [r["id"] for r in records] for key, records in grouped.items()})

    async def _control_add_entry(self, request: web.Request) -> web.Response:
        body = await _read_json(request)
        if not isinstance(body, dict) or body.get("kb") not in self._lists:
            return _detail(404, "Not found.")
        try:
            entry = self._inject(
                body["kb"],
                str(body.get("filename", "")),
                int(body.get("size", 0)),
                body.get("status"),
                body.get("key"),
            )
        except (TypeError, ValueError) as exc:
            return _detail(400, str(exc))
        return _json(entry, 201)

    async def _control_fill(self, request: web.Request) -> web.Response:
        """{"kb": kb, "count": n}: see `fill`."""
        body = await _read_json(request)
        if not isinstance(body, dict) or body.get("kb") not in self._lists:
            return _detail(404, "Not found.")
        count = body.get("count")
        if not isinstance(count, int) or count < 0:
            return _detail(400, "Expected a count of entries.")
        self._fill(body["kb"], count)
        return web.Response(status=204)

    async def _control_delete_entry(self, request: web.Request) -> web.Response:
        if not self._remove_id(request.match_info["id"]):
            return _detail(404, "Not found.")
        return web.Response(status=204)

    async def _control_entry_content(self, request: web.Request) -> web.Response:
        entry = self._by_id.get(request.match_info["id"])
        obj = None if entry is None else self._objects.get(entry.key)
        if obj is None or obj.data is None:
            return _detail(404, "Not found.")
        return web.Response(body=obj.data, content_type="application/octet-stream")

    async def _control_faults(self, request: web.Request) -> web.Response:
        body = await _read_json(request)
        if not isinstance(body, dict):
            return _detail(400, "Expected a JSON object of knobs.")
        try:
            self.faults.update(body)
        except ValueError as exc:
            return _detail(400, str(exc))
        return _json(dataclasses.asdict(self.faults))

    async def _control_outage(self, request: web.Request) -> web.Response:
        """{"seconds": s, "mode": "refuse"|"503"}; a refusal starts just after this answer."""
        body = await _read_json(request)
        seconds = body.get("seconds") if isinstance(body, dict) else None
        mode = body.get("mode", "refuse") if isinstance(body, dict) else None
        if not isinstance(seconds, (int, float)) or mode not in OUTAGE_MODES:
            return _detail(400, f'Expected {{"seconds": s, "mode": one of {OUTAGE_MODES}}}.')
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, lambda: self._spawn(self._outage(seconds, mode)))
        return web.Response(status=204)

    async def _control_object(self, request: web.Request) -> web.Response:
        view = self._object_view(request.match_info["key"], False)
        return _detail(404, "Not found.") if view is None else _json(view)


def _is_file_ref(item: Any) -> bool:
    return (
        isinstance(item, dict)
        and isinstance(item.get("file"), str)
        and isinstance(item.get("filename"), str)
    )


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


# ----- command line -----


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Every Faults knob becomes a flag (--parse-delay, --no-list-size, ...)."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.maiagent_server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default="test-key")
    parser.add_argument("--kb", action="append", help="knowledge base ID or ID=NAME (repeatable)")
    parser.add_argument("--dialect", choices=DIALECTS, default="docs")
    for field in dataclasses.fields(Faults):
        flag = "--" + field.name.replace("_", "-")
        if isinstance(field.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
        else:
            kind = int if field.default is None else type(field.default)
            parser.add_argument(flag, type=kind, default=field.default)
    return parser.parse_args(argv)


async def _serve_forever(server: MaiAgentServer, port: int) -> None:
    await server.start(port=port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"listening on {server.base_url}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    try:
        faults = Faults(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Faults)})
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    kbs = dict(kb.partition("=")[::2] for kb in args.kb or ["kb-test"])
    kbs = {kb: name or kb for kb, name in kbs.items()}
    server = MaiAgentServer(api_key=args.api_key, kbs=kbs, faults=faults, dialect=args.dialect)
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve_forever(server, args.port))
    else:
        uvloop.run(_serve_forever(server, args.port))


if __name__ == "__main__":
    main()
