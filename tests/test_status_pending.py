"""Which files are still to upload, and what each waits for: `status --pending` (--json too),
beside --failed and --skipped (issue 25)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.helpers import KB, enqueue, execute, invoke, make_tree, run_args
from uploader.localserver import MaiAgentServer


def test_status_pending_names_each_file_and_what_it_waits_for(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    data = make_tree(tmp_path / "data", {"up.txt": 3})
    db = tmp_path / "queue.db"
    enqueue(db, data)
    assert invoke(db, *run_args(maiagent)).exit_code == 0
    make_tree(data, {"new.txt": 4, "flaky.txt": 5})
    enqueue(db, data, "--label", "hr")  # up.txt: its entry gets the label, no upload
    later = time.time() + 3600
    execute(
        db,
        "UPDATE jobs SET attempts = 1, last_error = 'HTTP 503', error_kind = 'http_5xx',"
        " next_attempt_at = ? WHERE relpath = 'flaky.txt'",
        (later,),
    )

    text = invoke(db, "status", "--pending")
    as_json = invoke(db, "status", "--pending", "--json")

    assert text.exit_code == 0, text.output
    lines = dict(line.split("  ", 1) for line in text.stdout.splitlines())
    assert lines[str(data / "new.txt")] == "to upload"
    assert lines[str(data / "up.txt")] == "uploaded: labels or metadata to update (no upload)"
    assert lines[str(data / "flaky.txt")].startswith("to retry at ")
    assert lines[str(data / "flaky.txt")].endswith("[http_5xx] HTTP 503")
    items = {Path(i["path"]).name: i for i in json.loads(as_json.stdout)}
    assert set(items) == {"new.txt", "up.txt", "flaky.txt"}
    assert items["new.txt"] == {
        "path": str(data / "new.txt"),
        "kb_id": KB,
        "size": 4,
        "waiting": "upload",
        "attempts": 0,
        "kind": None,
        "last_error": None,
        "due_at": None,
    }
    assert items["flaky.txt"]["waiting"] == "retry" and items["flaky.txt"]["due_at"]
    assert json.loads(invoke(db, "status", "--pending", "--kb", "kb-other", "--json").stdout) == []


def test_status_pending_with_nothing_pending_says_so(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db = tmp_path / "queue.db"
    enqueue(db, make_tree(tmp_path / "data", {"a.txt": 3}))
    assert invoke(db, *run_args(maiagent)).exit_code == 0

    assert invoke(db, "status", "--pending").stdout == "no file pending\n"


def test_the_lists_of_status_are_asked_one_at_a_time(tmp_path: Path) -> None:
    db = tmp_path / "queue.db"
    enqueue(db, make_tree(tmp_path / "data", {"a.txt": 3}))

    both = invoke(db, "status", "--pending", "--failed")

    assert both.exit_code == 2 and "ask for one" in both.stderr
