"""Is the run that holds these rows still alive? Proved by a lock the kernel drops on death.

A host name and a pid cannot answer that question: containers sharing a hostname do not share
a pid namespace (the other run's pid is "not running" here, and both may be PID 1). Instead,
each run takes an exclusive lock on its own file, `<db>.runs/<token>.lock`, and holds it for
its lifetime (`filelocks`: `flock`, or `msvcrt.locking` on Windows). The kernel releases it
when the process dies however it dies (`kill -9` included), and, because the lock belongs to
the open file description on a shared inode, a process in any pid namespace that sees the
same volume can try to take it:

- taken at once → the owner is dead (the taker removes the stale file);
- refused → the owner is alive;
- no file → unknown (a row written by an older version, another machine, a file system
  without locks): the caller falls back to lease expiry, as before.

Owner ids stay `host:pid:token`, so old rows and log lines read the same, but only the token
(a uuid4, 32 hex digits) identifies a run; host and pid are for people reading them.

Limits, on purpose: on NFS Linux emulates `flock` with byte-range locks kept by the server,
which frees a dead client's lock only when its NFS lease runs out (the answer errs toward
"alive", i.e. lease-expiry semantics); a mount without locking (ENOLCK, EOPNOTSUPP) makes
every answer "unknown". Correctness never depends on this module: it only lets a dead run's
rows be taken back before their lease expires.

The lock file is not inherited by a program the run executes (`osfiles`), so such a program
does not keep it; a child made by a bare `fork` (no exec) would share it and keep a dead
parent "alive" — the uploader forks none.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import socket
import stat
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from . import filelocks, osfiles
from .i18n import _

log = logging.getLogger("uploader.liveness")

_TOKEN = re.compile(r"[0-9a-f]{32}")
_SUFFIX = ".lock"
_LOCK_TRIES = 100


class LockError(Exception):
    """The run's own lock file cannot be made (read-only or foreign folder): one line."""


@dataclass(frozen=True)
class Owner:
    """An owner id taken apart; `token` alone identifies the run."""

    host: str
    pid: str
    token: str


def make_owner(host: str | None = None, pid: int | None = None) -> str:
    """A new owner id `host:pid:token`; host and pid may be given (tests fake containers)."""
    host = socket.gethostname() if host is None else host
    pid = os.getpid() if pid is None else pid
    return f"{host}:{pid}:{uuid.uuid4().hex}"


def parse_owner(owner: str) -> Owner | None:
    """The parts of an owner id made by `make_owner`, or None for any other string (an older
    version's 8-digit token, garbage from the database): such owners are never judged here."""
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[2]):
        return None
    return Owner(host=parts[0], pid=parts[1], token=parts[2])


def runs_dir(db_path: str | os.PathLike[str]) -> Path:
    """The folder of run locks beside a database file: `<db>.runs` (one per database, so two
    databases in one folder do not judge each other's runs)."""
    return Path(os.fspath(db_path) + ".runs")


def server_runs_dir(database: str) -> Path:
    """The folder of run locks of this user's runs on a database server (`database` names
    it, its password left out): in the user's state folder (XDG_STATE_HOME, or LOCALAPPDATA
    on Windows), one per database. It judges the runs of this machine only; another host's
    run has no file here, and its rows come back when its lease expires."""
    if os.name == "nt":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
    else:
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    digest = hashlib.sha256(database.encode()).hexdigest()[:16]
    return Path(base) / "uploader" / "runs" / digest


