"""`status` in plain words (issue 23): `status --kb X` showed every knowledge base, and the
last run's line was jargon (`adopted 0, ..., seconds 40.759, superseded_deleted 0`)."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import enqueue, invoke, make_flat_files, upload
from uploader.localserver import MaiAgentServer


def test_status_kb_shows_only_that_knowledge_base(tmp_path: Path, maiagent: MaiAgentServer) -> None:
    db, _names = upload(tmp_path, maiagent, 3)
    make_flat_files(tmp_path / "other", 2)
    enqueue(db, tmp_path / "other", kb="kb-other")

    result = invoke(db, "status", "--kb", "kb-other")

    assert result.exit_code == 0, result.output
    assert "knowledge base kb-other: 2 files" in result.output
    assert "kb-test" not in result.output


def test_the_last_run_line_is_in_plain_words(tmp_path: Path, maiagent: MaiAgentServer) -> None:
    db, _names = upload(tmp_path, maiagent, 3)

    result = invoke(db, "status")

    (line,) = [x for x in result.output.splitlines() if x.startswith("last run #1")]
    assert "exit 0: uploaded 3, failed 0 in " in line, line
    for jargon in ("adopted", "superseded_deleted", "seconds", "released"):
        assert jargon not in line, line


def test_status_of_a_knowledge_base_the_queue_does_not_hold_is_bad_input(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db, _names = upload(tmp_path, maiagent, 3)

    result = invoke(db, "status", "--kb", "kb-typo")

    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        "Error: the queue has no rows for kb-typo (the queue holds: kb-test)"
    )
