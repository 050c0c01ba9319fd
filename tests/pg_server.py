"""A real PostgreSQL server for the tests, made with the machine's own `initdb` and `pg_ctl`
in a temporary folder, listening on a free port of 127.0.0.1 (no unix socket), stopped at the
end of the session; every test gets a fresh database of its own.

PostgreSQL refuses to run as root: as root, the server runs as the `postgres` user when the
machine has one, else `nobody`, switched to with `setpriv` (no PAM, no login shell needed).
Where the binaries are missing the tests fail with what to install: a suite that skips the
second backend silently would pass without testing it. Only where $UPLOADER_PG_OPTIONAL is
set (the CI's macOS and Windows runners, which have no server) they are skipped instead,
with the same words.

Durability is off (fsync, synchronous_commit, full_page_writes): the tests check behaviour,
and a crash of the test machine loses only test data. The benchmark starts its own server
with the defaults (`PgServer(durable=True)`).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

USER = "uploader"
PASSWORD = "pg-test-secret"  # the tests look for it in output, logs and reports
BIN_ENV = "UPLOADER_PG_BIN"
OPTIONAL_ENV = "UPLOADER_PG_OPTIONAL"
TESTS_DB = "uploader_tests"
_NEEDED = ("initdb", "pg_ctl", "postgres")


class PgServerError(Exception):
    """The server could not be found or started; the message says what to do."""


def find_bin() -> Path:
    """The folder of initdb/pg_ctl/postgres: $UPLOADER_PG_BIN, PATH, or the newest
    /usr/lib/postgresql/*/bin (Debian keeps the server binaries off PATH)."""
    candidates = []
    if os.environ.get(BIN_ENV):
        candidates.append(Path(os.environ[BIN_ENV]))
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2] or 0)
    )
    candidates.extend(Path(p) for p in reversed(versions))
    for folder in candidates:
        if all(os.access(folder / name, os.X_OK) for name in _NEEDED):
            return folder
    raise PgServerError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: install the "
        "`postgresql` package (apt-get install postgresql) or set UPLOADER_PG_BIN to their "
        "folder; the PostgreSQL backend's tests need a real server"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_cpu(pid: int, children_too: bool = False) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0  # ended meanwhile: its time is in its parent's children figures
    used = (11, 12, 13, 14) if children_too else (11, 12)
    return sum(int(fields[i]) for i in used) / os.sysconf("SC_CLK_TCK")


def _server_user() -> Any:
    """Who runs the server (a `pwd` entry): None (ourselves) unless we are root."""
    if os.name != "posix" or os.geteuid() != 0:
        return None
    import pwd

    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PgServerError("running as root and no `postgres` or `nobody` user to run PostgreSQL")


class PgServer:
    """One PostgreSQL cluster: `start()`, `url(db)`, `create_database()`, `stop()`."""

    def __init__(self, *, durable: bool = False) -> None:
        self.bin = find_bin()
        self.durable = durable
        self.port = 0
        self._user = _server_user()
        self._base = Path(tempfile.mkdtemp(prefix="uploader-pg-"))
        self._data = self._base / "data"
        self._names = itertools.count(1)
        self._running = False
        self._tests_db = False
        self._options = ""

    @property
    def data(self) -> Path:
        """The cluster's data folder (its postmaster.pid names the server's process)."""
        return self._data

    def cpu_seconds(self) -> float:
        """The cluster's CPU so far (benchmarks): the postmaster's own, its reaped children's
        (every backend of a closed connection) and its live children's, from /proc."""
        with open(self._data / "postmaster.pid") as f:
            postmaster = int(f.readline())
        total = _proc_cpu(postmaster, children_too=True)
        with open(f"/proc/{postmaster}/task/{postmaster}/children") as f:
            total += sum(_proc_cpu(int(pid)) for pid in f.read().split())
        return total

    # --- life ----------------------------------------------------------------------------

    def _as_server_user(self, *args: str | Path) -> list[str]:
        command = [str(a) for a in args]
        if self._user is None:
            return command
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise PgServerError("running as root without setpriv: cannot start PostgreSQL")
        ids = [f"--reuid={self._user.pw_uid}", f"--regid={self._user.pw_gid}", "--clear-groups"]
        return [setpriv, *ids, *command]

    def _run(self, *args: str | Path) -> None:
        done = subprocess.run(
            self._as_server_user(*args),
            capture_output=True,
            text=True,
            check=False,
            cwd=self._base,
            timeout=120,
        )
        if done.returncode != 0:
            log = self._base / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise PgServerError(
                f"{Path(str(args[0])).name} failed ({done.returncode}): "
                f"{done.stderr.strip() or done.stdout.strip()}\n{tail}"
            )

    def start(self) -> PgServer:
        if self._user is not None:
            os.chown(self._base, self._user.pw_uid, self._user.pw_gid)
        pwfile = self._base / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self._user is not None:
            os.chown(pwfile, self._user.pw_uid, self._user.pw_gid)
        self._run(
            self.bin / "initdb",
            "-D",
            self._data,
            "-U",
            USER,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        pwfile.unlink()
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": "",
            "max_connections": "200",
            "shared_buffers": "128MB",
            "log_min_messages": "warning",
        }
        if not self.durable:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        for attempt in range(3):
            self.port = _free_port()
            self._options = " ".join(
                f"-c {k}={v}" for k, v in {**settings, "port": self.port}.items()
            )
            try:
                self.resume()
                break
            except PgServerError:
                if attempt == 2:  # the port may have been taken between probe and bind
                    raise
        self._running = True
        return self

    def stop(self) -> None:
        if self._running:
            self._running = False
            with contextlib.suppress(PgServerError, subprocess.TimeoutExpired):
                self._run(self.bin / "pg_ctl", "-D", self._data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(self._base, ignore_errors=True)

    def restart(self) -> None:
        """What `pg_ctl restart -m fast`, a maintenance window or a failover does: every
        connection is closed, the server is away for a moment and comes back on its port
        (a fast stop, then the start `resume` makes)."""
        self.pause()
        self.resume()

    def pause(self) -> None:
        """Stop the server (`pg_ctl stop -m fast`); `resume` starts it again on its port."""
        self._run(self.bin / "pg_ctl", "-D", self._data, "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        """`pg_ctl start` with the settings and port `start` chose: its first start, and the
        server's return after `pause`."""
        self._run(
            self.bin / "pg_ctl",
            "-D",
            self._data,
            "-l",
            self._base / "server.log",
            "-o",
            self._options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- databases -----------------------------------------------------------------------

    def url(self, database: str = "postgres", *, password: str | None = PASSWORD) -> str:
        auth = USER if password is None else f"{USER}:{password}"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database (a quarter of a second: the benchmark and the demo); its URL."""
        asyncio.run(self._admin(f'CREATE DATABASE "{name}" TEMPLATE template0'))
        return self.url(name)

    def fresh_queue_url(self) -> str:
        """An empty queue for one test: a new schema of the tests' database, chosen by the
        URL's `search_path` (a millisecond, where a new database takes a quarter second).
        The URL has the password: the tests check that it is never shown."""
        if not self._tests_db:
            self.create_database(TESTS_DB)
            self._tests_db = True
        schema = f"t{next(self._names)}"
        asyncio.run(self._admin(f"CREATE SCHEMA {schema}", TESTS_DB))
        return f"{self.url(TESTS_DB)}?search_path={schema}"

    async def _admin(self, sql: str, database: str = "postgres") -> None:
        import asyncpg

        conn = await asyncpg.connect(self.url(database))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL server (started on first use)."""
    try:
        server = PgServer().start()
    except PgServerError as exc:
        if os.environ.get(OPTIONAL_ENV):
            pytest.skip(str(exc))
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, empty queue on the session's server, as a URL with the password. The run
    locks of its runs (kept in the user's state folder) go to the test's own folder."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return pg_server.fresh_queue_url()
