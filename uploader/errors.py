"""The errors a call to the service (or a read of a local file for it) ends in, typed, so that
a caller acts on what they mean without knowing HTTP: `ApiError` carries its `Severity` and its
`ErrorKind`. No I/O and no HTTP library here: the store, the retries and the exit codes can
name these errors without importing the client."""

from __future__ import annotations

from .model import ErrorKind, Severity

# The service did not answer: the connection failed, or the request timed out.
NO_ANSWER = frozenset((ErrorKind.NETWORK, ErrorKind.TIMEOUT))


class ApiError(Exception):
    """A failed call, classified so the worker can act on it without knowing HTTP.

    `kind`: transient (retry later), permanent (this file fails), fatal (stop the run).
    `error_kind`: a short stable label stored in the database and used by `retry-failed --kind`.
    `maybe_applied`: the register call may have taken effect although it did not answer success,
    so the caller must look in the knowledge-base listing before registering again.

    Kinds a caller may want to single out: `duplicate_key` (register refused a key already in
    the knowledge base: find the entry by key), `bad_response` (an answer of the wrong shape,
    or larger than the client's cap), `changed` (transient: the local file moved while it was
    read), `label_exists`, `method_not_allowed` (405), `kb_not_found`, `auth`, `throttled`.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: Severity,
        error_kind: ErrorKind,
        status: int | None = None,
        retry_after: float | None = None,
        maybe_applied: bool = False,
    ) -> None:
        super().__init__(message)
        self.kind = Severity(kind)
        self.error_kind = ErrorKind(error_kind)
        self.status = status
        self.retry_after = retry_after
        self.maybe_applied = maybe_applied

    @property
    def fatal(self) -> bool:
        return self.kind is Severity.FATAL

    @property
    def transient(self) -> bool:
        return self.kind is Severity.TRANSIENT

    @property
    def permanent(self) -> bool:
        return self.kind is Severity.PERMANENT

    @property
    def unanswered(self) -> bool:
        """No answer came: the service may be gone (`outage.classify`)."""
        return self.error_kind in NO_ANSWER

    @property
    def outage_like(self) -> bool:
        """No answer, or a 5xx: what a service that is down looks like from here."""
        return self.unanswered or self.error_kind is ErrorKind.HTTP_5XX


class Unreachable(ApiError):
    """The service could not be reached: at the start of a command, or for longer than a run's
    outage timeout (`outage.ServiceUnreachable`). Fatal: nothing else would get through."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind=Severity.FATAL, error_kind=ErrorKind.NETWORK)
