"""A mistyped knowledge base must not poison the queue (issue 12, point 3): enqueue asks the
service when it has a key (a warning when it cannot), a run goes on with the other knowledge
bases when one is unknown (its rows untouched, named, exit 3), and `forget` drops rows from
the queue without ever calling the service (a dry run without --yes)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.helpers import (
    KB,
    enqueue,
    invoke,
    make_flat_files,
    one_line_error,
    rows,
    run_args,
    service,
)
from uploader.exitcodes import ExitCode
from uploader.localserver import MaiAgentServer

CHECKED = {"UPLOADER_NO_KB_CHECK": None}  # the check the helpers turn off by default


def test_enqueue_refuses_a_knowledge_base_the_service_does_not_know(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    make_flat_files(tmp_path / "data", 3)
    db = tmp_path / "queue.db"
    args = ("enqueue", str(tmp_path / "data"), *service(maiagent))

    wrong = invoke(db, *args, "--kb", "kb-nope", env=CHECKED)
    right = invoke(db, *args, "--kb", KB, env=CHECKED)

    assert wrong.exit_code == ExitCode.REFUSED, wrong.output
    assert wrong.stderr.strip() == (
        "Error: knowledge base kb-nope not found (HTTP 404):"
        " check --kb and that --base-url ends in /api/v1/"
    )
    assert right.exit_code == 0, right.output
    assert {job["kb_id"] for job in rows(db)} == {KB}
    assert maiagent.stats()["total"] == 3  # two listings, and the accepted file types once
    assert maiagent.stats()["supported_types"] == 1


def test_enqueue_offline_or_with_a_refused_key_warns_and_queues(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    make_flat_files(tmp_path / "data", 3)
    db = tmp_path / "queue.db"
    args = ("enqueue", str(tmp_path / "data"), "--kb", KB)

    offline = invoke(db, *args, "--base-url", "http://127.0.0.1:1/api/v1/", env=CHECKED)
    refused = invoke(db, *args, *service(maiagent), env={**CHECKED, "MAIAGENT_API_KEY": "no"})

    assert offline.exit_code == 0, offline.output
    assert offline.stderr.strip() == (
        f"warning: could not check knowledge base {KB} (cannot reach 127.0.0.1:1 (connection "
        "refused)): queued anyway, `uploader run` checks it again"
    )
    assert refused.exit_code == 0, refused.output
    assert "warning: could not check knowledge base kb-test (API key rejected" in refused.stderr
    assert len(rows(db)) == 3


def test_a_run_uploads_the_known_knowledge_bases_and_leaves_the_unknown_one(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(kbs=[KB, "kb-two"])
    db = tmp_path / "queue.db"
    for kb in (KB, "kb-nope", "kb-two"):
        make_flat_files(tmp_path / kb, 3)
        enqueue(db, tmp_path / kb, kb=kb)

    result = invoke(db, *run_args(server)[1:])
    as_json = invoke(db, *run_args(server)[1:], "--json")

    assert result.exit_code == ExitCode.REFUSED, result.output
    jobs = rows(db)
    assert {j["kb_id"]: j["state"] for j in jobs if j["state"] == "done"}.keys() == {KB, "kb-two"}
    nope = [j for j in jobs if j["kb_id"] == "kb-nope"]
    assert {(j["state"], j["attempts"]) for j in nope} == {("pending", 0)}
    assert len(server.records(KB)) == len(server.records("kb-two")) == 3
    assert "uploaded 6, failed 0" in result.stdout
    assert result.stderr.strip() == (
        "Error: knowledge base kb-nope not found (HTTP 404): check --kb and that --base-url "
        "ends in /api/v1/; its 3 queued files were left alone (`uploader forget --kb kb-nope` "
        "drops them from the queue)"
    )
    assert as_json.exit_code == 3
    assert list(json.loads(as_json.stdout)["unknown_kbs"]) == ["kb-nope"]


def test_forget_is_a_dry_run_without_yes_and_never_calls_the_service(tmp_path: Path) -> None:
    make_flat_files(tmp_path / "data", 4)
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data", kb="kb-nope")
    enqueue(db, tmp_path / "data", kb=KB)
    unreachable = {"MAIAGENT_BASE_URL": "http://127.0.0.1:1/api/v1/"}

    dry = invoke(db, "forget", "--kb", "kb-nope", "--match", "f000[01].txt", env=unreachable)
    still = len(rows(db))
    some = invoke(db, "forget", "--kb", "kb-nope", "--match", "f000[01].txt", "--yes")
    rest = invoke(db, "forget", "--kb", "kb-nope", "--yes")

    assert dry.exit_code == 0, dry.output
    assert dry.stdout.splitlines() == [
        "would drop 2 rows of kb-nope from the queue (pending 2)",
        "  pending       7 B  f0000.txt",
        "  pending      14 B  f0001.txt",
        "dry run: add --yes to drop them",
    ]
    assert still == 8
    assert some.stdout.splitlines() == ["dropped 2 rows of kb-nope from the queue (pending 2)"]
    assert rest.stdout.splitlines() == ["dropped 2 rows of kb-nope from the queue (pending 2)"]
    assert {j["kb_id"] for j in rows(db)} == {KB} and len(rows(db)) == 4
    line = one_line_error(invoke(db, "forget", "--kb", "kb-nope"))
    assert line == f"Error: the queue has no rows for kb-nope (the queue holds: {KB})"
