"""A second database does not upload a folder again (issue 25): before a database's first
upload to a knowledge base, entries there with the names and sizes of the files about to be
uploaded stop the command before anything is sent (exit 2), naming the ways on: the database
that uploaded them (--db), --adopt-existing (a unique name-and-size match is done with its
entry; ambiguous ones are listed and uploaded) or --upload-anyway; --from-checkpoint takes the
reference script's completed_files as the files to adopt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.helpers import FAST, KB, invoke, make_tree, rows
from uploader.exitcodes import ExitCode
from uploader.localserver import MaiAgentServer

SENDING = ("presign", "s3", "register", "delete", "batch_delete", "update_metadata")


def sync(db: Path, server: MaiAgentServer, *args: str) -> Any:
    return invoke(db, "sync", *args, "--base-url", server.base_url, *FAST)


def _sent(server: MaiAgentServer) -> dict[str, int]:
    stats = server.stats()
    return {name: stats[name] for name in SENDING}


def test_a_second_database_is_stopped_then_adopts_the_entries(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    data = make_tree(tmp_path / "share", {"a.txt": 3, "sub/b.txt": 5, "c.pdf": 7})
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first = tmp_path / "one" / "uploader.db"
    assert sync(first, maiagent, str(data), "--kb", KB).exit_code == 0
    entries = {e["filename"]: e["id"] for e in maiagent.entries(KB)}
    second = tmp_path / "two" / "uploader.db"
    maiagent.reset_stats()

    stopped = sync(second, maiagent, str(data), "--kb", KB)

    assert stopped.exit_code == ExitCode.USAGE, stopped.output
    line = stopped.stderr.strip()
    assert "already holds entries with the names and sizes of 3 files" in line, line
    assert "--db" in line and "--adopt-existing" in line and "--upload-anyway" in line
    assert _sent(maiagent) == dict.fromkeys(SENDING, 0)
    assert {r["state"] for r in rows(second)} == {"pending"}

    adopted = sync(second, maiagent, str(data), "--adopt-existing")

    assert adopted.exit_code == 0, adopted.output
    assert "adopted 3 existing entries" in adopted.stdout
    assert len(maiagent.entries(KB)) == 3  # 0 new entries
    assert _sent(maiagent) == dict.fromkeys(SENDING, 0)
    done = {Path(r["relpath"]).name: (r["state"], r["file_id"]) for r in rows(second)}
    assert done == {name: ("done", entries[name]) for name in ("a.txt", "b.txt", "c.pdf")}
    again = sync(second, maiagent, str(data))  # its own entries now: no check, nothing sent
    assert again.exit_code == 0, again.output
    assert len(maiagent.entries(KB)) == 3


def test_ambiguous_matches_are_listed_and_uploaded(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    data = make_tree(tmp_path / "share", {"a/r.txt": 4, "b/r.txt": 4, "only.txt": 5})
    maiagent.add_entry(KB, "r.txt", 4)
    maiagent.add_entry(KB, "r.txt", 4)
    maiagent.add_entry(KB, "only.txt", 5)
    db = tmp_path / "uploader.db"

    adopted = sync(db, maiagent, str(data), "--kb", KB, "--adopt-existing")

    assert adopted.exit_code == 0, adopted.output
    assert "adopted 1 existing entries" in adopted.stdout
    assert "2 files are like several entries" in adopted.stdout
    assert "a/r.txt" in adopted.stdout and "b/r.txt" in adopted.stdout
    assert sorted(e["filename"] for e in maiagent.entries(KB)) == ["only.txt"] + ["r.txt"] * 4


def test_names_are_compared_as_name_folders_shows_them(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    data = make_tree(tmp_path / "share", {"2024/r.txt": 4, "2025/r.txt": 4})
    maiagent.add_entry(KB, "2024 › r.txt", 4)  # another database's --name folders upload
    db = tmp_path / "uploader.db"

    adopted = sync(db, maiagent, str(data), "--kb", KB, "--name", "folders", "--adopt-existing")

    assert adopted.exit_code == 0, adopted.output
    assert "adopted 1 existing entries" in adopted.stdout
    shown = sorted(e["filename"] for e in maiagent.entries(KB))
    assert shown == ["2024 › r.txt", "2025 › r.txt"]


def test_upload_anyway_uploads_a_second_copy(tmp_path: Path, maiagent: MaiAgentServer) -> None:
    data = make_tree(tmp_path / "share", {"a.txt": 3})
    maiagent.add_entry(KB, "a.txt", 3)

    anyway = sync(tmp_path / "uploader.db", maiagent, str(data), "--kb", KB, "--upload-anyway")

    assert anyway.exit_code == 0, anyway.output
    assert len(maiagent.entries(KB)) == 2


def test_the_reference_scripts_checkpoint_is_adopted(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    data = make_tree(tmp_path / "files", {"a.json": 3, "b.json": 4, "sub/c.json": 5})
    for name, size in (("a.json", 3), ("c.json", 5)):
        maiagent.add_entry(KB, name, size)  # what the script uploaded before it stopped
    checkpoint = tmp_path / "upload_outputs" / "checkpoints" / "upload_checkpoint.json"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_text(
        json.dumps(
            {
                "timestamp": "2025-07-24T12:00:00.000000",
                "completed_files": [str(data / "a.json"), str(data / "sub" / "c.json")],
                "failed_files": [[str(data / "b.json"), "Connection timeout"]],
                "pending_files": [],
            }
        ),
        encoding="utf-8",
    )
    db = tmp_path / "uploader.db"

    adopted = sync(
        db, maiagent, str(data), "--kb", KB, "--adopt-existing", "--from-checkpoint",
        str(checkpoint),
    )  # fmt: skip

    assert adopted.exit_code == 0, adopted.output
    assert "adopted 2 existing entries" in adopted.stdout
    assert sorted(e["filename"] for e in maiagent.entries(KB)) == ["a.json", "b.json", "c.json"]
    assert {r["state"] for r in rows(db)} == {"done"}


def test_a_checkpoint_that_cannot_be_read_is_one_line(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    data = make_tree(tmp_path / "files", {"a.json": 3})
    bad = tmp_path / "upload_checkpoint.json"
    bad.write_text("{not json", encoding="utf-8")

    refused = sync(
        tmp_path / "uploader.db", maiagent, str(data), "--kb", KB, "--adopt-existing",
        "--from-checkpoint", str(bad),
    )  # fmt: skip

    assert refused.exit_code == ExitCode.USAGE, refused.output
    assert "not the reference script's JSON" in refused.stderr
    assert "Traceback" not in refused.output
    assert maiagent.stats()["presign"] == 0


def test_a_second_database_on_postgresql_is_stopped_then_adopts(
    tmp_path: Path, pg_url: str, maiagent: MaiAgentServer, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)  # a server's logs/ and reports/ go to the current folder
    data = make_tree(tmp_path / "share", {"a.txt": 3, "b.txt": 4})
    maiagent.add_entry(KB, "a.txt", 3)
    maiagent.add_entry(KB, "b.txt", 4)
    db: Any = pg_url

    stopped = sync(db, maiagent, str(data), "--kb", KB)
    adopted = sync(db, maiagent, str(data), "--adopt-existing")

    assert stopped.exit_code == ExitCode.USAGE, stopped.output
    assert adopted.exit_code == 0, adopted.output
    assert "adopted 2 existing entries" in adopted.stdout
    assert len(maiagent.entries(KB)) == 2
