"""The S3 leg against moto's real S3 server: the multipart POST the uploader builds from a
presigned POST (SigV4 fields, as the MaiAgent service hands out) is accepted and stores the
file's exact bytes, for a small file sent whole and a larger one streamed from disk."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import S3_BUCKET
from uploader.client import MaiAgentClient, Presigned, RateLimiter, make_session


async def upload(presigned: Presigned, path: Path, filename: str) -> None:
    # The API half of the client is not used: S3 needs no key and no base URL.
    async with make_session(2) as session:
        client = MaiAgentClient(session, "http://127.0.0.1:9/api/v1/", "unused", RateLimiter())
        await client.upload(presigned, str(path), path.stat().st_size, filename)


@pytest.mark.parametrize(
    ("filename", "size"),
    [("notes.txt", 1234), ("年度 報告 (final).pdf", 3 * 1024 * 1024 + 17)],
)
def test_a_presigned_post_upload_is_stored_byte_for_byte(
    s3: Any, tmp_path: Path, filename: str, size: int
) -> None:
    content = os.urandom(size)
    path = tmp_path / filename
    path.write_bytes(content)
    key = f"media/chatbot-file/{uuid.uuid4()}/{filename}"
    post = s3.generate_presigned_post(
        S3_BUCKET, key, Conditions=[["content-length-range", 0, 10 * 1024 * 1024]], ExpiresIn=300
    )
    assert "x-amz-signature" in post["fields"]

    asyncio.run(upload(Presigned(post["url"], post["fields"]), path, filename))

    stored = s3.get_object(Bucket=S3_BUCKET, Key=key)
    assert stored["ContentLength"] == size
    assert stored["Body"].read() == content
