"""The local MaiAgent server (uploader.localserver) must behave like MaiAgent (and S3) where the
uploader depends on it, and say what each of its knobs does.

Everything goes over real sockets with aiohttp, as the uploader will.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import hashlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import pytest

import uploader.localserver
from tests.helpers import KB, ROOT, async_test
from uploader.localserver import COUNTERS, DIALECTS, Faults, MaiAgentServer


@pytest.fixture
def dialect(request: pytest.FixtureRequest) -> str:
    """These tests pin the server's answers shape by shape: "examples" unless a test asks for
    "docs" (the suite's default elsewhere)."""
    return getattr(request, "param", "examples")


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

    async def register(
        self,
        *keys: str,
        kb: str = KB,
        timeout: aiohttp.ClientTimeout | None = None,
        **fields: Any,
    ) -> aiohttp.ClientResponse:
        """Register `keys`, each named after the last part of its key, with `fields` added to
        every file (labels, rawUserDefineMetadata, parser, knowledgeBase)."""
        files = [{"file": key, "filename": key.rsplit("/", 1)[-1], **fields} for key in keys]
        path = f"knowledge-bases/{kb}/files/"
        extra = {} if timeout is None else {"timeout": timeout}
        return await self.call("POST", path, json={"files": files}, **extra)


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


@pytest.mark.posix_only("sends a POSIX signal to a child process")
def test_runs_as_a_process() -> None:
    command = [sys.executable, "-m", "uploader.localserver", "--port", "0", "--kb", "kb-x"]
    command += ["--kb", "kb-y=Contracts", "--api-key", "k", "--parse-delay", "5"]
    command += ["--dialect", "examples", "--list-order", "oldest"]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) as process:
        try:
            line = process.stdout.readline() if process.stdout else ""
            assert line.startswith("listening on http://127.0.0.1:")
            base_url = line.split()[-1]

            async def get(path: str) -> tuple[int, Any]:
                headers = {"Authorization": "Api-Key k"}
                async with (
                    aiohttp.ClientSession(headers=headers) as session,
                    session.get(base_url + path) as response,
                ):
                    return response.status, await response.json()

            assert asyncio.run(get("knowledge-bases/kb-x/files/"))[0] == 200
            status, kbs = asyncio.run(get("knowledge-bases/"))
            assert [(kb["id"], kb["name"]) for kb in kbs["results"]] == [
                ("kb-x", "kb-x"),
                ("kb-y", "Contracts"),
            ]
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=5) == 0
            assert time.monotonic() - started < 3
        finally:
            process.kill()


@pytest.mark.posix_only("sends a POSIX signal to a child process")
def test_a_client_that_goes_away_mid_request_is_one_line_not_a_traceback() -> None:
    """A killed uploader leaves requests half sent (`make demo`, the adversarial passes): the
    server said so with a traceback of aiohttp's internals for each."""
    command = [sys.executable, "-m", "uploader.localserver", "--port", "0"]
    with subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            line = process.stdout.readline() if process.stdout else ""
            port = urllib.parse.urlsplit(line.split()[-1]).port
            for _ in range(2):
                with socket.create_connection(("127.0.0.1", port or 0)) as half:
                    half.sendall(
                        b"POST /api/v1/knowledge-bases/kb-test/files/ HTTP/1.1\r\nHost: x\r\n"
                        b"Authorization: Api-Key test-key\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 1000\r\n\r\n{"
                    )
                    time.sleep(0.2)  # the handler is reading the body
            time.sleep(0.2)
            process.send_signal(signal.SIGTERM)
            _out, err = process.communicate(timeout=10)
        finally:
            process.kill()
    assert (
        err.splitlines()
        == ["POST /api/v1/knowledge-bases/kb-test/files/: the client went away (Connection lost)"]
        * 2
    )


def test_a_bad_knob_value_on_the_command_line_is_one_line() -> None:
    command = [sys.executable, "-m", "uploader.localserver", "--list-order", "sideways"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "error: list_order must be one of ('newest', 'oldest', 'random'), not 'sideways'"
    ]


# ----- dialects ----------------------------------------------------------------------------


def page_of(body: Any) -> list[dict[str, Any]]:
    """The entries of a register answer in either dialect."""
    return body["results"] if isinstance(body, dict) else body


