"""`uploader verify`: the knowledge base read back and matched to the database, against the
local server with parse delays, parse failures, deletions and foreign entries."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import API_KEY, FAST, KB, invoke, last_counts, rows, service, upload
from uploader import queue, reconcile
from uploader.client import MaiAgentClient
from uploader.localserver import MaiAgentServer
from uploader.model import HostScope


def integrity(db: Path, tmp_path: Path) -> dict[str, Any]:
    target = tmp_path / "report.json"
    result = invoke(db, "export-report", "-o", str(target))
    assert result.exit_code == 0, result.output
    return json.loads(target.read_text())["integrity"]


def test_verify_wait_reports_the_counts_the_server_holds(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(parse_delay=0.3, parse_failure_rate=0.2, seed=11)
    db, names = upload(tmp_path, server, 150)

    result = invoke(db, "verify", *service(server), "--wait", "--timeout", "30")

    entries = server.records(KB)
    held = Counter(e["status"] for e in entries)
    assert held["failed"] > 0 and held["done"] > 0 and len(entries) == 150
    assert result.exit_code == 1, result.output
    counts = last_counts(db)
    assert counts["remote"] == {
        "initial": 0,
        "processing": 0,
        "done": held["done"],
        "failed": held["failed"],
    }
    assert counts["files"] == {**counts["remote"], "missing": 0}
    assert counts["extra"] == counts["duplicates"] == counts["not_uploaded"] == 0
    assert f"done {held['done']}, failed {held['failed']}" in result.output
    assert {j["file_id"]: j["remote_status"] for j in rows(db)} == {
        e["id"]: e["status"] for e in entries
    }
    failed = {e["id"] for e in entries if e["status"] == "failed"}
    report = integrity(db, tmp_path)[KB]
    assert {f["knowledge_file_id"] for f in report["remotely_failed_files"]} == failed
    assert report["counts"] == counts
    assert report["missing_files"] == report["extra_entries"] == report["duplicate_entries"] == []
    status = invoke(db, "status", "--json")
    assert json.loads(status.output)["remote"][KB]["counts"] == counts
    assert f"failed {held['failed']}, missing 0" in invoke(db, "status").output


def test_deleted_entries_are_missing_and_foreign_ones_extra(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db, names = upload(tmp_path, maiagent, 40)
    by_name = {j["filename"]: j for j in rows(db)}
    gone = ["f0003.txt", "f0017.txt", "f0032.txt"]
    for name in gone:
        assert maiagent.delete_entry(by_name[name]["file_id"])
    foreign = {
        maiagent.add_entry(KB, "notes.txt", 12)["id"],
        maiagent.add_entry(KB, "a.pdf", 9)["id"],
    }

    result = invoke(db, "verify", *service(maiagent))

    assert result.exit_code == 1, result.output
    counts = last_counts(db)
    assert (counts["entries"], counts["missing"], counts["extra"]) == (39, 3, 2)
    assert sorted(j["filename"] for j in rows(db) if j["remote_status"] == "missing") == gone
    report = integrity(db, tmp_path)[KB]
    assert sorted(Path(f["file_path"]).name for f in report["missing_files"]) == gone
    assert {e["knowledge_file_id"] for e in report["extra_entries"]} == foreign
    assert "f0017.txt" in result.output and "notes.txt" in result.output

    requeued = invoke(db, "retry-failed", "--remote", *service(maiagent))
    assert requeued.exit_code == 0, requeued.output
    assert "3 files back to pending" in requeued.output
    rerun = invoke(db, "-q", "run", *service(maiagent), *FAST)
    assert rerun.exit_code == 0, rerun.output
    final = invoke(db, "verify", *service(maiagent))
    assert final.exit_code == 0, final.output  # entries of other origin do not fail it
    assert (last_counts(db)["missing"], last_counts(db)["extra"]) == (0, 2)
    assert sorted(e["filename"] for e in maiagent.entries(KB)) == sorted(
        [*names, "notes.txt", "a.pdf"]
    )


def test_a_listing_that_moves_while_read_calls_nothing_missing(
    tmp_path: Path, maiagent: MaiAgentServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seven new entries after every first page push the seven oldest (this database's first
    files) past the last page the count announced: each listing misses them."""
    db, names = upload(tmp_path, maiagent, 63)
    monkeypatch.setattr(reconcile, "LIST_PAGE_SIZE", 7)
    real = MaiAgentClient.list_files
    added = []

    async def busy(self: MaiAgentClient, kb_id: str, page: int, page_size: int) -> dict:
        answer = await real(self, kb_id, page, page_size)
        if page == 1:
            added.extend(maiagent.add_entry(KB, f"late{len(added)}.txt", 1) for _ in range(7))
        return answer

    monkeypatch.setattr(MaiAgentClient, "list_files", busy)

    result = invoke(db, "verify", *service(maiagent))

    assert result.exit_code == 0, result.output
    counts = last_counts(db)
    assert counts["complete"] is False
    assert counts["files"]["done"] == 63 and counts["missing"] == 0
    assert {j["remote_status"] for j in rows(db)} == {"done"}
    assert "kept changing" in result.output


