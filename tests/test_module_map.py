"""The map of the code stays true (issue 22): docs/contributing.md's layout lists every module of
uploader/ (read off the real files, as test_docs.py reads the real commands), and what the map,
the pages and the docstrings name (`scan.enqueue`, `Queue.claim`, `uploader/store/runs.py`,
`tests.bench.pg_micro`) exists: a module or function renamed or removed fails here instead of
leaving a newcomer a reference to nothing."""

from __future__ import annotations

import ast
import functools
import importlib
import re
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "uploader"
MODULES = sorted(str(p.relative_to(ROOT).as_posix()) for p in PACKAGE.rglob("*.py"))
CONTRIBUTING = (ROOT / "docs" / "contributing.md").read_text()
LAYOUT = CONTRIBUTING[CONTRIBUTING.index("## Layout") :].split("\n## ")[0]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# `name.attr` or `Name.attr.more`, in backticks, maybe called: `scan.enqueue`, `Queue.claim()`
DOTTED = re.compile(r"`([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)(?:\(\))?`")
# a file of the project named by its path: uploader/store/runs.py, attempt.py, docs/install.md
PATH = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.(?:py|md))\b")
# the script our users come from (docs/migrating.md), theirs and not in this project
REFERENCE_SCRIPT = "batch_upload_advanced.py"
# `uploader.exe`, `uploader.db`: file names, not dotted names
FILE_SUFFIXES = {"db", "exe", "json", "md", "py", "spec", "sql", "toml", "txt", "whl"}


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


@functools.cache
def _owners() -> dict[str, list[str]]:
    """Short names (`scan`, `listing`) and class names (`Queue`, `RunsStore`) to the modules
    that define them."""
    owners: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        owners.setdefault(name.rsplit(".", 1)[-1], []).append(name)
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                owners.setdefault(node.name, []).append(f"{name}.{node.name}")
    return owners


def _resolves(ref: str) -> bool:
    """Whether a dotted reference names something real; one not starting with an uploader
    module or class (a library's `asyncio.to_thread`, an option's `server.faults`) is not ours
    to check, so it passes."""
    head, *rest = ref.split(".")
    if rest[-1] in FILE_SUFFIXES:
        return True
    if head == "uploader":
        return _attribute_path_exists(ref)
    if head == "tests":
        return (ROOT / Path(*ref.split("."))).with_suffix(".py").is_file()
    starts = _owners().get(head)
    if starts is None:
        return True
    return any(_attribute_path_exists(".".join([start, *rest])) for start in starts)


def _attribute_path_exists(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            found = getattr(obj, attr, None)
            if found is None and attr not in getattr(obj, "__annotations__", {}):
                return _set_in_init(obj, attr)
            obj = found
        return True
    return False


def _set_in_init(cls: Any, attr: str) -> bool:
    """An instance attribute (`Pool.writer`) is set in the class's source, not on the class."""
    try:
        source = Path(importlib.import_module(cls.__module__).__file__ or "").read_text()
    except (AttributeError, ImportError, OSError):
        return False
    return re.search(rf"self\.{attr}\b\s*[:=]", source) is not None


def _path_exists(ref: str, near: Path) -> bool:
    if ref == REFERENCE_SCRIPT:
        return True
    folders = [near.parent, ROOT, PACKAGE, ROOT / "tests", ROOT / "packaging"]
    folders += [p for p in PACKAGE.iterdir() if p.is_dir()]
    return any((folder / ref).is_file() for folder in folders)


@pytest.mark.parametrize("module", MODULES)
def test_every_module_is_on_the_map(module: str) -> None:
    row = re.search(rf"^\| `{re.escape(module)}` \| \d+ \| \S.* \|$", LAYOUT, re.M)

    assert row, f"{module}: add a row `| `{module}` | LINES | its concern |` to the Layout"


def test_every_module_on_the_map_exists() -> None:
    listed = re.findall(r"^\| `(uploader/[^`]+)` \|", LAYOUT, re.M)

    assert listed
    assert sorted(set(listed) - set(MODULES)) == []
    assert len(listed) == len(set(listed))


def test_the_map_traces_one_file_from_enqueue_to_the_report() -> None:
    trace = LAYOUT[LAYOUT.index("### One file's way") :]

    for step in ("cli.enqueue", "Queue.enqueue_batch", "Queue.claim", "MaiAgentClient.presign"):
        assert f"`{step}`" in trace, step
    assert "report.export" in trace


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_what_the_pages_name_exists(page: Path) -> None:
    text = page.read_text()
    named = set(DOTTED.findall(text)) | set(re.findall(r"`(uploader/[\w/]+\.py)`", text))

    missing = [ref for ref in sorted(named) if not _named_exists(ref, page)]
    assert missing == []


@pytest.mark.parametrize("module", MODULES)
def test_what_the_docstrings_name_exists(module: str) -> None:
    path = ROOT / module
    text = path.read_text()
    named = set(DOTTED.findall(text)) | set(PATH.findall(text))

    missing = [ref for ref in sorted(named) if not _named_exists(ref, path)]
    assert missing == []


def _named_exists(ref: str, near: Path) -> bool:
    if ref.endswith((".py", ".md")):
        return _path_exists(ref, near)
    return _resolves(ref)