def test_the_server_speaks_the_docs_unless_told_otherwise() -> None:
    assert MaiAgentServer().dialect == "docs"
    with pytest.raises(ValueError, match="dialect"):
        MaiAgentServer(dialect="guess")


@async_test
async def test_docs_dialect_answers_as_the_documentation_shows(
    docs_server: MaiAgentServer,
) -> None:
    data = "學習資料\n".encode()
    async with api(docs_server) as client:
        key = await client.upload(data, filename="季報 final.資料")
        response = await client.register(key)
        assert response.status == 201
        answer = await response.json()
        got = await (
            await client.call("GET", f"knowledge-bases/{KB}/files/{answer['results'][0]['id']}/")
        ).json()
        async with client.session.get(answer["results"][0]["file"]) as media:
            stored = await media.read()
    assert re.fullmatch(r"media/chatbots/chatbot-file/[0-9a-f-]{36}\.資料", key)
    assert answer["count"] == 1 and answer["next"] is None and answer["previous"] is None
    [entry] = answer["results"]
    origin = docs_server.base_url.removesuffix("/api/v1/")
    assert entry["file"] == origin + "/" + urllib.parse.quote(key)
    assert "%E8%B3%87" in entry["file"]  # percent-encoded, as Django's filepath_to_uri does
    assert urllib.parse.unquote(urllib.parse.urlsplit(entry["file"]).path) == "/" + key
    assert stored == data
    assert entry["status"] == {"code": "done", "message": "File processed successfully."}
    assert isinstance(entry["createdAt"], str) and entry["createdAt"].isdigit()
    assert entry["size"] == len(data)
    assert (entry["fileType"], entry["knowledgeBase"]) == ("資料", KB)
    assert (entry["labels"], entry["rawUserDefineMetadata"], entry["parser"]) == ([], {}, None)
    assert got == entry
    assert docs_server.entries(KB) == [entry]
    [record] = docs_server.records(KB)
    assert record["key"] == key and record["createdAt"] == int(entry["createdAt"])


@pytest.mark.parametrize("dialect", DIALECTS, indirect=True)
@async_test
async def test_the_dialect_fixture_parameter(maiagent: MaiAgentServer, dialect: str) -> None:
    async with api(maiagent) as client:
        key = await client.upload(b"hello")
        body = await (await client.register(key)).json()
    assert maiagent.dialect == dialect
    assert isinstance(body, dict if dialect == "docs" else list)
    [entry] = page_of(body)
    assert (entry["file"] == key) is (dialect == "examples")
    assert isinstance(entry["status"], dict if dialect == "docs" else str)
    assert isinstance(entry["createdAt"], str if dialect == "docs" else int)


@pytest.mark.parametrize("style", ["detail", "files", "non_field"])
@async_test
async def test_docs_refuse_a_key_already_in_the_knowledge_base(
    maiagent_factory: Callable[..., MaiAgentServer], style: str
) -> None:
    server = maiagent_factory(dialect="docs", duplicate_error=style)
    async with api(server) as client:
        key, other = await client.upload(b"a"), await client.upload(b"b")
        assert (await client.register(key)).status == 201
        again = await client.register(other, key)
        twice = await client.register(other, other)
    assert again.status == twice.status == 400
    expected = {
        "detail": {"detail": "Duplicate File Upload"},
        "files": {"files": [{}, {"file": ["Duplicate File Upload"]}]},
        "non_field": {"non_field_errors": ["Duplicate File Upload"]},
    }[style]
    assert await again.json() == expected
    assert [r["key"] for r in server.records(KB)] == [key]  # the refused call made nothing


@async_test
async def test_examples_register_a_key_twice(maiagent: MaiAgentServer) -> None:
    async with api(maiagent) as client:
        key = await client.upload(b"a")
        assert (await client.register(key)).status == 201
        assert (await client.register(key)).status == 201
    assert [len(group) for group in maiagent.entries_by_key(KB).values()] == [2]


