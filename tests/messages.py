"""The message catalogues: `make messages` (`python -m tests.messages`) reads every message off
the code and the real command tree, keeps the translations the catalogues already hold, and
compiles them; `tests/test_i18n.py` fails while one lacks a translation.

`unwrapped()` finds what a user would read untranslated: a string literal with words in what
is printed (`echo`, `secho`, a notice callback) or put into an exception, outside `_()` (an
f-string there is the same defect: write `_("... {name} ...").format(name=...)`).

Messages come from three places: `_()`/`ngettext()` calls in `uploader/` (babel's extractor),
the help of every command and option (read off the click tree, as `i18n.help_text` looks them
up), and the words click itself shows a user (`Usage:`, `Options`, its errors), which it
translates through the same catalogue.
"""

from __future__ import annotations

import ast
import io
import re
from collections.abc import Iterator
from pathlib import Path

import click
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po

from uploader import i18n
from uploader.cli import cli

ROOT = Path(__file__).resolve().parent.parent
KEYWORDS = {"_": None, "N_": None, "ngettext": (1, 2)}
LANGS = [lang for lang in i18n.LANGUAGES if lang != "en"]  # the catalogues kept
Message = str | tuple[str, str]

# What click shows a user of `uploader` (its programming errors are left in English).
CLICK_SHOWN = {
    "%(prog)s, version %(version)s",
    "Aborted!",
    "Choose from:\n\t{choices}",
    "Commands",
    "Did you mean {possibility}?",
    "Error: {message}",
    "Got unexpected extra argument ({args})",
    "Invalid value for {param_hint}: {message}",
    "Invalid value: {message}",
    "Missing argument",
    "Missing command.",
    "Missing option",
    "Missing parameter",
    "Missing parameter: {param_name}",
    "No such command {name!r}.",
    "No such option {name!r}.",
    "Option {name!r} does not take a value.",
    "Option {name!r} requires an argument.",
    "Options",
    "Positional arguments",
    "Show the version and exit.",
    "Show this message and exit.",
    "Try '{command} {option}' for help.",
    "Usage:",
    "default: {default}",
    "env var: {var}",
    "{name} {filename!r} does not exist.",
    "{name} {filename!r} is a directory.",
    "{name} {filename!r} is a file.",
    "{name} {filename!r} is not readable.",
    "{name} {filename!r} is not writable.",
    "{value!r} is not a valid boolean. Recognized values: {states}",
    "{value!r} is not a valid {number_type}.",
    "{value!r} is not {choice}.",
    "{value} is not in the range {range}.",
    "directory",
    "file",
    "path",
}


# click's words it translates from a variable (`_(extra["required"])`): no extractor sees them.
CLICK_BY_NAME = ("required",)


def _extracted(folder: Path, keep: set[str] | None = None) -> Iterator[Message]:
    for _file, _line, message, _comments, _context in extract_from_dir(
        str(folder), method_map=[("**.py", "python")], keywords=KEYWORDS
    ):
        first = message[0] if isinstance(message, tuple) else message
        if keep is None or first in keep:
            yield message


def messages() -> dict[str, Message]:
    """Every message the catalogues must translate, by its msgid (the singular form)."""
    found: dict[str, Message] = {}
    for message in (
        *_extracted(ROOT / "uploader"),
        *i18n.help_messages(cli),
        *_extracted(Path(click.__file__).parent, CLICK_SHOWN),
        *CLICK_BY_NAME,
    ):
        found.setdefault(message[0] if isinstance(message, tuple) else message, message)
    return found


HEADER = (
    "# uploader's messages, translated. `make messages` keeps this file in step with the code;\n"
    "# write the translations here, then run it again to compile them."
)
PLACEHOLDER = re.compile(r"\{[^{}]*\}|%\(\w+\)[sd]")


def placeholders(text: str) -> list[str]:
    return sorted(PLACEHOLDER.findall(text))


def catalogue_path(lang: str) -> Path:
    return i18n.LOCALEDIR / lang / "LC_MESSAGES" / f"{i18n.DOMAIN}.po"


def read(lang: str) -> Catalog:
    path = catalogue_path(lang)
    if not path.exists():
        return Catalog(locale=lang, domain=i18n.DOMAIN, project="uploader")
    with path.open("rb") as f:
        return read_po(f, locale=lang, domain=i18n.DOMAIN)


def compiled(catalog: Catalog) -> bytes:
    out = io.BytesIO()
    write_mo(out, catalog)
    return out.getvalue()


