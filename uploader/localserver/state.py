"""What the server holds in memory (knowledge bases, their entries and labels, the uploaded
objects, request counters) and how an entry looks in an answer."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import secrets
import ssl
import time
import urllib.parse
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from aiohttp import web

from uploader.localserver.dialects import DIALECTS, SHAPES, STATUS_MESSAGES, Render, created
from uploader.localserver.faults import Faults
from uploader.localserver.wire import csv_set, extension

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
_URI_SAFE = "/~!*()'"  # django.utils.encoding.filepath_to_uri

T = TypeVar("T")


@dataclasses.dataclass(eq=False)
class Entry:
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
class StoredObject:
    size: int
    sha256: str
    data: bytes | None


class ServerState:
    """The state every route reads and writes; only ever touched on the server's loop."""

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
        self._lists: dict[str, list[Entry]] = {kb: [] for kb in names}
        self._by_id: dict[str, Entry] = {}
        self._by_key: dict[tuple[str, str], list[Entry]] = {}
        self._pending: Counter[tuple[str, str]] = Counter()
        self._labels: dict[str, dict[str, str]] = {kb: {} for kb in names}  # kb: id -> name
        self._versions: Counter[str] = Counter()
        self._shuffled: dict[str, tuple[int, int | None, list[Entry]]] = {}
        self._objects: dict[str, StoredObject] = {}
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

    def _on_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Run on the server loop so tests never see state in the middle of a request."""
        loop = self._loop
        if loop is None or running_loop() is loop:
            return fn(*args)

        async def call() -> T:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=10)

    def _random(self) -> float:
        """Reseed when the seed knob changes, so a test can set it after start."""
        if self.faults.seed != self._seed:
            self._seed = self.faults.seed
            self._rng = random.Random(self._seed)
        return self._rng.random()

    def _chance(self, rate: float) -> bool:
        return rate > 0 and self._random() < rate

    def _shape(self, name: str) -> Any:
        return getattr(self.faults, name) or SHAPES[self.dialect][name]

    def _new_key(self, filename: str) -> str:
        if self._shape("key_form") == "uuid":
            ext = extension(filename)
            return f"media/chatbots/chatbot-file/{uuid.uuid4()}" + (f".{ext}" if ext else "")
        return f"media/chatbot-file/{uuid.uuid4()}/{filename}"

    def _new_entry(self, kb: str, filename: str, key: str, size: int, **extra: Any) -> Entry:
        return Entry(
            id=str(uuid.uuid4()),
            kb=kb,
            filename=filename,
            key=key,
            url_path="/" + urllib.parse.quote(key, safe=_URI_SAFE),
            file_type=extension(filename).lower(),
            size=size,
            created_at=0,
            parse_start=0.0,
            parse_fails=self._chance(self.faults.parse_failure_rate),
            stuck=self._chance(self.faults.stuck_rate),
            **extra,
        )

    def _insert(self, entry: Entry) -> None:
        """Make an entry visible. createdAt never goes backwards, so append order is newest-last
        and listing can slice. A late commit keeps the time its early answer announced."""
        self._last_ms = max(entry.created_at or int(time.time() * 1000), self._last_ms)
        entry.created_at = self._last_ms
        entry.parse_start = time.monotonic()
        self._lists[entry.kb].append(entry)
        self._by_id[entry.id] = entry
        self._by_key.setdefault((entry.kb, entry.key), []).append(entry)
        self._versions[entry.kb] += 1

    def _status(self, entry: Entry, now: float) -> str:
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

    def _render(self, with_size: bool | None = None, garbage: bool = True) -> Render:
        faults = self.faults
        if with_size is None:
            with_size = faults.list_size
        return Render(
            docs=self.dialect == "docs",
            url=self._shape("file_field") == "url",
            status_object=self._shape("status_form") == "object",
            created=self._shape("created_at_form"),
            size_field=self._shape("size_field") if with_size else None,
            drop=frozenset(csv_set(faults.drop_fields)) if garbage else frozenset(),
        )

    def _public(self, entry: Entry, now: float, render: Render) -> dict[str, Any]:
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
        view["createdAt"] = created(entry.created_at, render.created)
        view["labels"] = self._label_views(entry)
        view["rawUserDefineMetadata"] = dict(entry.metadata)
        if render.docs:
            view["parser"] = entry.parser
        for name in render.drop:
            view.pop(name, None)
        return view

    def _label_views(self, entry: Entry) -> list[dict[str, str]]:
        names = self._labels[entry.kb]
        return [{"id": i, "name": names.get(i, "")} for i in entry.labels]

    def _record(self, entry: Entry) -> dict[str, Any]:
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

    def _lookup(self, kb: str, entry_id: str) -> Entry | None:
        entry = self._by_id.get(entry_id)
        return entry if entry is not None and entry.kb == kb else None

    def _remove(self, entry: Entry) -> None:
        del self._by_id[entry.id]
        self._lists[entry.kb].remove(entry)
        self._forget_key(entry)

    def _forget_key(self, entry: Entry) -> None:
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

    def _fill(self, kb: str, count: int, prefix: str = "existing", age: float = 0.0) -> None:
        made = int((time.time() - age) * 1000) if age > 0 else 0
        for i in range(count):
            name = f"{prefix}-{len(self._lists[kb]):07d}-{i}.txt"
            entry = self._new_entry(kb, name, self._new_key(name), 1000)
            entry.created_at = made + i if made else 0
            self._insert(entry)

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


def running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
