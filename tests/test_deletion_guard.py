"""The mass-deletion guard of `--delete-removed`: a folder that reads empty (a share not
mounted) or mostly gone deletes nothing unless told (`--max-delete N|N%`, default 50% of the
folder's uploaded files; `--allow-empty-source`), says why and how to allow it, and exits 5."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import KB, invoke, rows, run_args, upload
from uploader.exitcodes import ExitCode
from uploader.localserver import MaiAgentServer


def _remove(data: Path, names: list[str]) -> None:
    for name in names:
        (data / name).unlink()


def _states(db: Path) -> dict[str, int]:
    found: dict[str, int] = {}
    for row in rows(db):
        found[row["state"]] = found.get(row["state"], 0) + 1
    return found


def test_an_emptied_folder_deletes_nothing(tmp_path: Path, maiagent: MaiAgentServer) -> None:
    db, names = upload(tmp_path, maiagent, 10)
    _remove(tmp_path / "data", names)  # the mount point of a share that is not mounted

    refused = invoke(db, "enqueue", str(tmp_path / "data"), "--kb", KB, "--delete-removed")
    ran = invoke(db, *run_args(maiagent))

    assert refused.exit_code == ExitCode.DELETIONS_REFUSED, refused.output
    assert "holds no file at all" in refused.stderr
    assert "--allow-empty-source" in refused.stderr
    assert "Traceback" not in refused.output
    assert _states(db) == {"done": 10}
    assert ran.exit_code == 0, ran.output
    assert len(maiagent.entries(KB)) == 10


def test_an_emptied_folder_even_with_a_limit_of_all(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db, names = upload(tmp_path, maiagent, 4)
    _remove(tmp_path / "data", names)
    data = str(tmp_path / "data")

    refused = invoke(db, "enqueue", data, "--kb", KB, "--delete-removed", "--max-delete", "100%")
    allowed = invoke(
        db, "enqueue", data, "--kb", KB, "--delete-removed", "--max-delete", "100%",
        "--allow-empty-source",
    )  # fmt: skip
    ran = invoke(db, *run_args(maiagent))

    assert refused.exit_code == ExitCode.DELETIONS_REFUSED, refused.output
    assert allowed.exit_code == 0, allowed.output
    assert ran.exit_code == 0, ran.output
    assert maiagent.entries(KB) == []


def test_sixty_percent_gone_is_refused_forty_allowed(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db, names = upload(tmp_path, maiagent, 10)
    data = str(tmp_path / "data")
    _remove(tmp_path / "data", names[:6])

    refused = invoke(db, "enqueue", data, "--kb", KB, "--delete-removed")
    assert refused.exit_code == ExitCode.DELETIONS_REFUSED, refused.output
    assert "6 of its 10 uploaded files" in refused.stderr
    assert "--max-delete 6 (or 60%)" in refused.stderr
    assert _states(db) == {"done": 10}
    assert invoke(db, *run_args(maiagent)).exit_code == 0
    assert len(maiagent.entries(KB)) == 10

    # four of them come back (a copy restored): four of ten gone is within the default half
    for name in names[:2]:
        (tmp_path / "data" / name).write_bytes(b"back\n")
    allowed = invoke(db, "enqueue", data, "--kb", KB, "--delete-removed")
    ran = invoke(db, *run_args(maiagent))

    assert allowed.exit_code == 0, allowed.output
    assert "4 queued files" in allowed.stdout
    assert ran.exit_code == 0, ran.output
    # four entries deleted; the two restored files are changed ones: their entries replaced
    assert sorted(e["filename"] for e in maiagent.entries(KB)) == sorted(names[:2] + names[6:])


def test_max_delete_as_a_number(tmp_path: Path, maiagent: MaiAgentServer) -> None:
    db, names = upload(tmp_path, maiagent, 10)
    data = str(tmp_path / "data")
    _remove(tmp_path / "data", names[:3])

    refused = invoke(
        db, "enqueue", data, "--kb", KB, "--delete-removed", "--max-delete", "2", "--json"
    )
    allowed = invoke(db, "enqueue", data, "--kb", KB, "--delete-removed", "--max-delete", "3")

    assert refused.exit_code == ExitCode.DELETIONS_REFUSED, refused.output
    shown = json.loads(refused.stdout)
    assert shown["removed"] == 0
    assert shown["deletions_refused"]["would_delete"] == 3
    assert allowed.exit_code == 0, allowed.output
    assert _states(db) == {"done": 7, "removed": 3}


def test_the_dry_run_says_it_would_be_refused(tmp_path: Path, maiagent: MaiAgentServer) -> None:
    db, names = upload(tmp_path, maiagent, 4)
    _remove(tmp_path / "data", names[:3])

    shown = invoke(
        db, "enqueue", str(tmp_path / "data"), "--kb", KB, "--delete-removed", "--dry-run"
    )

    assert shown.exit_code == 0, shown.output
    assert "deletions refused" in shown.stdout and "would be refused" in shown.stdout
    assert _states(db) == {"done": 4}


@pytest.mark.parametrize("value", ["abc", "150%", "-1", "2.5"])
def test_a_bad_limit_is_bad_input(tmp_path: Path, value: str) -> None:
    (tmp_path / "data").mkdir()
    result = invoke(
        tmp_path / "q.db", "enqueue", str(tmp_path / "data"), "--kb", KB, "--max-delete", value
    )
    assert result.exit_code == 2, result.output
    assert "--max-delete" in result.output
