"""Two runs at once on one queue (two syncs of one job started together, say) both find the
same superseded entries due and both send their deletes: each says only the deletions it
recorded itself, so that the two summaries add up to what was deleted, and the record of
deletions holds each entry once."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.helpers import FAST, KB, invoke, make_tree, service, spawn

FILES = 12
SAID = re.compile(r"^deleted (\d+) superseded entries", re.MULTILINE)


def test_two_syncs_at_once_count_each_superseded_deletion_once(
    tmp_path: Path, maiagent_factory: Any
) -> None:
    # entries are processed for a minute, and a delete meanwhile is refused (409)
    server = maiagent_factory(parse_delay=60, delete_conflict_while_processing=True)
    data = make_tree(tmp_path / "share", {f"f{i}.txt": 3 for i in range(FILES)})
    db = tmp_path / "uploader.db"
    args = ("sync", str(data), *service(server), *FAST)
    assert invoke(db, *args, "--kb", KB).exit_code == 0
    for path in data.iterdir():
        path.write_bytes(b"a new version, longer\n")
    # the new versions go up; the old entries stay due, their deletes refused for now
    assert invoke(db, *args).exit_code == 0
    assert len(server.entries(KB)) == 2 * FILES
    server.faults.delete_conflict_while_processing = False
    server.faults.delete_delay = 1.0  # both runs read what is due before either deletes

    both = [spawn(db, *args, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in both]

    assert [p.returncode for p in both] == [0, 0], outputs
    said = [int(n) for out, _err in outputs for n in SAID.findall(out)]
    assert sum(said) == FILES, outputs
    assert len(server.entries(KB)) == FILES
    target = tmp_path / "report.json"
    assert invoke(db, "export-report", "-o", str(target)).exit_code == 0
    deletions = json.loads(target.read_text())["deletions"]
    assert sorted(d["reason"] for d in deletions) == ["superseded"] * FILES
