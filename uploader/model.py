"""The plain types every layer shares: job states, outcomes, error kinds, steps, the job and
the rows that cross modules. No I/O here, so the queue, the attempt, reconcile and the CLI
can all import it without importing each other.

The enums mix in `str` (`enum.StrEnum` is 3.11+, the project targets 3.10): a member is
stored in SQLite, written to JSON and compared with a row's text as its plain value.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, NamedTuple


class _Text(str, enum.Enum):
    """A str enum whose str() and format() are its value (as StrEnum's are)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class JobState(_Text):
    """A row of `jobs` (the CHECK constraint of migration 0001 lists the same)."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"
    REMOVED = "removed"  # its file is gone from its folder (enqueue --delete-removed)


class OutcomeKind(_Text):
    """What one attempt came to; each has one statement in the queue's `record_outcomes`.

    `uploaded` is not an end: it records the S3 key between the upload and the register, so a
    crash after the upload does not upload the file again.
    """

    DONE = "done"
    RETRY = "retry"
    FAILED = "failed"
    RELEASED = "released"
    UPLOADED = "uploaded"
    # run --skip-same-content: its bytes are another file's already in the knowledge base
    SKIPPED = "skipped"


class Step(_Text):
    """How far a job got: its S3 upload is kept across attempts until it is registered."""

    UPLOADED = "uploaded"
    REGISTERED = "registered"
    # a registered entry whose labels or metadata changed at enqueue: the next attempt sends
    # update-metadata only (no presign, no upload)
    METADATA = "metadata"
    # a registered entry whose file's mtime changed at enqueue but not its size: the next
    # attempt hashes the file and, when its bytes are the ones uploaded, is done at once
    RECHECK = "recheck"


class Severity(_Text):
    """What a failed call means for the work that made it (`errors.ApiError.kind`)."""

    TRANSIENT = "transient"  # try again later: the same call may well succeed
    PERMANENT = "permanent"  # this file (or this call) fails; the others go on
    FATAL = "fatal"  # nothing else will succeed either (a refused key): stop the run


class ErrorKind(_Text):
    """The short stable labels stored in `jobs.error_kind` and `attempts.error_kind`; the
    client classifies service errors into them, the attempt adds its own. Every label an
    `ApiError` carries is one of these."""

    AUTH = "auth"
    KB_NOT_FOUND = "kb_not_found"
    TLS = "tls"
    PROXY = "proxy"  # the proxy refused us (407: it wants a user and password)
    TIMEOUT = "timeout"
    NETWORK = "network"
    BAD_RESPONSE = "bad_response"
    THROTTLED = "throttled"
    HTTP_3XX = "http_3xx"
    HTTP_4XX = "http_4xx"
    HTTP_5XX = "http_5xx"
    POLICY_EXPIRED = "policy_expired"
    TOO_LARGE = "too_large"
    S3_REJECTED = "s3_rejected"
    MISSING = "missing"
    UNREADABLE = "unreadable"
    CHANGED = "changed"
    LEASE = "lease"
    DUPLICATE_KEY = "duplicate_key"  # register: the key is in the knowledge base already
    NAME_REFUSED = "name_refused"  # the service refused the name shown (--name, a manifest)
    UNSUPPORTED_TYPE = "unsupported_type"  # register refused the file's type (never retried)
    LABEL_EXISTS = "label_exists"  # create label: the name is taken (another run made it)
    METHOD_NOT_ALLOWED = "method_not_allowed"  # a 405: this deployment has no such call
    OPEN_FILES = "open_files"  # a run only: this process ran out of file descriptors
    INTERNAL = "internal"
    SKIPPED = "skipped"  # a file enqueue did not queue for upload (too large, unreadable)
    LOST = "lost"  # attempts only: its process died or its lease expired


class DeletionReason(_Text):
    """Why this database deleted an entry from a knowledge base (`deletions.reason`)."""

    COPY = "copy"  # a provable copy of the entry a job points to (same job, same key)
    SAME_NAME_SIZE = "same_name_size"  # dedupe --include-extra: unknown origin, name + size
    REMOTE_RETRY = "remote_retry"  # retry-failed --remote: the entry failed or came back
    SUPERSEDED = "superseded"  # run: the entry of a changed file's old version
    REMOVED = "removed"  # run: the entry of a file gone from its folder (--delete-removed)


# What `retry-failed --kind` can select: every kind a failed row may carry.
FAILURE_KINDS = tuple(k.value for k in ErrorKind if k not in (ErrorKind.SKIPPED, ErrorKind.LOST))


@dataclass(slots=True)
class ScanRow:
    """One file the scan found; `skip` says why it is recorded but not uploaded. Not frozen:
    a frozen dataclass sets each field through `object.__setattr__`, 1.2 µs a row, a tenth of
    the walk of a million files; nothing changes a row once made (`dataclasses.replace`)."""

    path: bytes
    relpath: str
    size: int
    mtime_ns: int
    skip: str | None = None
    tags: str | None = None  # labels and metadata asked for (uploader.tags); None: not asked
    parser: str | None = None
    display_name: str | None = None  # the name shown in the knowledge base (a manifest's)


@dataclass
class EnqueueCounts:
    scanned: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    skipped: int = 0
    # files at a path another host queued, not on shared storage: left to that host's row
    foreign: int = 0
    # uploaded files (among the unchanged) whose labels or metadata changed: update-metadata
    # on the next run
    relabel: int = 0
    # files moved from another path (a folder renamed): their rows and entries follow them
    # (uploader/moves.py), counted apart from the unchanged
    moved: int = 0

    def add(self, other: EnqueueCounts) -> None:
        names = ("scanned", "new", "changed", "unchanged", "skipped", "foreign", "relabel", "moved")
        for name in names:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass(frozen=True)
class HostScope:
    """Who this process is to the queue. A file can be read only where it was found, so a
    row records the host that enqueued it and is claimed only by that host, unless its folder
    is on storage every host sees at the same path (`shared`): rows enqueued with `shared`
    go to any host, and a run with `shared` claims any host's rows. Rows made before hosts
    were recorded have host '' and go to any host."""

    host: str
    shared: bool = False


class HostCount(NamedTuple):
    """Rows of one (host, shared) pair in one state, for `status`."""

    host: str
    shared: bool
    state: str
    files: int


class TallyGroup(NamedTuple):
    """Rows of one knowledge base, state, host, shared flag and entry status (None: not
    listed yet, or not uploaded)."""

    kb_id: str
    state: str
    host: str
    shared: bool
    remote_status: str | None
    files: int
    size: int


@dataclass(frozen=True)
class Tally:
    """The queue's rows counted in one read: `status` and the end of a run want them per
    knowledge base, per host and per entry status at once, and each of those is a sum of
    these groups (a million rows cost one scan, not one per view)."""

    groups: list[TallyGroup]

    def states(self) -> dict[str, dict[str, tuple[int, int]]]:
        """{kb_id: {state: (files, bytes)}}; states without rows are absent."""
        result: dict[str, dict[str, tuple[int, int]]] = {}
        for g in self.groups:
            states = result.setdefault(g.kb_id, {})
            files, size = states.get(g.state, (0, 0))
            states[g.state] = (files + g.files, size + g.size)
        return result

    def hosts(self) -> list[HostCount]:
        """Rows per (host, shared, state), ordered by host, shared, state."""
        files: dict[tuple[str, bool, str], int] = {}
        for g in self.groups:
            key = (g.host, g.shared, g.state)
            files[key] = files.get(key, 0) + g.files
        return [HostCount(*key, n) for key, n in sorted(files.items())]

    def parsed(self) -> dict[str, dict[str, int]]:
        """Per knowledge base, done files per their entry's last seen status ('unseen': never
        listed)."""
        result: dict[str, dict[str, int]] = {}
        for g in self.groups:
            if g.state == JobState.DONE:
                seen = result.setdefault(g.kb_id, {})
                status = g.remote_status or "unseen"
                seen[status] = seen.get(status, 0) + g.files
        return result

    def files_in(self, state: JobState) -> int:
        return sum(g.files for g in self.groups if g.state == state)


@dataclass
class Job:
    """A claimed row; the attempt updates `size`, `step`, `s3_key`, `filename` and
    `unknown_since` as it goes, and the queue writes them back with its outcome."""

    id: int
    kb_id: str
    path: bytes
    relpath: str
    size: int
    mtime_ns: int
    attempts: int
    step: Step | None
    s3_key: str | None
    unknown_since: float | None
    filename: str | None
    started_at: float
    file_id: str | None = None  # the entry, for an update-metadata (step `metadata`)
    tags: str | None = None  # what the entry should carry (uploader.tags), None: nothing asked
    parser: str | None = None
    display_name: str | None = None
    content_hash: str | None = None  # of the bytes behind s3_key / file_id (content.py)
    # by when the register `unknown_since` is about is over: its sender's write-ahead plus that
    # run's --timeout (None: not kept, the row is older than the column)
    register_due: float | None = None
    tags_applied: str | None = None  # what the entry was last given (a recheck compares)

    def __post_init__(self) -> None:
        if self.step is not None:
            self.step = Step(self.step)


@dataclass
class Outcome:
    """What one attempt at one job came to; the pool hands these to `record_outcomes`."""

    job: Job
    outcome: OutcomeKind
    ended_at: float
    run_id: int | None = None
    error_kind: ErrorKind | None = None
    error: str | None = None
    file_id: str | None = None
    s3_key: str | None = None
    filename: str | None = None
    next_attempt_at: float = 0.0
    unknown_since: float | None = None
    # done with a new entry while the job pointed to another (its file changed since): the
    # queue records that one as superseded, for `run` to delete
    supersedes: str | None = None


class LeaseOwner(NamedTuple):
    owner: str
    expires: float  # the earliest lease expiry of its running rows


class ListedRow(NamedTuple):
    """One entry of a knowledge-base listing, as `store_listed` stores it."""

    kb_id: str
    id: str
    filename: str
    size: Any
    status: Any
    created_at: float  # seconds
    seen_at: float
    file_key: Any
    # the entry's labels (names) and metadata as uploader.tags encodes them; None when the
    # listing does not show them
    tags: str | None = None


class TagMismatch(NamedTuple):
    """A done job whose entry, as listed, does not carry the labels and metadata it asks."""

    relpath: str
    file_id: str
    wanted: str  # uploader.tags text
    shown: str


class Entry(NamedTuple):
    """A listed entry whose filename is not unique (`duplicate_candidates`)."""

    id: str
    filename: str
    size: int | None
    status: str | None
    created_at: float
    job_id: int | None  # the job whose entry this is, if any


class Listed(NamedTuple):
    """A listed entry no job points to, with the S3 key its `file` shows (`unowned_keyed`)."""

    id: str
    filename: str
    size: int | None
    status: str | None
    created_at: float
    file_key: str


class KeyOwner(NamedTuple):
    """A job that uploaded an S3 key (`key_owners`): an entry with that key was made for it."""

    key: str
    job_id: int
    state: str
    file_id: str | None  # the entry it points to, when done


class Deletion(NamedTuple):
    """One entry this database deleted from a knowledge base, as `deletions` keeps it."""

    kb_id: str
    entry_id: str
    filename: str | None
    reason: str
    detail: str | None
    command: str
    deleted_at: float
    job_id: int | None


class DeletionRow(NamedTuple):
    """A `Deletion` read back for the report, with the local path of its job if any."""

    kb_id: str
    entry_id: str
    filename: str | None
    reason: str
    detail: str | None
    command: str
    deleted_at: float
    path: bytes | None


class Superseded(NamedTuple):
    """An entry a changed file's new version replaced, due for deletion (`superseded_due`)."""

    kb_id: str
    entry_id: str
    job_id: int
    filename: str | None
    replaced_by: str | None  # the entry its job points to now; None: its file was removed


