"""`uploader retry-failed --remote`: entries that failed parsing (or vanished) are deleted and
their files uploaded again by the next run, through the service's delete quirks. (Parsing
again in place first, where the service offers it: tests/test_parse_state.py; here the
entries fail their reparse too, or the service has no reparse.)"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import API_KEY, FAST, KB, invoke, rows, service, upload
from uploader.localserver import MaiAgentServer


def reparse(server: MaiAgentServer, ids: list[str]) -> None:
    """Someone asks the knowledge base to parse these entries again."""
    request = urllib.request.Request(
        f"{server.base_url}knowledge-bases/{KB}/files/batch-reparse/",
        data=json.dumps([{"id": i, "parser": "default"} for i in ids]).encode(),
        headers={"Authorization": f"Api-Key {API_KEY}", "Content-Type": "application/json"},
        method="PATCH",
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as answer:
        assert answer.status == 200


@pytest.mark.parametrize("delete_500_rate", [0.0, 1.0], ids=["plain", "delete-500-anyway"])
def test_failed_entries_are_uploaded_again_until_every_file_is_done(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer], delete_500_rate: float
) -> None:
    server = maiagent_factory(
        parse_delay=0.2,
        parse_failure_rate=0.25,
        reparse_failure_rate=1.0,
        seed=5,
        delete_500_rate=delete_500_rate,
    )
    db, names = upload(tmp_path, server, 80)
    assert invoke(db, "verify", *service(server), "--wait", "--timeout", "30").exit_code == 1
    failed = {e["id"] for e in server.records(KB) if e["status"] == "failed"}
    assert failed

    result = invoke(db, "retry-failed", "--remote", *service(server))

    assert result.exit_code == 0, result.output
    assert f"{len(failed)} files back to pending ({len(failed)} failed entries deleted)" in (
        result.output
    )
    assert failed.isdisjoint(e["id"] for e in server.entries(KB))
    if delete_500_rate:  # every delete answered 500 and was read back
        assert server.stats()["get"] >= server.stats()["delete"] == len(failed)
    pending = [j for j in rows(db) if j["state"] == "pending"]
    assert len(pending) == len(failed)
    assert all(j["file_id"] is j["s3_key"] is j["remote_status"] is None for j in pending)
    assert all(j["attempts"] == 0 for j in pending)

    server.faults.parse_failure_rate = 0
    rerun = invoke(db, "-q", "run", *service(server), *FAST)
    final = invoke(db, "verify", *service(server), "--wait", "--timeout", "30")

    assert rerun.exit_code == 0, rerun.output
    assert final.exit_code == 0, final.output
    entries = server.records(KB)
    assert sorted(e["filename"] for e in entries) == sorted(names)
    assert {e["status"] for e in entries} == {"done"}
    assert {j["remote_status"] for j in rows(db)} == {"done"}


def test_an_entry_being_parsed_again_is_left_alone(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """The service answers 409 to deleting an entry it is processing: read back, it is being
    parsed again, so its job stays as it is. (A reparse keeps an entry `initial` for half the
    parse delay, so the retry has a second to meet it there.)"""
    server = maiagent_factory(
        parse_delay=2.0,
        parse_failure_rate=1.0,
        delete_conflict_while_processing=True,
    )
    db, _names = upload(tmp_path, server, 12)
    assert invoke(db, "verify", *service(server), "--wait", "--timeout", "30").exit_code == 1
    busy = [e["id"] for e in server.entries(KB)[:4]]
    reparse(server, busy)
    server.faults.missing_calls = "reparse"  # ours would parse all of them again

    result = invoke(db, "retry-failed", "--remote", *service(server))

    assert result.exit_code == 0, result.output
    assert "8 files back to pending" in result.output
    assert "4 entries are being processed again" in result.output
    assert server.stats()["delete"] == 12  # the 4 were tried and refused
    assert [e["id"] for e in server.entries(KB)] == busy
    kept = [j for j in rows(db) if j["state"] == "done"]
    assert sorted(j["file_id"] for j in kept) == sorted(busy)
    assert {j["remote_status"] for j in kept} <= {"initial", "processing"}


def test_match_and_bad_input(tmp_path: Path, maiagent: MaiAgentServer) -> None:
    db, _names = upload(tmp_path, maiagent, 10)
    for job in rows(db)[:3]:
        maiagent.delete_entry(job["file_id"])
    assert invoke(db, "verify", *service(maiagent)).exit_code == 1

    with_kind = invoke(db, "retry-failed", "--remote", "--kind", "http_4xx", *service(maiagent))
    no_key = invoke(
        db, "retry-failed", "--remote", *service(maiagent), env={"MAIAGENT_API_KEY": None}
    )
    one = invoke(db, "retry-failed", "--remote", "--match", "f0001.txt", *service(maiagent))

    assert with_kind.exit_code == 2 and "--kind" in with_kind.output
    assert no_key.exit_code == 2 and "--api-key" in no_key.output
    assert one.exit_code == 0, one.output
    assert "1 files back to pending (0 failed entries deleted)" in one.output
    assert [j["relpath"] for j in rows(db) if j["state"] == "pending"] == ["f0001.txt"]
    assert [j["remote_status"] for j in rows(db)].count("missing") == 2
    local = invoke(db, "retry-failed")
    assert local.exit_code == 0 and "0 failed files back to pending" in local.output
