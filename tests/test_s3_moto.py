"""The S3 leg against moto's real S3 server: the multipart POST the uploader builds from a
presigned POST (SigV4 fields, as the MaiAgent service hands out) is accepted and stores the
file's exact bytes, for a small file sent whole and a larger one streamed from disk."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

from uploader.client import MaiAgentClient, Presigned, RateLimiter, make_session

BUCKET = "maiagent-kb-files"


@pytest.fixture(scope="module")
def s3() -> Iterator[Any]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        client = boto3.client(
            "s3",
            endpoint_url=f"http://{host}:{port}",
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(signature_version="s3v4"),
        )
        client.create_bucket(Bucket=BUCKET)
        yield client
    finally:
        server.stop()


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
        BUCKET, key, Conditions=[["content-length-range", 0, 10 * 1024 * 1024]], ExpiresIn=300
    )
    assert "x-amz-signature" in post["fields"]

    asyncio.run(upload(Presigned(post["url"], post["fields"]), path, filename))

    stored = s3.get_object(Bucket=BUCKET, Key=key)
    assert stored["ContentLength"] == size
    assert stored["Body"].read() == content
