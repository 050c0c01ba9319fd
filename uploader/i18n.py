"""Messages in the user's language: MaiAgent's users read Traditional Chinese first.

The catalogues are GNU gettext's (`uploader/locale/<lang>/LC_MESSAGES/uploader.po`, compiled to
`.mo` by `make messages`); English is the source language, so a message without a translation,
and every message under `C` or `en`, stays as written.

Which language: `--lang`, else the first of `LANGUAGE`, `LC_ALL`, `LC_MESSAGES`, `LANG` that is
set (gettext's own order); on Windows, where none is usually set, the user's display language.

The catalogue is also made gettext's default domain, because click translates its own words
(`Usage:`, `Options:`, `Error:`, "No such option") through `gettext.gettext`: one catalogue
then serves both.

In code: `_("text {name}").format(name=...)` for a message built at run time (placeholders
by name, so a translation may reorder them); help texts of commands and options are written
plain and translated when help is shown (`translated_help`), their catalogue entries being
read off the real command tree.
"""

from __future__ import annotations

import contextlib
import gettext
import inspect
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import click

DOMAIN = "uploader"
LOCALEDIR = Path(__file__).parent / "locale"
LANGUAGES = ("en", "zh_TW")
ENVIRONMENT = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")


def _(message: str) -> str:
    return gettext.dgettext(DOMAIN, message)


def N_(message: str) -> str:
    """Marks a message kept in a table, translated where it is shown (`_(text)`)."""
    return message


def ngettext(singular: str, plural: str, n: int) -> str:
    return gettext.dngettext(DOMAIN, singular, plural, n)


def normalise(lang: str) -> str:
    """`zh-TW`, `zh_tw` and `zh_TW.UTF-8` are one language to the user; gettext wants
    `zh_TW`."""
    base = lang.strip().split(".", 1)[0].replace("-", "_")
    language, _sep, region = base.partition("_")
    return f"{language.lower()}_{region.upper()}" if region else language.lower()


def known(lang: str) -> bool:
    """English in any region (the source language), `C`, or a language with a catalogue."""
    chosen = normalise(lang)
    return chosen in LANGUAGES or chosen.partition("_")[0] in ("en", "c")


def use(lang: str) -> None:
    """Choose the language for this process (`--lang`): gettext reads `LANGUAGE` first."""
    os.environ["LANGUAGE"] = normalise(lang)


@contextlib.contextmanager
def in_english() -> Iterator[None]:
    """Messages built inside are the source's English: for a log line made of what the user
    was shown (a run's summary), since the log is read by operators and support, who grep it
    across machines. Nothing awaits inside, so no other task sees the switch."""
    chosen = os.environ.get("LANGUAGE")
    os.environ["LANGUAGE"] = "en"
    try:
        yield
    finally:
        if chosen is None:
            os.environ.pop("LANGUAGE", None)
        else:
            os.environ["LANGUAGE"] = chosen


def _windows_display_language() -> str | None:
    if sys.platform != "win32":
        return None
    import ctypes
    import locale

    return locale.windows_locale.get(ctypes.windll.kernel32.GetUserDefaultUILanguage())


def _install() -> None:
    gettext.bindtextdomain(DOMAIN, str(LOCALEDIR))
    gettext.textdomain(DOMAIN)
    if not any(os.environ.get(name) for name in ENVIRONMENT):
        shown = _windows_display_language()
        if shown:
            os.environ["LANGUAGE"] = shown


def help_text(text: str | None) -> str | None:
    """A command's or an option's help in the user's language (its msgid is the text as
    `inspect.cleandoc` leaves it)."""
    return None if text is None else _(inspect.cleandoc(text))


@contextlib.contextmanager
def translated_help(command: click.Command) -> Iterator[None]:
    """For the time help is drawn, the command's, its options' and its subcommands' help in
    the user's language; the command objects are shared by every invocation, so the English
    is put back after."""
    saved: list[tuple[object, str, str | None]] = []

    def swap(owner: object, attribute: str) -> None:
        text = getattr(owner, attribute, None)
        if text:
            saved.append((owner, attribute, text))
            setattr(owner, attribute, help_text(text))

    swap(command, "help")
    swap(command, "short_help")
    for param in command.params:
        swap(param, "help")
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            swap(sub, "help")
            swap(sub, "short_help")
    try:
        yield
    finally:
        for owner, attribute, text in reversed(saved):
            setattr(owner, attribute, text)


class TranslatedCommand(click.Command):
    """A command whose `--help` is drawn in the user's language."""

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with translated_help(self):
            super().format_help(ctx, formatter)


def help_messages(command: click.Command) -> Iterator[str]:
    """Every help text of the command tree, as `help_text` looks them up: what the catalogue
    must hold beside the `_()` calls of the code."""
    for text in (command.help, command.short_help):
        if text:
            yield inspect.cleandoc(text)
    for param in command.params:
        text = getattr(param, "help", None)
        if text:
            yield inspect.cleandoc(text)
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            yield from help_messages(sub)


_install()
