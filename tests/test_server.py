"""The test server must behave like MaiAgent (and S3) where the uploader depends on it.

Everything goes over real sockets with aiohttp, as the uploader will.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import pytest

from tests.helpers import KB, ROOT, async_test
from tests.maiagent_server import COUNTERS, MaiAgentServer


class Api:
    """Just enough of a client to drive the server the way the uploader will."""

    def __init__(self, session: aiohttp.ClientSession, server: MaiAgentServer, key: str) -> None:
        self.session = session
        self.base = server.base_url
        self.headers = {"Authorization": f"Api-Key {key}"}

    async def call(self, method: str, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        """Send an API request and read the body, so the connection goes back to the pool."""
        async with self.session.request(
            method, self.base + path, headers=self.headers, **kwargs
        ) as response:
            await response.read()
            return response

    async def presign(self, filename: str = "a.txt", size: int = 5) -> dict[str, Any]:
        body = {"filename": filename, "modelName": "chatbot-file", "fieldName": "file"}
        response = await self.call("POST", "upload-presigned-url/", json={**body, "fileSize": size})
        assert response.status == 200
        return await response.json()

    async def post_form(
        self,
        url: str,
        fields: Mapping[str, str],
        data: bytes,
        after: Mapping[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        """POST to S3 without the API key: fields, the file, then `after` (S3 would ignore it,
        this server rejects it)."""
        form = aiohttp.FormData()
        for name, value in fields.items():
            form.add_field(name, value)
        form.add_field("file", io.BytesIO(data), filename="a.txt")
        for name, value in (after or {}).items():
            form.add_field(name, value)
        async with self.session.post(url, data=form) as response:
            await response.read()
            return response

    async def upload(self, data: bytes, filename: str = "a.txt") -> str:
        presigned = await self.presign(filename, len(data))
        response = await self.post_form(presigned["url"], presigned["fields"], data)
        assert response.status == 204
        return presigned["fields"]["key"]

    async def register(self, *keys: str, kb: str = KB) -> aiohttp.ClientResponse:
        files = [{"file": key, "filename": key.rsplit("/", 1)[-1]} for key in keys]
        return await self.call("POST", f"knowledge-bases/{kb}/files/", json={"files": files})


@contextlib.asynccontextmanager
async def api(server: MaiAgentServer, key: str = "test-key") -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, server, key)


def policy_of(fields: Mapping[str, str]) -> dict[str, Any]:
    return json.loads(base64.b64decode(fields["policy"]))


@async_test
async def test_three_call_upload_stores_object_and_registers(maiagent: MaiAgentServer) -> None:
    data = b"hello, knowledge base"
    async with api(maiagent) as client:
        presigned = await client.presign("notes.txt", len(data))
        fields = presigned["fields"]
        assert presigned["url"] == maiagent.base_url.replace("/api/v1/", "/s3/maiagent-test/")
        assert fields["key"].startswith("media/chatbot-file/")
        assert fields["key"].endswith("/notes.txt")
        assert ["content-length-range", 0, 10 << 30] in policy_of(fields)["conditions"]
        response = await client.post_form(presigned["url"], fields, data)
        assert response.status == 204
        response = await client.register(fields["key"])
        assert response.status == 201
        [entry] = await response.json()

    assert maiagent.object(fields["key"]) == {
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "data": data,
    }
    assert entry["file"] == fields["key"]
    assert entry["filename"] == "notes.txt"
    assert entry["size"] == len(data)
    assert entry["status"] == "done"
    assert isinstance(entry["createdAt"], int)
    assert maiagent.entries(KB) == [entry]
    assert maiagent.stats() == {
        **dict.fromkeys(COUNTERS, 0),
        **{"presign": 1, "s3": 1, "register": 1, "total": 3},
    }


@async_test
async def test_large_object_is_hashed_not_kept(maiagent: MaiAgentServer) -> None:
    data = os.urandom((1 << 20) + 1)
    async with api(maiagent) as client:
        key = await client.upload(data)
    assert maiagent.object(key) == {
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "data": None,
    }


@async_test
async def test_register_many_files_in_one_call_keeps_order(maiagent: MaiAgentServer) -> None:
    async with api(maiagent) as client:
        keys = [await client.upload(bytes(n)) for n in range(3)]
        response = await client.register(*keys)
    assert response.status == 201
    assert [(e["file"], e["size"]) for e in await response.json()] == list(
        zip(keys, range(3), strict=True)
    )


@pytest.mark.parametrize(
    ("knobs", "change", "after", "status", "code"),
    [
        ({}, {}, {"extra": "x"}, 400, "InvalidArgument"),
        ({}, {"x-amz-signature": "0" * 64}, {}, 403, "SignatureDoesNotMatch"),
        ({"policy_ttl": 0}, {}, {}, 403, "AccessDenied"),
        ({}, {"key": "media/chatbot-file/other/a.txt"}, {}, 403, "AccessDenied"),
        ({"max_file_size": 4}, {}, {}, 400, "EntityTooLarge"),
    ],
    ids=["file-not-last", "bad-signature", "expired-policy", "key-not-signed", "too-large"],
)
@async_test
async def test_s3_rejects_bad_posts(
    maiagent_factory: Callable[..., MaiAgentServer],
    knobs: dict[str, Any],
    change: dict[str, str],
    after: dict[str, str],
    status: int,
    code: str,
) -> None:
    server = maiagent_factory(**knobs)
    async with api(server) as client:
        presigned = await client.presign()
        fields = {**presigned["fields"], **change}
        response = await client.post_form(presigned["url"], fields, b"hello", after)
        body = await response.text()
    assert response.status == status
    assert f"<Code>{code}</Code>" in body
    assert server.object(fields["key"]) is None


@async_test
async def test_s3_error_messages(maiagent_factory: Callable[..., MaiAgentServer]) -> None:
    server = maiagent_factory(policy_ttl=0)
    async with api(server) as client:
        presigned = await client.presign()
        response = await client.post_form(presigned["url"], presigned["fields"], b"x")
        assert "Policy expired" in await response.text()
        fields = {k: v for k, v in presigned["fields"].items() if k != "policy"}
        response = await client.post_form(presigned["url"], fields, b"x")
        assert response.status == 400
        async with client.session.post(
            presigned["url"], data=b"x", headers={"Authorization": "Api-Key test-key"}
        ) as response:
            assert response.status == 400


@pytest.mark.parametrize("body", [{"fileSize": 5}, {"filename": "a.txt", "fileSize": "5"}])
@async_test
async def test_presign_validates_body(maiagent: MaiAgentServer, body: dict[str, Any]) -> None:
    async with api(maiagent) as client:
        response = await client.call("POST", "upload-presigned-url/", json=body)
    assert response.status == 400


@pytest.mark.parametrize("key", ["wrong", None])
@async_test
async def test_bad_api_key_is_401(maiagent: MaiAgentServer, key: str | None) -> None:
    async with api(maiagent, key or "") as client:
        if key is None:
            client.headers = {}
        response = await client.call("GET", f"knowledge-bases/{KB}/files/")
    assert response.status == 401
    assert await response.json() == {"detail": "Invalid API key"}


@async_test
async def test_unknown_kb_and_unknown_key(maiagent: MaiAgentServer) -> None:
    async with api(maiagent) as client:
        key = await client.upload(b"hello")
        response = await client.register(key, kb="kb-missing")
        assert response.status == 404
        assert await response.json() == {"detail": "Not found."}
        response = await client.call("GET", "knowledge-bases/kb-missing/files/")
        assert response.status == 404
        response = await client.register("media/chatbot-file/never/uploaded.txt")
        assert response.status == 400
    assert maiagent.entries(KB) == []


@async_test
async def test_listing_is_newest_first_with_pagination(maiagent: MaiAgentServer) -> None:
    created = [maiagent.add_entry(KB, f"f{n}.txt", n) for n in range(25)]
    newest_first = [entry["id"] for entry in reversed(created)]
    seen: list[str] = []
    async with api(maiagent) as client:
        response = await client.call("GET", f"knowledge-bases/{KB}/files/?page_size=10")
        page = await response.json()
        assert page["previous"] is None
        while True:
            assert page["count"] == 25
            seen += [entry["id"] for entry in page["results"]]
            if page["next"] is None:
                break
            async with client.session.get(page["next"], headers=client.headers) as response:
                page = await response.json()
        assert page["previous"].endswith("?page_size=10&page=2")
        response = await client.call("GET", f"knowledge-bases/{KB}/files/?page=4&page_size=10")
        assert response.status == 404
        assert await response.json() == {"detail": "Invalid page."}
        response = await client.call("GET", f"knowledge-bases/{KB}/files/?page_size=5000")
        assert len((await response.json())["results"]) == 25
    assert seen == newest_first


@async_test
async def test_empty_listing_has_a_first_page(maiagent: MaiAgentServer) -> None:
    async with api(maiagent) as client:
        response = await client.call("GET", f"knowledge-bases/{KB}/files/")
    assert await response.json() == {"count": 0, "next": None, "previous": None, "results": []}


@async_test
async def test_parse_status_progresses_and_reparse_restarts(
    maiagent_factory: Callable[..., MaiAgentServer],
) -> None:
    server = maiagent_factory(parse_delay=0.4, parse_failure_rate=1.0)
    async with api(server) as client:
        key = await client.upload(b"hello")
        [entry] = await (await client.register(key)).json()
        path = f"knowledge-bases/{KB}/files/{entry['id']}/"

        async def status() -> str:
            return (await (await client.call("GET", path)).json())["status"]

        assert entry["status"] == "initial"
        await asyncio.sleep(0.25)
        assert await status() == "processing"
        await asyncio.sleep(0.2)
        assert await status() == "failed"
        server.faults.parse_failure_rate = 0
        body = [{"id": entry["id"], "parser": "default"}]
        response = await client.call(
            "PATCH", f"knowledge-bases/{KB}/files/batch-reparse/", json=body
        )
        assert response.status == 200
        assert await status() == "initial"
        await asyncio.sleep(0.45)
        assert await status() == "done"


@async_test
async def test_lost_register_creates_entry_but_client_sees_disconnect(
    maiagent_factory: Callable[..., MaiAgentServer],
) -> None:
    server = maiagent_factory(lost_register_rate=1.0)
    async with api(server) as client:
        key = await client.upload(b"hello")
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await client.register(key)
    assert [entry["file"] for entry in server.entries(KB)] == [key]


@async_test
async def test_dropped_request_does_nothing(maiagent: MaiAgentServer) -> None:
    async with api(maiagent) as client:
        key = await client.upload(b"hello")
        maiagent.faults.drop_rate = 1.0
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await client.register(key)
    assert maiagent.entries(KB) == []
    assert maiagent.stats()["register"] == 1


@async_test
async def test_error_rate_answers_503(maiagent_factory: Callable[..., MaiAgentServer]) -> None:
    server = maiagent_factory(error_rate=1.0)
    async with api(server) as client:
        response = await client.call("POST", "upload-presigned-url/", json={})
    assert response.status == 503


@async_test
async def test_rps_limit_throttles_with_retry_after(
    maiagent_factory: Callable[..., MaiAgentServer],
) -> None:
    server = maiagent_factory(rps_limit=3)
    async with api(server) as client:
        responses = [await client.call("GET", f"knowledge-bases/{KB}/files/") for _ in range(5)]
    assert [r.status for r in responses] == [200, 200, 200, 429, 429]
    assert responses[-1].headers["Retry-After"] == "1"
    assert await responses[-1].json() == {"detail": "Request was throttled."}
    assert server.stats()["list"] == 5


@async_test
async def test_delete_knobs_and_batch_delete(
    maiagent_factory: Callable[..., MaiAgentServer],
) -> None:
    server = maiagent_factory(parse_delay=60, delete_conflict_while_processing=True)
    busy, other, spare = (server.add_entry(KB, f"f{n}", 1) for n in range(3))
    failed = server.add_entry(KB, "failed", 1, status="failed")
    async with api(server) as client:
        response = await client.call("DELETE", f"knowledge-bases/{KB}/files/{busy['id']}/")
        assert response.status == 409
        server.faults.delete_500_rate = 1.0
        response = await client.call("DELETE", f"knowledge-bases/{KB}/files/{failed['id']}/")
        assert response.status == 500
        body = {"ids": [other["id"], "no-such-id"]}
        response = await client.call("POST", f"knowledge-bases/{KB}/files/batch-delete/", json=body)
        assert response.status == 204
    assert [entry["id"] for entry in server.entries(KB)] == [busy["id"], spare["id"]]


@async_test
async def test_list_size_knob_hides_size(maiagent: MaiAgentServer) -> None:
    entry = maiagent.add_entry(KB, "a.txt", 7)
    maiagent.faults.list_size = False
    async with api(maiagent) as client:
        response = await client.call("GET", f"knowledge-bases/{KB}/files/{entry['id']}/")
    assert "size" not in await response.json()


@async_test
async def test_control_endpoints(maiagent: MaiAgentServer) -> None:
    root = maiagent.base_url.removesuffix("/api/v1/")
    async with api(maiagent) as client:
        key = await client.upload(b"hello")
        session = client.session
        async with session.post(f"{root}/_control/faults", json={"list_size": False}) as r:
            assert (await r.json())["list_size"] is False
        async with session.post(f"{root}/_control/faults", json={"no_such_knob": 1}) as r:
            assert r.status == 400
        entry_body = {"kb": KB, "filename": "dup.txt", "size": 3}
        async with session.post(f"{root}/_control/entries", json=entry_body) as r:
            assert r.status == 201
            entry = await r.json()
        async with session.get(f"{root}/_control/entries", params={"kb": KB}) as r:
            assert await r.json() == [entry]
        async with session.delete(f"{root}/_control/entries/{entry['id']}") as r:
            assert r.status == 204
        async with session.get(f"{root}/_control/objects/{key}") as r:
            assert await r.json() == {"size": 5, "sha256": hashlib.sha256(b"hello").hexdigest()}
        async with session.get(f"{root}/_control/stats") as r:
            assert (await r.json())["total"] == 2
    assert maiagent.faults.list_size is False
    assert entry["status"] == "done"
    assert maiagent.entries(KB) == []


def test_runs_as_a_process() -> None:
    command = [sys.executable, "-m", "tests.maiagent_server", "--port", "0", "--kb", "kb-x"]
    command += ["--api-key", "k", "--parse-delay", "5"]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) as process:
        try:
            line = process.stdout.readline() if process.stdout else ""
            assert line.startswith("listening on http://127.0.0.1:")
            base_url = line.split()[-1]

            async def list_files() -> int:
                headers = {"Authorization": "Api-Key k"}
                async with (
                    aiohttp.ClientSession(headers=headers) as session,
                    session.get(f"{base_url}knowledge-bases/kb-x/files/") as response,
                ):
                    return response.status

            assert asyncio.run(list_files()) == 200
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=5) == 0
            assert time.monotonic() - started < 3
        finally:
            process.kill()
