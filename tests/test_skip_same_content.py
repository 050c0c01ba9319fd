"""run --skip-same-content (issue 13, point 3b): a file whose bytes equal a file's already in
the knowledge base, or taken by this run, is recorded skipped with that file as its reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import FAST, KB, enqueue, invoke, rows, service
from uploader.localserver import DIALECTS, MaiAgentServer

pytestmark = pytest.mark.parametrize("dialect", DIALECTS, indirect=True)


def test_fifty_copies_of_one_file_make_one_entry(tmp_path: Path, maiagent: MaiAgentServer) -> None:
    data = tmp_path / "data"
    for i in range(50):
        (data / f"d{i:02d}").mkdir(parents=True)
        (data / f"d{i:02d}" / "policy.txt").write_bytes(b"the one policy\n")
    (data / "other.txt").write_bytes(b"another document\n")
    db = tmp_path / "queue.db"
    enqueue(db, data)

    ran = invoke(db, "run", *service(maiagent), *FAST, "--skip-same-content", "--workers", "8")

    assert ran.exit_code == 0, ran.output
    assert sorted(maiagent.entry_content(e["id"]) for e in maiagent.entries(KB)) == [
        b"another document\n",
        b"the one policy\n",
    ]
    jobs = rows(db)
    [kept] = [j for j in jobs if j["state"] == "done" and j["relpath"] != "other.txt"]
    skipped = [j for j in jobs if j["state"] == "skipped"]
    assert len(skipped) == 49
    assert {j["last_error"] for j in skipped} == {
        f"same content as {kept['relpath']} (run --skip-same-content)"
    }
    assert {j["content_hash"] for j in skipped} == {kept["content_hash"]}
    target = tmp_path / "report.json"
    assert invoke(db, "export-report", "-o", str(target)).exit_code == 0
    report = json.loads(target.read_text())
    assert report["summary"]["skipped"] == 49
    assert all(kept["relpath"] in s["reason"] for s in report["skipped_files"])

    (data / "late.txt").write_bytes(b"the one policy\n")  # a later copy meets a done file
    enqueue(db, data)
    again = invoke(db, "run", *service(maiagent), *FAST, "--skip-same-content")
    assert again.exit_code == 0, again.output
    [late] = [j for j in rows(db) if j["relpath"] == "late.txt"]
    assert late["state"] == "skipped" and kept["relpath"] in late["last_error"]
    assert len(maiagent.entries(KB)) == 2
