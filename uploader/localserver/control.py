"""What tests and the bench see and steer behind the API's back: in-process calls (thread-safe,
run on the server's loop) and the same over HTTP under /_control/ (no auth, no faults)."""

from __future__ import annotations

import dataclasses
from typing import Any

from aiohttp import web

from uploader.localserver.state import COUNTERS, ServerState
from uploader.localserver.wire import answer, detail, read_json


class Control(ServerState):
    """Inspection and steering of the server's state."""

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

    def fill(self, kb: str, count: int, age: float = 0.0) -> None:
        """`count` entries made as if by someone else (a knowledge base that is not new),
        `age` seconds ago (a millisecond apart) unless the knowledge base holds newer ones."""
        self._on_loop(self._fill, kb, count, "existing", age)

    def delete_entry(self, entry_id: str) -> bool:
        return self._on_loop(self._remove_id, entry_id)

    def drop_kb(self, kb: str) -> None:
        """The knowledge base deleted in the web interface: every call naming it is a 404."""

        def drop() -> None:
            for table in (self._kb_names, self._lists, self._labels):
                table.pop(kb, None)

        self._on_loop(drop)

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

    async def _control_stats(self, request: web.Request) -> web.Response:
        return answer(self._stats)

    async def _control_reset_stats(self, request: web.Request) -> web.Response:
        self._stats.update(dict.fromkeys(COUNTERS, 0))
        return web.Response(status=204)

    async def _control_entries(self, request: web.Request) -> web.Response:
        kb = request.query.get("kb", "")
        if kb not in self._lists:
            return detail(404, "Not found.")
        return answer(self._entries_view(kb))

    async def _control_records(self, request: web.Request) -> web.Response:
        kb = request.query.get("kb", "")
        if kb not in self._lists:
            return detail(404, "Not found.")
        return answer([self._record(e) for e in self._lists[kb]])

    async def _control_keys(self, request: web.Request) -> web.Response:
        """Entry ids per S3 key: {key: [id, ...]}."""
        kb = request.query.get("kb", "")
        if kb not in self._lists:
            return detail(404, "Not found.")
        grouped = self._records_by_key(kb)
        return answer({key: [r["id"] for r in records] for key, records in grouped.items()})

    async def _control_add_entry(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        if not isinstance(body, dict) or body.get("kb") not in self._lists:
            return detail(404, "Not found.")
        try:
            entry = self._inject(
                body["kb"],
                str(body.get("filename", "")),
                int(body.get("size", 0)),
                body.get("status"),
                body.get("key"),
            )
        except (TypeError, ValueError) as exc:
            return detail(400, str(exc))
        return answer(entry, 201)

    async def _control_fill(self, request: web.Request) -> web.Response:
        """{"kb": kb, "count": n, "age": seconds (optional)}: see `fill`."""
        body = await read_json(request)
        if not isinstance(body, dict) or body.get("kb") not in self._lists:
            return detail(404, "Not found.")
        count = body.get("count")
        if not isinstance(count, int) or count < 0:
            return detail(400, "Expected a count of entries.")
        age = body.get("age", 0)
        if not isinstance(age, (int, float)) or age < 0:
            return detail(400, "Expected an age in seconds.")
        self._fill(body["kb"], count, "existing", float(age))
        return web.Response(status=204)

    async def _control_delete_entry(self, request: web.Request) -> web.Response:
        if not self._remove_id(request.match_info["id"]):
            return detail(404, "Not found.")
        return web.Response(status=204)

    async def _control_entry_content(self, request: web.Request) -> web.Response:
        entry = self._by_id.get(request.match_info["id"])
        obj = None if entry is None else self._objects.get(entry.key)
        if obj is None or obj.data is None:
            return detail(404, "Not found.")
        return web.Response(body=obj.data, content_type="application/octet-stream")

    async def _control_faults(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        if not isinstance(body, dict):
            return detail(400, "Expected a JSON object of knobs.")
        try:
            self.faults.update(body)
        except ValueError as exc:
            return detail(400, str(exc))
        return answer(dataclasses.asdict(self.faults))

    async def _control_object(self, request: web.Request) -> web.Response:
        view = self._object_view(request.match_info["key"], False)
        return detail(404, "Not found.") if view is None else answer(view)
