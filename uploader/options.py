"""A run's options, typed and frozen: built once from the command line (`uploader run`, and
`sync`, which runs with the same options), then read by the run's composition, the pool and
each attempt, and recorded with the run. One object instead of a dict read by string keys
and copied by hand into each layer's own settings, so that an option added here reaches them
all, and what the run records cannot drift from what it used."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RunOptions:
    """What `uploader run` was asked (its defaults are the command's)."""

    base_url: str
    api_key: str = field(repr=False)  # lives only here, in memory: never recorded or shown
    host_id: str = ""  # the host whose rows this run takes (--host-id; empty: this machine's)
    kb_id: str | None = None  # --kb: one knowledge base's rows, or every one's
    workers: int = 10
    max_retries: int = 3
    retry_delay: float = 2.0  # seconds, the base of the exponential backoff
    timeout: float = 60.0  # seconds per API request; an S3 upload's idle timeout
    rate_limit: float | None = None  # API requests per second
    bwlimit: float | None = None  # bytes per second of every upload together
    name: str = "basename"  # or "relpath", "folders": the filename shown (naming.py)
    name_separator: str = " › "  # between the folders of a `folders` name
    register_batch: int | None = None  # files per register call; None: auto
    lease: float = 60.0  # seconds a claimed row stays this run's without renewal
    grace: float = 5.0  # seconds in-flight uploads get after Ctrl+C
    outage_timeout: float = 600.0  # seconds paused for a service that stopped answering
    shared: bool = False  # claim any host's rows, not only this host's
    skip_same_content: bool = False
    keep_old_versions: bool = False
    # before this database's first upload to a knowledge base that holds entries like the
    # files (uploader/existing.py): adopt them (from a reference checkpoint), or upload anyway
    adopt_existing: bool = False
    from_checkpoint: str | None = None
    upload_anyway: bool = False
    log_file: str | None = None  # the run's log (None: logs/ beside the database)
    log_level: str = "INFO"

    def recorded(self) -> dict[str, Any]:
        """What the run's record (and its log's first line) keeps of its options: every one
        that changes what the run does, never the key nor where its log went."""
        kept = dataclasses.asdict(self)
        for private in ("api_key", "log_file", "log_level"):
            del kept[private]
        return kept


@dataclass(frozen=True)
class Plan:
    """What a run decided at its start, beside its options: the files per register call
    (`--register-batch`, or auto's pick), and the types the knowledge base accepts (learned
    from the service, `filetypes`; None: any)."""

    register_batch: int = 1
    file_types: frozenset[str] | None = None
