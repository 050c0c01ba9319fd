"""Only what MaiAgent can parse is sent: files of another type are skipped at enqueue, with the
reason, before any presign or S3 byte; the accepted types come from the service where it
offers them, else from the documented list; --any-type sends them anyway, and a register the
service refuses for its type fails that file alone, for good."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.helpers import FAST, KB, invoke, make_tree, rows, run_args, service, summary_of
from uploader.localserver import MaiAgentServer

FOLDER = {
    "report.pdf": 300,
    "notes.txt": 20,
    "sub/table.xlsx": 50,
    "photo.png": 4000,
    "sub/setup.exe": 9000,
    "LICENSE": 10,
}
ASK = {"UPLOADER_NO_KB_CHECK": None}  # enqueue asks the service (its check, then its types)


def test_unsupported_files_cost_no_presign_and_no_s3_byte(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    data = make_tree(tmp_path / "data", FOLDER)
    db = tmp_path / "queue.db"

    queued = invoke(db, "enqueue", str(data), "--kb", KB, *service(maiagent), env=ASK)
    listed = invoke(db, "status", "--skipped")
    ran = invoke(db, *run_args(maiagent))

    assert queued.exit_code == 0, queued.output
    assert summary_of(queued.stdout)["skipped"] == 3
    assert "3 of the skipped are of a type MaiAgent does not accept" in queued.stdout
    assert "(no extension 1, .exe 1, .png 1)" in queued.stdout
    assert listed.exit_code == 0, listed.output
    assert "photo.png  type .png is not accepted by MaiAgent" in listed.stdout
    assert "sub/setup.exe  type .exe is not accepted by MaiAgent" in listed.stdout
    assert "LICENSE  a file without an extension is not accepted by MaiAgent" in listed.stdout
    assert ran.exit_code == 0, ran.output
    stats = maiagent.stats()
    assert stats["presign"] == stats["s3"] == 3
    assert sorted(r["filename"] for r in maiagent.records(KB)) == [
        "notes.txt",
        "report.pdf",
        "sub/table.xlsx",
    ]
    skipped = {r["relpath"]: r["last_error"] for r in rows(db) if r["state"] == "skipped"}
    assert set(skipped) == {"photo.png", "sub/setup.exe", "LICENSE"}


def test_the_services_own_list_is_asked_kept_and_used_without_asking(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(supported_types="txt,png")
    data = make_tree(tmp_path / "data", FOLDER)
    db = tmp_path / "queue.db"

    asked = invoke(db, "enqueue", str(data), "--kb", KB, "--json", *service(server), env=ASK)
    (data / "more.pdf").write_text("new")
    (data / "more.png").write_text("new")
    again = invoke(db, "enqueue", str(data), "--kb", KB, "--json", *service(server))

    assert asked.exit_code == 0, asked.output
    assert server.stats()["supported_types"] == 1
    assert json.loads(asked.stdout)["unsupported_types"] == {"": 1, "exe": 1, "pdf": 1, "xlsx": 1}
    assert again.exit_code == 0, again.output
    # without the check nothing was asked: the list the service gave before was used
    assert server.stats()["supported_types"] == 1
    assert json.loads(again.stdout)["unsupported_types"] == {"": 1, "exe": 1, "pdf": 2, "xlsx": 1}
    pending = sorted(r["relpath"] for r in rows(db) if r["state"] == "pending")
    assert pending == ["more.png", "notes.txt", "photo.png"]


def test_a_service_without_the_call_gets_the_documented_list_said_once(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(missing_calls="supported_types")
    data = make_tree(tmp_path / "data", FOLDER)
    db = tmp_path / "queue.db"

    result = invoke(db, "enqueue", str(data), "--kb", KB, *service(server), env=ASK)

    assert result.exit_code == 0, result.output
    assert result.stderr.count("does not offer parsers/supported-file-types/") == 1
    assert "the 12 MaiAgent documents" in result.stderr
    assert summary_of(result.stdout)["skipped"] == 3


def test_any_type_sends_them_and_a_refused_type_fails_that_file_alone_for_good(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(file_types="txt,pdf,xlsx")
    data = make_tree(tmp_path / "data", FOLDER)
    db = tmp_path / "queue.db"

    queued = invoke(db, "enqueue", str(data), "--kb", KB, "--any-type")
    ran = invoke(db, *run_args(server, "--register-batch", "6"))
    failed = invoke(db, "status", "--failed", "--json")

    assert summary_of(queued.stdout) == {
        "scanned": 6,
        "new": 6,
        "changed": 0,
        "unchanged": 0,
        "skipped": 0,
    }
    assert ran.exit_code == 1, ran.output
    assert sorted(r["filename"] for r in server.records(KB)) == [
        "notes.txt",
        "report.pdf",
        "sub/table.xlsx",
    ]
    items = {i["path"].rsplit("/", 1)[-1]: i for i in json.loads(failed.stdout)}
    assert set(items) == {"photo.png", "setup.exe", "LICENSE"}
    assert {i["kind"] for i in items.values()} == {"unsupported_type"}
    assert {i["attempts"] for i in items.values()} == {1}  # never retried
    registers = server.stats()["register"]
    again = invoke(db, "run", *service(server), *FAST)
    assert again.exit_code == 0 and "nothing pending" in again.stdout
    assert server.stats()["register"] == registers