def test_wait_gives_up_at_the_timeout(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(parse_delay=120)
    db, _ = upload(tmp_path, server, 10)
    started = time.monotonic()

    result = invoke(db, "verify", *service(server), "--wait", "--timeout", "0.5")

    assert result.exit_code == 1, result.output
    assert time.monotonic() - started < 20
    counts = last_counts(db)
    assert counts["timed_out"] is True
    assert counts["files"]["initial"] == 10
    assert "10 still parsing" in result.output and "timed out" in result.output


class _Told:
    """A ReadProgress that keeps what it was told."""

    def __init__(self) -> None:
        self.listed: list[tuple[int, int]] = []
        self.listings_ended = 0
        self.parsed: list[dict[str, int]] = []
        self.parsing_ended = 0

    def listing(self, kb_id: str, stored: int, total: int) -> None:
        assert kb_id == KB
        self.listed.append((stored, total))

    def listing_done(self, kb_id: str) -> None:
        self.listings_ended += 1

    def parsing(self, kb_id: str, files: dict[str, int]) -> None:
        self.parsed.append(dict(files))

    def parsing_done(self, kb_id: str) -> None:
        self.parsing_ended += 1


def test_the_library_reports_progress_and_prints_nothing(
    tmp_path: Path,
    maiagent_factory: Callable[..., MaiAgentServer],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Output belongs to the CLI (issue 11, step 4): verify --wait and dedupe called as a
    library print nothing, with no progress to report to or with one; what they report is
    each listing page by page up to its count, then every poll's parse counts."""
    server = maiagent_factory(parse_delay=0.5, seed=5)
    db, _ = upload(tmp_path, server, 30)
    monkeypatch.setattr(reconcile, "LIST_PAGE_SIZE", 7)

    async def read_back(progress: reconcile.ReadProgress | None) -> None:
        async with (
            queue.opened(str(db), create=False, scope=HostScope("h")) as q,
            reconcile.open_client(server.base_url, API_KEY) as api,
        ):
            await reconcile.verify(q, api, KB, wait=True, timeout=30, progress=progress)
            await reconcile.dedupe(q, api, KB, apply=False, progress=progress)

    capsys.readouterr()
    asyncio.run(read_back(None))
    told = _Told()
    asyncio.run(read_back(told))

    assert capsys.readouterr() == ("", "")
    assert told.listed[0] == (7, 30) and told.listed[-1] == (30, 30)
    assert told.listings_ended == sum(1 for stored, _ in told.listed if stored == 7)
    assert told.parsed[-1]["done"] == 30 and told.parsing_ended == 1


def test_refused_key_or_unknown_knowledge_base_is_one_line_and_exit_3(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db, _ = upload(tmp_path, maiagent, 3)

    bad_key = invoke(db, "verify", *service(maiagent), "--api-key", "sk-wrong-key")
    unknown = invoke(db, "verify", *service(maiagent), "--kb", "kb-nope")

    assert bad_key.exit_code == 3, bad_key.output
    assert "API key rejected" in bad_key.output and "sk-wrong-key" not in bad_key.output
    assert unknown.exit_code == 3, unknown.output
    assert "kb-nope not found" in unknown.output
    for result in (bad_key, unknown):
        assert "Traceback" not in result.output and len(result.output.splitlines()) == 1
    assert rows(db, "SELECT * FROM verifications") == []


def test_bad_input_exits_2(tmp_path: Path, maiagent: MaiAgentServer) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    db = tmp_path / "queue.db"
    assert invoke(db, "enqueue", str(empty), "--kb", KB).exit_code == 0

    nothing = invoke(db, "verify", *service(maiagent))
    no_key = invoke(db, "verify", *service(maiagent), env={"MAIAGENT_API_KEY": None})
    no_db = invoke(tmp_path / "none.db", "verify", *service(maiagent))

    assert nothing.exit_code == 2 and "queue is empty" in nothing.output
    assert no_key.exit_code == 2 and "--api-key" in no_key.output
    assert no_db.exit_code == 2 and "no database" in no_db.output


def test_uploaded_files_gone_from_disk_are_flagged(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    """A folder renamed after its upload (`data` -> `data-2024`): verify says which uploaded
    files no longer exist, and what deletes their entries, instead of a bare OK."""
    db, names = upload(tmp_path, maiagent, 8)
    (tmp_path / "data").rename(tmp_path / "data-2024")

    result = invoke(db, "verify", *service(maiagent))

    assert result.exit_code == 0, result.output
    assert "8 uploaded files no longer exist" in result.output
    assert "--delete-removed" in result.output
    counts = last_counts(db)
    assert counts["gone_from_disk"] == 8
    assert set(counts["gone_from_disk_examples"]) <= set(names)


def test_an_entry_being_deleted_is_neither_present_nor_missing_and_wait_waits_for_it(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """A deleted entry may stay listed as `deleting` for a while (the docs' statuses): verify
    says so, and --wait lists again until it is gone, then calls it missing."""
    server = maiagent_factory(delete_phase=2.0)
    db, _names = upload(tmp_path, server, 6)
    doomed = rows(db)[0]["file_id"]
    answer = server_delete(server, doomed)

    now = invoke(db, "verify", *service(server), "--json")
    waited = invoke(db, "verify", *service(server), "--wait", "--timeout", "30", "--json")

    assert answer == 204
    assert now.exit_code == 1, now.output
    [first] = json.loads(now.stdout)
    assert first["counts"]["files"]["deleting"] == 1 and first["counts"]["missing"] == 0
    assert waited.exit_code == 1, waited.output
    [last] = json.loads(waited.stdout)
    assert "deleting" not in last["counts"]["files"] and last["counts"]["missing"] == 1
    assert not last["counts"]["timed_out"]
    text = invoke(db, "verify", *service(server))
    assert "1 missing" in text.output


def test_being_deleted_is_said_in_the_verdict(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(delete_phase=60.0)
    db, _names = upload(tmp_path, server, 3)
    server_delete(server, rows(db)[0]["file_id"])

    result = invoke(db, "verify", *service(server))

    assert result.exit_code == 1
    assert "1 being deleted (not present, not missing yet)" in result.output


def test_files_not_uploaded_yet_are_said_with_what_to_do(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    """A verify beside a run, or before one, counts files still queued: the verdict said
    "NOT OK: 2 not uploaded" and nothing of what to do, as it does for every other problem."""
    db, _names = upload(tmp_path, maiagent, 3)
    (tmp_path / "data" / "new1.txt").write_bytes(b"new one\n")
    (tmp_path / "data" / "new2.txt").write_bytes(b"new two\n")
    assert invoke(db, "enqueue", str(tmp_path / "data"), "--kb", KB).exit_code == 0

    result = invoke(db, "verify", *service(maiagent))

    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1] == (
        "  NOT OK: 2 not uploaded; `uploader status --pending` and `--failed` list them; "
        "`uploader run` uploads the pending ones, after `uploader retry-failed` the failed ones"
    )


def server_delete(server: MaiAgentServer, entry_id: str) -> int:
    """Someone deletes an entry through the API (the web interface, another tool)."""
    import urllib.request

    request = urllib.request.Request(
        f"{server.base_url}knowledge-bases/{KB}/files/{entry_id}/",
        headers={"Authorization": f"Api-Key {API_KEY}"},
        method="DELETE",
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as answer:
        return int(answer.status)
