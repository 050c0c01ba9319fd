"""For users of the reference script: its three network presets (`--network`), its setting
names answered with the option that does the same here."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import enqueue, invoke, make_flat_files, one_line_error, rows, run_args
from uploader.localserver import MaiAgentServer


def _run_options(db: Path) -> dict[str, object]:
    import json

    (last,) = rows(db, "SELECT options FROM runs ORDER BY id DESC LIMIT 1")
    return json.loads(last["options"])


@pytest.mark.parametrize(
    ("network", "expected"),
    [
        ("good", {"workers": 20, "max_retries": 3, "retry_delay": 1.0, "timeout": 180.0}),
        ("average", {"workers": 10, "max_retries": 5, "retry_delay": 2.0, "timeout": 300.0}),
        ("poor", {"workers": 5, "max_retries": 5, "retry_delay": 5.0, "timeout": 600.0}),
    ],
)
def test_network_applies_the_scripts_preset(
    tmp_path: Path, maiagent: MaiAgentServer, network: str, expected: dict[str, object]
) -> None:
    make_flat_files(tmp_path / "data", 2)
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")

    ran = invoke(db, "-q", "run", "--base-url", maiagent.base_url, "--network", network)

    assert ran.exit_code == 0, ran.output
    options = _run_options(db)
    assert {name: options[name] for name in expected} == expected


def test_options_given_win_over_the_preset(tmp_path: Path, maiagent: MaiAgentServer) -> None:
    make_flat_files(tmp_path / "data", 2)
    db = tmp_path / "queue.db"
    enqueue(db, tmp_path / "data")

    ran = invoke(db, *run_args(maiagent, "--network", "poor", "--workers", "7"))

    assert ran.exit_code == 0, ran.output
    options = _run_options(db)
    # run_args gives --retry-delay and --timeout: they win too
    assert (options["workers"], options["max_retries"]) == (7, 10)
    assert (options["retry_delay"], options["timeout"]) == (0.01, 8.0)


@pytest.mark.parametrize(
    ("given", "answer"),
    [
        (["--max-concurrent-uploads", "10"], "--workers"),
        (["--timeout-seconds", "300"], "--timeout"),
        (["--batch-size", "100"], "no equivalent"),
    ],
)
def test_the_scripts_setting_names_say_what_to_give(
    tmp_path: Path, given: list[str], answer: str
) -> None:
    line = one_line_error(invoke(tmp_path / "queue.db", "run", *given))
    assert given[0] in line
    assert answer in line
