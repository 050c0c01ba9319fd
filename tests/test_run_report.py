"""The report a run writes by itself at its end, as the reference script did: `reports/
upload_report_YYYYMMDD_HHMMSS.json` beside the database, with the same keys `export-report`
gives, named on the run's last line; `--no-report` leaves it out."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import API_KEY, KB, enqueue, invoke, make_flat_files, run_args
from uploader.localserver import MaiAgentServer


def test_a_run_writes_its_report_and_names_it_last(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    make_flat_files(tmp_path / "data", 5)
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")

    ran = invoke(db, *run_args(maiagent)[1:])  # not -q: the summary and its last line

    assert ran.exit_code == 0, ran.output
    (written,) = sorted((tmp_path / "reports").glob("upload_report_*.json"))
    assert ran.stdout.strip().splitlines()[-1] == f"report: {written}"
    shown = json.loads(written.read_text())
    assert shown["summary"]["successful_uploads"] == 5
    assert {f["file_path"].rsplit("/", 1)[1] for f in shown["successful_files"]} == {
        f"f{i:04d}.txt" for i in range(5)
    }
    assert set(shown) >= {"summary", "successful_files", "failed_files", "runs"}
    assert written.stat().st_mode & 0o077 == 0  # the owner's only, as export-report's


def test_run_json_names_the_report(tmp_path: Path, maiagent: MaiAgentServer) -> None:
    make_flat_files(tmp_path / "data", 2)
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")

    ran = invoke(db, *run_args(maiagent, "--json"))

    assert ran.exit_code == 0, ran.output
    (written,) = (tmp_path / "reports").glob("upload_report_*.json")
    assert json.loads(ran.stdout)["report"] == str(written)


def test_no_report_writes_none(tmp_path: Path, maiagent: MaiAgentServer) -> None:
    make_flat_files(tmp_path / "data", 2)
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")

    ran = invoke(db, *run_args(maiagent)[1:], "--no-report")

    assert ran.exit_code == 0, ran.output
    assert not (tmp_path / "reports").exists()
    assert "report:" not in ran.stdout


def test_a_report_that_cannot_be_written_is_a_warning_only(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    make_flat_files(tmp_path / "data", 2)
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")
    (tmp_path / "reports").write_text("a file where the folder would go")

    ran = invoke(db, "run", "--api-key", API_KEY, "--base-url", maiagent.base_url, "--kb", KB)

    assert ran.exit_code == 0, ran.output
    assert "warning: cannot write the report" in ran.stderr
    assert "Traceback" not in ran.output
