"""A sync job's options: which of `sync`'s options belong to the job (and are saved with it),
how they are kept in the database, and what a later call changes.

What is saved says what the folder's entries are and which files go in: the filters, labels,
metadata, manifest, parser, the name shown and the delete policy. How fast or how patiently a
run uploads (--workers, --timeout, ...) belongs to the machine and the network, not to the
job, and is given each time (or by --network).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .guard import MaxDelete

# (parameter name, option as typed): the options a job keeps
JOB_OPTIONS: Mapping[str, str] = {
    "include": "--include",
    "exclude": "--exclude",
    "ignore_case": "--ignore-case",
    "max_size": "--max-size",
    "follow_symlinks": "--follow-symlinks",
    "any_type": "--any-type",
    "filename_encoding": "--filename-encoding",
    "shared": "--shared",
    "labels": "--label",
    "labels_from_path": "--labels-from-path",
    "metadata": "--metadata",
    "manifest": "--manifest",
    "manifest_encoding": "--manifest-encoding",
    "parser": "--parser",
    "name": "--name",
    "name_separator": "--name-separator",
    "delete_removed": "--delete-removed",
    "keep_old_versions": "--keep-old-versions",
    "max_delete": "--max-delete",
    "allow_empty_source": "--allow-empty-source",
}

# the ones enqueue takes: an enqueue of a saved folder with other values is warned about
SCAN_OPTIONS = (
    "include",
    "exclude",
    "ignore_case",
    "max_size",
    "follow_symlinks",
    "filename_encoding",
    "labels",
    "labels_from_path",
    "metadata",
    "manifest",
    "manifest_encoding",
    "parser",
)


def to_saved(options: Mapping[str, Any]) -> dict[str, Any]:
    """The job's options among `options` as JSON keeps them."""
    saved: dict[str, Any] = {}
    for name in JOB_OPTIONS:
        if name not in options:
            continue
        value = options[name]
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, MaxDelete):
            value = str(value)
        saved[name] = value
    return saved


def from_saved(saved: Mapping[str, Any]) -> dict[str, Any]:
    """The job's options as the commands take them."""
    options = dict(saved)
    for name in ("include", "exclude", "labels"):
        options[name] = tuple(options.get(name) or ())
    options["metadata"] = dict(options.get("metadata") or {})
    options["max_delete"] = MaxDelete.parse(str(options.get("max_delete") or "50%"))
    return options


def shown(value: Any) -> str:
    """An option's value as a person reads it in a line."""
    if value in (None, (), [], {}, False):
        return "none"
    if value is True:
        return "on"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


@dataclass(frozen=True)
class Change:
    """One option whose value differs from the saved job's."""

    option: str  # as typed: --label
    saved: str
    given: str

    def __str__(self) -> str:
        return f"{self.option} {self.given} (was {self.saved})"


def differences(
    saved: Mapping[str, Any], given: Mapping[str, Any], names: Any = JOB_OPTIONS
) -> list[Change]:
    """The options of `names` that `given` sets to another value than `saved` holds (both as
    JSON keeps them)."""
    return [
        Change(JOB_OPTIONS[name], shown(saved.get(name)), shown(given[name]))
        for name in names
        if name in given and _canonical(given[name]) != _canonical(saved.get(name))
    ]


def _canonical(value: Any) -> Any:
    if value in (None, (), [], {}, False):
        return None
    if isinstance(value, (list, tuple)):
        return list(value)
    return value
