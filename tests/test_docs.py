"""Every command is documented (issue 11, step 8), read off the real click command list as
sqlite-utils' test_docs.py does: the group's help names each command, each has a --help, the
README has a section or a usage line for each, and every option says what it is for."""

from __future__ import annotations

import re

import click
import pytest
from click.testing import CliRunner

from tests.helpers import ROOT
from uploader.cli import cli

COMMANDS = sorted(cli.commands)
README = (ROOT / "README.md").read_text()


def test_the_command_list_is_the_real_one() -> None:
    assert {"enqueue", "run", "status", "verify", "dedupe", "forget", "kbs", "check"} <= set(
        COMMANDS
    )


def test_the_group_help_names_every_command() -> None:
    result = CliRunner().invoke(cli, ["--help"])

    assert result.exit_code == 0, result.output
    body = result.stdout.split("Commands:")[0]
    for name in COMMANDS:
        assert re.search(rf"^\s+uploader {re.escape(name)}\b", body, re.M), name


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_a_help_and_a_readme_mention(name: str) -> None:
    result = CliRunner().invoke(cli, [name, "--help"])

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Usage: cli {name} ")
    assert (cli.commands[name].help or "").strip(), name
    assert re.search(rf"`uploader {re.escape(name)}\b", README), f"README: uploader {name}"


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_says_what_it_is_for(name: str) -> None:
    undocumented = [
        param.opts[0]
        for param in cli.commands[name].params
        if isinstance(param, click.Option) and not param.hidden and not (param.help or "").strip()
    ]

    assert undocumented == [], f"{name}: {undocumented}"


@pytest.mark.parametrize("option", ["--workers", "--max-retries"])
def test_run_help_explains_workers_and_retries(option: str) -> None:
    text = " ".join(CliRunner().invoke(cli, ["run", "--help"]).stdout.split())

    assert re.search(rf"{option} INTEGER RANGE [A-Z][a-z]+ ", text), text
