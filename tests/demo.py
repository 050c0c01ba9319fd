"""`make demo`: the main job end to end against the local MaiAgent-compatible server.

Starts the server on a free loopback port with faults (a little latency, a few 5xx answers,
registers whose answer is lost), writes sample files into a folder of its own, then runs the
real commands: enqueue, run (with the progress bar; it writes the JSON report) and status.
It ends by saying which faults were injected and what the uploader did about them (retries,
lost answers found in the listing and adopted rather than registered twice), and keeps the
folder: the database, logs/ and reports/ are there to look at; the last line names the report.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

API_KEY = "demo-key"
KB = "kb-demo"
FILES = 3000
FAULTS = {"latency": 0.01, "error_rate": 0.02, "lost_register_rate": 0.01}


def uploader_command() -> str:
    return os.path.join(os.path.dirname(sys.executable), "uploader")


def start_server() -> tuple[subprocess.Popen[str], str]:
    args = [
        sys.executable,
        "-m",
        "uploader.localserver",
        "--port",
        "0",
        "--api-key",
        API_KEY,
        "--kb",
        KB,
        "--latency",
        str(FAULTS["latency"]),
        "--error-rate",
        str(FAULTS["error_rate"]),
        "--lost-register-rate",
        str(FAULTS["lost_register_rate"]),
    ]
    server = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    line = server.stdout.readline().strip()
    if not line.startswith("listening on "):
        server.kill()
        raise SystemExit(f"the local server did not start: {line!r}")
    return server, line.removeprefix("listening on ")


def write_samples(folder: Path) -> None:
    rng = random.Random(7)
    topics = ["contracts", "manuals", "reports", "notes", "會議記錄"]
    for i in range(FILES):
        sub = folder / topics[i % len(topics)] / f"batch{i // 500:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        body = f"document {i}\n" + "lorem ipsum " * rng.randint(1, 400)
        (sub / f"doc_{i:05d}.txt").write_text(body, encoding="utf-8")
    (folder / ".DS_Store").write_bytes(b"clutter")
    (folder / "Thumbs.db").write_bytes(b"clutter")


def step(title: str, *args: str, env: dict[str, str]) -> None:
    print(f"\n$ uploader {' '.join(args)}    # {title}", flush=True)
    code = subprocess.call([uploader_command(), *args], env=env)
    if code not in (0, 1):
        raise SystemExit(f"uploader {args[0]} exited with {code}")


def what_happened(db: str, base_url: str) -> list[str]:
    """The faults the server injected and what the uploader did about them, from the queue's
    own records (the attempts log, the run's counts) and the server's listing."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        retried = dict(
            conn.execute(
                "SELECT COALESCE(error_kind, '?'), COUNT(*) FROM attempts"
                " WHERE outcome = 'retry' GROUP BY 1 ORDER BY 2 DESC"
            ).fetchall()
        )
        (counts,) = conn.execute("SELECT counts FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        done = conn.execute("SELECT COUNT(*) FROM jobs WHERE state = 'done'").fetchone()[0]
    root = base_url.split("/api/")[0]
    with urllib.request.urlopen(f"{root}/_control/records?kb={KB}", timeout=10) as answer:
        entries = json.load(answer)
    adopted = json.loads(counts)["adopted"]
    kinds = ", ".join(f"{kind} {n}" for kind, n in retried.items()) or "none"
    return [
        f"faults injected: {FAULTS['error_rate']:.0%} of requests answered 5xx, "
        f"{FAULTS['lost_register_rate']:.0%} of registers lost their answer after registering, "
        f"{FAULTS['latency'] * 1000:.0f} ms latency",
        f"what the uploader did: {sum(retried.values())} retries ({kinds}); {adopted} files "
        "whose register answer was lost were found in the listing and adopted, not registered "
        f"again; the knowledge base holds {len(entries)} entries for {done} files uploaded",
    ]


def main() -> None:
    server, base_url = start_server()
    try:
        tmp = tempfile.mkdtemp(prefix="uploader-demo-")
        folder = Path(tmp) / "documents"
        write_samples(folder)
        db = str(Path(tmp) / "uploader.db")
        env = {**os.environ, "MAIAGENT_API_KEY": API_KEY, "MAIAGENT_BASE_URL": base_url}
        print(f"local MaiAgent-compatible server at {base_url}; {FILES} files in {folder}")
        step(
            "scan the folder into the queue",
            "--db",
            db,
            "enqueue",
            str(folder),
            "--kb",
            KB,
            env=env,
        )
        step(
            "upload everything pending",
            "--db",
            db,
            "run",
            "--workers",
            "10",
            "--retry-delay",
            "0.2",
            env=env,
        )
        step("what the queue holds now", "--db", db, "status", env=env)
        print()
        for line in what_happened(db, base_url):
            print(line)
        report = max((Path(tmp) / "reports").glob("upload_report_*.json"))
        print(f"the demo's folder is kept: {tmp} (documents/, uploader.db, logs/, reports/)")
        print(f"report: {report}")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
