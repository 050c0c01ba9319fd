"""verify's safety net said (issue 23): verify deletes a second entry of one upload (the same
S3 key as a file's entry) without being asked, which a user who reads `verify` as rclone's
`check` does not expect. It now says so and counts them, and `--no-repair` makes it read-only:
the copies are reported as duplicates for `uploader dedupe`, and nothing is deleted."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import KB, invoke, rows, service, upload
from uploader.localserver import MaiAgentServer


def _with_copies(tmp_path: Path, server: MaiAgentServer) -> tuple[Path, set[str]]:
    db, _names = upload(tmp_path, server, 5)
    jobs = {j["filename"]: j for j in rows(db)}
    copies = {  # as a register answer lost after it landed leaves them: the job's key again
        server.add_entry(KB, name, jobs[name]["size"], key=jobs[name]["s3_key"])["id"]
        for name in ("f0001.txt", "f0002.txt")
    }
    return db, copies


def test_verify_says_it_deleted_second_entries_and_counts_them(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db, copies = _with_copies(tmp_path, maiagent)

    result = invoke(db, "verify", *service(maiagent))

    assert result.exit_code == 0, result.output
    assert "deleted 2 second entries of one upload" in result.output
    assert "--no-repair" in result.output
    assert not copies & {e["id"] for e in maiagent.entries(KB)}


def test_no_repair_deletes_nothing_and_reports_the_copies(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db, copies = _with_copies(tmp_path, maiagent)
    before = {e["id"] for e in maiagent.entries(KB)}

    result = invoke(db, "verify", "--no-repair", *service(maiagent))

    assert result.exit_code == 1, result.output
    assert {e["id"] for e in maiagent.entries(KB)} == before
    assert "2 duplicated" in result.output and "uploader dedupe" in result.output
