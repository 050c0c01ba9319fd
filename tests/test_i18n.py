"""Messages in the user's language: `LANG=zh_TW.UTF-8 uploader --help` is Traditional Chinese,
`LC_ALL=C` and `en` are English as before, and the catalogue holds a translation of every
message the code and the command tree show, with the same placeholders."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import messages
from tests.helpers import UPLOADER, invoke, make_tree, one_line_error, run_args, service
from uploader.cli import cli
from uploader.localserver import MaiAgentServer

LOCALE_ENV = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")


def uploader(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`uploader ARGS` as a user's shell starts it, with only the locale variables given."""
    clean = {name: value for name, value in os.environ.items() if name not in LOCALE_ENV}
    clean.pop("MAIAGENT_API_KEY", None)
    return subprocess.run(
        [*UPLOADER, *args],
        env={**clean, "PYTHONIOENCODING": "utf-8", **env},
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
        check=False,
    )


def test_help_is_in_traditional_chinese_under_a_zh_tw_locale() -> None:
    shown = uploader("--help", LANG="zh_TW.UTF-8")

    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("用法：")
    assert "把整個資料夾的檔案上傳到 MaiAgent 知識庫" in shown.stdout
    assert "選項" in shown.stdout and "顯示此說明後結束。" in shown.stdout
    assert "Upload a folder" not in shown.stdout


@pytest.mark.parametrize("variable", ["LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"])
def test_every_variable_gettext_reads_chooses_the_language(variable: str) -> None:
    shown = uploader("run", "--help", **{variable: "zh_TW.UTF-8"})

    assert "同時上傳的檔案數。" in shown.stdout, shown.stdout


def test_the_c_locale_and_english_are_what_they_always_were() -> None:
    plain = uploader("--help")
    c_locale = uploader("--help", LC_ALL="C")
    english = uploader("--help", LANG="en_US.UTF-8")

    assert plain.stdout.startswith("Usage: uploader")
    assert "Upload a folder of files into a MaiAgent knowledge base" in plain.stdout
    assert c_locale.stdout == plain.stdout == english.stdout


def test_lang_chooses_over_the_environment() -> None:
    shown = uploader("--lang", "zh-TW", "enqueue", "--help", LANG="en_US.UTF-8")
    back = uploader("--lang", "en", "enqueue", "--help", LANG="zh_TW.UTF-8")

    assert "掃描 DIRECTORY" in shown.stdout, shown.stdout
    assert back.stdout.startswith("Usage:") and "Scan DIRECTORY" in back.stdout


def test_an_unknown_language_is_one_line(tmp_path: Path) -> None:
    result = invoke(tmp_path / "q.db", "--lang", "klingon", "status")

    assert result.exit_code == 2
    assert "--lang klingon: not a language of uploader (en, zh-TW)" in one_line_error(result)


def test_lang_does_not_outlive_its_command(tmp_path: Path) -> None:
    """The click objects and the environment are shared by every invocation in a process."""
    invoke(tmp_path / "q.db", "--lang", "zh-TW", "status")

    assert os.environ.get("LANGUAGE") == "en"
    assert cli.commands["run"].help is not None and cli.commands["run"].help.startswith("Upload")


def test_a_missing_key_error_is_in_chinese(tmp_path: Path) -> None:
    shown = uploader("--db", str(tmp_path / "q.db"), "run", LANG="zh_TW.UTF-8")

    assert shown.returncode == 2
    lines = shown.stderr.splitlines()
    assert len(lines) == 1, shown.stderr
    assert lines[0].startswith("錯誤：run 需要 API 金鑰：請設定 MAIAGENT_API_KEY"), lines[0]


