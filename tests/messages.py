"""The message catalogues: `make messages` (`python -m tests.messages`) reads every message off
the code and the real command tree, keeps the translations the catalogues already hold, and
compiles them; `tests/test_i18n.py` fails while one lacks a translation.

Messages come from three places: `_()`/`ngettext()` calls in `uploader/` (babel's extractor),
the help of every command and option (read off the click tree, as `i18n.help_text` looks them
up), and the words click itself shows a user (`Usage:`, `Options`, its errors), which it
translates through the same catalogue.
"""

from __future__ import annotations

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


if __name__ == "__main__":
    for lang in LANGS:
        total, missing = update(lang)
        print(f"{catalogue_path(lang).relative_to(ROOT)}: {total} messages, {missing} missing")
