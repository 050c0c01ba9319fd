"""`make demo`: the main job end to end against the local MaiAgent-compatible server.

Starts the server on a free loopback port (with a little latency and a few 5xx answers, so
retries show), writes sample files into a temporary folder, then runs the real commands:
enqueue, run (with the progress bar), status and export-report.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

API_KEY = "demo-key"
KB = "kb-demo"
FILES = 3000


def uploader_command() -> str:
    return os.path.join(os.path.dirname(sys.executable), "uploader")


def start_server() -> tuple[subprocess.Popen[str], str]:
    args = [
        sys.executable,
        "-m",
        "tests.maiagent_server",
        "--port",
        "0",
        "--api-key",
        API_KEY,
        "--kb",
        KB,
        "--latency",
        "0.01",
        "--error-rate",
        "0.02",
        "--lost-register-rate",
        "0.01",
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


def main() -> None:
    server, base_url = start_server()
    try:
        with tempfile.TemporaryDirectory(prefix="uploader-demo-") as tmp:
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
            report = str(Path.cwd() / "demo_report.json")
            step("the JSON report", "--db", db, "export-report", "-o", report, env=env)
            print(f"\nreport: {report}")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