class RunLock:
    """This run's lock, held from `take` to `release`, and the judge of other owners."""

    def __init__(self, folder: Path, owner: Owner, fd: int | None) -> None:
        """Use `take`: it makes the file and the lock this object stands for."""
        self.folder = folder
        self.owner = f"{owner.host}:{owner.pid}:{owner.token}"
        self._token = owner.token
        self._fd = fd

    @property
    def supported(self) -> bool:
        """False when the folder's file system has no locks: every `is_dead` is then None."""
        return self._fd is not None

    @property
    def path(self) -> Path:
        return self.folder / f"{self._token}{_SUFFIX}"

    @classmethod
    def take(cls, folder: str | os.PathLike[str], owner: str | None = None) -> RunLock:
        """Create `folder` (0700) if needed and lock `<token>.lock` (0600) in it for this run.

        The file is made and locked under a temporary name, then renamed: nobody can ever
        find the final name unlocked while its owner lives. Raises LockError when the folder
        cannot be written.
        """
        folder = Path(folder)
        owner = owner or make_owner()
        parsed = parse_owner(owner)
        if parsed is None:
            # a programming error, not shown
            raise ValueError(f"not an owner id made by make_owner: {owner!r}")
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = _create_locked(folder, parsed.token, owner)
        except OSError as exc:
            raise LockError(
                _("cannot create the run lock in {folder}: {why}").format(
                    folder=folder, why=_reason(exc)
                )
            ) from None
        if fd is None:
            log.warning(
                "no file locks in %s (a network file system?): a dead run's rows are taken "
                "back only when their lease expires",
                folder,
            )
        return cls(folder, parsed, fd)

    def release(self, *, keep_file: bool = False) -> None:
        """Remove the file, then drop the lock (on a clean exit; a crash leaves a stale file
        that the next `is_dead` recognises and removes). With `keep_file` only the lock goes:
        a run stopped by an error may not have recorded its end or given its rows back (a
        locked database), and its unlocked file is the proof by which the next run does both
        at once instead of waiting for the leases."""
        if self._fd is None:
            return
        pinned = filelocks.PINNED_WHILE_OPEN
        if not keep_file and not pinned:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(self._fd)
        self._fd = None
        if not keep_file and pinned:  # Windows: only once closed; a judge may be first
            with contextlib.suppress(FileNotFoundError, PermissionError):
                self.path.unlink()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release(keep_file=exc is not None)

    def is_dead(self, owner: str, *, remove: bool = True) -> bool | None:
        """True: that run is gone; False: it is alive; None: unknown — fall back to its lease.

        With `remove` (the default) the stale file goes at once, so True is said once per
        dead run: take its rows back right away, or they wait for their lease. With
        `remove=False` the file stays as the proof until `forget(owner)`, called once the
        rows are back (the safer order when the take-back may fail, e.g. a busy database).

        Our own owner is never dead, decided by token equality: the kernel would also refuse
        our own lock to a second open file in this process, but that is not a rule to lean on.
        """
        parsed = parse_owner(owner)
        if parsed is not None and parsed.token == self._token:
            return False
        path = self._path_of(owner)
        return None if path is None else _judge(path, remove)

    def dead_owners(self, owners: Iterable[str], *, remove: bool = True) -> list[str]:
        """The owners, of those given, proved dead (each asked once)."""
        unique = dict.fromkeys(owners)
        return [owner for owner in unique if self.is_dead(owner, remove=remove) is True]

    def forget(self, owner: str) -> None:
        """Remove a dead run's lock file (after its rows were taken back); a live run's file,
        and our own, are left alone."""
        path = self._path_of(owner)
        if path is not None:
            _judge(path, remove=True)

    def _path_of(self, owner: str) -> Path | None:
        """The lock file to try for `owner`; None for ours, a foreign id, or no locks here."""
        parsed = parse_owner(owner)
        if parsed is None or parsed.token == self._token or self._fd is None:
            return None
        return self.folder / f"{parsed.token}{_SUFFIX}"

    def sweep(self, keep: Iterable[str] = ()) -> int:
        """Remove the stale lock files of dead runs, except those of the owners in `keep`
        (owners that still hold rows: their files are the proof `is_dead` needs until the rows
        are taken back). Returns how many were removed."""
        if self._fd is None:
            return 0
        spared = {p.token for owner in keep if (p := parse_owner(owner)) is not None}
        spared.add(self._token)
        removed = 0
        for path in self.folder.glob(f"*{_SUFFIX}"):
            token = path.name[: -len(_SUFFIX)]
            if _TOKEN.fullmatch(token) and token not in spared and _judge(path, True):
                removed += 1
        return removed


def is_held(path: Path) -> bool:
    """Whether a live process holds the lock file at `path` (a dead one's file is removed)."""
    return _judge(path, remove=True) is False


def _create_locked(folder: Path, token: str, owner: str) -> int | None:
    """The locked fd of the new `<token>.lock`, or None when the file system has no locks.

    Where an open file can be renamed, it is made and locked under a temporary name: nobody
    can find the final name unlocked while its owner lives. On Windows it cannot, so the
    final name is made at once; a judge that opens it before it is locked may take the lock
    for a moment (and is then refused its removal, which says "alive": `_judge`)."""
    pinned = filelocks.PINNED_WHILE_OPEN
    final = folder / f"{token}{_SUFFIX}"
    temporary = final if pinned else folder / f".{token}.tmp"
    fd = osfiles.open_nofollow(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            _lock_new(fd)
        except filelocks.NoLocks:
            os.close(fd)
            temporary.unlink()
            return None
        os.write(fd, f"{owner}\n".encode())
        if not pinned:
            os.rename(temporary, final)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    return fd


def _lock_new(fd: int) -> None:
    """Lock a file this run just made; only a judge's passing look can hold it (Windows)."""
    for _try in range(_LOCK_TRIES):
        if filelocks.try_lock(fd):
            return
        time.sleep(0.01)
    raise OSError(errno.EAGAIN, "the new run lock stayed locked by another process")


def _judge(path: Path, remove: bool) -> bool | None:
    """Try the lock of one run's file: True (dead; the file removed if asked), False (held),
    None (no file, not ours to open, or no locks here). A shared lock would do to test, but
    an exclusive one keeps two judges from both removing while a third is looking."""
    try:
        fd = osfiles.open_nofollow(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            if not filelocks.try_lock(fd):
                return False
        except OSError:
            return None
        # Ours now: the owner is gone. Removing while we hold it means whoever opened the
        # same file meanwhile also finds it free, and says "dead" too — which is true.
        if remove and not filelocks.PINNED_WHILE_OPEN:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    finally:
        os.close(fd)
    if remove and filelocks.PINNED_WHILE_OPEN:
        # Windows removes only a file nobody has open: refused, someone does (an owner in
        # the moment between making and locking it, or another judge): "alive" errs safe.
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except PermissionError:
            return False
    return True


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__
