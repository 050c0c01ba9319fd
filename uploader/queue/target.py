"""What `--db` names: a SQLite file or a PostgreSQL URL, told apart by the URL's scheme, and
how to show it (a URL's password never shown) and where its logs and reports go.

No driver is imported here: the CLI asks these questions of any target.
"""

from __future__ import annotations

import os
import re
import urllib.parse

URL_SCHEMES = ("postgresql://", "postgres://")
HIDDEN = "***"
# `password=` in a URL's query (libpq accepts it there too)
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&#]*")


def is_url(target: str) -> bool:
    return target.startswith(URL_SCHEMES)


def redact(target: str) -> str:
    """The target as it may be printed or logged: a URL's password (in its user part or its
    query) replaced by ***; a path unchanged."""
    if not is_url(target):
        return target
    parts = urllib.parse.urlsplit(target)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:{HIDDEN}@{host}"
    query = _QUERY_PASSWORD.sub(rf"\g<1>{HIDDEN}", "?" + parts.query)[1:] if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def password_of(target: str) -> str | None:
    """The password a URL carries, so that an error message quoting it can be scrubbed."""
    if not is_url(target):
        return None
    parts = urllib.parse.urlsplit(target)
    if parts.password:
        return urllib.parse.unquote(parts.password)
    found = _QUERY_PASSWORD.search("?" + parts.query)
    return urllib.parse.unquote(found.group(0).split("=", 1)[1]) if found else None


def anchor(target: str) -> str:
    """A path whose folder holds the target's logs/ and reports/: the SQLite file itself, or,
    for a database server, a name in the current folder (no file is made there)."""
    if is_url(target):
        return os.path.join(os.getcwd(), "uploader-postgresql")
    return target