@async_test
async def test_docs_page_sizes_small_by_default_capped_whatever_is_asked(
    docs_server: MaiAgentServer,
) -> None:
    for n in range(130):
        docs_server.add_entry(KB, f"f{n}.txt", n)
    path = f"knowledge-bases/{KB}/files/"
    async with api(docs_server) as client:

        async def served(query: str) -> int:
            response = await client.call("GET", path + query)
            return len((await response.json())["results"])

        assert await served("") == 20
        assert await served("?page_size=1000") == 100
        assert await served("?page_size=7") == 7
        assert await served("?pageSize=7") == 20
        assert await served("?page_size=abc") == 20
        assert await served("?page=2&page_size=100") == 30


@async_test
async def test_each_shape_can_be_chosen_alone(
    maiagent_factory: Callable[..., MaiAgentServer],
) -> None:
    server = maiagent_factory(
        dialect="examples",
        register_answer="page",
        file_field="url",
        status_form="object",
        created_at_form="iso",
        size_field="file_size",
        key_form="uuid",
        page_size_params="pageSize",
    )
    async with api(server) as client:
        key = await client.upload(b"hello")
        [entry] = (await (await client.register(key)).json())["results"]
        server.faults.created_at_form = "float"
        listed = await (await client.call("GET", f"knowledge-bases/{KB}/files/?pageSize=1")).json()
    assert key.startswith("media/chatbots/chatbot-file/") and key.endswith(".txt")
    assert entry["file"].endswith("/" + key) and entry["file"].startswith("http://127.0.0.1:")
    assert entry["status"]["code"] == "done"
    assert entry["file_size"] == 5 and "size" not in entry
    moment = dt.datetime.fromisoformat(entry["createdAt"].replace("Z", "+00:00"))
    assert isinstance(listed["results"][0]["createdAt"], float)
    assert int(moment.timestamp() * 1000) == int(listed["results"][0]["createdAt"])


def test_shape_knobs_refuse_unknown_values(maiagent: MaiAgentServer) -> None:
    with pytest.raises(ValueError, match="list_order"):
        Faults(list_order="sideways")
    with pytest.raises(ValueError, match="file_field"):
        maiagent.faults.update({"file_field": "path"})


# ----- listing order -----------------------------------------------------------------------


@pytest.mark.parametrize("order", ["newest", "oldest", "random"])
@async_test
async def test_listing_order_knob(
    maiagent_factory: Callable[..., MaiAgentServer], order: str
) -> None:
    server = maiagent_factory(list_order=order, seed=3)
    created = [server.add_entry(KB, f"f{n}.txt", n)["id"] for n in range(40)]
    truth = {r["id"]: r["createdAt"] for r in server.records(KB)}

    async def read_all(client: Api) -> list[dict[str, Any]]:
        seen, url = [], f"{server.base_url}knowledge-bases/{KB}/files/?page_size=7"
        while url:
            async with client.session.get(url, headers=client.headers) as response:
                page = await response.json()
            seen += page["results"]
            url = page["next"]
        return seen

    async with api(server) as client:
        first, second = await read_all(client), await read_all(client)
    ids = [e["id"] for e in first]
    assert ids == [e["id"] for e in second]  # stable while nothing changes
    assert sorted(ids) == sorted(created)
    assert all(e["createdAt"] == truth[e["id"]] for e in first)
    if order == "newest":
        assert ids == created[::-1]
    elif order == "oldest":
        assert ids == created
    else:
        assert ids not in (created, created[::-1])


# ----- registers that take effect late ------------------------------------------------------