def update(lang: str) -> tuple[int, int]:
    """The catalogue of `lang` made to hold exactly today's messages; returns how many
    there are and how many lack a translation."""
    old = read(lang)
    new = Catalog(
        locale=lang,
        domain=i18n.DOMAIN,
        project="uploader",
        header_comment=HEADER,
        creation_date=old.creation_date,
        revision_date=old.creation_date,
        fuzzy=False,
    )
    missing = 0
    for key, message in sorted(messages().items()):
        kept = old.get(key)
        string: str | tuple[str, ...] = kept.string if kept is not None else ""
        if isinstance(message, tuple) and not isinstance(string, tuple):
            string = (string,)
        new.add(message, string)
        if not (string if isinstance(string, str) else all(string)):
            missing += 1
    path = catalogue_path(lang)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        write_po(f, new, width=100, omit_header=False, sort_output=True)
    path.with_suffix(".mo").write_bytes(compiled(new))
    return len(new), missing


# Calls whose first argument a user reads: printed, or a callback that prints it.
PRINTERS = {"echo", "secho", "print", "notice", "notify", "on_broken", "_lines", "fail"}
PRINTERS |= {"set_postfix_str", "set_description"}  # a progress bar's words
BAR_WORDS = ("desc", "unit")  # a tqdm bar's keywords that a user reads
# The client's error makers, by the position of the message they take.
MAKERS = {"_error": 0, "_bad_response": 1, "_changed": 1, "_file_error": 2, "_log_broken": 0}
# Exceptions that are programming or packaging errors, never a user's message; a raise of
# another one with a comment saying "not shown" on its line or the line above is one too.
INTERNAL = {"AssertionError", "NotImplementedError", "TypeError", "KeyError", "SeriesError"}
NOT_SHOWN = re.compile(r"#.*\bnot shown\b")  # "# a programming error, not shown"
# Calls whose result shows their arguments' text (formatted, escaped, joined).
PASS_THROUGH = {
    "format",
    "join",
    "str",
    "printable",
    "redact",
    "escape",
    "strip",
    "rstrip",
    "lstrip",
}
WRAPPERS = {"_", "N_", "ngettext"}
# The local MaiAgent-compatible server (tests, demo, bench): its words are the service's, and
# the service answers in English.
SERVICE = "localserver"
WORDS = re.compile(r"[A-Za-z]{2,}")


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _exception_classes(trees: list[ast.Module]) -> set[str]:
    """click's user errors and every class of `uploader/` that derives from an exception."""
    known = {"ClickException", "BadParameter", "UsageError", "Abort"}
    bases = {
        node.name: [_name(base) or "" for base in node.bases]
        for tree in trees
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
    }
    while True:
        more = {
            name
            for name, of in bases.items()
            if name not in known
            and any(b in known or b.endswith(("Error", "Exception")) for b in of)
        }
        if not more:
            return known
        known |= more


def _assignments(function: ast.AST) -> dict[str, list[ast.expr]]:
    found: dict[str, list[ast.expr]] = {}
    for node in ast.walk(function):
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and node.value:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    found.setdefault(target.id, []).append(node.value)
    return found


# A placeholder's value that is one word, such as an option's value (`relpath`) or a field's
# name (`'path'`): a name of the program, not a word to translate.
A_VALUE = re.compile(r"'?[\w.-]+'?")
# ... or a command line to type (`uploader --db q.db run --kb kb1`, ` --kb kb1`).
A_COMMAND = re.compile(r"\s*(uploader\b|--)")


Function = ast.FunctionDef | ast.AsyncFunctionDef


