"""Where the API key comes from (issue 23): `--api-key` stays in the command line, readable by
any local user (`ps`) for the whole run; its help and the README say so, a key given there is
warned about on a terminal (the warning never shows the key), and `--api-key-file` reads it
from a file instead (env MAIAGENT_API_KEY_FILE), as a secret mounted by a service manager is."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import API_KEY, invoke, one_line_error, service, spawn
from tests.test_progress import _Terminal
from uploader.localserver import MaiAgentServer

NO_KEY = {"MAIAGENT_API_KEY": None}


def test_a_key_on_the_command_line_works_with_a_warning_that_does_not_show_it(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    terminal = _Terminal()
    proc = spawn(
        tmp_path / "q.db",
        "kbs",
        *service(maiagent),
        "--api-key",
        API_KEY,
        env=NO_KEY,
        stderr=terminal.slave,
        text=True,
    )
    out, _err = proc.communicate(timeout=60)
    shown = terminal.text()
    piped = invoke(tmp_path / "q.db", "kbs", *service(maiagent), "--api-key", API_KEY, env=NO_KEY)

    assert proc.returncode == 0, shown
    assert "kb-test" in out
    assert "process list" in shown and "--api-key-file" in shown
    assert API_KEY not in shown
    # a script's stderr (not a terminal) keeps one line per error
    assert piped.exit_code == 0 and piped.stderr == ""


def test_a_key_from_the_environment_is_not_warned_about(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    result = invoke(tmp_path / "q.db", "kbs", *service(maiagent))

    assert result.exit_code == 0, result.output
    assert result.stderr == ""


def test_api_key_file_reads_the_key_its_line_end_stripped(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(f"{API_KEY}\n")

    by_option = invoke(
        tmp_path / "q.db", "kbs", *service(maiagent), "--api-key-file", str(key_file), env=NO_KEY
    )
    by_env = invoke(
        tmp_path / "q.db",
        "kbs",
        *service(maiagent),
        env={**NO_KEY, "MAIAGENT_API_KEY_FILE": str(key_file)},
    )

    for result in (by_option, by_env):
        assert result.exit_code == 0, result.output
        assert "kb-test" in result.stdout and result.stderr == ""


def test_api_key_file_wins_over_the_environments_key(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY)

    result = invoke(
        tmp_path / "q.db",
        "kbs",
        *service(maiagent),
        "--api-key-file",
        str(key_file),
        env={"MAIAGENT_API_KEY": "sk-stale"},
    )

    assert result.exit_code == 0, result.output


def test_a_key_file_that_cannot_be_read_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope"

    line = one_line_error(
        invoke(tmp_path / "q.db", "kbs", "--api-key-file", str(missing), env=NO_KEY)
    )

    assert str(missing) in line and "No such file" in line


def test_both_a_key_and_a_key_file_on_the_command_line_is_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY)

    line = one_line_error(
        invoke(tmp_path / "q.db", "kbs", "--api-key", API_KEY, "--api-key-file", str(key_file))
    )

    assert "--api-key-file" in line and API_KEY not in line


def test_the_help_says_the_key_is_visible_in_the_process_list(tmp_path: Path) -> None:
    shown = invoke(tmp_path / "q.db", "run", "--help").stdout

    assert "process list" in " ".join(shown.split())
