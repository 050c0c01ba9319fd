"""`run --name folders` (issue 23): files of different folders share a basename (twenty
`文件0000.txt`), and `--name relpath` holds a `/`, which MaiAgent refuses; the folders joined by a
separator it takes keep the names apart (`合約 › 二〇二四 › 租賃合約.pdf`)."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import FAST, KB, enqueue, invoke, make_tree, service
from uploader.localserver import MaiAgentServer

TREE = {"合約/二〇二四/租賃合約.pdf": 10, "合約/二〇二三/租賃合約.pdf": 11, "說明.txt": 12}


def _names(tmp_path: Path, server: MaiAgentServer, *args: str) -> list[str]:
    data = make_tree(tmp_path / "data", TREE)
    db = tmp_path / "queue.db"
    enqueue(db, data)
    ran = invoke(db, "run", *service(server), *FAST, *args)
    assert ran.exit_code == 0, ran.output
    return sorted(e["filename"] for e in server.entries(KB))


def test_folders_keep_the_path_without_a_slash(tmp_path: Path, maiagent: MaiAgentServer) -> None:
    assert _names(tmp_path, maiagent, "--name", "folders") == [
        "合約 › 二〇二三 › 租賃合約.pdf",
        "合約 › 二〇二四 › 租賃合約.pdf",
        "說明.txt",
    ]


def test_the_separator_is_chosen(tmp_path: Path, maiagent: MaiAgentServer) -> None:
    names = _names(tmp_path, maiagent, "--name", "folders", "--name-separator", " - ")
    assert names[0] == "合約 - 二〇二三 - 租賃合約.pdf"


def test_a_separator_the_service_refuses_is_bad_input(tmp_path: Path) -> None:
    for bad in ("/", " / ", "", "\x1b"):
        result = invoke(tmp_path / "q.db", "run", "--name-separator", bad)
        assert result.exit_code == 2, (bad, result.output)
        assert "--name-separator" in result.output
