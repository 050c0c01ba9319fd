"""Which sync jobs are saved, and a plain `uploader sync` of every saved job: a first sync
the service refuses (a mistyped --kb, a refused key) saves no job and queues nothing, and a
saved job refused later (its knowledge base deleted) is named while the other jobs go on."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    FAST,
    KB,
    child_env,
    command,
    execute,
    invoke,
    make_tree,
    one_line_error,
    rows,
    spawn,
)
from uploader.exitcodes import ExitCode
from uploader.localserver import MaiAgentServer

CHECKED = {"UPLOADER_NO_KB_CHECK": None}  # enqueue's own check of --kb, which helpers turn off
GONE = "kb-gone"


def sync(db: Path, server: MaiAgentServer, *args: str, env: dict[str, Any] | None = None) -> Any:
    return invoke(db, "sync", *args, "--base-url", server.base_url, *FAST, env=env)


def _saved(db: Path) -> list[tuple[str, str]]:
    return [(j["folder"], j["kb_id"]) for j in json.loads(invoke(db, "jobs", "--json").stdout)]


@pytest.mark.parametrize("kb_check", [True, False], ids=["kb-check", "no-kb-check"])
@pytest.mark.parametrize(
    ("kb", "key"), [("kb-nope", None), (KB + "x", None), (KB, "wrong-key")], ids=str
)
def test_a_first_sync_the_service_refuses_saves_no_job_and_queues_nothing(
    tmp_path: Path, maiagent: MaiAgentServer, kb: str, key: str | None, kb_check: bool
) -> None:
    """An unknown knowledge base, a typo of the one a folder's saved job has, a refused key:
    exit 3 and nothing saved, with enqueue's check of --kb or without it."""
    good = make_tree(tmp_path / "good", {"a.txt": 3})
    bad = make_tree(tmp_path / "bad", {"b.txt": 3})
    db = tmp_path / "uploader.db"
    assert sync(db, maiagent, str(good), "--kb", KB).exit_code == 0
    env: dict[str, Any] = {**(CHECKED if kb_check else {})}
    if key is not None:
        env["MAIAGENT_API_KEY"] = key

    results = [sync(db, maiagent, str(bad), "--kb", kb, env=env)]
    if kb != KB:  # the good folder with another knowledge base: a new job of it
        results.append(sync(db, maiagent, str(good), "--kb", kb, env=env))

    for result in results:
        assert result.exit_code == ExitCode.REFUSED, result.output
        assert "saved the job" not in result.stdout
        assert "Traceback" not in result.output
    assert _saved(db) == [(str(good), KB)]
    assert {(r["relpath"], r["kb_id"]) for r in rows(db)} == {("a.txt", KB)}


@pytest.mark.parametrize("kb_check", [True, False], ids=["kb-check", "no-kb-check"])
def test_a_plain_sync_goes_on_past_a_job_whose_knowledge_base_is_gone(
    tmp_path: Path, maiagent_factory: Any, kb_check: bool
) -> None:
    """The refused job saved first, the good one second: the good job's changed file is
    replaced, the refused one is named with how to forget it, and the sync exits 3."""
    server = maiagent_factory(kbs=[KB, GONE])
    gone = make_tree(tmp_path / "gone", {"x.txt": 3})
    good = make_tree(tmp_path / "good", {"a.txt": 3, "b.txt": 3})
    db = tmp_path / "uploader.db"
    assert sync(db, server, str(gone), "--kb", GONE).exit_code == 0
    assert sync(db, server, str(good), "--kb", KB).exit_code == 0
    before = {e["filename"]: e["id"] for e in server.entries(KB)}
    server.drop_kb(GONE)
    (good / "a.txt").write_bytes(b"changed, and longer\n")
    (gone / "x.txt").write_bytes(b"changed too\n")

    everything = sync(db, server, env=CHECKED if kb_check else None)

    assert everything.exit_code == ExitCode.REFUSED, everything.output
    after = {e["filename"]: e["id"] for e in server.entries(KB)}
    assert sorted(after) == ["a.txt", "b.txt"]
    assert after["a.txt"] != before["a.txt"] and after["b.txt"] == before["b.txt"]
    assert server.entry_content(after["a.txt"]) == b"changed, and longer\n"
    assert f"knowledge base {GONE} not found" in everything.stderr
    assert "Traceback" not in everything.output
    if kb_check:  # the enqueue stopped it: the sync says which job and how to drop it
        assert f"sync {gone} -> {GONE} stopped; the other jobs go on" in everything.stderr
        assert "uploader jobs --remove 1" in everything.stderr
    assert f"sync {good} -> {KB}" in everything.stdout