def test_a_run_summary_progress_and_status_are_in_chinese(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    folder = make_tree(tmp_path / "合約", {"租賃合約.txt": 10, "採購合約.txt": 20})
    db = tmp_path / "q.db"
    invoke(db, "enqueue", str(folder), "--kb", "kb-test")

    shown = subprocess.run(
        [*UPLOADER, "--db", str(db), *run_args(maiagent)[1:]],
        env={
            **{k: v for k, v in os.environ.items() if k not in LOCALE_ENV},
            "MAIAGENT_API_KEY": "test-key",
            "LANG": "zh_TW.UTF-8",
            "PYTHONIOENCODING": "utf-8",
        },
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
        check=False,
    )

    assert shown.returncode == 0, shown.stderr
    assert "進度：2/2 (100.0%) | 成功：2 | 失敗：0 |" in shown.stdout, shown.stdout
    assert "已上傳 2，失敗 0，略過 0" in shown.stdout, shown.stdout
    (log,) = (tmp_path / "logs").iterdir()
    assert "run ended: uploaded 2, failed 0, skipped 0" in log.read_text(encoding="utf-8")

    status = uploader("--db", str(db), "status", LANG="zh_TW.UTF-8")
    assert "知識庫 kb-test：2 個檔案" in status.stdout, status.stdout
    assert "  完成" in status.stdout and "  待處理" in status.stdout
    assert "上一次執行 #1：" in status.stdout and "結束代碼 0：已上傳 2，失敗 0" in status.stdout


def test_json_keeps_chinese_as_text(tmp_path: Path, maiagent: MaiAgentServer) -> None:
    """A Taiwanese operator reading `--json` sees 合約, not \\u5408\\u7d04."""
    folder = make_tree(tmp_path / "合約", {"租賃合約.txt": 10})
    db = tmp_path / "q.db"
    invoke(db, "enqueue", str(folder), "--kb", "kb-test")
    (folder / "租賃合約.txt").unlink()

    result = invoke(db, *run_args(maiagent)[1:], "--json")

    assert "租賃合約.txt" in result.stdout and "\\u" not in result.stdout, result.stdout
    assert json.loads(result.stdout)["first_failed"][0]["path"].endswith("租賃合約.txt")


@pytest.mark.parametrize("lang", [lang for lang in messages.LANGS])
def test_every_message_has_a_translation_with_the_same_placeholders(lang: str) -> None:
    catalogue = messages.read(lang)
    untranslated, mismatched = [], []
    for key, message in messages.messages().items():
        entry = catalogue.get(key)
        strings = () if entry is None else entry.string
        strings = (strings,) if isinstance(strings, str) else strings
        if not strings or not all(strings):
            untranslated.append(key)
            continue
        source = message if isinstance(message, tuple) else (message,)
        allowed = {p for text in source for p in messages.placeholders(text)}
        for text in strings:
            found = messages.placeholders(text)
            exact = isinstance(message, str) and found != messages.placeholders(message)
            if exact or not set(found) <= allowed:
                mismatched.append((key, text))

    assert untranslated == [], f"run `make messages` and translate: {untranslated[:10]}"
    assert mismatched == []


@pytest.mark.parametrize("lang", [lang for lang in messages.LANGS])
def test_the_compiled_catalogue_is_the_one_written(lang: str) -> None:
    written = messages.catalogue_path(lang).with_suffix(".mo").read_bytes()

    assert written == messages.compiled(messages.read(lang)), "run `make messages`"


def test_every_message_a_user_reads_is_wrapped_for_translation() -> None:
    """An error, warning or printed line with English words outside `_()` would stay English
    under zh_TW: write `_("cannot read {path}: {why}").format(path=..., why=...)` (named
    placeholders, so a translation may reorder them), run `make messages` and translate it in
    uploader/locale/zh_TW/LC_MESSAGES/uploader.po. Log lines stay English (not checked)."""
    left = messages.unwrapped()

    assert left == [], "\n".join(left)


def test_log_lines_are_written_in_english() -> None:
    """The run's log is read by operators and support, who grep it across machines: its own
    words never go through `_()` (an error it quotes reads as the user saw it)."""
    assert messages.translated_logs() == []


ZH = {"LANGUAGE": "zh_TW"}


def test_an_error_the_library_raises_is_in_chinese(tmp_path: Path) -> None:
    """Translated where it is raised (the scan's pattern check), shown as click shows it."""
    folder = make_tree(tmp_path / "docs", {"a.txt": 1})

    result = invoke(
        tmp_path / "q.db", "enqueue", str(folder), "--kb", "kb", "--include", "", env=ZH
    )

    assert result.exit_code == 2
    assert result.stderr.splitlines() == ["錯誤：--include ''：空的樣式比對不到任何檔案"]


def test_a_refused_key_is_in_chinese(tmp_path: Path, maiagent: MaiAgentServer) -> None:
    result = invoke(
        tmp_path / "q.db", "kbs", *service(maiagent), env={**ZH, "MAIAGENT_API_KEY": "no"}
    )

    assert result.exit_code == 3
    assert result.stderr.strip().splitlines() == ["錯誤：API 金鑰被拒（HTTP 401）：Invalid API key"]


def test_kbs_lines_up_chinese_names(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """A Chinese character takes two columns: the file counts stay in one column."""
    server = maiagent_factory(kbs={"kb-a": "合約知識庫", "kb-b": "Contracts"})

    result = invoke(tmp_path / "q.db", "kbs", *service(server), env=ZH)

    assert result.exit_code == 0, result.output
    head, *rows = result.stdout.splitlines()
    assert head.split() == ["ID", "名稱", "檔案數"]
    widths = {sum(2 if "\u4e00" <= c <= "\u9fff" else 1 for c in line) for line in (head, *rows)}
    assert len(widths) == 1, result.stdout


def test_enqueue_says_what_it_queued_in_chinese(tmp_path: Path) -> None:
    folder = make_tree(tmp_path / "合約", {"租賃合約.txt": 10})

    enqueued = invoke(tmp_path / "q.db", "enqueue", str(folder), "--kb", "kb-test", env=ZH)

    assert enqueued.exit_code == 0, enqueued.output
    assert enqueued.stdout.startswith("已掃描 1：新增 1，變更 0，未變更 0，略過 0"), enqueued.stdout


def test_every_json_keeps_chinese_as_text(tmp_path: Path) -> None:
    """enqueue --json, status --json and the report: 合約, not \\u5408\\u7d04; keys English."""
    folder = make_tree(tmp_path / "合約", {"租賃合約.txt": 10, "掃描圖.png": 5})
    db = tmp_path / "q.db"

    shown = [
        invoke(db, "enqueue", str(folder), "--kb", "知識庫", "--json", env=ZH).stdout,
        invoke(db, "status", "--json", env=ZH).stdout,
        invoke(db, "status", "--skipped", "--json", env=ZH).stdout,
        invoke(db, "export-report", "-o", "-", env=ZH).stdout,
    ]

    for text in shown:
        assert "\\u" not in text and "知識庫" in text, text
        assert _keys(json.loads(text)) <= {"知識庫"}, text  # a knowledge base's id may key


def _keys(value: object) -> set[str]:
    """The keys of a JSON value that are not ASCII."""
    if isinstance(value, dict):
        inner = set().union(*(_keys(v) for v in value.values()))
        return inner | {key for key in value if not key.isascii()}
    if isinstance(value, list):
        return set().union(*(_keys(v) for v in value))
    return set()