class QueuedFile(NamedTuple):
    """A job of a folder, for --delete-removed to look for its file (`queued_under`)."""

    job_id: int
    path: bytes
    relpath: str
    uploaded: bool  # it has an entry: marking it removed means deleting that entry


class SupersedeFailure(NamedTuple):
    """A superseded entry whose delete did not go through this time."""

    kb_id: str
    entry_id: str
    error: str


class SupersededEntry(NamedTuple):
    """A superseded entry a listing still shows (`superseded_listed`)."""

    entry_id: str
    job_id: int
    filename: str
    size: int | None
    status: str | None
    replaced_by: str | None  # the entry its job points to now, if any
    kept: bool  # left on purpose (run --keep-old-versions)


class DuplicateItem(NamedTuple):
    """A surplus copy a verify records."""

    job_id: int | None  # the job of the entry kept
    file_id: str
    filename: str
    size: Any
    status: Any
    kept_id: str | None


class VerificationItem(NamedTuple):
    """One entry of a verify's lists (missing, failed, duplicate, extra)."""

    path: bytes | None  # the job's local path, when a job owns the entry
    file_id: str | None
    filename: str | None
    size: int | None
    status: str | None
    kept_id: str | None


class DoneRow(NamedTuple):
    kb_id: str
    path: bytes
    size: int
    duration: float | None
    file_id: str | None
    filename: str | None
    content_hash: str | None
    tags: str | None = None  # what the entry was asked to carry (uploader.tags)
    parse_status: str | None = None  # its entry's status as last seen (None: never listed)
    parse_error: str | None = None  # why its parsing failed, when it did


