"""The S3 upload's multipart form: a small file's form joined as bytes at once, a larger file
streamed from disk at the length it had when opened, hashed as it is read. Apart from the
client, which imports it at its first upload: aiohttp, which this module needs at import, takes
a sixth of a second to import, which every command that never uploads (`status`, `enqueue`,
`export-report`) would pay at its start."""

from __future__ import annotations

import asyncio
import functools
import io
import uuid
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import content_disposition_header

from . import osfiles
from .bandwidth import SLICE, Bandwidth, Progress
from .content import new_digest

_CHUNK = 256 * 1024  # large chunks: fewer executor hops per streamed file


class Shrank(OSError):
    """The file ended before the length the request declared."""


class FilePart(aiohttp.Payload):
    """A file streamed from disk whose length is fixed when it is opened.

    aiohttp computes Content-Length from `size` before sending (S3 refuses chunked POSTs);
    sending exactly that many bytes keeps the request well-formed even if the file grows
    meanwhile, and a file that shrinks fails the request instead of stalling it.
    """

    def __init__(
        self, file: io.FileIO, size: int, progress: Progress, bandwidth: Bandwidth | None
    ) -> None:
        super().__init__(file, content_type="application/octet-stream")
        self._size = size
        self._length = size  # _size, typed as never None
        self._progress = progress
        self._bandwidth = bandwidth
        self.content_hash: str | None = None  # once every byte was written

    async def write(self, writer: AbstractStreamWriter) -> None:
        # pread, not read: when an early answer lets the caller close the file while a read
        # still runs in its thread, that read cannot move the position of whatever file
        # reuses the descriptor number. Each chunk is hashed in the same thread hop, while
        # the previous one is on the wire (the hash is cheap: content.py).
        loop = asyncio.get_running_loop()
        fd, offset = self._value.fileno(), 0
        digest = new_digest()
        self._progress.attach(getattr(writer, "transport", None))
        while offset < self._length:
            length = min(self._length - offset, _CHUNK)
            chunk = await loop.run_in_executor(None, _read_hashed, fd, length, offset, digest)
            if not chunk:
                # not shown: said as _changed's message
                raise Shrank("file shrank while it was being uploaded")
            await _write(writer, chunk, self._progress, self._bandwidth)
            offset += len(chunk)
        self.content_hash = digest.hexdigest()

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a streamed file part is never decoded")


class _FormBody(aiohttp.Payload):
    """A small upload's whole form, in one buffer: one send, unless --bwlimit paces it."""

    def __init__(
        self, body: bytes, content_type: str, progress: Progress, bandwidth: Bandwidth | None
    ) -> None:
        super().__init__(body, content_type=content_type)
        self._size = len(body)
        self._progress = progress
        self._bandwidth = bandwidth

    async def write(self, writer: AbstractStreamWriter) -> None:
        self._progress.attach(getattr(writer, "transport", None))
        await _write(writer, self._value, self._progress, self._bandwidth)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("an upload form is never decoded")


async def _write(
    writer: AbstractStreamWriter, data: bytes, progress: Progress, bandwidth: Bandwidth | None
) -> None:
    """Bytes of an upload onto the wire, counted for the idle watch and, under --bwlimit,
    no faster than the run's share allows."""
    if bandwidth is None:
        await writer.write(data)
        progress.handed += len(data)
        return
    view = memoryview(data)
    for start in range(0, len(view), SLICE):
        piece = view[start : start + SLICE]
        await bandwidth.take(len(piece))
        await writer.write(piece)
        progress.handed += len(piece)


def _read_hashed(fd: int, length: int, offset: int, digest: Any) -> bytes:
    chunk = osfiles.read_at(fd, length, offset)
    digest.update(chunk)
    return chunk


async def form_of(
    fields: dict[str, str],
    content: bytes | io.FileIO,
    size: int,
    filename: str,
    progress: Progress,
    bandwidth: Bandwidth | None,
) -> tuple[aiohttp.Payload, FilePart | None]:
    """The form body and its streamed file part (None for a small file, read whole): the
    policy fields first, the file last (S3 ignores whatever follows the file).

    A small form goes as one buffer: written part by part it costs a send() per piece.
    """
    # A non-UTF-8 name arrives with surrogates, which cannot be quoted into a header.
    shown = filename.encode("utf-8", "replace").decode("utf-8")
    if isinstance(content, bytes):
        boundary = uuid.uuid4().hex
        body = small_form(boundary, fields, content, shown)
        return _FormBody(body, _FORM_TYPE + boundary, progress, bandwidth), None
    form = aiohttp.MultipartWriter("form-data")
    for name, value in fields.items():
        form.append(value).set_content_disposition("form-data", name=name)
    part = FilePart(content, size, progress, bandwidth)
    part.set_content_disposition("form-data", name="file", filename=shown)
    form.append_payload(part)
    return form, part


_FORM_TYPE = "multipart/form-data; boundary="


def small_form(boundary: str, fields: Mapping[str, str], content: bytes, filename: str) -> bytes:
    """A small upload's whole form, the bytes aiohttp's MultipartWriter makes of it
    (tests/test_client.py compares them), joined at once: the writer's parts, payload
    lookups and header encoding were an eighth of a run's CPU at 0 ms latency."""
    dash = b"--" + boundary.encode("ascii")
    pieces: list[bytes] = []
    for name, value in fields.items():
        pieces += (dash, _field_head(name), value.encode("utf-8"), b"\r\n")
    disposition = content_disposition_header("form-data", name="file", filename=filename)
    pieces += (dash, _FILE_HEAD, disposition.encode("utf-8"), b"\r\n\r\n", content, b"\r\n")
    pieces += (dash, b"--\r\n")
    return b"".join(pieces)


_FILE_HEAD = b"\r\nContent-Type: application/octet-stream\r\nContent-Disposition: "


@functools.lru_cache(maxsize=64)
def _field_head(name: str) -> bytes:
    """The headers of a form field: the presign names the same few fields every time."""
    disposition = content_disposition_header("form-data", name=name)
    head = f"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Disposition: {disposition}"
    return head.encode("utf-8") + b"\r\n\r\n"
