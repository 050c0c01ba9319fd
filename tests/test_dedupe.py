"""`uploader dedupe`: surplus copies found and deleted in batches, a dry run by default, and
entries of other origin left alone unless asked."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tests.helpers import KB, invoke, last_counts, rows, service, upload
from tests.maiagent_server import MaiAgentServer


def test_dry_run_deletes_nothing_and_yes_leaves_exactly_one_of_each(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    db, names = upload(tmp_path, maiagent, 50)
    jobs = {j["filename"]: j for j in rows(db)}
    copies = {
        maiagent.add_entry(KB, name, jobs[name]["size"])["id"]
        for name in ("f0001.txt", "f0010.txt", "f0020.txt", "f0020.txt")
    }
    other_size = maiagent.add_entry(KB, "f0030.txt", jobs["f0030.txt"]["size"] + 1)["id"]
    foreign = [maiagent.add_entry(KB, "foreign.txt", 99)["id"]]
    time.sleep(0.01)  # one clearly older than the other (createdAt is in milliseconds)
    foreign.append(maiagent.add_entry(KB, "foreign.txt", 99)["id"])
    before = {e["id"] for e in maiagent.entries(KB)}

    found = invoke(db, "verify", *service(maiagent))
    dry = invoke(db, "dedupe", *service(maiagent))

    assert found.exit_code == 1, found.output
    counts = last_counts(db)
    assert (counts["duplicates"], counts["duplicate_groups"], counts["extra_duplicates"]) == (
        4,
        3,
        1,
    )
    assert counts["extra"] == 3  # the other-size copy and the two foreign entries
    assert dry.exit_code == 0, dry.output
    assert "would delete" in dry.output and "dry run" in dry.output
    assert {e["id"] for e in maiagent.entries(KB)} == before

    deleted = invoke(db, "dedupe", "--yes", *service(maiagent))

    assert deleted.exit_code == 0, deleted.output
    assert "deleted 4 entries" in deleted.output
    after = maiagent.entries(KB)
    assert {e["id"] for e in after} == before - copies
    ours = [e for e in after if e["filename"] in jobs and e["id"] != other_size]
    assert Counter(e["filename"] for e in ours) == dict.fromkeys(names, 1)
    assert {e["id"] for e in ours} == {j["file_id"] for j in jobs.values()}
    assert invoke(db, "verify", *service(maiagent)).exit_code == 0

    extra = invoke(db, "dedupe", "--yes", "--include-extra", *service(maiagent))

    assert extra.exit_code == 0, extra.output
    assert [e["id"] for e in maiagent.entries(KB) if e["filename"] == "foreign.txt"] == foreign[:1]
    assert len(maiagent.entries(KB)) == 50 + 2


def test_copies_are_found_when_the_listing_shows_no_sizes(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """Without sizes in the listing a job's entry takes its file's size, and an entry of
    unknown size joins the one group its name has."""
    server = maiagent_factory(list_size=False)
    db, names = upload(tmp_path, server, 20)
    jobs = {j["filename"]: j for j in rows(db)}
    copy = server.add_entry(KB, "f0005.txt", jobs["f0005.txt"]["size"])["id"]

    result = invoke(db, "dedupe", "--yes", *service(server))

    assert result.exit_code == 0, result.output
    ids = {e["id"] for e in server.entries(KB)}
    assert copy not in ids and jobs["f0005.txt"]["file_id"] in ids and len(ids) == 20
