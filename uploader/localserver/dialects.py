"""The two shapes of MaiAgent's answers (`docs` and `examples`, see the package docstring) and
what each shape knob resolves to when left to the dialect."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

DIALECTS = ("docs", "examples")
STATUSES = ("initial", "processing", "done", "failed", "deleting")
STATUS_MESSAGES = {
    "initial": "File uploaded, waiting to be processed.",
    "processing": "File is being processed.",
    "done": "File processed successfully.",
    "failed": "File processing failed.",
    "deleting": "File is being deleted.",
}


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


@dataclasses.dataclass(frozen=True)
class Render:
    """How entries look in one answer, resolved once per request from dialect and knobs."""

    docs: bool
    url: bool
    status_object: bool
    created: str
    size_field: str | None
    drop: frozenset[str]


def created(ms: int, form: str) -> Any:
    if form == "int":
        return ms
    if form == "string":
        return str(ms)
    if form == "float":
        return ms / 1
    moment = dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
