"""Content identity (issue 13, point 3): the content hash of what was uploaded, computed while it
streamed, is kept per file and in the report; a file whose mtime changed but whose bytes did
not is not uploaded again (one read, no request), one whose bytes changed is replaced."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.helpers import FAST, KB, enqueue, invoke, make_files, rows, service
from uploader.content import digest_of
from uploader.localserver import DIALECTS, MaiAgentServer

pytestmark = pytest.mark.parametrize("dialect", DIALECTS, indirect=True)


def _run(db: Path, server: MaiAgentServer) -> str:
    result = invoke(db, "run", *service(server), *FAST, "--name", "relpath")
    assert result.exit_code == 0, result.output
    return result.output


def test_touching_1000_uploaded_files_uploads_nothing(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    data = tmp_path / "data"
    relpaths = make_files(data, 1000)
    db = tmp_path / "queue.db"
    enqueue(db, data)
    _run(db, maiagent)
    before = {j["relpath"]: j["file_id"] for j in rows(db)}
    for rel in relpaths:
        st = (data / rel).stat()
        os.utime(data / rel, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert enqueue(db, data)["changed"] == 1000
    maiagent.reset_stats()

    output = _run(db, maiagent)

    stats = maiagent.stats()
    assert stats["presign"] == stats["s3"] == stats["register"] == stats["delete"] == 0
    # the run's preflight (a one-entry listing) and the accepted file types
    assert stats["list"] == stats["supported_types"] == 1 and stats["total"] == 2
    assert "uploaded 0" in output and "unchanged 1000 (same content)" in output
    assert {j["relpath"]: j["file_id"] for j in rows(db)} == before
    assert {j["state"] for j in rows(db)} == {"done"}
    assert len(maiagent.entries(KB)) == 1000
    assert rows(db, "SELECT * FROM superseded") == []
    status = json.loads(invoke(db, "status", "--json").stdout)
    assert status["content"][KB]["hashed"] == 1000


def test_same_size_new_bytes_after_a_touch_replace_the_entry(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    data = tmp_path / "data"
    make_files(data, 3)
    db = tmp_path / "queue.db"
    enqueue(db, data)
    _run(db, maiagent)
    [old] = [j for j in rows(db) if j["relpath"] == "d000/f00001.txt"]
    target = data / "d000" / "f00001.txt"
    target.write_bytes(b"FILE 1\n")  # as many bytes as "file 1\n"
    enqueue(db, data)

    output = _run(db, maiagent)

    assert "uploaded 1" in output and "deleted 1 superseded entries" in output
    [job] = [j for j in rows(db) if j["relpath"] == "d000/f00001.txt"]
    mine = [e for e in maiagent.entries(KB) if e["filename"] == "d000/f00001.txt"]
    assert [e["id"] for e in mine] == [job["file_id"]] != [old["file_id"]]
    assert maiagent.entry_content(job["file_id"]) == b"FILE 1\n"
    assert job["content_hash"] == digest_of(b"FILE 1\n")


def test_the_hash_of_what_was_uploaded_is_kept_and_reported(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    bodies = {"small.txt": b"small\n", "big.pdf": os.urandom(3 << 20)}  # the big one streams
    for name, body in bodies.items():
        (data / name).write_bytes(body)
    db = tmp_path / "queue.db"
    enqueue(db, data)
    _run(db, maiagent)
    target = tmp_path / "report.json"
    assert invoke(db, "export-report", "-o", str(target)).exit_code == 0

    done = json.loads(target.read_text())["successful_files"]
    report = {Path(f["file_path"]).name: f for f in done}
    for job in rows(db):
        body = bodies[job["relpath"]]
        assert job["content_hash"] == digest_of(body) == report[job["relpath"]]["content_hash"]
        # those bytes are what S3 received
        assert maiagent.object(job["s3_key"])["sha256"] == hashlib.sha256(body).hexdigest()
