"""`make demo PG=1`: three "hosts" draining one PostgreSQL queue.

Starts a PostgreSQL server of its own (the machine's initdb/pg_ctl in a temporary folder, as
tests/pg_server.py does for the tests) and the local MaiAgent-compatible server, enqueues one
folder as shared storage, then runs three `uploader run` processes at once, each with its own
--host-id, against the same `--db postgresql://…` URL: every file is uploaded once, by
whichever host claimed it first.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from tests.demo import API_KEY, FILES, KB, start_server, uploader_command, write_samples
from tests.pg_server import PgServer, PgServerError

HOSTS = ("host-a", "host-b", "host-c")


def call(*args: str, env: dict[str, str], cwd: str) -> None:
    print(f"\n$ uploader {' '.join(args)}", flush=True)
    code = subprocess.call([uploader_command(), *args], env=env, cwd=cwd)
    if code not in (0, 1):
        raise SystemExit(f"uploader {args[0]} exited with {code}")


def main() -> None:
    try:
        pg = PgServer().start()
    except PgServerError as exc:
        raise SystemExit(str(exc)) from None
    server, base_url = start_server()
    try:
        with tempfile.TemporaryDirectory(prefix="uploader-demo-pg-") as tmp:
            folder = Path(tmp) / "nas"
            write_samples(folder)
            os.environ["UPLOADER_DB"] = pg.create_database("demo")
            env = {**os.environ, "MAIAGENT_API_KEY": API_KEY, "MAIAGENT_BASE_URL": base_url}
            shown = pg.url("demo", password="***")
            print(f"PostgreSQL at {shown} (UPLOADER_DB); MaiAgent-compatible server at {base_url}")
            print(f"{FILES} files in {folder}, on storage every host sees at the same path")
            call(
                "--host-id",
                "office-nas",
                "enqueue",
                str(folder),
                "--kb",
                KB,
                "--shared",
                env=env,
                cwd=tmp,
            )
            print(f"\n$ three hosts at once: uploader --host-id HOST run --workers 10  # {HOSTS}")
            runs = {
                host: subprocess.Popen(
                    [
                        uploader_command(),
                        "--host-id",
                        host,
                        "-q",
                        "run",
                        "--workers",
                        "10",
                        "--retry-delay",
                        "0.2",
                    ],
                    env=env,
                    cwd=tmp,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                for host in HOSTS
            }
            for host, proc in runs.items():
                out, _ = proc.communicate()
                summary = next((ln for ln in out.splitlines() if ln.startswith("uploaded")), out)
                print(f"  {host}: {summary.strip()} (exit {proc.returncode})")
            call("status", env=env, cwd=tmp)
    finally:
        server.terminate()
        server.wait(timeout=10)
        pg.stop()


if __name__ == "__main__":
    main()