@pytest.mark.parametrize("option", ["--include", "--exclude"])
def test_a_bad_pattern_in_a_sync_saves_and_changes_no_job(
    tmp_path: Path, maiagent: MaiAgentServer, option: str
) -> None:
    data = make_tree(tmp_path / "share", {"a.txt": 3})
    db = tmp_path / "uploader.db"

    first = sync(db, maiagent, str(data), "--kb", KB, option, "[")
    dry = sync(db, maiagent, str(data), "--kb", KB, option, "*.[tx", "--dry-run")
    assert sync(db, maiagent, str(data), "--kb", KB).exit_code == 0
    changed = sync(db, maiagent, str(data), option, "a[")

    for result in (first, dry, changed):
        assert "unbalanced [" in one_line_error(result)
    saved = json.loads(invoke(db, "jobs", "--json").stdout)
    assert [(j["options"]["include"], j["options"]["exclude"]) for j in saved] == [([], [])]


def test_a_plain_sync_writes_the_report_when_its_last_job_had_nothing_to_do(
    tmp_path: Path, maiagent_factory: Any
) -> None:
    """The report covers the whole database, written once after the jobs: it was the last
    job's run's, so a last job with nothing to do, or stopped, left the uploads of the jobs
    before it without a report."""
    server = maiagent_factory(kbs=[KB, GONE])
    one = make_tree(tmp_path / "one", {"a.txt": 3})
    two = make_tree(tmp_path / "two", {"b.txt": 3})
    three = make_tree(tmp_path / "three", {"c.txt": 3})
    db = tmp_path / "uploader.db"
    for folder, kb in ((one, KB), (two, KB), (three, GONE)):
        assert sync(db, server, str(folder), "--kb", kb, "--no-report").exit_code == 0
    make_tree(one, {"a2.txt": 4})
    server.drop_kb(GONE)

    everything = sync(db, server, env=CHECKED)  # one uploads, two has nothing, three refused

    assert everything.exit_code == ExitCode.REFUSED, everything.output
    (report,) = (tmp_path / "reports").glob("upload_report_*.json")
    assert everything.stdout.strip().splitlines()[-1] == f"report: {report}"
    shown = json.loads(report.read_text())
    assert "a2.txt" in {f["filename"] for f in shown["successful_files"]}


def test_a_watch_of_every_job_goes_on_past_a_refused_one_and_stops_when_all_are(
    tmp_path: Path, maiagent_factory: Any
) -> None:
    """A watch stops on what another cycle cannot fix; one job of several refused (its
    knowledge base deleted) is not that: the others are still watched. A watch whose every
    job is refused stops, with that code."""
    server = maiagent_factory(kbs=[KB, GONE])
    gone = make_tree(tmp_path / "gone", {"x.txt": 3})
    good = make_tree(tmp_path / "good", {"a.txt": 3})
    db = tmp_path / "uploader.db"
    assert sync(db, server, str(gone), "--kb", GONE).exit_code == 0
    assert sync(db, server, str(good), "--kb", KB).exit_code == 0
    server.drop_kb(GONE)
    watch = ("sync", "--base-url", server.base_url, *FAST, "--watch", "--every", "1s")

    both = spawn(db, *watch, env=CHECKED, text=True)
    try:
        deadline = time.monotonic() + 60
        (good / "b.txt").write_bytes(b"new\n")
        while len(server.entries(KB)) < 2:
            assert both.poll() is None and time.monotonic() < deadline, both.communicate()
            time.sleep(0.2)
    finally:
        both.send_signal(signal.SIGTERM)
        out, err = both.communicate(timeout=60)
    alone = subprocess.run(
        command(db, *watch[:1], str(gone), *watch[1:]),
        env=child_env(CHECKED),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert both.returncode == 0, (out, err)
    assert "cycle 1 ended at" in out and "exit 3" in out and "stopped:" in out
    assert f"knowledge base {GONE} not found" in err and "Traceback" not in err
    assert alone.returncode == ExitCode.REFUSED, alone.stdout + alone.stderr
    assert "cycle 2" not in alone.stdout


def test_a_saved_job_with_a_pattern_bad_today_is_one_line_and_queues_nothing(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    """A job saved by an older uploader, which let `--include '['` through: its sync says the
    pattern is bad, exit 2, before anything is queued."""
    data = make_tree(tmp_path / "share", {"a.txt": 3})
    db = tmp_path / "uploader.db"
    assert sync(db, maiagent, str(data), "--kb", KB).exit_code == 0
    make_tree(data, {"b.txt": 3})
    execute(db, "UPDATE saved_jobs SET options = json_set(options, '$.include', json('[\"[\"]'))")

    again = sync(db, maiagent, str(data))

    assert "--include '['" in one_line_error(again)
    assert [r["relpath"] for r in rows(db)] == ["a.txt"]


@pytest.mark.parametrize("option", [("--every", "5s"), ("--metrics-addr", "127.0.0.1:0")])
def test_an_option_of_watch_without_watch_is_bad_input(
    tmp_path: Path, maiagent: MaiAgentServer, option: tuple[str, str]
) -> None:
    """`sync DIR --every 5s` without --watch synced once and exited 0: what was meant (a
    watch) silently did not happen."""
    data = make_tree(tmp_path / "share", {"a.txt": 3})
    db = tmp_path / "uploader.db"

    result = sync(db, maiagent, str(data), "--kb", KB, *option)

    assert f"{option[0]} goes with --watch" in one_line_error(result)
    assert not db.exists() or rows(db) == []
