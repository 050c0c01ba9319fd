"""What a file's knowledge-base entry should carry besides the file (issue 14): label names,
user-defined metadata, and the enqueue options that say which.

Labels and metadata travel together as one canonical JSON text (labels sorted and unique,
metadata keys sorted), so the queue tells by a plain comparison of two columns whether an
entry already has what its job asks (`jobs.tags` against `jobs.tags_applied`), and an
enqueue that asks the same again changes nothing. The parser and the name shown are not
part of it: update-metadata cannot change them, so they only count at register.

An enqueue that gives none of --label, --labels-from-path, --metadata and --manifest asks
nothing (`tags_for` is None), and leaves what earlier enqueues asked as it is; one that gives
any of them says everything the entry should carry, so a label left out is taken off.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .i18n import _
from .manifest import ManifestRow, MetadataValue, label_name, labels_from_path


def encode(labels: Iterable[str], metadata: Mapping[str, MetadataValue]) -> str:
    """The canonical text of labels and metadata (the form `jobs.tags` holds)."""
    body = {"labels": sorted(set(labels)), "metadata": dict(metadata)}
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def decode(text: str | None) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Label names and metadata of a canonical text; nothing for None."""
    if text is None:
        return (), {}
    body = json.loads(text)
    return tuple(body["labels"]), dict(body["metadata"])


# What an entry registered without labels or metadata carries.
EMPTY = encode((), {})


def check_label(name: str) -> str:
    """A label name as given on the command line, taken as a manifest's labels are
    (`manifest.label_name`). Raises ValueError with a one-line message."""
    try:
        return label_name(name)
    except ValueError as exc:
        shown = _("label {name!r}").format(name=name) if name.strip() else _("a label name")
        raise ValueError(_("{label} {problem}").format(label=shown, problem=exc)) from None


def check_parser(value: str) -> str:
    """--parser: the documentation says a parser is named by a UUID; anything else would be
    refused at register, after the upload was spent."""
    try:
        uuid.UUID(value)
    except ValueError:
        raise ValueError(_("{value!r} is not a parser id (a UUID)").format(value=value)) from None
    return value


@dataclass(frozen=True)
class TagOptions:
    """The enqueue options that say what every file's entry carries."""

    labels: tuple[str, ...] = ()
    labels_from_path: int | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    parser: str | None = None
    manifest: bool = False

    @property
    def asks(self) -> bool:
        """Whether labels and metadata were asked for at all (see the module docstring)."""
        return bool(
            self.labels or self.labels_from_path is not None or self.metadata or self.manifest
        )

    def tags_for(self, relpath: str, row: ManifestRow | None = None) -> str | None:
        """The canonical tags of one file: --label, the folders --labels-from-path takes and
        the manifest row's labels; --metadata, then the row's metadata (a row's key wins)."""
        if not self.asks:
            return None
        labels = list(self.labels)
        if self.labels_from_path:
            labels.extend(labels_from_path(relpath, self.labels_from_path))
        metadata: dict[str, MetadataValue] = dict(self.metadata)
        if row is not None:
            labels.extend(row.labels)
            metadata.update(row.metadata)
        return encode(labels, metadata)
