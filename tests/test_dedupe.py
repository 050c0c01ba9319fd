"""`uploader dedupe`: provable copies (an entry registered with the S3 key a job uploaded)
found and deleted in batches, a dry run by default, every deletion recorded; entries of other
files, of other databases and of unknown origin left alone unless asked."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import FAST, KB, enqueue, invoke, last_counts, rows, service, upload
from uploader.localserver import DIALECTS, MaiAgentServer


def test_dry_run_deletes_nothing_and_yes_leaves_exactly_one_of_each(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db, names = upload(tmp_path, maiagent, 50)
    jobs = {j["filename"]: j for j in rows(db)}
    copies = {  # as a lost register answer leaves them: the job's own key, once more
        maiagent.add_entry(KB, name, jobs[name]["size"], key=jobs[name]["s3_key"])["id"]
        for name in ("f0001.txt", "f0010.txt", "f0020.txt", "f0020.txt")
    }
    other_size = maiagent.add_entry(KB, "f0030.txt", jobs["f0030.txt"]["size"] + 1)["id"]
    foreign = [maiagent.add_entry(KB, "foreign.txt", 99)["id"]]
    time.sleep(0.01)  # one clearly older than the other (createdAt is in milliseconds)
    foreign.append(maiagent.add_entry(KB, "foreign.txt", 99)["id"])
    before = {e["id"] for e in maiagent.entries(KB)}

    dry = invoke(db, "dedupe", *service(maiagent))

    assert dry.exit_code == 0, dry.output
    assert "would delete" in dry.output and "dry run" in dry.output
    assert {e["id"] for e in maiagent.entries(KB)} == before

    deleted = invoke(db, "dedupe", "--yes", *service(maiagent))

    assert deleted.exit_code == 0, deleted.output
    assert "deleted 4 entries" in deleted.output
    after = maiagent.entries(KB)
    assert {e["id"] for e in after} == before - copies
    ours = [e for e in after if e["filename"] in jobs and e["id"] != other_size]
    assert Counter(e["filename"] for e in ours) == dict.fromkeys(names, 1)
    assert {e["id"] for e in ours} == {j["file_id"] for j in jobs.values()}
    assert invoke(db, "verify", *service(maiagent)).exit_code == 0
    counts = last_counts(db)
    assert (counts["duplicates"], counts["copies_deleted"], counts["extra_duplicates"]) == (0, 0, 1)
    assert counts["extra"] == 3  # the other-size copy and the two foreign entries

    extra = invoke(db, "dedupe", "--yes", "--include-extra", *service(maiagent))

    assert extra.exit_code == 0, extra.output
    assert [e["id"] for e in maiagent.entries(KB) if e["filename"] == "foreign.txt"] == foreign[:1]
    assert len(maiagent.entries(KB)) == 50 + 2


def test_copies_are_found_by_key_when_the_listing_shows_no_sizes(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(list_size=False)
    db, names = upload(tmp_path, server, 20)
    jobs = {j["filename"]: j for j in rows(db)}
    key = jobs["f0005.txt"]["s3_key"]
    copy = server.add_entry(KB, "f0005.txt", jobs["f0005.txt"]["size"], key=key)["id"]

    result = invoke(db, "dedupe", "--yes", *service(server))

    assert result.exit_code == 0, result.output
    ids = {e["id"] for e in server.entries(KB)}
    assert copy not in ids and jobs["f0005.txt"]["file_id"] in ids and len(ids) == 20


BOTH = pytest.mark.parametrize("dialect", DIALECTS, indirect=True)


def _uploaded(db: Path, folder: Path, server: MaiAgentServer, *extra: str) -> None:
    enqueue(db, folder)
    ran = invoke(db, "-q", "run", *service(server), "--kb", KB, *FAST, *extra)
    assert ran.exit_code == 0, ran.output


def _report(db: Path, tmp_path: Path) -> dict[str, Any]:
    target = tmp_path / f"{db.stem}-report.json"
    result = invoke(db, "export-report", "-o", str(target))
    assert result.exit_code == 0, result.output
    return json.loads(target.read_text())


@BOTH
def test_two_databases_on_one_kb_never_delete_each_others_entries(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    """Three different README.txt of 5 bytes: two from one database, one from another. None
    is a copy of another, from either side, with or without --include-extra."""
    one, two = tmp_path / "one", tmp_path / "two"
    for rel, body in (("contracts/README.txt", b"aaaaa"), ("manuals/README.txt", b"bbbbb")):
        (one / rel).parent.mkdir(parents=True, exist_ok=True)
        (one / rel).write_bytes(body)
    (two / "intro").mkdir(parents=True)
    (two / "intro" / "README.txt").write_bytes(b"ccccc")
    (two / "notes.txt").write_bytes(b"notes of two")
    db1, db2 = tmp_path / "one.db", tmp_path / "two.db"
    _uploaded(db1, one, maiagent)
    # README.txt of 5 bytes is there already (twice): another file of the same name and size
    _uploaded(db2, two, maiagent, "--upload-anyway")
    held = {e["id"]: maiagent.entry_content(e["id"]) for e in maiagent.entries(KB)}
    assert sorted(held.values()) == [b"aaaaa", b"bbbbb", b"ccccc", b"notes of two"]

    for db, theirs in ((db1, 2), (db2, 2)):
        verified = invoke(db, "verify", *service(maiagent))
        assert verified.exit_code == 0, verified.output
        counts = last_counts(db)
        assert (counts["extra"], counts["duplicates"], counts["missing"]) == (theirs, 0, 0)
        assert "extra (not uploaded from this database)" in verified.output
        deduped = invoke(db, "dedupe", "--yes", *service(maiagent))
        assert deduped.exit_code == 0, deduped.output
        assert "deleted 0 entries" in deduped.output
    extra = invoke(db2, "dedupe", "--yes", "--include-extra", *service(maiagent))

    assert extra.exit_code == 0, extra.output
    assert "deleted 0 entries" in extra.output
    assert {e["id"]: maiagent.entry_content(e["id"]) for e in maiagent.entries(KB)} == held
    assert _report(db1, tmp_path)["deletions"] == []


@BOTH
def test_a_copy_by_key_is_deleted_and_every_deletion_recorded(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db, _names = upload(tmp_path, maiagent, 10)
    job = next(j for j in rows(db) if j["filename"] == "f0003.txt")
    copy = maiagent.add_entry(KB, "f0003.txt", job["size"], key=job["s3_key"])["id"]
    foreign = [maiagent.add_entry(KB, "foreign.txt", 7)["id"] for _ in range(2)]

    verified = invoke(db, "verify", *service(maiagent))

    # verify's safety net (issue 10): a second entry of one upload (the same key) goes at once
    assert verified.exit_code == 0, verified.output
    assert "--yes" not in verified.output
    assert copy not in {e["id"] for e in maiagent.entries(KB)}
    dry = invoke(db, "dedupe", *service(maiagent))
    assert dry.exit_code == 0 and copy not in dry.output, dry.output

    widened = invoke(db, "dedupe", "--yes", "--include-extra", *service(maiagent))

    assert widened.exit_code == 0 and "deleted 1 entries" in widened.output, widened.output
    assert "grouped by filename and size only" in widened.stderr
    left = {e["id"] for e in maiagent.entries(KB)}
    assert job["file_id"] in left and len(left) == 11
    assert len(set(foreign) & left) == 1
    recorded = _report(db, tmp_path)["deletions"]
    assert [(d["knowledge_file_id"], d["reason"], d["command"]) for d in recorded] == [
        (copy, "copy", "verify"),
        (next(f for f in foreign if f not in left), "same_name_size", "dedupe --include-extra"),
    ]
    assert recorded[0]["detail"] == f"copy of {job['file_id']}"
    assert recorded[0]["file_path"] == str(tmp_path / "data" / "f0003.txt")
    assert recorded[1]["file_path"] is None and recorded[1]["filename"] == "foreign.txt"
    assert invoke(db, "verify", *service(maiagent)).exit_code == 0


def test_include_extra_spares_a_group_that_shares_name_and_size_with_a_file_of_ours(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db, _names = upload(tmp_path, maiagent, 5)
    job = next(j for j in rows(db) if j["filename"] == "f0001.txt")
    others = [maiagent.add_entry(KB, "f0001.txt", job["size"])["id"] for _ in range(2)]

    verified = invoke(db, "verify", *service(maiagent))
    result = invoke(db, "dedupe", "--yes", "--include-extra", *service(maiagent))

    assert verified.exit_code == 0, verified.output  # another file's entries: extra, not copies
    assert (last_counts(db)["extra"], last_counts(db)["duplicates"]) == (2, 0)
    assert result.exit_code == 0 and "deleted 0 entries" in result.output, result.output
    assert set(others) <= {e["id"] for e in maiagent.entries(KB)}


def test_retry_failed_remote_records_the_entries_it_deletes(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(parse_failure_rate=1.0)
    db, _names = upload(tmp_path, server, 4)
    failed = {j["file_id"]: j["filename"] for j in rows(db)}
    assert invoke(db, "verify", *service(server)).exit_code == 1

    retried = invoke(db, "retry-failed", "--remote", *service(server))

    assert retried.exit_code == 0, retried.output
    recorded = _report(db, tmp_path)["deletions"]
    assert {(d["knowledge_file_id"], d["filename"]) for d in recorded} == set(failed.items())
    assert {(d["reason"], d["command"]) for d in recorded} == {
        ("remote_retry", "retry-failed --remote")
    }


def test_json_names_each_group_the_entry_kept_and_the_entries_deleted(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db, _names = upload(tmp_path, maiagent, 3)
    job = {j["filename"]: j for j in rows(db)}["f0001.txt"]
    copy = maiagent.add_entry(KB, "f0001.txt", job["size"], key=job["s3_key"])["id"]

    shown = invoke(db, "dedupe", "--json", *service(maiagent))

    assert shown.exit_code == 0, shown.output
    [result] = json.loads(shown.stdout)
    [group] = result["groups"]
    assert (group["filename"], group["keep"], group["delete"]) == (
        "f0001.txt",
        job["file_id"],
        [copy],
    )
