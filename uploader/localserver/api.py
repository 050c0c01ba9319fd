"""The knowledge-base API besides the listing: knowledge bases, labels, register, get, delete,
batch delete and reparse, a file's failed reason, the supported types, update-metadata."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from uploader.localserver.listing import Listing
from uploader.localserver.state import Entry
from uploader.localserver.wire import (
    BadRequest,
    answer,
    csv_set,
    detail,
    drop,
    extension,
    is_uuid,
    read_json,
)

# The file types MaiAgent's docs list as supported, and the parsers the supported-types call
# names for each (the default one, and an OCR one that reads scanned PDFs).
DOCUMENTED_TYPES = "doc,docx,txt,pdf,md,xls,xlsx,csv,ppt,pptx,json,jsonl"
DEFAULT_PARSER = "0b7c6c1e-5f0a-4b59-9d1a-000000000001"
OCR_PARSER = "0b7c6c1e-5f0a-4b59-9d1a-000000000002"
DUPLICATE = "Duplicate File Upload"


def _label_ids(labels: Any, forms: set[str]) -> list[str]:
    """The label ids of a `labels` value, in either form the sources show, as DRF refuses them."""
    if not isinstance(labels, list):
        kind = type(labels).__name__
        raise BadRequest({"labels": [f'Expected a list of items but got type "{kind}".']})
    ids: list[str] = []
    for item in labels:
        if isinstance(item, dict) and isinstance(item.get("id"), str):
            if "objects" not in forms:
                raise BadRequest({"labels": ["Incorrect type. Expected pk value, received dict."]})
            ids.append(item["id"])
        elif isinstance(item, str):
            if "ids" not in forms:
                msg = "Invalid data. Expected a dictionary, but got str."
                raise BadRequest({"labels": [{"non_field_errors": [msg]}]})
            ids.append(item)
        else:
            raise BadRequest({"labels": ['Expected a label id or {"id": ...}.']})
    return ids


def _is_file_ref(item: Any) -> bool:
    return (
        isinstance(item, dict)
        and isinstance(item.get("file"), str)
        and isinstance(item.get("filename"), str)
    )


class KnowledgeBaseApi(Listing):
    """The routes of /api/v1/knowledge-bases/ and /api/v1/parsers/ but the listing."""

    def _kb_view(self, kb: str) -> dict[str, Any]:
        return {"id": kb, "name": self._kb_names[kb], "filesCount": len(self._lists[kb])}

    async def _kbs(self, request: web.Request) -> web.Response:
        kbs = list(self._kb_names)
        return self._page(request, len(kbs), lambda a, b: [self._kb_view(k) for k in kbs[a:b]])

    async def _kb(self, request: web.Request) -> web.Response:
        kb = request.match_info["kb"]
        if kb not in self._lists:
            return detail(404, "Not found.")
        return answer(self._kb_view(kb))

    async def _list_labels(self, request: web.Request) -> web.Response:
        kb = request.match_info["kb"]
        if kb not in self._lists:
            return detail(404, "Not found.")
        labels = list(self._labels[kb].items())
        return self._page(
            request, len(labels), lambda a, b: [{"id": i, "name": n} for i, n in labels[a:b]]
        )

    async def _create_label(self, request: web.Request) -> web.Response:
        kb = request.match_info["kb"]
        if kb not in self._lists:
            return detail(404, "Not found.")
        body = await read_json(request)
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name.strip():
            return answer({"name": ["This field is required."]}, 400)
        try:
            label = self._new_label(kb, name)
        except ValueError:
            return answer({"name": ["A label with this name already exists."]}, 400)
        return answer(label, 201)

    def _check_register(self, kb: str, files: list[Any]) -> list[dict[str, Any]]:
        """The files of a register body, validated as the docs list (400 on the first fault)."""
        if not files or not all(_is_file_ref(f) for f in files):
            raise BadRequest({"detail": 'Expected {"files": [{"file": key, "filename": name}]}.'})
        types = {t.lower().lstrip(".") for t in csv_set(self.faults.file_types)}
        labels = self._labels[kb]
        for f in files:
            key = f["file"]
            if key not in self._objects:
                raise BadRequest({"detail": f"File {key!r} has not been uploaded."})
            if types and extension(f["filename"]).lower() not in types:
                raise BadRequest({"detail": f"Unsupported file type: {f['filename']!r}."})
            if "labels" in f:
                unknown = [i for i in _label_ids(f["labels"], {"objects"}) if i not in labels]
                if unknown:
                    msg = f'Invalid pk "{unknown[0]}" - object does not exist.'
                    raise BadRequest({"labels": [msg]})
            meta = f.get("rawUserDefineMetadata")
            if meta is not None and not isinstance(meta, dict):
                raise BadRequest({"rawUserDefineMetadata": ["Expected a dictionary of items."]})
            parser = f.get("parser")
            if parser is not None and not is_uuid(parser):
                raise BadRequest({"parser": ["Must be a valid UUID."]})
            if f.get("knowledgeBase", kb) != kb:
                raise BadRequest({"knowledgeBase": ["Does not match the knowledge base."]})
        refused = self.faults.refuse_names
        if refused and any(refused in f["filename"] for f in files):
            bad = [refused in f["filename"] for f in files]
            field = {"filename": ["File name contains characters that are not allowed."]}
            raise BadRequest({"files": [field if b else {} for b in bad]})
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
            raise BadRequest({"files": errors})
        if style == "non_field":
            raise BadRequest({"non_field_errors": [DUPLICATE]})
        raise BadRequest({"detail": DUPLICATE})

    async def _register(self, request: web.Request) -> web.Response:
        kb = request.match_info["kb"]
        if kb not in self._lists:
            return detail(404, "Not found.")
        body = await read_json(request)
        files = body.get("files") if isinstance(body, dict) else None
        try:
            files = self._check_register(kb, files if isinstance(files, list) else [])
        except BadRequest as exc:
            return answer(exc.body, 400)
        faults = self.faults
        broken = {t.lower().lstrip(".") for t in csv_set(faults.failing_types)}
        if broken and any(extension(f["filename"]).lower() in broken for f in files):
            return detail(500, "Internal Server Error")
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
            return drop(request)
        render = self._render()
        now = time.monotonic()
        views = [self._public(entry, now, render) for entry in created]
        if self._chance(faults.null_id_rate):
            for view in views:
                view["id"] = None
        if self._shape("register_answer") == "page":
            page = {"count": len(views), "next": None, "previous": None, "results": views}
            return answer(page, 201)
        return answer(views, 201)

    async def _register_later(self, created: list[Entry], delay: float, early: bool) -> None:
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

    async def _get(self, request: web.Request) -> web.Response:
        entry = self._lookup(request.match_info["kb"], request.match_info["id"])
        if entry is None:
            return detail(404, "Not found.")
        view = self._public(entry, time.monotonic(), self._render())
        if self._chance(self.faults.filename_list_rate) and "filename" in view:
            view["filename"] = [view["filename"]]
        return answer(view)

    async def _delete(self, request: web.Request) -> web.Response:
        if self.faults.delete_delay > 0:
            await asyncio.sleep(self.faults.delete_delay)
        entry = self._lookup(request.match_info["kb"], request.match_info["id"])
        if entry is None:
            return detail(404, "Not found.")
        faults = self.faults
        entry.delete_attempts += 1
        if entry.delete_attempts <= faults.delete_conflict_first or (
            faults.delete_conflict_while_processing
            and self._status(entry, time.monotonic()) in ("initial", "processing")
        ):
            return detail(409, "File is being processed and cannot be deleted yet.")
        self._delete_entry(entry)
        if self._chance(faults.delete_500_rate):
            return detail(500, "A server error occurred.")
        return web.Response(status=204)

    async def _batch_delete(self, request: web.Request) -> web.Response:
        kb = request.match_info["kb"]
        if kb not in self._lists:
            return detail(404, "Not found.")
        body = await read_json(request)
        ids = body.get("ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return detail(400, 'Expected {"ids": [id, ...]}.')
        if not ids:
            return answer({"ids": ["This list may not be empty."]}, 400)
        doomed = {i for i in ids if self._lookup(kb, i) is not None}
        if doomed and self.faults.delete_phase > 0:
            for entry_id in doomed:
                self._delete_entry(self._by_id[entry_id])
        elif doomed:
            for entry_id in doomed:
                self._forget_key(self._by_id.pop(entry_id))
            self._lists[kb][:] = [e for e in self._lists[kb] if e.id not in doomed]
        return web.Response(status=204)

    def _delete_entry(self, entry: Entry) -> None:
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
            return detail(404, "Not found.")
        body = await read_json(request)
        if not isinstance(body, list) or not all(
            isinstance(item, dict) and isinstance(item.get("id"), str) for item in body
        ):
            return detail(400, 'Expected [{"id": id, "parser": ...}, ...].')
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
        return answer(reparsed)

    async def _failed_reason(self, request: web.Request) -> web.Response:
        entry = self._lookup(request.match_info["kb"], request.match_info["id"])
        if entry is None:
            return detail(404, "Not found.")
        failed = self._status(entry, time.monotonic()) == "failed"
        return answer({"reason": self.faults.failure_reason if failed else None})

    async def _supported_types(self, request: web.Request) -> web.Response:
        types = csv_set(self.faults.supported_types or DOCUMENTED_TYPES)
        parsers = [
            {"id": DEFAULT_PARSER, "name": "MaiAgent", "provider": "maiagent", "isDefault": True},
            {"id": OCR_PARSER, "name": "OCR", "provider": "azure", "isDefault": False},
        ]
        return answer([{"fileType": t, "parsers": parsers} for t in sorted(types)])

    async def _update_metadata(self, request: web.Request) -> web.Response:
        method = request.method
        allowed = {m.upper() for m in csv_set(self.faults.update_metadata_methods)}
        if method in ("PATCH", "POST"):
            self._stats[f"update_metadata_{method.lower()}"] += 1
        if method not in allowed or method not in ("PATCH", "POST"):
            headers = {"Allow": ", ".join(sorted(allowed & {"PATCH", "POST"}))}
            return answer({"detail": f'Method "{method}" not allowed.'}, 405, headers)
        kb = request.match_info["kb"]
        entry = self._lookup(kb, request.match_info["id"])
        if entry is None:
            return detail(404, "Not found.")
        body = await read_json(request)
        if not isinstance(body, dict) or not ({"labels", "rawUserDefineMetadata"} & set(body)):
            return detail(400, 'Expected {"labels": [...], "rawUserDefineMetadata": {...}}.')
        try:
            labels = None
            if "labels" in body:
                forms = csv_set(self.faults.update_metadata_label_forms)
                labels = _label_ids(body["labels"], forms)
                unknown = [i for i in labels if i not in self._labels[kb]]
                if unknown:
                    msg = f'Invalid pk "{unknown[0]}" - object does not exist.'
                    raise BadRequest({"labels": [msg]})
            meta = body.get("rawUserDefineMetadata", entry.metadata)
            if not isinstance(meta, dict):
                raise BadRequest({"rawUserDefineMetadata": ["Expected a dictionary of items."]})
        except BadRequest as exc:
            return answer(exc.body, 400)
        if labels is not None:
            entry.labels = labels
        entry.metadata = dict(meta)
        return answer(self._public(entry, time.monotonic(), self._render()))
