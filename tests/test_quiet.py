"""`-q` means what it says for every command (issue 23): `retry-failed` and `verify` printed
their chatter whatever -q said. Quiet, retry-failed prints nothing (its exit code tells) and
verify one verdict line per knowledge base."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import invoke, service, upload
from uploader.localserver import MaiAgentServer


def test_retry_failed_is_silent_with_q(tmp_path: Path, maiagent: MaiAgentServer) -> None:
    db, _names = upload(tmp_path, maiagent, 3)

    before = invoke(db, "-q", "retry-failed")
    after = invoke(db, "retry-failed", "-q")

    for result in (before, after):
        assert result.exit_code == 0, result.output
        assert result.output == ""


def test_verify_says_only_its_verdict_with_q(tmp_path: Path, maiagent: MaiAgentServer) -> None:
    db, _names = upload(tmp_path, maiagent, 3)

    result = invoke(db, "verify", *service(maiagent), "-q")

    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "knowledge base kb-test: OK: every file is in the knowledge base once, parsed"
    ]
