"""`run --dry-run` and `sync --dry-run` (issue 25): what would be uploaded, replaced and
deleted, listed; no request that changes the knowledge base, and the database unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.helpers import FAST, KB, enqueue, invoke, make_tree, rows, run_args
from uploader.localserver import MaiAgentServer

CHANGING = ("presign", "s3", "register", "delete", "batch_delete", "update_metadata", "reparse")


def _changing(server: MaiAgentServer) -> dict[str, int]:
    stats = server.stats()
    return {name: stats[name] for name in CHANGING}


def _database(db: Path) -> list[Any]:
    return [rows(db, f"SELECT * FROM {t}") for t in ("jobs", "runs", "saved_jobs", "superseded")]


def _changed_folder(data: Path) -> None:
    (data / "new.txt").write_bytes(b"new\n")
    (data / "f0.txt").write_bytes(b"changed, longer\n")
    (data / "f1.txt").unlink()


def test_run_dry_run_lists_and_changes_nothing(tmp_path: Path, maiagent: MaiAgentServer) -> None:
    data = make_tree(tmp_path / "share", {"f0.txt": 3, "f1.txt": 3, "f2.txt": 3})
    db = tmp_path / "uploader.db"
    enqueue(db, data)
    assert invoke(db, *run_args(maiagent)).exit_code == 0
    _changed_folder(data)
    enqueue(db, data, "--delete-removed")
    before, entries = _database(db), maiagent.entries(KB)
    maiagent.reset_stats()

    dry = invoke(db, *run_args(maiagent, "--dry-run"))

    assert dry.exit_code == 0, dry.output
    assert f"would upload {data / 'new.txt'} (4 bytes)" in dry.stdout
    assert f"would replace the entry of {data / 'f0.txt'}" in dry.stdout
    assert f"would delete the entry of {data / 'f1.txt'} (removed)" in dry.stdout
    assert "dry run: 1 to upload, 1 to replace, 0 to relabel, 1 to delete" in dry.stdout
    assert _changing(maiagent) == dict.fromkeys(CHANGING, 0)
    assert maiagent.entries(KB) == entries
    assert _database(db) == before


def test_sync_dry_run_lists_and_changes_nothing(tmp_path: Path, maiagent: MaiAgentServer) -> None:
    data = make_tree(tmp_path / "share", {"f0.txt": 3, "f1.txt": 3, "f2.txt": 3, "x.png": 3})
    db = tmp_path / "uploader.db"
    first = invoke(
        db, "sync", str(data), "--kb", KB, "--delete-removed", "--exclude", "*.png",
        "--base-url", maiagent.base_url, *FAST,
    )  # fmt: skip
    assert first.exit_code == 0, first.output
    _changed_folder(data)
    before, entries = _database(db), maiagent.entries(KB)
    maiagent.reset_stats()

    dry = invoke(db, "sync", str(data), "--dry-run", "--base-url", maiagent.base_url)

    assert dry.exit_code == 0, dry.output
    assert f"would upload {data / 'new.txt'} (4 bytes)" in dry.stdout
    assert f"would replace the entry of {data / 'f0.txt'}" in dry.stdout
    assert "f1.txt (removed)" in dry.stdout
    assert "x.png" not in dry.stdout  # the saved job's filters
    assert "dry run: 1 to upload, 1 to replace, 0 to relabel, 1 to delete" in dry.stdout
    assert _changing(maiagent) == dict.fromkeys(CHANGING, 0)
    assert maiagent.entries(KB) == entries
    assert _database(db) == before


def test_sync_dry_run_walks_as_the_sync_would(tmp_path: Path, maiagent: MaiAgentServer) -> None:
    data = make_tree(tmp_path / "share", {"a.txt": 3})
    db = tmp_path / "uploader.db"

    young = invoke(db, "sync", str(data), "--kb", KB, "--dry-run", "--min-age", "1h",
                   "--base-url", maiagent.base_url)  # fmt: skip
    empty = invoke(db, "sync", str(data), "--kb", KB, "--dry-run", "--exclude", "",
                   "--base-url", maiagent.base_url)  # fmt: skip

    assert young.exit_code == 0, young.output
    assert "dry run: 0 to upload" in young.stdout  # a.txt was just written: left for later
    assert empty.exit_code == 2, empty.output
    assert empty.stderr.strip() == "Error: --exclude '': an empty pattern matches nothing"
