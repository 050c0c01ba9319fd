"""`uploader kbs`: the knowledge bases the key can see, so a user finds the id for --kb."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import invoke, service
from uploader.localserver import DIALECTS, MaiAgentServer

pytestmark = pytest.mark.parametrize("dialect", DIALECTS, indirect=True)


def test_kbs_lists_id_name_and_file_count(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(kbs={"kb-a": "Alpha", "3f2c-long-id": "Contracts 契約"})
    server.add_entry("kb-a", "one.txt", 1)
    server.add_entry("kb-a", "two.txt", 2)
    result = invoke(tmp_path / "q.db", "kbs", *service(server))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "FILES"]
    assert lines[1].split() == ["kb-a", "Alpha", "2"]
    assert lines[2].split() == ["3f2c-long-id", "Contracts", "契約", "0"]
    assert not (tmp_path / "q.db").exists()  # kbs needs no database


def test_kbs_json_follows_every_page(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    names = {f"kb-{i:02d}": f"Base {i}" for i in range(25)}  # more than one page of 10 or 20
    server = maiagent_factory(kbs=names)
    result = invoke(tmp_path / "q.db", "kbs", "--json", *service(server))
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert [(k["id"], k["name"], k["files_count"]) for k in shown] == [
        (kb, name, 0) for kb, name in names.items()
    ]


def test_kbs_with_a_wrong_key_exits_3_in_one_line(tmp_path: Path, maiagent: MaiAgentServer) -> None:
    result = invoke(tmp_path / "q.db", "kbs", *service(maiagent), env={"MAIAGENT_API_KEY": "no"})
    assert result.exit_code == 3
    assert result.stderr.strip().splitlines() == [
        "Error: API key rejected (HTTP 401): Invalid API key"
    ]


def test_kbs_with_none_visible(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    server = maiagent_factory(kbs=[])
    result = invoke(tmp_path / "q.db", "kbs", *service(server))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "no knowledge base is visible to this API key"