async def until(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Wait for what the server does by itself later (a late commit, the end of an outage)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the server never got there"
        await asyncio.sleep(0.05)


async def until_served(client: Api, path: str) -> None:
    """Wait until `path` answers 200 again."""
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(aiohttp.ClientConnectorError):
            if (await client.call("GET", path)).status == 200:
                return
        assert time.monotonic() < deadline, "the service never came back"
        await asyncio.sleep(0.05)


@async_test
async def test_a_register_can_take_effect_after_the_client_gave_up(
    maiagent_factory: Callable[..., MaiAgentServer],
) -> None:
    server = maiagent_factory(register_effect_delay=1.0)
    async with api(server) as client:
        key = await client.upload(b"hello")
        with pytest.raises(asyncio.TimeoutError):
            await client.register(key, timeout=aiohttp.ClientTimeout(total=0.2))
        assert server.records(KB) == []
        await until(lambda: len(server.records(KB)) == 1)
        assert [r["key"] for r in server.records(KB)] == [key]
        started = time.monotonic()
        body = await (await client.register(key)).json()
        assert time.monotonic() - started >= 0.9  # the answer comes with the effect
    assert len(body) == 1 and len(server.records(KB)) == 2


@async_test
async def test_an_early_answer_before_the_entry_is_listed(
    maiagent_factory: Callable[..., MaiAgentServer],
) -> None:
    server = maiagent_factory(dialect="docs", register_effect_delay=1.0, register_answer_early=True)
    async with api(server) as client:
        key = await client.upload(b"hello")
        [entry] = (await (await client.register(key)).json())["results"]
        missing = await client.call("GET", f"knowledge-bases/{KB}/files/{entry['id']}/")
        assert missing.status == 404
        again = await client.register(key)  # the pending commit holds the key already
        assert (again.status, await again.json()) == (400, {"detail": "Duplicate File Upload"})
        await until(lambda: len(server.records(KB)) == 1)
        got = await (await client.call("GET", f"knowledge-bases/{KB}/files/{entry['id']}/")).json()
    assert got["createdAt"] == entry["createdAt"]
    assert [r["id"] for r in server.records(KB)] == [entry["id"]]


@async_test
async def test_a_late_register_whose_answer_is_lost(
    maiagent_factory: Callable[..., MaiAgentServer],
) -> None:
    server = maiagent_factory(register_effect_delay=0.3, lost_register_rate=1.0)
    async with api(server) as client:
        key = await client.upload(b"hello")
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await client.register(key)
    assert [r["key"] for r in server.records(KB)] == [key]


# ----- garbage answers ---------------------------------------------------------------------


@async_test
async def test_garbage_ids_urls_and_filenames(
    maiagent_factory: Callable[..., MaiAgentServer],
) -> None:
    server = maiagent_factory(null_id_rate=1.0, bad_presign_url_rate=1.0)
    async with api(server) as client:
        presigned = await client.presign()
        assert presigned["url"] == "http://[::1"
        server.faults.bad_presign_url_rate = 0
        key = await client.upload(b"hello")
        [entry] = await (await client.register(key)).json()
        server.faults.filename_list_rate = 1.0
        listed = (await (await client.call("GET", f"knowledge-bases/{KB}/files/")).json())[
            "results"
        ]
        [record] = server.records(KB)
        got = await (await client.call("GET", f"knowledge-bases/{KB}/files/{record['id']}/")).json()
    assert entry["id"] is None and record["id"]
    assert listed[0]["filename"] == got["filename"] == ["a.txt"]


@async_test
async def test_drop_fields_leaves_fields_out_of_every_entry(
    maiagent_factory: Callable[..., MaiAgentServer],
) -> None:
    server = maiagent_factory(drop_fields="file,id")
    async with api(server) as client:
        key = await client.upload(b"hello")
        [entry] = await (await client.register(key)).json()
        listed = (await (await client.call("GET", f"knowledge-bases/{KB}/files/")).json())[
            "results"
        ]
    assert not {"file", "id"} & (set(entry) | set(listed[0]))
    assert "filename" in entry
    assert server.records(KB)[0]["key"] == key


@async_test
async def test_a_huge_answer_is_streamed_and_still_json(
    maiagent_factory: Callable[..., MaiAgentServer],
) -> None:
    server = maiagent_factory(huge_answer_bytes=6 << 20, huge_answer_on="list,register")
    server.add_entry(KB, "a.txt", 1)
    path = f"knowledge-bases/{KB}/files/"
    async with api(server) as client:
        async with client.session.get(server.base_url + path, headers=client.headers) as response:
            assert response.headers.get("Transfer-Encoding") == "chunked"
            assert "Content-Length" not in response.headers
            body = await response.read()
        # a client that stops reading early must not hurt the server
        async with client.session.get(server.base_url + path, headers=client.headers) as response:
            await response.content.read(1 << 16)
            response.close()
        key = await client.upload(b"x")
        registered = await client.register(key)
        server.faults.huge_answer_bytes = 0
        small = await client.call("GET", path)
    assert len(body) > 6 << 20
    assert json.loads(body)["count"] == 1
    assert registered.status == 201
    assert len(await registered.text()) > 6 << 20
    assert len(await small.text()) < 10_000


# ----- content -----------------------------------------------------------------------------


@async_test
async def test_content_behind_each_entry_and_entries_per_key(
    maiagent_factory: Callable[..., MaiAgentServer],
) -> None:
    server = maiagent_factory(keep_bytes=8)
    root = ""
    async with api(server) as client:
        small, big = await client.upload(b"small"), await client.upload(b"too big to keep")
        for key in (small, small, big):
            await client.register(key)
        root = server.base_url.removesuffix("/api/v1/")
        ids = [r["id"] for r in server.records(KB)]
        async with client.session.get(f"{root}/_control/keys", params={"kb": KB}) as r:
            keys = await r.json()
        async with client.session.get(f"{root}/_control/entries/{ids[0]}/content") as r:
            assert await r.read() == b"small"
        async with client.session.get(f"{root}/_control/entries/{ids[2]}/content") as r:
            assert r.status == 404
        async with client.session.get(f"{root}/{big}") as r:
            assert r.status == 404
    assert server.content(small) == server.entry_content(ids[1]) == b"small"
    assert server.content(big) is None and server.entry_content("nope") is None
    assert server.object(big)["sha256"] == hashlib.sha256(b"too big to keep").hexdigest()
    by_key = server.entries_by_key(KB)
    assert {k: [r["id"] for r in v] for k, v in by_key.items()} == keys
    assert {k: len(v) for k, v in by_key.items()} == {small: 2, big: 1}
    assert server.stats()["media"] == 1


# ----- knowledge bases and labels ----------------------------------------------------------


@async_test
async def test_knowledge_bases_are_listed_and_found(
    maiagent_factory: Callable[..., MaiAgentServer],
) -> None:
    server = maiagent_factory(kbs={"kb-a": "Alpha", "kb-b": "Beta"})
    server.add_entry("kb-b", "x.txt", 1)
    async with api(server) as client:
        listed = await (await client.call("GET", "knowledge-bases/")).json()
        one = await (await client.call("GET", "knowledge-bases/kb-b/")).json()
        missing = await client.call("GET", "knowledge-bases/kb-c/")
    assert listed == {
        "count": 2,
        "next": None,
        "previous": None,
        "results": [
            {"id": "kb-a", "name": "Alpha", "filesCount": 0},
            {"id": "kb-b", "name": "Beta", "filesCount": 1},
        ],
    }
    assert one == {"id": "kb-b", "name": "Beta", "filesCount": 1}
    assert missing.status == 404
    assert (server.stats()["kbs"], server.stats()["kb"]) == (1, 2)


@async_test
async def test_labels_are_created_once_per_name_and_listed(
    maiagent_factory: Callable[..., MaiAgentServer],
) -> None:
    server = maiagent_factory(kbs=[KB, "kb-other"])
    path = f"knowledge-bases/{KB}/labels/"
    async with api(server) as client:
        empty = await (await client.call("GET", path)).json()
        made = await client.call("POST", path, json={"name": "hr"})
        label = await made.json()
        again = await client.call("POST", path, json={"name": "hr"})
        elsewhere = await client.call(
            "POST", "knowledge-bases/kb-other/labels/", json={"name": "hr"}
        )
        nameless = await client.call("POST", path, json={})
        listed = await (await client.call("GET", path)).json()
        unknown_kb = await client.call("GET", "knowledge-bases/kb-none/labels/")
    assert empty == {"count": 0, "next": None, "previous": None, "results": []}
    assert made.status == 201 and label["name"] == "hr" and uuid.UUID(label["id"])
    assert again.status == 400 and "name" in await again.json()
    assert elsewhere.status == 201 and (await elsewhere.json())["id"] != label["id"]
    assert nameless.status == 400
    assert listed["results"] == [label] == server.labels(KB)
    assert unknown_kb.status == 404
    assert (server.stats()["label_create"], server.stats()["labels"]) == (4, 3)


@async_test
async def test_register_takes_labels_metadata_and_parser(
    maiagent_factory: Callable[..., MaiAgentServer],
) -> None:
    server = maiagent_factory(dialect="docs")
    hr = server.add_label(KB, "hr")
    parser = str(uuid.uuid4())
    good = {
        "labels": [{"id": hr["id"], "name": "hr"}],
        "rawUserDefineMetadata": {"source": "nas"},
        "parser": parser,
        "knowledgeBase": KB,
    }
    async with api(server) as client:
        key = await client.upload(b"hello")
        refused = []
        for bad in (
            {"labels": [{"id": str(uuid.uuid4())}]},
            {"labels": "hr"},
            {"rawUserDefineMetadata": ["source"]},
            {"parser": "default"},
            {"knowledgeBase": "kb-elsewhere"},
        ):
            refused.append((await client.register(key, **{**good, **bad})).status)
        answer = await (await client.register(key, **good)).json()
        [entry] = answer["results"]
        listed = (await (await client.call("GET", f"knowledge-bases/{KB}/files/")).json())[
            "results"
        ]
        got = await (await client.call("GET", f"knowledge-bases/{KB}/files/{entry['id']}/")).json()
    assert refused == [400] * 5
    assert entry["labels"] == [hr] and entry["rawUserDefineMetadata"] == {"source": "nas"}
    assert entry["parser"] == parser
    assert listed == [entry] and got == entry
    assert server.records(KB)[0]["labels"] == [hr]


@async_test
async def test_file_types_knob_refuses_unsupported_types(
    maiagent_factory: Callable[..., MaiAgentServer],
) -> None:
    server = maiagent_factory(file_types="txt,pdf")
    async with api(server) as client:
        exe = await client.upload(b"MZ", filename="setup.exe")
        txt = await client.upload(b"hello", filename="notes.TXT")
        refused, accepted = await client.register(exe), await client.register(txt)
    assert refused.status == 400 and "Unsupported file type" in (await refused.json())["detail"]
    assert accepted.status == 201


@async_test
async def test_parser_calls_served_by_the_docs_dialect_missing_in_the_examples(
    maiagent_factory: Callable[..., MaiAgentServer],
) -> None:
    docs = maiagent_factory(dialect="docs", supported_types="txt,pdf", parse_failure_rate=1.0)
    examples = maiagent_factory(dialect="examples")
    async with api(docs) as client:
        types = await (await client.call("GET", "parsers/supported-file-types/")).json()
        key = await client.upload(b"hello")
        await client.register(key)
        entry = docs.records(KB)[-1]["id"]
        reason = await client.call(
            "GET", f"knowledge-bases/{KB}/files/{entry}/latest-failed-reason/"
        )
        reason_body = await reason.json()
    async with api(examples) as client:
        missing = [
            (await client.call("GET", "parsers/supported-file-types/")).status,
            (
                await client.call("GET", f"knowledge-bases/{KB}/files/x/latest-failed-reason/")
            ).status,
        ]
    assert [t["fileType"] for t in types] == ["pdf", "txt"]
    assert all(t["parsers"][0]["isDefault"] for t in types)
    assert reason.status == 200 and "OCR" in reason_body["reason"]
    assert missing == [404, 404]


@async_test
async def test_stuck_entries_reparse_with_ocr_and_a_slow_deleting_phase(
    maiagent_factory: Callable[..., MaiAgentServer],
) -> None:
    from uploader.localserver import OCR_PARSER

    server = maiagent_factory(stuck_rate=1.0, reparse_failure_rate=1.0, delete_phase=0.5)
    async with api(server) as client:
        for name in ("a.txt", "b.txt"):
            await client.register(await client.upload(b"hello", filename=name))
        a, b = (r["id"] for r in server.records(KB))
        stuck = {r["status"] for r in server.records(KB)}
        body = [{"id": a}, {"id": b, "parser": OCR_PARSER}]
        reparsed = await client.call(
            "PATCH", f"knowledge-bases/{KB}/files/batch-reparse/", json=body
        )
        after = {r["id"]: r["status"] for r in server.records(KB)}
        deleted = await client.call("DELETE", f"knowledge-bases/{KB}/files/{a}/")
        deleting = {r["id"]: r["status"] for r in server.records(KB)}
        await asyncio.sleep(1.0)
    assert stuck == {"processing"}
    assert reparsed.status == 200
    assert after == {a: "failed", b: "done"}  # an OCR parser reads what the default one cannot
    assert deleted.status == 204 and deleting[a] == "deleting"
    assert [r["id"] for r in server.records(KB)] == [b]


# ----- update-metadata ---------------------------------------------------------------------


async def registered_entry(client: Api, server: MaiAgentServer) -> str:
    key = await client.upload(b"hello")
    await client.register(key)
    return server.records(KB)[-1]["id"]


@async_test
async def test_update_metadata_in_both_methods_and_label_forms(
    maiagent: MaiAgentServer,
) -> None:
    hr, legal = maiagent.add_label(KB, "hr"), maiagent.add_label(KB, "legal")
    async with api(maiagent) as client:
        file_id = await registered_entry(client, maiagent)
        path = f"knowledge-bases/{KB}/files/{file_id}/update-metadata/"
        body = {"labels": [{"id": hr["id"]}], "rawUserDefineMetadata": {"a": "1"}}
        patched = await client.call("PATCH", path, json=body)
        assert patched.status == 200
        assert (await patched.json())["labels"] == [hr]
        posted = await client.call("POST", path, json={"labels": [legal["id"], hr["id"]]})
        assert posted.status == 200
        unknown = await client.call("PATCH", path, json={"labels": [str(uuid.uuid4())]})
        bad_meta = await client.call("PATCH", path, json={"rawUserDefineMetadata": "a=1"})
        empty = await client.call("PATCH", path, json={})
        wrong_method = await client.call("GET", path)
        listed = (await (await client.call("GET", f"knowledge-bases/{KB}/files/")).json())[
            "results"
        ]
    assert (unknown.status, bad_meta.status, empty.status) == (400, 400, 400)
    assert wrong_method.status == 405
    assert listed[0]["labels"] == [legal, hr]
    assert listed[0]["rawUserDefineMetadata"] == {"a": "1"}  # kept when only labels change
    stats = maiagent.stats()
    assert (stats["update_metadata"], stats["update_metadata_patch"]) == (6, 4)
    assert stats["update_metadata_post"] == 1


@async_test
async def test_update_metadata_knobs_refuse_a_method_or_a_label_form(
    maiagent_factory: Callable[..., MaiAgentServer],
) -> None:
    server = maiagent_factory(update_metadata_methods="POST", update_metadata_label_forms="ids")
    hr = server.add_label(KB, "hr")
    async with api(server) as client:
        file_id = await registered_entry(client, server)
        path = f"knowledge-bases/{KB}/files/{file_id}/update-metadata/"
        patch = await client.call("PATCH", path, json={"labels": [hr["id"]]})
        objects = await client.call("POST", path, json={"labels": [{"id": hr["id"]}]})
        ids = await client.call("POST", path, json={"labels": [hr["id"]]})
        server.faults.update(
            {"update_metadata_methods": "PATCH", "update_metadata_label_forms": "objects"}
        )
        post = await client.call("POST", path, json={"labels": [{"id": hr["id"]}]})
        bare = await client.call("PATCH", path, json={"labels": [hr["id"]]})
    assert (patch.status, patch.headers["Allow"]) == (405, "POST")
    assert objects.status == 400 and "labels" in await objects.json()
    assert ids.status == 200
    assert post.status == 405 and bare.status == 400
    assert server.records(KB)[0]["labels"] == [hr]


@async_test
async def test_only_update_metadata_calls_show_in_the_counters(maiagent: MaiAgentServer) -> None:
    hr = maiagent.add_label(KB, "hr")
    root = maiagent.base_url.removesuffix("/api/v1/")
    async with api(maiagent) as client:
        file_id = await registered_entry(client, maiagent)
        async with client.session.delete(f"{root}/_control/stats") as r:
            assert r.status == 204
        assert set(maiagent.stats().values()) == {0}
        path = f"knowledge-bases/{KB}/files/{file_id}/update-metadata/"
        await client.call("PATCH", path, json={"labels": [{"id": hr["id"]}]})
        async with client.session.get(f"{root}/_control/stats") as r:
            stats = await r.json()
    assert {name: n for name, n in stats.items() if n} == {
        "update_metadata": 1,
        "update_metadata_patch": 1,
        "total": 1,
    }
    maiagent.reset_stats()
    assert maiagent.stats()["total"] == 0


# ----- deletes -----------------------------------------------------------------------------


@async_test
async def test_the_first_deletes_of_an_entry_conflict(
    maiagent_factory: Callable[..., MaiAgentServer],
) -> None:
    server = maiagent_factory(delete_conflict_first=2)
    entry, other = server.add_entry(KB, "a.txt", 1), server.add_entry(KB, "b.txt", 1)
    async with api(server) as client:
        statuses = [
            (await client.call("DELETE", f"knowledge-bases/{KB}/files/{entry['id']}/")).status
            for _ in range(4)
        ]
        first_of_other = await client.call("DELETE", f"knowledge-bases/{KB}/files/{other['id']}/")
    assert statuses == [409, 409, 204, 404]
    assert first_of_other.status == 409
    assert [r["id"] for r in server.records(KB)] == [other["id"]]


@async_test
async def test_delete_500_still_deletes_and_batch_delete_refuses_an_empty_list(
    maiagent_factory: Callable[..., MaiAgentServer],
) -> None:
    server = maiagent_factory(delete_500_rate=1.0)
    entry = server.add_entry(KB, "a.txt", 1)
    async with api(server) as client:
        failed = await client.call("DELETE", f"knowledge-bases/{KB}/files/{entry['id']}/")
        empty = await client.call(
            "POST", f"knowledge-bases/{KB}/files/batch-delete/", json={"ids": []}
        )
    assert failed.status == 500 and server.records(KB) == []
    assert empty.status == 400


# ----- outages -----------------------------------------------------------------------------


@async_test
async def test_stop_and_restart_on_the_same_port_keeps_state(maiagent: MaiAgentServer) -> None:
    base = maiagent.base_url
    async with api(maiagent) as client:
        key = await client.upload(b"hello")
        await client.register(key)
        maiagent.shutdown()
        with pytest.raises(aiohttp.ClientConnectorError):
            await client.call("GET", f"knowledge-bases/{KB}/files/")
        maiagent.restart()
        listed = await (await client.call("GET", f"knowledge-bases/{KB}/files/")).json()
    assert maiagent.base_url == base
    assert [e["file"] for e in listed["results"]] == [key]
    assert maiagent.content(key) == b"hello"


@pytest.mark.parametrize("mode", ["refuse", "503"])
@async_test
async def test_an_outage_for_a_while(maiagent: MaiAgentServer, mode: str) -> None:
    path = f"knowledge-bases/{KB}/files/"
    async with api(maiagent) as client:
        maiagent.outage(1.0, mode)
        if mode == "refuse":
            with pytest.raises(aiohttp.ClientConnectorError):
                await client.call("GET", path)
        else:
            assert (await client.call("GET", path)).status == 503
        await until_served(client, path)


@async_test
async def test_unavailable_knob_and_outage_control_endpoint(maiagent: MaiAgentServer) -> None:
    root = maiagent.base_url.removesuffix("/api/v1/")
    async with api(maiagent) as client:
        presigned = await client.presign()
        maiagent.faults.unavailable = True
        s3 = await client.post_form(presigned["url"], presigned["fields"], b"hello")
        api_call = await client.call("GET", f"knowledge-bases/{KB}/files/")
        maiagent.faults.unavailable = False
        async with client.session.post(f"{root}/_control/outage", json={"seconds": 1.0}) as r:
            assert r.status == 204
        await asyncio.sleep(0.3)
        with pytest.raises(aiohttp.ClientConnectorError):
            await client.call("GET", f"knowledge-bases/{KB}/files/")
        await until_served(client, f"knowledge-bases/{KB}/files/")
    assert (s3.status, api_call.status) == (503, 503)


@pytest.mark.parametrize("knob", [field.name for field in dataclasses.fields(Faults)])
def test_every_knob_is_documented_in_the_package_and_its_page(knob: str) -> None:
    """`--help` prints the package docstring; docs/localserver.md is where a reader finds it."""
    page = (ROOT / "docs" / "localserver.md").read_text()
    line = re.compile(rf"(^|[\s/`]){knob}`?( / `?\w+`?)?: ", re.M)

    assert line.search(uploader.localserver.__doc__ or ""), knob
    assert line.search(page), knob
