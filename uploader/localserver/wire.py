"""How the server reads requests and writes answers: DRF-style JSON bodies and S3-style XML
errors, and the small parsers every route shares."""

from __future__ import annotations

import functools
import json
import os
import uuid
from collections.abc import Mapping
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web

API_PREFIX = "/api/v1/"

dumps = functools.partial(json.dumps, separators=(",", ":"), ensure_ascii=False)


class S3Error(Exception):
    """Raised anywhere in the S3 POST path; turned into an S3-style XML answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class BadRequest(Exception):
    """A register/update-metadata body the service refuses; the payload is the 400 body."""

    def __init__(self, body: Any) -> None:
        super().__init__(str(body))
        self.body = body


def answer(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        text=dumps(data), status=status, content_type="application/json", headers=headers
    )


def detail(status: int, detail: str) -> web.Response:
    return answer({"detail": detail}, status)


def s3_error(status: int, code: str, message: str) -> web.Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>"
    )
    return web.Response(text=body, status=status, content_type="application/xml")


async def read_json(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise web.HTTPBadRequest(
            text=dumps({"detail": "JSON parse error."}), content_type="application/json"
        ) from None


def drop(request: web.Request) -> web.Response:
    """Close the connection so the client sees a disconnection and no answer.

    aiohttp then fails to write the returned response to the closed transport and treats it as
    a premature client disconnection, which it ignores quietly.
    """
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=204)


def csv_set(text: str) -> set[str]:
    return {item.strip() for item in text.split(",") if item.strip()}


def extension(name: str) -> str:
    return os.path.splitext(name)[1].lstrip(".")


def is_uuid(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
