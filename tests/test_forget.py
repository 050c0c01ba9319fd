"""`forget` without --yes is a dry run that names what it would drop (rclone's dry run names
each file): the rows by relative path, with their state and size, the first ten and how many
more (-v: all), so that a --match catching more than meant is seen before --yes."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import KB, enqueue, execute, invoke, make_flat_files, rows


def test_forget_without_yes_lists_the_rows_it_would_drop_and_drops_none(tmp_path: Path) -> None:
    make_flat_files(tmp_path / "data", 30)
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")
    execute(db, "UPDATE jobs SET state = 'failed' WHERE relpath = 'f0001.txt'")
    execute(db, "UPDATE jobs SET state = 'running' WHERE relpath = 'f0002.txt'")

    dry = invoke(db, "forget", "--kb", KB, "--match", "f00[0-1]*.txt")
    every = invoke(db, "-v", "forget", "--kb", KB, "--match", "f00[0-1]*.txt")

    assert dry.exit_code == 0, dry.output
    lines = dry.stdout.splitlines()
    assert lines[0] == f"would drop 19 rows of {KB} from the queue (pending 18, failed 1)"
    assert lines[1:4] == [
        "  pending       7 B  f0000.txt",
        "  failed       14 B  f0001.txt",
        "  pending       7 B  f0003.txt",  # f0002.txt is running: left alone, not listed
    ]
    assert [line.split()[-1] for line in lines[4:11]] == [f"f{i:04d}.txt" for i in range(4, 11)]
    assert lines[11:] == [
        "  ... and 9 more",
        "1 files a run is uploading now were left alone",
        "dry run: add --yes to drop them",
    ]
    assert [line.split()[-1] for line in every.stdout.splitlines()[1:20]] == [
        f"f{i:04d}.txt" for i in range(20) if i != 2
    ]
    assert "more" not in every.stdout
    assert len(rows(db)) == 30
