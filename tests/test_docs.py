"""Every command is documented (issue 11, step 8), read off the real click command list as
sqlite-utils' test_docs.py does: the group's help names each command, each has a --help, the
README tour and docs/commands.md name each, and every option says what it is for."""

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
def test_every_command_has_a_help_a_readme_line_and_a_reference(name: str) -> None:
    result = CliRunner().invoke(cli, [name, "--help"])

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Usage: cli {name} ")
    assert (cli.commands[name].help or "").strip(), name
    assert re.search(rf"^\| `uploader {re.escape(name)}\b", README, re.M), f"README tour: {name}"
    reference = (ROOT / "docs" / "commands.md").read_text()
    assert re.search(rf"`uploader {re.escape(name)}\b", reference), f"docs/commands.md: {name}"


def test_the_readme_first_screen_is_the_quick_start() -> None:
    """A new user finds the set-up and the main sequence without scrolling; contributors find
    their two commands there too."""
    first_screen = "\n".join(README.splitlines()[:70])

    for needed in ("pipx install", "MAIAGENT_API_KEY", "uploader kbs", "uploader check", "Ctrl+C"):
        assert needed in first_screen, needed
    assert "make demo" in first_screen and "make test" in first_screen
    assert "README.zh-TW.md" in first_screen


def test_every_link_between_the_pages_leads_somewhere() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to {target}"


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


def _commands_and_options(text: str) -> set[str]:
    """What a guide tells the user to type: the commands it names and every option."""
    names = {f"uploader {m}" for m in re.findall(r"`uploader ([a-z][a-z-]*)", text)}
    options = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", text))
    return names | options


def test_the_chinese_guide_shows_the_same_commands_and_options() -> None:
    """The zh-TW guide is the same user guide, kept in step: a command or an option added to
    one and not the other is a translation that fell behind."""
    chinese = (ROOT / "README.zh-TW.md").read_text()
    without_glossary = re.sub(r"\n## 名詞對照\n.*?(?=\n## )", "", chinese, flags=re.S)

    assert _commands_and_options(without_glossary) == _commands_and_options(README)
    assert "README.md" in chinese.split("\n## ", 1)[0]


def test_the_chinese_guide_uses_maiagents_terms() -> None:
    chinese = (ROOT / "README.zh-TW.md").read_text()
    glossary = chinese.split("## 名詞對照", 1)[1].split("\n## ", 1)[0]

    for term in ("知識庫", "標籤", "解析器", "API 金鑰"):
        assert f"| {term} |" in glossary, term
