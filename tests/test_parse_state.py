"""What the knowledge base made of the uploads, kept per file: `run --wait-parsed` waits for the
real goal (parsed), parse failures come with their reason (verify, status --failed, the
report), stuck files are named, and `retry-failed --remote` repairs in place by batch-reparse,
uploading again only what fails again; a service without these calls falls back, said once."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.helpers import FAST, KB, enqueue, invoke, make_flat_files, make_tree, rows, service
from uploader.localserver import FAILURE_REASON, OCR_PARSER, MaiAgentServer

WAIT = ("--parse-timeout", "30")


def uploaded(
    tmp_path: Path, server: MaiAgentServer, count: int, *run: str
) -> tuple[Path, list[str], object]:
    names = make_flat_files(tmp_path / "data", count)
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")
    ran = invoke(db, "run", *service(server), *FAST, *run)
    return db, names, ran


def test_wait_parsed_exits_0_once_every_file_is_parsed(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(parse_delay=0.5)
    _db, _names, ran = uploaded(tmp_path, server, 12, "--wait-parsed", *WAIT)

    assert ran.exit_code == 0, ran.output
    assert "parsed: done 12, failed 0, still processing 0, stuck 0" in ran.stdout
    assert {r["status"] for r in server.records(KB)} == {"done"}


def test_wait_parsed_exits_1_naming_each_failure_with_its_reason(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(parse_delay=0.3, parse_failure_rate=0.3, seed=4)
    db, _names, ran = uploaded(tmp_path, server, 20, "--wait-parsed", *WAIT, "--json")

    failed = {r["id"] for r in server.records(KB) if r["status"] == "failed"}
    assert failed
    assert ran.exit_code == 1, ran.output
    parsed = json.loads(ran.stdout[ran.stdout.rindex('{\n  "parsed"') :])["parsed"]
    assert {f["entry"] for f in parsed["failed"]} == failed
    assert {f["reason"] for f in parsed["failed"]} == {FAILURE_REASON}
    assert parsed["done"] == 20 - len(failed) and not parsed["timed_out"]
    kept = {r["file_id"]: (r["remote_status"], r["remote_error"]) for r in rows(db)}
    assert {kept[i] for i in failed} == {("failed", FAILURE_REASON)}
    assert all(r["remote_seen_at"] for r in rows(db))


def test_wait_parsed_gives_up_at_the_timeout_and_names_stuck_files(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(stuck_rate=1.0)
    _db, _names, timed_out = uploaded(
        tmp_path, server, 3, "--wait-parsed", "--parse-timeout", "1", "--stuck-after", "600"
    )
    stuck = invoke(
        tmp_path / "queue.db",
        "run",
        *service(server),
        "--wait-parsed",
        "--parse-timeout",
        "30",
        "--stuck-after",
        "0",
    )

    assert timed_out.exit_code == 1, timed_out.output
    assert "still processing 3" in timed_out.stdout
    assert "--parse-timeout passed" in timed_out.stdout
    assert stuck.exit_code == 1, stuck.output
    assert "stuck 3" in stuck.stdout and "[stuck] processing" in stuck.stdout


def test_verify_status_and_the_report_carry_the_reasons(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(parse_delay=0.2, parse_failure_rate=0.2, seed=7)
    db, _names, ran = uploaded(tmp_path, server, 30)
    assert ran.exit_code == 0, ran.output

    verified = invoke(db, "verify", *service(server), "--wait", "--timeout", "30")
    listed = invoke(db, "status", "--failed", "--json")
    status = invoke(db, "status")
    report = tmp_path / "report.json"
    invoke(db, "export-report", "-o", str(report))

    failed = {r["id"] for r in server.records(KB) if r["status"] == "failed"}
    assert failed and verified.exit_code == 1
    assert verified.stdout.count(f": {FAILURE_REASON}") == min(len(failed), 10)
    items = json.loads(listed.stdout)
    assert {i["entry"] for i in items} == failed
    assert {(i["kind"], i["last_error"]) for i in items} == {("parse_failed", FAILURE_REASON)}
    assert f"parsed (as last seen): done {30 - len(failed)}, failed {len(failed)}" in status.stdout
    done = json.loads(report.read_text())["successful_files"]
    shown = {f["knowledge_file_id"]: (f["parse_status"], f["parse_error"]) for f in done}
    assert {shown[i] for i in failed} == {("failed", FAILURE_REASON)}
    assert {v for k, v in shown.items() if k not in failed} == {("done", None)}


def test_a_service_without_latest_failed_reason_gives_the_status_message_said_once(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(parse_failure_rate=1.0, missing_calls="failed_reason")
    db, _names, _ran = uploaded(tmp_path, server, 4)

    verified = invoke(db, "verify", *service(server))

    assert verified.exit_code == 1
    assert verified.stderr.count("does not offer latest-failed-reason/") == 1
    assert verified.stdout.count(": File processing failed.") == 4
    assert server.stats()["failed_reason"] == 1  # asked once, then never again


def test_retry_failed_remote_repairs_in_place_and_uploads_only_what_fails_again(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(
        parse_delay=0.2, parse_failure_rate=0.5, reparse_failure_rate=0.5, seed=3
    )
    db, names, _ran = uploaded(tmp_path, server, 30)
    assert invoke(db, "verify", *service(server), "--wait", "--timeout", "30").exit_code == 1
    failed = {r["id"] for r in server.records(KB) if r["status"] == "failed"}
    before = server.stats()

    repaired = invoke(db, "retry-failed", "--remote", *service(server))

    after = {r["id"]: r["status"] for r in server.records(KB)}
    again = {i for i in failed if i not in after}  # failed again: deleted, queued for upload
    assert repaired.exit_code == 0, repaired.output
    assert 0 < len(again) < len(failed)
    assert f"{len(failed)} entries parsed again in place" in repaired.stdout
    assert f"{len(failed) - len(again)} parsed now, {len(again)} failed again" in repaired.stdout
    assert f"{len(again)} files back to pending ({len(again)} failed entries deleted)" in (
        repaired.stdout
    )
    assert server.stats()["reparse"] - before["reparse"] == 1
    assert server.stats()["s3"] == before["s3"]  # nothing uploaded by the repair itself
    assert {after[i] for i in failed - again} == {"done"}  # same entries, parsed now
    server.faults.parse_failure_rate = 0
    rerun = invoke(db, "-q", "run", *service(server), *FAST)
    assert rerun.exit_code == 0, rerun.output
    assert server.stats()["s3"] - before["s3"] == len(again)
    assert sorted(r["filename"] for r in server.records(KB)) == sorted(names)


def test_an_ocr_parser_repairs_what_the_default_one_cannot(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(parse_failure_rate=1.0)
    db, _names, _ran = uploaded(tmp_path, server, 5)
    invoke(db, "verify", *service(server))
    ids = sorted(r["id"] for r in server.records(KB))

    repaired = invoke(db, "retry-failed", "--remote", "--parser", OCR_PARSER, *service(server))

    assert repaired.exit_code == 0, repaired.output
    assert "5 parsed now, 0 failed again" in repaired.stdout
    records = server.records(KB)
    assert sorted(r["id"] for r in records) == ids
    assert {(r["status"], r["parser"]) for r in records} == {("done", OCR_PARSER)}
    assert {r["state"] for r in rows(db)} == {"done"}


def test_a_stuck_file_is_reported_and_reparsed(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(stuck_rate=1.0)
    db, _names, _ran = uploaded(tmp_path, server, 3)
    server.faults.stuck_rate = 0

    waited = invoke(db, "run", *service(server), "--wait-parsed", "--stuck-after", "0")
    repaired = invoke(db, "retry-failed", "--remote", "--stuck-after", "0", *service(server))

    assert waited.exit_code == 1 and "stuck 3" in waited.stdout
    assert repaired.exit_code == 0, repaired.output
    assert "3 entries parsed again in place" in repaired.stdout
    assert {r["status"] for r in server.records(KB)} == {"done"}


def test_a_service_without_reparse_falls_back_to_delete_and_upload_said_once(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(parse_failure_rate=1.0, missing_calls="reparse")
    db, _names, _ran = uploaded(tmp_path, server, 4)
    invoke(db, "verify", *service(server))

    repaired = invoke(db, "retry-failed", "--remote", *service(server))

    assert repaired.exit_code == 0, repaired.output
    assert repaired.stderr.count("does not offer batch-reparse/") == 1
    assert "4 files back to pending (4 failed entries deleted)" in repaired.stdout
    assert server.stats()["reparse"] == 1


def test_a_type_the_service_stopped_accepting_is_skipped_at_claim(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(supported_types="txt,png")
    data = make_tree(tmp_path / "data", {"a.txt": 5, "b.png": 5, "c.png": 5})
    db = tmp_path / "queue.db"
    asked = invoke(
        db, "enqueue", str(data), "--kb", KB, *service(server), env={"UPLOADER_NO_KB_CHECK": None}
    )
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "d.png").write_text("any")
    enqueue(db, tmp_path / "more", "--any-type")
    server.faults.supported_types = "txt"

    ran = invoke(db, "run", *service(server), *FAST)

    assert asked.exit_code == 0 and server.stats()["supported_types"] == 2
    assert ran.exit_code == 0, ran.output
    assert sorted(r["filename"] for r in server.records(KB)) == ["a.txt", "d.png"]
    assert server.stats()["presign"] == 2
    skipped = {r["relpath"]: r["last_error"] for r in rows(db) if r["state"] == "skipped"}
    assert set(skipped) == {"b.png", "c.png"}
    assert {v.split(" (")[0] for v in skipped.values()} == {"type .png is not accepted by MaiAgent"}