class _Walk:
    """Follows a message's expression through formatting, concatenation, the variables of its
    function and the returns of `uploader/`'s own functions that build it."""

    def __init__(self, functions: dict[str, Function]) -> None:
        self.functions = functions
        self.followed: set[str] = set()
        self.in_value = 0  # inside a .format() argument

    def literals(self, node: ast.AST, assigned: dict[str, list[ast.expr]]) -> Iterator[ast.AST]:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, str) and self._words(node.value):
                yield node
        elif isinstance(node, ast.JoinedStr):
            first = node.values[0] if node.values else None
            if self.in_value and isinstance(first, ast.Constant) and A_COMMAND.match(first.value):
                return
            if any(isinstance(v, ast.Constant) and self._words(str(v.value)) for v in node.values):
                yield node
            for value in node.values:
                if isinstance(value, ast.FormattedValue):
                    yield from self.literals(value.value, assigned)
        elif isinstance(node, ast.BinOp):
            yield from self.literals(node.left, assigned)
            yield from self.literals(node.right, assigned)
        elif isinstance(node, ast.IfExp):
            yield from self.literals(node.body, assigned)
            yield from self.literals(node.orelse, assigned)
        elif isinstance(node, ast.BoolOp):
            for value in node.values:
                yield from self.literals(value, assigned)
        elif isinstance(node, ast.Call):
            yield from self._call(node, assigned)
        elif isinstance(node, ast.Name) and node.id in assigned:
            values = assigned.pop(node.id)
            for value in values:
                yield from self.literals(value, assigned)

    def _words(self, text: str) -> bool:
        value = A_VALUE.fullmatch(text) or A_COMMAND.match(text)
        return bool(WORDS.search(text)) and not (self.in_value and value)

    def _call(self, node: ast.Call, assigned: dict[str, list[ast.expr]]) -> Iterator[ast.AST]:
        name = _name(node.func)
        if name in WRAPPERS:
            return
        if name in PASS_THROUGH:
            if isinstance(node.func, ast.Attribute) and name != "join":
                yield from self.literals(node.func.value, assigned)
            self.in_value += name == "format"
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                yield from self.literals(arg, assigned)
            self.in_value -= name == "format"
        elif name in self.functions and name not in self.followed:
            self.followed.add(name)
            function = self.functions[name]
            own = _assignments(function)
            for inner in ast.walk(function):
                if isinstance(inner, ast.Return) and inner.value is not None:
                    yield from self.literals(inner.value, own)


def _shown(name: str, raised: set[str]) -> bool:
    """A call whose first argument a user may read: a printer, or an exception's message."""
    exception = name in raised or name.endswith(("Error", "Exception"))
    return name in PRINTERS or name in MAKERS or (exception and name not in INTERNAL)


def unwrapped(folder: Path = ROOT / "uploader") -> list[str]:
    """`file:line: text` of every message shown untranslated."""
    files = sorted(p for p in folder.rglob("*.py") if not p.is_relative_to(folder / SERVICE))
    sources = [path.read_text(encoding="utf-8") for path in files]
    trees = [ast.parse(source, str(path)) for path, source in zip(files, sources, strict=True)]
    raised = _exception_classes(trees)
    found = []
    for path, source, tree in zip(files, sources, trees, strict=True):
        every = [node for node in ast.walk(tree) if isinstance(node, Function.__args__)]
        functions = {node.name: node for node in every}
        lines = source.splitlines()
        for function in every:
            calls = [
                node
                for node in ast.walk(function)
                if isinstance(node, ast.Call)
                and (
                    _shown(_name(node.func) or "", raised)
                    or any(k.arg in BAR_WORDS for k in node.keywords)
                )
                and not NOT_SHOWN.search("\n".join(lines[max(node.lineno - 2, 0) : node.lineno]))
            ]
            for call in calls:
                walk = _Walk(functions)
                at = MAKERS.get(_name(call.func) or "", 0)
                shown = [
                    *call.args[at : at + 1],
                    *(k.value for k in call.keywords if k.arg in ("message", "why")),
                ]
                shown += [k.value for k in call.keywords if k.arg in BAR_WORDS]
                for arg in shown:
                    for literal in walk.literals(arg, _assignments(function)):
                        text = " ".join((ast.get_source_segment(source, literal) or "").split())
                        found.append(f"{path.relative_to(ROOT)}:{literal.lineno}: {text[:80]}")
    return sorted(set(found))


LOGGERS = re.compile(r"(\w+_)?log(ger)?")
LOG_CALLS = {"debug", "info", "warning", "error", "exception", "critical", "log"}


def translated_logs(folder: Path = ROOT / "uploader") -> list[str]:
    """`file:line` of every log call given a message through `_()`: log lines stay English."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LOG_CALLS
                and LOGGERS.fullmatch(_name(node.func.value) or "")
            ):
                continue
            inner = [n for arg in node.args for n in ast.walk(arg) if isinstance(n, ast.Call)]
            if any(_name(call.func) in WRAPPERS for call in inner):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


if __name__ == "__main__":
    for lang in LANGS:
        total, missing = update(lang)
        print(f"{catalogue_path(lang).relative_to(ROOT)}: {total} messages, {missing} missing")
    left = unwrapped()
    if left:
        print(f"{len(left)} messages shown untranslated (wrap them in _()):", *left, sep="\n  ")
