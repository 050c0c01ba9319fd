"""`uploader sync`: the weekly job in one command. Scan, upload, replace changed files, delete
removed ones (with --delete-removed, the deletion guard included) and write the report, with
enqueue's and run's options; the job remembered in the database, so that the next sync of
the folder repeats its filters and labels."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import FAST, KB, invoke, make_tree, one_line_error, rows, service, spawn
from uploader.exitcodes import ExitCode
from uploader.localserver import MaiAgentServer


def sync(db: Path, server: MaiAgentServer, *args: str) -> Any:
    return invoke(db, "sync", *args, "--base-url", server.base_url, *FAST)


def _names(server: MaiAgentServer) -> list[str]:
    return sorted(e["filename"] for e in server.entries(KB))


def test_a_sync_uploads_the_folder_and_writes_the_report(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    data = make_tree(tmp_path / "share", {"a.txt": 3, "sub/b.txt": 5, "sub/c.pdf": 7})
    db = tmp_path / "uploader.db"

    synced = sync(db, maiagent, str(data), "--kb", KB)

    assert synced.exit_code == 0, synced.output
    assert _names(maiagent) == ["a.txt", "b.txt", "c.pdf"]
    assert "scanned 3: 3 new" in synced.stdout
    (report,) = (tmp_path / "reports").glob("upload_report_*.json")
    assert synced.stdout.strip().splitlines()[-1] == f"report: {report}"


def test_a_second_sync_uploads_new_replaces_changed_deletes_removed(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    data = make_tree(tmp_path / "share", {f"f{i}.txt": 3 for i in range(6)})
    db = tmp_path / "uploader.db"
    assert sync(db, maiagent, str(data), "--kb", KB, "--delete-removed").exit_code == 0
    first = {e["filename"]: e["id"] for e in maiagent.entries(KB)}

    (data / "new.txt").write_bytes(b"new\n")
    (data / "f0.txt").write_bytes(b"changed, longer\n")
    (data / "f1.txt").unlink()
    again = sync(db, maiagent, str(data), "--kb", KB, "--delete-removed")

    assert again.exit_code == 0, again.output
    now = {e["filename"]: e["id"] for e in maiagent.entries(KB)}
    assert sorted(now) == ["f0.txt", "f2.txt", "f3.txt", "f4.txt", "f5.txt", "new.txt"]
    assert now["f0.txt"] != first["f0.txt"]
    assert all(now[name] == first[name] for name in ("f2.txt", "f3.txt", "f4.txt", "f5.txt"))
    assert "deleted 1 entries of removed files" in again.stdout


def test_sync_refuses_to_empty_the_knowledge_base_and_says_so(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    data = make_tree(tmp_path / "share", {f"f{i}.txt": 3 for i in range(4)})
    db = tmp_path / "uploader.db"
    assert sync(db, maiagent, str(data), "--kb", KB, "--delete-removed").exit_code == 0
    for path in data.iterdir():
        path.unlink()

    refused = sync(db, maiagent, str(data), "--kb", KB, "--delete-removed")

    assert refused.exit_code == ExitCode.DELETIONS_REFUSED, refused.output
    assert "holds no file at all" in refused.stderr
    assert len(maiagent.entries(KB)) == 4
    assert {r["state"] for r in rows(db)} == {"done"}


def test_refused_deletions_are_the_exit_code_with_nothing_to_upload_too(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    """Nothing pending with --error-on-nothing-to-do is 9, but the guard's refusal is what a
    script must hear: it said 9, the refusal only on stderr."""
    data = make_tree(tmp_path / "share", {f"f{i}.txt": 3 for i in range(2)})
    db = tmp_path / "uploader.db"
    assert sync(db, maiagent, str(data), "--kb", KB, "--delete-removed").exit_code == 0
    for path in data.iterdir():
        path.unlink()

    refused = sync(db, maiagent, str(data), "--delete-removed", "--error-on-nothing-to-do")

    assert refused.exit_code == ExitCode.DELETIONS_REFUSED, refused.output
    assert len(maiagent.entries(KB)) == 2


def _labels_of(server: MaiAgentServer) -> dict[str, set[str]]:
    return {r["filename"]: {label["name"] for label in r["labels"]} for r in server.records(KB)}


def test_a_second_sync_repeats_the_filters_and_labels_for_a_new_file(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    data = make_tree(tmp_path / "share", {"a.txt": 3, "logo.png": 4, "setup.exe": 5})
    db = tmp_path / "uploader.db"
    first = sync(
        db, maiagent, str(data), "--kb", KB, "--exclude", "*.{png,exe}",
        "--label", "匯入-2024", "--label", "合約",
    )  # fmt: skip
    assert first.exit_code == 0, first.output
    assert f"saved the job {data} -> {KB}" in first.stdout

    make_tree(data, {"new-contract.txt": 6, "photo.png": 7})
    again = sync(db, maiagent, str(data))  # the folder alone: its saved job

    assert again.exit_code == 0, again.output
    assert "scanned 2: 1 new" in again.stdout  # the .png files stay out
    assert _labels_of(maiagent) == {
        "a.txt": {"匯入-2024", "合約"},
        "new-contract.txt": {"匯入-2024", "合約"},
    }


@pytest.mark.skipif(
    sys.platform in ("win32", "darwin"), reason="the file system there stores names as Unicode"
)
def test_a_second_sync_reads_names_and_names_entries_as_the_first(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    """A Big5-named file added to an old Samba share after the first sync is read as the first
    sync was told (cp950), and named as it named its files (folders, its separator)."""
    data = tmp_path / "share"
    (data / "2024").mkdir(parents=True)
    big5 = os.path.join(os.fsencode(data), b"2024", "合約.txt".encode("cp950"))
    with open(big5, "wb") as f:
        f.write(b"first\n")
    db = tmp_path / "uploader.db"
    first = sync(db, maiagent, str(data), "--kb", KB, "--filename-encoding", "cp950",
                 "--name", "folders", "--name-separator", " - ")  # fmt: skip
    assert first.exit_code == 0, first.output

    with open(os.path.join(os.fsencode(data), b"2024", "章程.txt".encode("cp950")), "wb") as f:
        f.write(b"added later\n")
    again = sync(db, maiagent, str(data))

    assert again.exit_code == 0, again.output
    assert sorted(_names(maiagent)) == ["2024 - 合約.txt", "2024 - 章程.txt"]


def test_sync_alone_repeats_every_saved_job(tmp_path: Path, maiagent: MaiAgentServer) -> None:
    one = make_tree(tmp_path / "one", {"a.txt": 3})
    two = make_tree(tmp_path / "two", {"b.txt": 3})
    db = tmp_path / "uploader.db"
    assert sync(db, maiagent, str(one), "--kb", KB, "--label", "one").exit_code == 0
    assert sync(db, maiagent, str(two), "--kb", KB, "--label", "two").exit_code == 0
    make_tree(one, {"a2.txt": 4})
    make_tree(two, {"b2.txt": 4})

    everything = sync(db, maiagent)

    assert everything.exit_code == 0, everything.output
    assert _labels_of(maiagent) == {
        "a.txt": {"one"},
        "a2.txt": {"one"},
        "b.txt": {"two"},
        "b2.txt": {"two"},
    }
    assert len(list((tmp_path / "reports").glob("upload_report_*.json"))) >= 1


def test_nothing_to_do_is_the_exit_code_only_when_no_job_had_anything_to_do(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    """Two saved jobs, a new file in the first folder only: the second job finds nothing
    pending (9 with --error-on-nothing-to-do), but the sync uploaded a file, so it is not
    'nothing to do' (the highest of the jobs' codes made it 9)."""
    one = make_tree(tmp_path / "one", {"a.txt": 3})
    two = make_tree(tmp_path / "two", {"b.txt": 3})
    db = tmp_path / "uploader.db"
    assert sync(db, maiagent, str(one), "--kb", KB).exit_code == 0
    assert sync(db, maiagent, str(two), "--kb", KB).exit_code == 0
    make_tree(one, {"a2.txt": 4})

    everything = sync(db, maiagent, "--error-on-nothing-to-do")
    idle = sync(db, maiagent, "--error-on-nothing-to-do")

    assert everything.exit_code == ExitCode.OK, everything.output
    assert _names(maiagent) == ["a.txt", "a2.txt", "b.txt"]
    assert idle.exit_code == ExitCode.NOTHING_TO_DO, idle.output


def test_an_option_given_again_changes_the_saved_job_and_says_so(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    data = make_tree(tmp_path / "share", {"a.txt": 3})
    db = tmp_path / "uploader.db"
    assert sync(db, maiagent, str(data), "--kb", KB, "--label", "old").exit_code == 0

    changed = sync(db, maiagent, str(data), "--label", "new")
    make_tree(data, {"b.txt": 4})
    repeated = sync(db, maiagent, str(data))

    assert changed.exit_code == 0, changed.output
    assert f"changed the saved job {data} -> {KB}: --label new (was old)" in changed.stdout
    assert repeated.exit_code == 0, repeated.output
    assert _labels_of(maiagent) == {"a.txt": {"new"}, "b.txt": {"new"}}


def test_enqueue_of_a_saved_folder_with_other_options_warns(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    data = make_tree(tmp_path / "share", {"a.txt": 3, "b.png": 3})
    db = tmp_path / "uploader.db"
    assert sync(db, maiagent, str(data), "--kb", KB, "--exclude", "*.png").exit_code == 0

    plain = invoke(db, "enqueue", str(data), "--kb", KB)

    assert plain.exit_code == 0, plain.output
    assert f"{data} is a saved sync job of {KB} with other options" in plain.stderr
    assert "--exclude none (was *.png)" in plain.stderr


def test_jobs_lists_the_saved_jobs_and_one_can_be_removed(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    data = make_tree(tmp_path / "share", {"a.txt": 3})
    db = tmp_path / "uploader.db"
    assert sync(db, maiagent, str(data), "--kb", KB, "--label", "x").exit_code == 0

    listed = invoke(db, "jobs")
    shown = json.loads(invoke(db, "jobs", "--json").stdout)
    removed = invoke(db, "jobs", "--remove", str(shown[0]["id"]))
    after = invoke(db, "sync", "--base-url", maiagent.base_url)

    assert (
        listed.exit_code == 0
        and f"{data} -> {KB}" in listed.stdout
        and "--label x" in listed.stdout
    )
    assert shown[0]["folder"] == str(data) and shown[0]["options"]["labels"] == ["x"]
    assert removed.exit_code == 0, removed.output
    assert after.exit_code == 2 and "no saved job" in after.stderr


def test_the_first_sync_of_a_folder_needs_a_knowledge_base(tmp_path: Path) -> None:
    data = make_tree(tmp_path / "share", {"a.txt": 3})
    line = one_line_error(
        invoke(tmp_path / "uploader.db", "sync", str(data), env={"MAIAGENT_KB_ID": None})
    )
    assert "needs --kb" in line


def test_the_saved_job_works_on_postgresql(
    tmp_path: Path, pg_url: str, maiagent: MaiAgentServer, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)  # a server's logs/ and reports/ go to the current folder
    data = make_tree(tmp_path / "share", {"a.txt": 3, "b.png": 4})
    db: Any = pg_url
    first = sync(db, maiagent, str(data), "--kb", KB, "--exclude", "*.png", "--label", "x")
    make_tree(data, {"c.txt": 5})
    again = sync(db, maiagent, str(data))

    assert first.exit_code == 0, first.output
    assert again.exit_code == 0, again.output
    assert _labels_of(maiagent) == {"a.txt": {"x"}, "c.txt": {"x"}}
    assert json.loads(invoke(db, "jobs", "--json").stdout)[0]["options"]["exclude"] == ["*.png"]


def _watch(db: Path, data: Path, server: MaiAgentServer, *extra: str) -> subprocess.Popen[str]:
    """`sync DATA --watch` in a process of its own (stopped by the test with SIGTERM)."""
    return spawn(
        db, "sync", str(data), "--kb", KB, *service(server), *FAST, "--watch", *extra, text=True
    )


def _wait_for(check: Any, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_watch_picks_up_a_new_file_and_stops_cleanly_on_sigterm(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    data = make_tree(tmp_path / "share", {"a.txt": 3})
    db = tmp_path / "uploader.db"
    proc = _watch(db, data, maiagent, "--every", "2s")
    try:
        _wait_for(lambda: len(maiagent.entries(KB)) == 1)
        (data / "b.txt").write_bytes(b"new\n")
        _wait_for(lambda: len(maiagent.entries(KB)) == 2)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)

    assert proc.returncode == 0, (out, err)
    assert "Traceback" not in err
    assert "cycle 1 ended" in out and "stopped:" in out
    assert {r["state"] for r in rows(db)} == {"done"}  # nothing left running


def test_the_metrics_endpoint_is_scraped(tmp_path: Path, maiagent: MaiAgentServer) -> None:
    data = make_tree(tmp_path / "share", {"a.txt": 3, "b.txt": 4})
    db = tmp_path / "uploader.db"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _watch(
        db, data, maiagent, "--every", "1h", "--metrics-addr", f"127.0.0.1:{port}", "--min-age", "0"
    )
    try:
        scraped = ""

        def done_counted() -> bool:
            nonlocal scraped
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    scraped = r.read().decode()
            except OSError:
                return False
            return "uploader_sync_cycles_total{" in scraped

        _wait_for(done_counted)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)

    assert f'uploader_files{{kb_id="{KB}",state="done"}} 2.0' in scraped
    assert f'uploader_bytes{{kb_id="{KB}",state="done"}} 7.0' in scraped
    assert 'uploader_sync_cycles_total{exit_code="0"} 1.0' in scraped
    assert "uploader_sync_cycle_seconds" in scraped
    assert proc.returncode == 0, (out, err)


def test_watch_uploads_a_file_once_it_stopped_changing(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    """A file written a little at a time for longer than the file-system events are grouped
    (and than several --every periods) is uploaded once, whole: a cycle leaves out a file
    modified in the last few seconds (it may be half-written) and looks again soon."""
    data = make_tree(tmp_path / "share", {"a.txt": 3})
    db = tmp_path / "uploader.db"
    proc = _watch(db, data, maiagent, "--every", "1s")
    first, rest = b"the first half of a copy,\n", b"and the rest of it, a while later\n"
    try:
        _wait_for(lambda: len(maiagent.entries(KB)) == 1)
        with open(data / "slow.txt", "wb") as f:
            f.write(first)
            f.flush()
            for _ in range(12):  # a slow copy: a write every half second for six seconds
                time.sleep(0.5)
                f.write(b".")
                f.flush()
            f.write(rest)
        _wait_for(lambda: len(maiagent.entries(KB)) == 2)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)

    assert proc.returncode == 0, (out, err)
    (slow,) = [e for e in maiagent.entries(KB) if e["filename"] == "slow.txt"]
    assert maiagent.entry_content(slow["id"]) == first + b"." * 12 + rest
    assert maiagent.stats()["register"] == 2  # a.txt, then slow.txt once: never its first half


def test_an_edit_that_keeps_size_and_time_is_seen_only_once_the_time_moves(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    """Change detection is size plus modification time, as rclone's default (the README says
    so): an edit that keeps both is not seen; `touch` makes the next sync compare the bytes
    with the uploaded ones and replace the entry."""
    data = make_tree(tmp_path / "share", {"a.txt": 0})
    (data / "a.txt").write_bytes(b"version 1\n")
    db = tmp_path / "uploader.db"
    assert sync(db, maiagent, str(data), "--kb", KB).exit_code == 0
    before = os.stat(data / "a.txt")
    (data / "a.txt").write_bytes(b"version 2\n")
    os.utime(data / "a.txt", ns=(before.st_atime_ns, before.st_mtime_ns))

    unseen = sync(db, maiagent, str(data))
    os.utime(data / "a.txt")
    seen = sync(db, maiagent, str(data))

    assert unseen.exit_code == 0 and "1 unchanged" in unseen.stdout, unseen.output
    assert seen.exit_code == 0, seen.output
    [entry] = maiagent.entries(KB)
    assert maiagent.entry_content(entry["id"]) == b"version 2\n"
