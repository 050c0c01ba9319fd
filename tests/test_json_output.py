"""Machine-readable output (issue 12, point 9): `--json` on run, enqueue, verify and dedupe
(kbs and check had it), stdout nothing but the document; times as ISO 8601 strings in status
and the report's runs; every state present, zeros included."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from tests.helpers import KB, enqueue, invoke, make_flat_files, run_args, service, upload
from uploader.localserver import MaiAgentServer
from uploader.model import JobState

STATES = [state.value for state in JobState]


def _iso(text: Any) -> dt.datetime:
    assert isinstance(text, str), text
    when = dt.datetime.fromisoformat(text)
    assert when.utcoffset() is not None, text
    return when


def test_run_json_is_the_summary_alone_with_every_state(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    make_flat_files(tmp_path / "data", 5)
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")
    (tmp_path / "data" / "f0002.txt").unlink()

    result = invoke(db, *run_args(maiagent)[1:], "--json")  # not -q: nothing else on stdout

    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert summary["exit_code"] == 1 and summary["run_id"] == 1
    assert (summary["uploaded"], summary["failed"], summary["failed_in_queue"]) == (4, 1, 1)
    assert summary["states"] == {**dict.fromkeys(STATES, 0), "done": 4, "failed": 1}
    assert list(summary["states"]) == STATES
    assert summary["fatal"] is None and summary["interrupted"] is False
    assert [f["kind"] for f in summary["first_failed"]] == ["missing"]
    assert summary["bytes"] > 0 and summary["seconds"] > 0

    again = invoke(db, *run_args(maiagent)[1:], "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["nothing_pending"] is True


def test_a_refused_run_is_still_a_json_document(tmp_path: Path, maiagent: MaiAgentServer) -> None:
    make_flat_files(tmp_path / "data", 2)
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")

    result = invoke(db, *run_args(maiagent), "--json", env={"MAIAGENT_API_KEY": "wrong"})

    assert result.exit_code == 3
    summary = json.loads(result.stdout)
    assert summary["exit_code"] == 3 and summary["fatal"].startswith("API key rejected")
    assert summary["states"]["pending"] == 2


def test_enqueue_json_has_every_count(tmp_path: Path) -> None:
    make_flat_files(tmp_path / "data", 3)
    (tmp_path / "data" / ".hidden").write_text("x")

    result = invoke(tmp_path / "q.db", "enqueue", str(tmp_path / "data"), "--kb", KB, "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "kb_id": KB,
        "scanned": 3,
        "new": 3,
        "changed": 0,
        "unchanged": 0,
        "skipped": 0,
        "foreign": 0,
        "relabel": 0,
        "moved": 0,
        "ignored": 1,
        "own_files_left_out": [],
        "unreadable_folders": [],
        "removed": 0,
        "left_unread": 0,
        "left_for_later": 0,  # modified within --min-age: the next scan takes them
        "checksum_compared": 0,  # --checksum: uploaded files queued to compare their bytes
        "unsupported_types": {},
        "deletions_refused": None,
    }


def test_verify_and_dedupe_json(tmp_path: Path, maiagent: MaiAgentServer) -> None:
    db, _names = upload(tmp_path, maiagent, 3)

    verified = invoke(db, "verify", *service(maiagent), "--json")
    deduped = invoke(db, "dedupe", *service(maiagent), "--json")

    assert verified.exit_code == 0, verified.output
    (kb,) = json.loads(verified.stdout)
    assert kb["kb_id"] == KB and kb["ok"] is True
    assert kb["counts"]["entries"] == 3 and kb["counts"]["files"]["done"] == 3
    assert deduped.exit_code == 0, deduped.output
    assert json.loads(deduped.stdout) == [
        {
            "kb_id": KB,
            "applied": False,
            "surplus": 0,
            "deleted": 0,
            "spared_extra": 0,
            "errors": [],
            "groups": [],
        }
    ]


def test_status_and_report_give_iso_times_and_every_state(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db, _names = upload(tmp_path, maiagent, 2)
    assert invoke(db, "verify", *service(maiagent)).exit_code == 0
    report = tmp_path / "report.json"
    assert invoke(db, "export-report", "-o", str(report)).exit_code == 0

    status = json.loads(invoke(db, "status", "--json").stdout)
    runs = json.loads(report.read_text())["runs"]
    integrity = json.loads(report.read_text())["integrity"][KB]

    assert list(status["knowledge_bases"][KB]) == STATES
    assert status["knowledge_bases"][KB]["failed"] == {"files": 0, "bytes": 0}
    last = status["last_run"]
    assert _iso(last["started_at"]) <= _iso(last["ended_at"])
    remote = status["remote"][KB]
    assert _iso(remote["started_at"]) <= _iso(remote["ended_at"])
    assert [_iso(run["started_at"]) <= _iso(run["ended_at"]) for run in runs] == [True]
    assert _iso(integrity["ended_at"])
    text = invoke(db, "status").stdout
    assert "last run #1: 20" in text and "remote (verify of 20" in text
