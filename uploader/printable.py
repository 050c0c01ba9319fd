"""Text from outside (file names, a service's answers, a copied database's rows) shown to the
operator: its control characters escaped, as `--json` does, so that a name cannot clear the
screen (CSI), set the title or write the clipboard (OSC), move the cursor (CR) or forge a line
of the log (a line break followed by what looks like a log line). In one place: `printable` for
what the CLI prints, `Formatter` for every log line (the run's file and stderr)."""

from __future__ import annotations

import logging
import re

# C0 and C1 controls and DEL; the line and paragraph separators; the bidi embeddings, overrides
# and isolates, which reorder what follows them on the line.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(found: re.Match[str]) -> str:
    char = found.group()
    code = ord(char)
    return _SHORT.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(text: str) -> str:
    """`text` with every control character written as its escape (`\\x1b`, `\\n`): one line
    whatever it holds, every other character (any script, emoji) as it is."""
    return _UNSAFE.sub(_escape, text)


class Formatter(logging.Formatter):
    """A log line whose message, however its arguments were made, is one printable line; a
    traceback keeps its line breaks and loses every other control character."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802
        shown = logging.makeLogRecord(record.__dict__)
        shown.message = printable(record.message)
        return super().formatMessage(shown)

    def formatException(self, ei: logging._SysExcInfoType) -> str:  # noqa: N802
        return "\n".join(printable(line) for line in super().formatException(ei).split("\n"))