class FailedRow(NamedTuple):
    kb_id: str
    path: bytes
    error: str | None
    attempts: int
    error_kind: str | None


class SkippedRow(NamedTuple):
    kb_id: str
    path: bytes
    reason: str | None


class PendingRow(NamedTuple):
    """A file not uploaded yet (pending, or running now), with how far it got: `status
    --pending`."""

    kb_id: str
    path: bytes
    size: int
    state: str
    step: str | None
    attempts: int
    error: str | None  # the last attempt's, when it is waiting to be retried
    error_kind: str | None
    next_attempt_at: float | None  # this host's clock
    in_doubt: bool  # a register may have taken effect: the listing settles it first


class Waiting(_Text):
    """What a pending file waits for (`status --pending`), from its row."""

    RUNNING = "running"  # a run is uploading it now
    DOUBT = "doubt"  # a register may have landed: the listing settles it before anything else
    REGISTER = "register"  # on S3 already: the register is next
    METADATA = "metadata"  # uploaded: its labels or metadata are to be updated, no upload
    RECHECK = "recheck"  # uploaded: same size, another time; its bytes are compared first
    RETRY = "retry"  # its last attempt failed transiently: retried when due
    UPLOAD = "upload"  # never tried, or tried afresh

    @classmethod
    def of(cls, row: PendingRow) -> Waiting:
        if row.state == JobState.RUNNING:
            return cls.RUNNING
        if row.in_doubt:
            return cls.DOUBT
        by_step = {
            Step.UPLOADED.value: cls.REGISTER,
            Step.METADATA.value: cls.METADATA,
            Step.RECHECK.value: cls.RECHECK,
        }
        if row.step in by_step:
            return by_step[row.step]
        return cls.RETRY if row.error is not None else cls.UPLOAD


ReportRow = DoneRow | FailedRow | SkippedRow


class RemoteRetryCandidate(NamedTuple):
    """A done job whose entry failed parsing or is missing."""

    job_id: int
    kb_id: str
    file_id: str | None
    remote_status: str
    filename: str | None = None


class RequeueItem(NamedTuple):
    job_id: int
    kb_id: str
    file_id: str | None  # the entry it pointed to when chosen


class RemoteStatus(NamedTuple):
    status: str | None
    job_id: int


class ServiceFacts(NamedTuple):
    """What was learned about one service (API base URL) and knowledge base: by `check`, or
    by a run's register answers. `batch_register` None: not known either way."""

    base_url: str
    kb_id: str
    learned_at: float
    source: str  # "check" or "run"
    batch_register: bool | None
    facts: dict[str, Any]
