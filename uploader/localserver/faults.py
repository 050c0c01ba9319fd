"""The fault knobs: one field of `Faults` each, documented in the package docstring (and
docs/localserver.md), mutable while the server runs."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from uploader.localserver.wire import csv_set

CALLS = ("supported_types", "failed_reason", "reparse")
FAILURE_REASON = "No text could be extracted from the file (a scanned document needs an OCR parser)"
SMALL_OBJECT = 1 << 20  # objects up to this size keep their bytes by default
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


@dataclasses.dataclass
class Faults:
    """Knobs that make the server misbehave; mutable while it runs (rates are 0..1).
    One line each in the package docstring and in docs/localserver.md."""

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
        calls = csv_set(values.get("missing_calls", "")) - {"none"}
        if calls - set(CALLS):
            raise ValueError(f"missing_calls takes {CALLS} or none, not {sorted(calls)}")
