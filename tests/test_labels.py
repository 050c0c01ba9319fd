"""Labels, metadata and a parser per file (issue 14): asked at `enqueue` (--label,
--labels-from-path, --metadata, --manifest, --parser), sent at register, changed later by
update-metadata alone, read back by `verify`; against both dialects of the local server."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    API_KEY,
    KB,
    enqueue,
    invoke,
    make_tree,
    one_line_error,
    rows,
    run_args,
    service,
    spawn,
)
from uploader.localserver import DIALECTS, MaiAgentServer
from uploader.tags import decode

BOTH = pytest.mark.parametrize("dialect", DIALECTS, indirect=True)

PARSER = "0b7e3c2a-5d41-4f6e-8a9b-1c2d3e4f5a6b"


def tags_of(db: Path) -> dict[str, tuple[tuple[str, ...], dict[str, Any]]]:
    """What each job asks of its entry, by relative path."""
    return {r["relpath"]: decode(r["tags"]) for r in rows(db)}


def nested(root: Path, count: int) -> list[str]:
    """`count` files spread over three top folders and subfolders of them."""
    tops = ("hr", "legal", "ops")
    files = {f"{tops[i % 3]}/sub{i % 5}/f{i:04d}.txt": 1 + i % 7 for i in range(count)}
    make_tree(root, files)
    return sorted(files)


def write_manifest(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- enqueue -----------------------------------------------------------------------------------


def test_enqueue_keeps_labels_metadata_and_parser_per_job(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_tree(data, {"hr/policies/leave.txt": 3, "top.txt": 2})
    db = tmp_path / "q.db"
    enqueue(
        db,
        data,
        *("--labels-from-path", "2", "--label", "batch-2026", "--label", " batch-2026 "),
        *("--metadata", "source=nas", "--metadata", "note=a=b", "--parser", PARSER),
    )
    assert tags_of(db) == {
        "hr/policies/leave.txt": (
            ("batch-2026", "hr", "policies"),
            {"note": "a=b", "source": "nas"},
        ),
        "top.txt": (("batch-2026",), {"note": "a=b", "source": "nas"}),
    }
    assert {r["parser"] for r in rows(db)} == {PARSER}
    # Enqueued again without any of them: what was asked stays as it was.
    enqueue(db, data)
    assert tags_of(db)["top.txt"] == (("batch-2026",), {"note": "a=b", "source": "nas"})


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("--metadata", "novalue"), "invalid metadata 'novalue': use KEY=VALUE"),
        (("--label", " "), "a label name is empty"),
        (("--parser", "markdown"), "'markdown' is not a parser id (a UUID)"),
        (("--labels-from-path", "-1"), "-1 is not in the range x>=0"),
    ],
)
def test_bad_tag_options_are_one_line_errors(
    tmp_path: Path, args: tuple[str, ...], error: str
) -> None:
    make_tree(tmp_path / "data", {"a.txt": 1})
    result = invoke(tmp_path / "q.db", "enqueue", str(tmp_path / "data"), "--kb", KB, *args)
    # click's usage error: exit 2, the option and what is wrong on the last line
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert error in result.stderr.strip().splitlines()[-1], result.stderr
    assert not (tmp_path / "q.db").exists() or rows(tmp_path / "q.db") == []


def test_a_manifest_queues_the_files_it_names_with_their_tags(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_tree(data, {"hr/leave.txt": 3, "ops/run.txt": 4, "not-listed.txt": 1})
    csv = write_manifest(
        tmp_path / "export.csv",
        [
            "path,labels,meta.year,filename",
            "hr/leave.txt,hr;policies,2024,Leave policy.txt",
            "ops/run.txt,,,",
        ],
    )
    db = tmp_path / "q.db"
    counts = enqueue(db, data, "--manifest", str(csv), "--label", "batch", "--metadata", "s=x")
    assert counts["new"] == 2
    assert tags_of(db) == {
        "hr/leave.txt": (("batch", "hr", "policies"), {"s": "x", "year": "2024"}),
        "ops/run.txt": (("batch",), {"s": "x"}),
    }
    assert {r["relpath"]: r["display_name"] for r in rows(db)} == {
        "hr/leave.txt": "Leave policy.txt",
        "ops/run.txt": None,
    }
    jsonl = write_manifest(
        tmp_path / "export.jsonl",
        [json.dumps({"path": "ops/run.txt", "labels": ["ops"], "metadata": {"year": 2025}})],
    )
    enqueue(db, data, "--manifest", str(jsonl))
    assert tags_of(db)["ops/run.txt"] == (("ops",), {"year": 2025})


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ('"hr/f0150.txt,x', "line 152: malformed CSV"),
        ("nope/missing.txt,x", "line 152: 'nope/missing.txt' names no file in"),
        ("hr/f0001.txt,x", "line 152: path 'hr/f0001.txt' is listed twice (first on line 3)"),
    ],
)
def test_a_bad_row_of_a_300_row_manifest_queues_nothing(
    tmp_path: Path, bad: str, error: str
) -> None:
    data = tmp_path / "data"
    make_tree(data, {f"hr/f{i:04d}.txt": 1 for i in range(300)})
    lines = ["path,labels"] + [f"hr/f{i:04d}.txt,hr" for i in range(300)]
    lines[151] = bad  # the file's line 152
    manifest = write_manifest(tmp_path / "m.csv", lines)
    db = tmp_path / "q.db"
    message = one_line_error(
        invoke(db, "enqueue", str(data), "--kb", KB, "--manifest", str(manifest))
    )
    assert message.startswith(f"Error: {manifest} {error}"), message
    assert message.endswith("nothing was queued")
    assert rows(db) == []


def test_an_unknown_manifest_column_names_line_one(tmp_path: Path) -> None:
    make_tree(tmp_path / "data", {"a.txt": 1})
    manifest = write_manifest(tmp_path / "m.csv", ["path,colour", "a.txt,red"])
    result = invoke(
        tmp_path / "q.db",
        "enqueue",
        str(tmp_path / "data"),
        "--kb",
        KB,
        "--manifest",
        str(manifest),
    )
    assert f"{manifest} line 1: unknown column 'colour'" in one_line_error(result)


# --- register ----------------------------------------------------------------------------------


def entry_tags(server: MaiAgentServer) -> dict[str, tuple[set[str], dict[str, Any]]]:
    """Each entry of the knowledge base by filename: its label names and its metadata."""
    return {
        r["filename"]: ({label["name"] for label in r["labels"]}, r["rawUserDefineMetadata"])
        for r in server.records(KB)
    }


@BOTH
def test_300_nested_files_carry_exactly_their_labels_and_metadata(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    data = tmp_path / "data"
    relpaths = nested(data, 300)
    db = tmp_path / "q.db"
    enqueue(
        db,
        data,
        *("--labels-from-path", "1", "--label", "batch-2026", "--metadata", "source=nas"),
        *("--parser", PARSER),
    )
    maiagent.add_label(KB, "hr")  # made in the web interface before: found, not made again
    ran = invoke(db, *run_args(maiagent, "--workers", "16", "--register-batch", "1"))
    assert ran.exit_code == 0, ran.output
    assert entry_tags(maiagent) == {
        rel: ({"batch-2026", rel.split("/")[0]}, {"source": "nas"}) for rel in relpaths
    }
    assert {r["parser"] for r in maiagent.records(KB)} == {PARSER}
    # Each label made once although 16 workers wanted it at the same moment.
    assert sorted(label["name"] for label in maiagent.labels(KB)) == [
        "batch-2026",
        "hr",
        "legal",
        "ops",
    ]
    assert maiagent.stats()["label_create"] == 3
    # Their ids are kept: a second run lists and creates none.
    make_tree(data, {"ops/late.txt": 2})
    enqueue(db, data, "--labels-from-path", "1", "--label", "batch-2026")
    maiagent.reset_stats()
    ran = invoke(db, *run_args(maiagent, "--register-batch", "1"))
    assert ran.exit_code == 0, ran.output
    assert (maiagent.stats()["labels"], maiagent.stats()["label_create"]) == (0, 0)
    assert entry_tags(maiagent)["ops/late.txt"] == ({"batch-2026", "ops"}, {})


@BOTH
def test_batched_registers_carry_each_files_own_labels(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    data = tmp_path / "data"
    make_tree(data, {"hr/a.txt": 1, "ops/b.txt": 2, "legal/c.txt": 3, "d.txt": 4})
    manifest = write_manifest(
        tmp_path / "m.jsonl",
        [
            json.dumps({"path": "hr/a.txt", "labels": ["x"], "filename": "A.txt"}),
            json.dumps({"path": "ops/b.txt", "metadata": {"year": 2024}}),
            json.dumps({"path": "legal/c.txt"}),
            json.dumps({"path": "d.txt", "labels": ["x", "y"]}),
        ],
    )
    db = tmp_path / "q.db"
    enqueue(db, data, "--manifest", str(manifest), "--labels-from-path", "1")
    ran = invoke(db, *run_args(maiagent, "--register-batch", "4", "--workers", "4"))
    assert ran.exit_code == 0, ran.output
    assert maiagent.stats()["register"] < 4, "the four files went in fewer register calls"
    assert entry_tags(maiagent) == {
        "A.txt": ({"hr", "x"}, {}),
        "ops/b.txt": ({"ops"}, {"year": 2024}),
        "legal/c.txt": ({"legal"}, {}),
        "d.txt": ({"x", "y"}, {}),
    }


# --- changed later, without uploading again ----------------------------------------------------


def uploaded(tmp_path: Path, server: MaiAgentServer, count: int, *tag_args: str) -> Path:
    """`count` nested files enqueued with `tag_args` and uploaded: the database."""
    nested(tmp_path / "data", count)
    db = tmp_path / "q.db"
    enqueue(db, tmp_path / "data", *tag_args)
    ran = invoke(db, *run_args(server, "--workers", "16"))
    assert ran.exit_code == 0, ran.output
    return db


@BOTH
def test_a_changed_label_is_sent_by_update_metadata_alone(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db = uploaded(tmp_path, maiagent, 60, "--labels-from-path", "1", "--label", "batch-2026")
    entry_ids = {r["filename"]: r["id"] for r in maiagent.records(KB)}
    result = invoke(
        db,
        "enqueue",
        str(tmp_path / "data"),
        "--kb",
        KB,
        *("--labels-from-path", "1", "--label", "batch-2027", "--metadata", "source=nas"),
    )
    assert result.exit_code == 0, result.output
    assert "60 uploaded files get new labels or metadata on the next run" in result.stdout
    maiagent.reset_stats()
    ran = invoke(db, *run_args(maiagent, "--workers", "16"))
    assert ran.exit_code == 0, ran.output
    stats = maiagent.stats()
    assert (stats["presign"], stats["s3"], stats["register"]) == (0, 0, 0)
    assert stats["update_metadata"] == 60
    assert stats["label_create"] == 1, "batch-2027 made once"
    records = maiagent.records(KB)
    assert {r["filename"]: r["id"] for r in records} == entry_ids, "the same entries"
    assert entry_tags(maiagent) == {
        name: ({"batch-2027", name.split("/")[0]}, {"source": "nas"}) for name in entry_ids
    }
    assert "uploaded 0, failed 0, skipped 0, relabelled 60 (update-metadata" in ran.stdout
    assert {r["state"] for r in rows(db)} == {"done"}
    updates = rows(db, "SELECT * FROM attempts WHERE step = 'metadata'")
    assert len(updates) == 60 and {a["outcome"] for a in updates} == {"done"}
    # Nothing changed since: enqueue and run again send nothing.
    enqueue(
        db,
        tmp_path / "data",
        "--labels-from-path",
        "1",
        "--label",
        "batch-2027",
        "--metadata",
        "source=nas",
    )
    maiagent.reset_stats()
    assert invoke(db, *run_args(maiagent)).exit_code == 0
    assert maiagent.stats()["update_metadata"] == 0


def test_update_metadata_finds_the_method_and_label_form_the_service_takes(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(update_metadata_methods="POST", update_metadata_label_forms="ids")
    db = uploaded(tmp_path, server, 20, "--label", "old")
    enqueue(db, tmp_path / "data", "--label", "new", "--label", "other")
    server.reset_stats()
    ran = invoke(db, *run_args(server, "--workers", "8"))
    assert ran.exit_code == 0, ran.output
    stats = server.stats()
    # The first update is refused twice (405 to PATCH, 400 to label objects), then POST with
    # bare ids goes for all 20.
    assert (stats["update_metadata_patch"], stats["update_metadata_post"]) == (1, 21)
    assert {frozenset(t[0]) for t in entry_tags(server).values()} == {frozenset({"new", "other"})}
    logs = "".join(p.read_text() for p in (tmp_path / "logs").glob("upload_log_*.log"))
    assert "update-metadata: the service takes POST with labels as bare ids" in logs


def test_a_failed_update_is_retried_as_an_update_never_an_upload(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory()
    db = uploaded(tmp_path, server, 5, "--metadata", "v=1")
    enqueue(db, tmp_path / "data", "--metadata", "v=2")
    server.faults.update_metadata_methods = "GET"  # refuses both: the updates fail
    ran = invoke(db, *run_args(server))
    assert ran.exit_code == 1, ran.output
    assert {r["state"] for r in rows(db)} == {"failed"}
    server.faults.update_metadata_methods = "PATCH,POST"
    assert invoke(db, "retry-failed").exit_code == 0
    server.reset_stats()
    ran = invoke(db, *run_args(server))
    assert ran.exit_code == 0, ran.output
    assert (server.stats()["presign"], server.stats()["update_metadata"]) == (0, 5)
    assert len(server.records(KB)) == 5
    assert {m["v"] for _labels, m in entry_tags(server).values()} == {"2"}


def test_a_touched_file_with_new_labels_is_rechecked_and_relabelled(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db = uploaded(tmp_path, maiagent, 6, "--label", "old")
    for path in (tmp_path / "data").rglob("*.txt"):
        os.utime(path, ns=(10**18, 10**18))  # same bytes, another mtime (a copy without -t)
    enqueue(db, tmp_path / "data", "--label", "new")
    maiagent.reset_stats()
    ran = invoke(db, *run_args(maiagent))
    assert ran.exit_code == 0, ran.output
    assert (maiagent.stats()["presign"], maiagent.stats()["update_metadata"]) == (0, 6)
    assert {frozenset(t[0]) for t in entry_tags(maiagent).values()} == {frozenset({"new"})}


# --- read back -----------------------------------------------------------------------------------


def relabel_behind_our_back(server: MaiAgentServer, entry_id: str, labels: list[str]) -> None:
    """Someone changes an entry in the web interface: labels (made if new), no metadata."""
    known = {label["name"]: label["id"] for label in server.labels(KB)}
    ids = [known.get(name) or server.add_label(KB, name)["id"] for name in labels]
    url = f"{server.base_url}knowledge-bases/{KB}/files/{entry_id}/update-metadata/"
    body = json.dumps({"labels": [{"id": i} for i in ids], "rawUserDefineMetadata": {}})
    request = urllib.request.Request(
        url, body.encode(), {"Authorization": f"Api-Key {API_KEY}"}, method="PATCH"
    )
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request) as answer:
        assert answer.status == 200


@BOTH
def test_verify_status_and_report_show_labels_and_metadata(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    asked = ("--labels-from-path", "1", "--metadata", "source=nas")
    db = uploaded(tmp_path, maiagent, 30, *asked)
    assert invoke(db, "verify", *service(maiagent)).exit_code == 0
    report = json.loads(invoke(db, "export-report", "-o", "-").stdout)
    [first] = [f for f in report["successful_files"] if f["file_path"].endswith("f0000.txt")]
    assert (first["labels"], first["metadata"]) == (["hr"], {"source": "nas"})

    by_name = {r["filename"]: r["id"] for r in maiagent.records(KB)}
    relabel_behind_our_back(maiagent, by_name["hr/sub0/f0000.txt"], ["public"])
    result = invoke(db, "verify", *service(maiagent))
    assert result.exit_code == 1, result.output
    assert "1 entries carry other labels or metadata than their files ask" in result.output
    assert "hr/sub0/f0000.txt: asks ['hr'] {'source': 'nas'}, entry has ['public'] {}" in (
        result.output
    )
    status = json.loads(invoke(db, "status", "--json").stdout)
    counts = status["remote"][KB]["counts"]
    assert counts["tag_mismatches"] == 1
    assert counts["tag_mismatch_examples"][0]["entry_labels"] == ["public"]

    # Asking the same again puts the entry right, by update-metadata alone.
    enqueue(db, tmp_path / "data", *asked)
    maiagent.reset_stats()
    assert invoke(db, *run_args(maiagent)).exit_code == 0
    assert (maiagent.stats()["update_metadata"], maiagent.stats()["presign"]) == (1, 0)
    assert entry_tags(maiagent)["hr/sub0/f0000.txt"] == ({"hr"}, {"source": "nas"})
    assert invoke(db, "verify", *service(maiagent)).exit_code == 0


def test_two_processes_wanting_the_same_new_labels_share_them(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """Two queues (two hosts, say) on one knowledge base: each lists the labels, finds none
    and creates them; the one whose create comes second hears that the name exists and reads
    the label back. Whoever wins, every entry carries the one label of each name."""
    server = maiagent_factory(latency=0.05)
    procs = []
    for side in ("a", "b"):
        make_tree(tmp_path / side, {f"hr/{side}{i}.txt": 1 + i for i in range(8)})
        db = tmp_path / f"{side}.db"
        enqueue(db, tmp_path / side, "--labels-from-path", "1", "--label", "shared")
        procs.append(spawn(db, *run_args(server, "--workers", "8")))
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (out, err)
    names = [label["name"] for label in server.labels(KB)]
    assert sorted(names) == ["hr", "shared"]
    assert len(server.records(KB)) == 16
    assert {frozenset(t[0]) for t in entry_tags(server).values()} == {frozenset({"hr", "shared"})}


def test_an_entry_deleted_from_the_knowledge_base_before_its_relabel_is_uploaded_again(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    """update-metadata answers 404 (the entry was deleted by hand meanwhile): the file goes
    in again with its new labels, instead of failing for good on every retry."""
    db = uploaded(tmp_path, maiagent, 3, "--label", "old")
    gone = maiagent.records(KB)[0]
    assert maiagent.delete_entry(gone["id"])
    enqueue(db, tmp_path / "data", "--label", "new")

    ran = invoke(db, *run_args(maiagent))

    assert ran.exit_code == 0, ran.output
    records = maiagent.records(KB)
    assert sorted(r["filename"] for r in records) == sorted(j["filename"] for j in rows(db))
    assert {r["state"] for r in rows(db)} == {"done"}
    assert {job["file_id"] for job in rows(db)} == {r["id"] for r in records}
    assert {name: labels for name, (labels, _meta) in entry_tags(maiagent).items()} == {
        r["filename"]: {"new"} for r in records
    }
