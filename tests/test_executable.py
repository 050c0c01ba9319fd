"""The single-file executable `make dist` builds (PyInstaller), smoke-run as a user runs it:
`--version`, `enqueue` and `run` against the local server, every file once.

Not built here: the build takes one to three minutes on a 2-core machine (longer than the
whole fast suite's share), so `make dist` builds it and this test runs what it finds; without
it the test is skipped and says how to build it. The CI builds it and runs this test too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import API_KEY, FAST, KB, child_env, rows
from uploader.localserver import MaiAgentServer

EXECUTABLE = (
    Path(__file__).parent.parent
    / "dist"
    / ("uploader.exe" if sys.platform == "win32" else "uploader")
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not EXECUTABLE.is_file(), reason=f"{EXECUTABLE} not built: run `make dist` first"
    ),
]


def frozen(*args: str, server: MaiAgentServer | None = None) -> subprocess.CompletedProcess[str]:
    env = child_env({"PYTHONPATH": None, "MAIAGENT_BASE_URL": server and server.base_url})
    return subprocess.run(
        [str(EXECUTABLE), *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_the_executable_says_its_version_and_uploads_a_folder_exactly_once(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    from uploader import __version__

    version = frozen("--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"uploader, version {__version__}"

    files = {f"dir{i % 3}/doc{i}.txt": f"file {i}\r\n".encode() * (i + 1) for i in range(12)}
    for rel, content in files.items():
        (tmp_path / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / rel).write_bytes(content)
    db = tmp_path / "q.db"

    enqueued = frozen("--db", str(db), "enqueue", str(tmp_path / "data"), "--kb", KB)
    assert enqueued.returncode == 0, enqueued.stderr
    ran = frozen(
        "--db", str(db), "-q", "run", "--api-key", API_KEY, "--name", "relpath", *FAST,
        server=maiagent,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert "Traceback" not in ran.stderr

    jobs = rows(db)
    entries = {entry["id"]: entry for entry in maiagent.records(KB)}
    assert {job["state"] for job in jobs} == {"done"}
    assert len(entries) == len(jobs) == len(files)
    for job in jobs:
        stored = maiagent.object(entries[job["file_id"]]["key"])
        assert stored is not None and stored["data"] == files[job["relpath"]]
