"""The S3-like object store: presigned POST policies signed and checked as S3 does, uploads
streamed and hashed (kept whole only when small), the stored bytes served back."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import functools
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp.multipart
from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.multipart import parse_content_disposition as _parse_content_disposition

from uploader.localserver.state import ServerState, StoredObject
from uploader.localserver.wire import S3Error, answer, detail, dumps, read_json, s3_error

BUCKET = "maiagent-test"
ACCESS_KEY = "AKIAMAIAGENTTEST"
ALGORITHM = "AWS4-HMAC-SHA256"
BAD_URL = "http://[::1"
POLICY_FIELDS = ("key", "x-amz-algorithm", "x-amz-credential", "x-amz-date", "policy")
SIGNED_FIELDS = (*POLICY_FIELDS, "x-amz-signature")
MAX_FIELD = 64 << 10  # a non-file form part bigger than this is a client bug, not a field
CHUNK = 256 << 10
PACED_CHUNK = 16 << 10


def _iso_to_datetime(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


@functools.lru_cache(maxsize=256)
def _cached_content_disposition(header: str | None) -> tuple[str | None, dict[str, str]]:
    return _parse_content_disposition(header)


def _fast_content_disposition(header: str | None) -> tuple[str | None, dict[str, str]]:
    """Patched into aiohttp: its parser rebuilds a regex on every call and MultipartReader.next()
    calls it for every part. Form headers repeat from one upload to the next, so caching cut the
    server's CPU time per upload by 45% in the benchmark. Same results; the copy keeps callers
    from sharing a dict."""
    disposition, params = _cached_content_disposition(header)
    return disposition, dict(params)


aiohttp.multipart.parse_content_disposition = _fast_content_disposition


async def _read_field(part: BodyPartReader) -> str:
    """Read a form field, refusing to buffer what is really a misnamed file."""
    data = bytearray()
    while chunk := await part.read_chunk(MAX_FIELD):
        data += chunk
        if len(data) > MAX_FIELD:
            raise S3Error(
                400,
                "MaxPostPreDataLengthExceeded",
                "Your POST request fields preceding the upload file were too large.",
            )
    return data.decode()


async def _consume_file(
    part: BodyPartReader, keep: int, pace: Callable[[int], Coroutine[Any, Any, None]] | None = None
) -> tuple[int, str, bytes | None]:
    """Hash the file part while streaming it; keep the bytes only up to `keep` bytes. `pace`
    is awaited after each chunk (a slow uplink: the bytes are read no faster than it allows)."""
    digest = hashlib.sha256()
    size = 0
    kept: bytearray | None = bytearray()
    while chunk := await part.read_chunk(CHUNK if pace is None else PACED_CHUNK):
        if pace is not None:
            await pace(len(chunk))
        digest.update(chunk)
        size += len(chunk)
        if kept is not None and size <= keep:
            kept += chunk
        else:
            kept = None
    return size, digest.hexdigest(), None if kept is None else bytes(kept)


class S3Store(ServerState):
    """The presign call and the S3 endpoint it points at."""

    async def _s3_pace(self, nbytes: int) -> None:
        """One shared uplink for every upload: `nbytes` more take their share of the time."""
        rate = self.faults.s3_bandwidth
        if rate <= 0:
            return
        now = time.monotonic()
        slot = max(now, self._s3_next_byte)
        self._s3_next_byte = slot + nbytes / rate
        if slot > now:
            await asyncio.sleep(slot - now)

    def _signature(self, policy: str) -> str:
        return hmac.new(self._secret, policy.encode(), hashlib.sha256).hexdigest()

    def _presigned_fields(self, key: str) -> dict[str, str]:
        now = dt.datetime.now(dt.timezone.utc)
        expiration = now + dt.timedelta(seconds=self.faults.policy_ttl)
        fields = {
            "key": key,
            "x-amz-algorithm": ALGORITHM,
            "x-amz-credential": f"{ACCESS_KEY}/{now:%Y%m%d}/us-east-1/s3/aws4_request",
            "x-amz-date": f"{now:%Y%m%dT%H%M%SZ}",
        }
        document = {
            "expiration": expiration.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "conditions": [
                {"bucket": BUCKET},
                *({name: value} for name, value in fields.items()),
                ["content-length-range", 0, self.faults.max_file_size],
            ],
        }
        fields["policy"] = base64.b64encode(dumps(document).encode()).decode()
        fields["x-amz-signature"] = self._signature(fields["policy"])
        return fields

    async def _presign(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        if not isinstance(body, dict):
            return detail(400, "Expected a JSON object.")
        filename = body.get("filename")
        if not isinstance(filename, str) or not filename:
            return detail(400, "filename is required.")
        size = body.get("fileSize")
        if type(size) is not int or size < 0:
            return detail(400, "fileSize must be a non-negative integer.")
        url = f"{self.s3_origin or request.url.origin()}/s3/{BUCKET}/"
        if self._chance(self.faults.bad_presign_url_rate):
            url = BAD_URL
        return answer({"url": url, "fields": self._presigned_fields(self._new_key(filename))})

    def _check_policy(self, fields: dict[str, str]) -> tuple[int, int]:
        """Validate the signed fields like S3 does; returns the allowed size range."""
        missing = [name for name in SIGNED_FIELDS if name not in fields]
        if missing:
            raise S3Error(
                400, "InvalidArgument", f"Bucket POST must contain a field named '{missing[0]}'."
            )
        expected = self._signature(fields["policy"]).encode()
        if not hmac.compare_digest(expected, fields["x-amz-signature"].encode()):
            raise S3Error(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
        document = json.loads(base64.b64decode(fields["policy"]))
        if _iso_to_datetime(document["expiration"]) <= dt.datetime.now(dt.timezone.utc):
            raise S3Error(403, "AccessDenied", "Invalid according to Policy: Policy expired.")
        low, high = 0, self.faults.max_file_size
        for condition in document["conditions"]:
            if isinstance(condition, list):
                _, low, high = condition
                continue
            for name, value in condition.items():
                if name != "bucket" and fields.get(name) != value:
                    raise S3Error(
                        403,
                        "AccessDenied",
                        f'Invalid according to Policy: Policy Condition failed: ["eq", "${name}", '
                        f'"{value}"]',
                    )
        return low, high

    async def _s3_post(self, request: web.Request) -> web.Response:
        if request.match_info["bucket"] != BUCKET:
            return s3_error(404, "NoSuchBucket", "The specified bucket does not exist")
        if "Authorization" in request.headers:
            return s3_error(400, "InvalidArgument", "Only one auth mechanism allowed.")
        try:
            return await self._receive_upload(request)
        except S3Error as exc:
            return s3_error(exc.status, exc.code, exc.message)

    async def _receive_upload(self, request: web.Request) -> web.Response:
        try:
            reader = await request.multipart()
        except ValueError:
            raise S3Error(
                400,
                "InvalidArgument",
                "Bucket POST must be of the enclosure-type multipart/form-data.",
            ) from None
        fields: dict[str, str] = {}
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise S3Error(400, "InvalidArgument", "Nested multipart is not supported.")
            if part.name == "file":
                return await self._store_file(reader, part, fields)
            fields[(part.name or "").lower()] = await _read_field(part)
        raise S3Error(400, "InvalidArgument", "POST requires exactly one file upload per request.")

    async def _store_file(
        self, reader: MultipartReader, part: BodyPartReader, fields: dict[str, str]
    ) -> web.Response:
        low, high = self._check_policy(fields)
        pace = self._s3_pace if self.faults.s3_bandwidth > 0 else None
        size, sha256, data = await _consume_file(part, self.faults.keep_bytes, pace)
        if await reader.next() is not None:
            # S3 would silently ignore such parts; failing loudly catches client bugs.
            raise S3Error(400, "InvalidArgument", "The file must be the last part of the form.")
        if size > high:
            raise S3Error(
                400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size"
            )
        if size < low:
            raise S3Error(
                400,
                "EntityTooSmall",
                "Your proposed upload is smaller than the minimum allowed size",
            )
        self._objects[fields["key"]] = StoredObject(size, sha256, data)
        return web.Response(status=204)

    async def _media(self, request: web.Request) -> web.Response:
        """The stored bytes behind an entry's `file` URL (when small enough to be kept)."""
        obj = self._objects.get(request.match_info["key"])
        if obj is None or obj.data is None:
            return s3_error(404, "NoSuchKey", "The specified key does not exist.")
        return web.Response(body=obj.data, content_type="application/octet-stream")
