"""`uploader export-report [-o PATH|-]`: the reference script's JSON report, from the database."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import KB, execute, invoke, make_tree, one_line_error, run_cli

FILES = {
    "ok1.txt": 10,
    "ok2.txt": 20,
    "bad1.txt": 30,
    "bad2.txt": 40,
    "big.pdf": 5000,
    "wait.txt": 50,
}


def prepared(tmp_path: Path) -> tuple[Path, Path]:
    """Two uploads (1.5 s and 2.5 s), two failures (3 attempts and 1), one file skipped for
    its size, one still pending, and one finished run."""
    docs = make_tree(tmp_path / "docs", FILES)
    db = tmp_path / "state" / "q.db"
    db.parent.mkdir()
    assert invoke(db, "enqueue", str(docs), "--kb", KB, "--max-size", "1k").exit_code == 0
    for rel, duration, file_id in (("ok1.txt", 1.5, "file-1"), ("ok2.txt", 2.5, "file-2")):
        execute(
            db,
            "UPDATE jobs SET state = 'done', attempts = 1, duration = ?, file_id = ?,"
            " filename = relpath, started_at = 100, finished_at = 100 + ? WHERE relpath = ?",
            (duration, file_id, duration, rel),
        )
    for rel, attempts, error, kind in (
        ("bad1.txt", 3, "HTTP 500 from register", "transient"),
        ("bad2.txt", 1, "rejected: unsupported file type", "permanent"),
    ):
        execute(
            db,
            "UPDATE jobs SET state = 'failed', attempts = ?, last_error = ?, error_kind = ?,"
            " duration = 9 WHERE relpath = ?",
            (attempts, error, kind, rel),
        )
    execute(
        db,
        "INSERT INTO runs (started_at, ended_at, owner, options, counts, exit_code)"
        " VALUES (1700000000, 1700000060, 'host:1', '{\"workers\": 4}',"
        ' \'{"uploaded": 2, "failed": 2}\', 1)',
    )
    return db, docs


def report_on_stdout(db: Path) -> dict[str, Any]:
    result = invoke(db, "export-report", "-o", "-")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def by_path(items: list[dict[str, Any]], docs: Path) -> dict[str, dict[str, Any]]:
    return {os.path.relpath(item["file_path"], docs): item for item in items}


def test_the_report_has_the_reference_keys_and_numbers(tmp_path: Path) -> None:
    db, docs = prepared(tmp_path)
    report = report_on_stdout(db)

    assert {"summary", "successful_files", "failed_files", "skipped_files", "runs"} <= set(report)
    summary = report["summary"]
    assert summary["total_files"] == 6
    assert summary["successful_uploads"] == 2
    assert summary["failed_uploads"] == 2
    assert summary["average_upload_time"] == pytest.approx(2.0)
    assert summary["pending"] == 1
    assert summary["skipped"] == 1
    assert summary["knowledge_bases"] == [KB]
    generated = dt.datetime.fromisoformat(report["generated_at"])
    assert abs(generated - dt.datetime.now(dt.timezone.utc)) < dt.timedelta(minutes=5)

    done = by_path(report["successful_files"], docs)
    assert set(done) == {"ok1.txt", "ok2.txt"}
    assert {k: done["ok1.txt"][k] for k in ("file_size", "upload_time")} == {
        "file_size": 10,
        "upload_time": 1.5,
    }
    assert done["ok2.txt"]["upload_time"] == 2.5
    assert done["ok2.txt"]["knowledge_file_id"] == "file-2"
    assert done["ok2.txt"]["file_path"] == str(docs / "ok2.txt")

    failed = by_path(report["failed_files"], docs)
    assert set(failed) == {"bad1.txt", "bad2.txt"}
    assert failed["bad1.txt"]["error"] == "HTTP 500 from register"
    assert failed["bad1.txt"]["retry_count"] == 2
    assert failed["bad2.txt"]["retry_count"] == 0
    assert failed["bad2.txt"]["error"] == "rejected: unsupported file type"

    skipped = by_path(report["skipped_files"], docs)
    assert set(skipped) == {"big.pdf"}
    assert "max-size" in skipped["big.pdf"]["reason"]

    assert len(report["runs"]) == 1
    assert report["runs"][0]["exit_code"] == 1
    assert report["runs"][0]["options"] == {"workers": 4}
    assert report["runs"][0]["counts"] == {"uploaded": 2, "failed": 2}


def test_an_empty_queue_is_a_valid_empty_report(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    (tmp_path / "empty").mkdir()
    assert invoke(db, "enqueue", str(tmp_path / "empty"), "--kb", KB).exit_code == 0
    report = report_on_stdout(db)
    assert report["summary"]["total_files"] == 0
    assert report["summary"]["average_upload_time"] == 0
    assert report["successful_files"] == report["failed_files"] == report["skipped_files"] == []
    assert report["runs"] == []


def test_a_name_that_is_not_utf8_is_shown_escaped(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    try:
        os.close(os.open(os.path.join(os.fsencode(docs), b"caf\xe9.txt"), os.O_CREAT, 0o644))
    except OSError as exc:
        pytest.skip(f"this file system refuses non-UTF-8 names: {exc}")
    db = tmp_path / "q.db"
    assert invoke(db, "enqueue", str(docs), "--kb", KB).exit_code == 0
    execute(db, "UPDATE jobs SET state = 'done', duration = 1")

    report = report_on_stdout(db)
    assert [f["file_path"] for f in report["successful_files"]] == [f"{docs}/caf\\xe9.txt"]


def test_by_default_it_goes_to_reports_beside_the_database_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, _ = prepared(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    result = invoke(db, "export-report")

    assert result.exit_code == 0, result.output
    written = list((db.parent / "reports").iterdir())
    assert len(written) == 1, written
    assert re.fullmatch(r"upload_report_\d{8}_\d{6}\.json", written[0].name)
    assert stat.S_IMODE(written[0].stat().st_mode) == 0o600
    assert str(written[0]) in result.stdout
    assert "2 uploaded, 2 failed, 1 pending, 1 skipped" in result.stdout
    report = json.loads(written[0].read_text(encoding="utf-8"))
    assert report["summary"]["total_files"] == 6
    assert list(elsewhere.iterdir()) == []


def test_a_report_of_the_same_second_is_written_beside_the_other(tmp_path: Path) -> None:
    """A run writes its report at its end, and an export-report (or a sync) may follow within
    the same second: the second report gets a name of its own instead of replacing the first."""
    db, _ = prepared(tmp_path)
    reports = db.parent / "reports"
    reports.mkdir()
    now = dt.datetime.now()
    taken = {}
    for ahead in range(3):  # every second the command can start in, taken by an earlier report
        stamp = (now + dt.timedelta(seconds=ahead)).strftime("%Y%m%d_%H%M%S")
        taken[reports / f"upload_report_{stamp}.json"] = f"earlier {ahead}"
    for path, text in taken.items():
        path.write_text(text)

    result = invoke(db, "export-report")

    assert result.exit_code == 0, result.output
    new = set(reports.iterdir()) - set(taken)
    assert len(new) == 1 and re.fullmatch(r"upload_report_\d{8}_\d{6}_2\.json", new.pop().name)
    assert all(path.read_text() == text for path, text in taken.items())


def test_an_explicit_path_holds_the_same_report_as_stdout(tmp_path: Path) -> None:
    db, _ = prepared(tmp_path)
    target = tmp_path / "out.json"
    result = invoke(db, "export-report", "-o", str(target))
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(target.stat().st_mode) == 0o600

    from_file = json.loads(target.read_text(encoding="utf-8"))
    from_stdout = report_on_stdout(db)
    for report in (from_file, from_stdout):
        report.pop("generated_at")
    assert from_file == from_stdout


def assert_nothing_partial(root: Path) -> None:
    leftovers = [p for p in root.rglob("*") if "partial" in p.name or p.name.startswith("upload_")]
    assert leftovers == []


def test_a_target_that_is_a_folder_fails_cleanly(tmp_path: Path) -> None:
    db, _ = prepared(tmp_path)
    folder = tmp_path / "out"
    folder.mkdir()
    line = one_line_error(invoke(db, "export-report", "-o", str(folder)))
    assert "cannot write report" in line
    assert list(folder.iterdir()) == []
    assert_nothing_partial(tmp_path)


def test_a_target_below_a_file_fails_cleanly(tmp_path: Path) -> None:
    db, _ = prepared(tmp_path)
    (tmp_path / "a-file").write_text("x")
    line = one_line_error(invoke(db, "export-report", "-o", str(tmp_path / "a-file" / "r.json")))
    assert "cannot write report" in line
    assert (tmp_path / "a-file").read_text() == "x"
    assert_nothing_partial(tmp_path)


@pytest.mark.posix_only("needs file modes that bind (chmod)")
def test_a_read_only_folder_fails_cleanly(tmp_path: Path) -> None:
    db, _ = prepared(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        done = run_cli(db, "export-report", "-o", str(locked / "r.json"), privileged=False)
    finally:
        locked.chmod(0o755)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot write report"), done.stderr
    assert list(locked.iterdir()) == []


def test_export_report_without_a_database_is_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "missing.db"
    assert "no database" in one_line_error(invoke(db, "export-report"))
    assert not db.exists()
    assert not (tmp_path / "reports").exists()


def test_an_explicit_path_in_a_missing_folder_fails_without_creating_it(tmp_path: Path) -> None:
    db, _ = prepared(tmp_path)
    missing = tmp_path / "no" / "such" / "dir"

    line = one_line_error(invoke(db, "export-report", "-o", str(missing / "r.json")))

    assert line == (
        f"Error: cannot write report {missing / 'r.json'}: folder {missing} does not exist"
    )
    assert not (tmp_path / "no").exists()
    assert not (db.parent / "reports").exists()
    assert_nothing_partial(tmp_path)


def test_the_default_reports_folder_is_made_owner_only(tmp_path: Path) -> None:
    db, _ = prepared(tmp_path)

    result = invoke(db, "export-report")

    assert result.exit_code == 0, result.output
    reports = db.parent / "reports"
    assert stat.S_IMODE(reports.stat().st_mode) == 0o700
    (written,) = reports.iterdir()
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
