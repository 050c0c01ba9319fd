"""The client against every answer shape the two sources show, and against garbage.

Canned answers come from the scripted stand-in of tests/test_client.py (real sockets on
127.0.0.1); what needs its own wire behaviour (a slow S3 that lets the test rewrite the file
mid-stream, a second host that must never be asked) gets its own small aiohttp app here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.helpers import async_test
from tests.test_client import (
    FIELDS,
    KB,
    KB_FILES,
    KEY,
    PRESIGN,
    Action,
    fails,
    harness,
    reply,
    write_file,
)
from uploader.client import (
    KnowledgeBase,
    Label,
    Presigned,
    RegisterItem,
    RemoteEntry,
    Uploaded,
    key_matches,
)
from uploader.content import digest_of
from uploader.localserver import MaiAgentServer
from uploader.model import ErrorKind, Severity

KEY_SENT = "media/chatbots/chatbot-file/7f3c9a1e-0000-4000-8000-000000000001.xlsx"
ODD_KEY = "media/chatbot-file/0b1e/Q3 report (final)#2.pdf"  # Django percent-encodes these
ODD_URL = "https://media.maiagent.ai/media/chatbot-file/0b1e/Q3%20report%20%28final%29%232.pdf"
MS = 1728104372000


def docs_entry(**over: Any) -> dict[str, Any]:
    """An entry as the docs show it: absolute media URL, status object, string createdAt."""
    entry = {
        "id": "3b0c2f1e-aaaa-4bbb-8ccc-000000000001",
        "filename": "report.xlsx",
        "file": f"https://media.maiagent.ai/{KEY_SENT}",
        "fileType": "xlsx",
        "knowledgeBase": KB,
        "size": 582,
        "status": {"code": "initial", "message": "File uploaded, waiting to be parsed"},
        "createdAt": str(MS),
        "labels": [{"id": "lab-1", "name": "hr"}],
        "rawUserDefineMetadata": {"source": "nas"},
    }
    entry.update(over)
    return entry


def examples_entry(**over: Any) -> dict[str, Any]:
    """An entry as the examples read it: the key itself, status a string, createdAt a number."""
    entry = {"id": "f-1", "filename": "report.xlsx", "file": KEY_SENT, "status": "done"}
    entry["createdAt"] = MS
    entry.update(over)
    return entry


def page(results: list[Any], count: int | None = None, next_: str | None = None) -> dict:
    return {
        "count": len(results) if count is None else count,
        "next": next_,
        "previous": None,
        "results": results,
    }


ITEM = RegisterItem(KEY_SENT, "report.xlsx")

# --- reading every shape --------------------------------------------------------------------

REGISTER_SHAPES = [
    # (answer, status code expected, size, createdAt in seconds, labels, metadata)
    pytest.param([examples_entry()], "done", None, MS / 1000, (), None, id="examples-list"),
    pytest.param(
        page([docs_entry()]),
        "initial",
        582,
        MS / 1000,
        (Label("lab-1", "hr"),),
        {"source": "nas"},
        id="docs-page",
    ),
    pytest.param(
        [examples_entry(createdAt="2024-10-05T04:59:32Z", fileSize=9, labels=["lab-2"])],
        "done",
        9,
        MS / 1000,
        (Label("lab-2"),),
        None,
        id="iso-createdAt-fileSize-bare-label-ids",
    ),
    pytest.param(
        [examples_entry(createdAt=float(MS), file_size="12", status={"code": "reindexing"})],
        "reindexing",
        12,
        MS / 1000,
        (),
        None,
        id="float-ms-file_size-unknown-code",
    ),
    pytest.param(
        [examples_entry(createdAt="2024-10-05T12:59:32.000+08:00")],
        "done",
        None,
        MS / 1000,
        (),
        None,
        id="iso-with-offset",
    ),
]


@pytest.mark.parametrize(("answer", "status", "size", "created", "labels", "meta"), REGISTER_SHAPES)
@async_test
async def test_register_reads_either_sources_answer(
    answer: Any, status: str, size: int | None, created: float, labels: tuple, meta: Any
) -> None:
    async with harness() as (fake, client):
        fake.on(KB_FILES, reply(201, answer))
        [entry] = await client.register(KB, [ITEM])
    assert isinstance(entry, RemoteEntry)
    assert entry.has_key(KEY_SENT)
    assert entry.key == KEY_SENT
    assert (entry.filename, entry.status, entry.size, entry.labels, entry.metadata) == (
        "report.xlsx",
        status,
        size,
        labels,
        meta,
    )
    assert entry.created_at == pytest.approx(created)


@async_test
async def test_a_percent_encoded_media_url_matches_the_key_it_was_registered_with() -> None:
    async with harness() as (fake, client):
        fake.on(KB_FILES, reply(201, page([docs_entry(file=ODD_URL)])))
        [entry] = await client.register(KB, [RegisterItem(ODD_KEY, "Q3.pdf")])
    assert entry.has_key(ODD_KEY)
    assert entry.key == ODD_KEY
    assert not entry.has_key(KEY_SENT)


@pytest.mark.parametrize(
    ("file", "key", "match"),
    [
        (KEY_SENT, KEY_SENT, True),
        (f"https://media.maiagent.ai/{KEY_SENT}", KEY_SENT, True),
        (f"https://cdn.example/bucket/{KEY_SENT}?X-Amz-Signature=abc", KEY_SENT, True),
        (ODD_URL, ODD_KEY, True),
        (f"/{KEY_SENT}", KEY_SENT, True),
        ("/media/chatbot-file/0b1e/Q3%20report%20%28final%29%232.pdf", ODD_KEY, True),
        ("s3://bucket/media/a/b.txt", "media/a/b.txt", True),
        ("media/100%25.txt", "media/100%25.txt", True),  # a bare key is never decoded
        ("media/100%25.txt", "media/100%.txt", False),
        # A key that is only the tail of another path segment is another file.
        ("https://m/media/xa/b.txt", "a/b.txt", False),
        ("https://m/media/a/b.txt?k=media/other.txt", "media/other.txt", False),
        ("https://m/media/a/b.txt", "media/a/b.txt.bak", False),
        ("http://[::1/media/a/b.txt", "media/a/b.txt", False),
        (None, KEY_SENT, False),
        ("", KEY_SENT, False),
    ],
)
def test_key_matches(file: str | None, key: str, match: bool) -> None:
    assert key_matches(file, key) is match


@async_test
async def test_listing_follows_next_relative_or_absolute_whatever_page_size_is_served() -> None:
    second = f"/api/v1/{KB_FILES}?page=2&page_size=100"
    async with harness() as (fake, client):
        newer, older, oldest = (
            docs_entry(id=f"e{n}", createdAt=str(MS - n * 1000)) for n in range(3)
        )
        fake.on(
            KB_FILES,
            reply(200, page([newer, older], count=3, next_=second)),  # asked 100, got 2
            reply(200, page([oldest], count=3, next_=None)),
        )
        first = await client.list_files(KB, 1, 100)
        assert first.next is not None
        last = await client.next_files(KB, first.next)
    assert [e.id for e in first.entries] == ["e0", "e1"]
    assert (first.count, first.next) == (3, f"{fake.root}{second}")
    assert [e.id for e in last.entries] == ["e2"] and last.next is None
    assert first.newest_first() and last.newest_first()
    assert [s.query for s in fake.requests(KB_FILES)] == [
        "page=1&page_size=100",
        "page=2&page_size=100",
    ]


@async_test
async def test_a_listing_that_is_not_newest_first_says_so() -> None:
    async with harness() as (fake, client):
        rows = [examples_entry(id="a", createdAt=MS), examples_entry(id="b", createdAt=MS + 1)]
        fake.on(KB_FILES, reply(200, page(rows)))
        listed = await client.list_files(KB, 1, 100)
    assert not listed.newest_first()


@async_test
async def test_a_bare_list_listing_is_one_page() -> None:
    async with harness() as (fake, client):
        fake.on(KB_FILES, reply(200, [examples_entry(), examples_entry(id="f-2")]))
        listed = await client.list_files(KB, 1, 100)
        fake.on(KB_FILES, reply(200, [examples_entry()]))
        assert await client.check_kb(KB) == 1
    assert (len(listed.entries), listed.count, listed.next) == (2, 2, None)


@contextlib.asynccontextmanager
async def serve(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """A one-route aiohttp app on 127.0.0.1; yields its root URL."""
    app = web.Application(client_max_size=1024**3)
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("where", ["other-port", "localhost-name", "https-downgrade", "garbage"])
@async_test
async def test_next_is_never_followed_off_the_api_host(where: str) -> None:
    asked: list[dict[str, str]] = []

    async def elsewhere(request: web.Request) -> web.StreamResponse:
        asked.append(dict(request.headers))
        return web.json_response(page([]))

    async with serve(elsewhere) as other, harness() as (fake, client):
        port = fake.root.rsplit(":", 1)[1]
        next_ = {
            "other-port": f"{other}/api/v1/{KB_FILES}?page=2",
            "localhost-name": f"http://localhost:{other.rsplit(':', 1)[1]}/api/v1/{KB_FILES}",
            "https-downgrade": f"https://127.0.0.1:{port}/api/v1/{KB_FILES}?page=2",
            "garbage": "http://[::1/api/v1/",
        }[where]
        fake.on(KB_FILES, reply(200, page([docs_entry()], count=2, next_=next_)))
        first = await client.list_files(KB, 1, 100)
        assert first.next is not None
        err = await fails(client.next_files(KB, first.next))
        fake.on("knowledge-bases/", reply(200, page([{"id": "kb1", "name": "a"}], 2, next_)))
        kbs_err = await fails(client.list_knowledge_bases())
    assert asked == []
    for e in (err, kbs_err):
        assert (e.kind, e.error_kind) == (Severity.TRANSIENT, ErrorKind.BAD_RESPONSE)
        assert "next points away from the API host" in str(e)


# --- garbage --------------------------------------------------------------------------------

REGISTER_GARBAGE = [
    (page([docs_entry(id=None)]), "id is null"),
    ([examples_entry(id="")], "empty id"),
    ([examples_entry(id=["x"])], "id is a list"),
    ([examples_entry(filename=["a", "b"])], "filename is a list"),
    ([examples_entry(filename=None)], "filename is null"),
    ([examples_entry(status=7)], "status is a number"),
    ([examples_entry(status={"message": "no code"})], "status.code is null"),
    ([examples_entry(createdAt="yesterday")], "createdAt"),
    ([examples_entry(size=-1)], "size is a number"),
    ([examples_entry(labels="hr")], "labels is a string"),
    ([examples_entry(rawUserDefineMetadata=[1])], "rawUserDefineMetadata is a list"),
    ([examples_entry(file={"url": "x"})], "file is an object"),
    ({"count": 1, "results": "nope"}, "results is a string"),
    ([None], "entry 0 is null"),
    (b'"ok"', "the answer is a string, not a list or a page"),
]


@pytest.mark.parametrize(("answer", "names"), REGISTER_GARBAGE)
@async_test
async def test_a_register_answer_of_garbage_is_a_doubtful_bad_response(
    answer: Any, names: str
) -> None:
    async with harness() as (fake, client):
        fake.on(KB_FILES, reply(201, answer))
        err = await fails(client.register(KB, [ITEM]))
    assert (err.kind, err.error_kind, err.maybe_applied) == (
        Severity.TRANSIENT,
        ErrorKind.BAD_RESPONSE,
        True,
    )
    assert str(err).startswith("register: bad answer: ")
    assert names in str(err)
    assert "\n" not in str(err)


PRESIGN_GARBAGE = [
    ({"url": "http://[::1", "fields": FIELDS}, "url is not an http(s) URL"),
    ({"url": "http://host:port/", "fields": FIELDS}, "url is not an http(s) URL"),
    ({"url": "ftp://host/", "fields": FIELDS}, "url is not an http(s) URL"),
    ({"url": "/relative", "fields": FIELDS}, "url is not an http(s) URL"),
    ({"url": None, "fields": FIELDS}, "url is null"),
    ({"url": "https://s3/", "fields": ["key"]}, "fields is a list"),
    ({"url": "https://s3/", "fields": {"key": 5}}, "fields.key is a number"),
    ({"url": "https://s3/", "fields": {"policy": "p"}}, "fields.key is missing"),
    ([], "not an object"),
]


@pytest.mark.parametrize(("answer", "names"), PRESIGN_GARBAGE)
@async_test
async def test_a_presign_answer_of_garbage_is_a_bad_response(answer: Any, names: str) -> None:
    async with harness() as (fake, client):
        fake.on(PRESIGN, reply(200, answer))
        err = await fails(client.presign("a.txt", 3))
    assert (err.kind, err.error_kind, err.maybe_applied) == (
        Severity.TRANSIENT,
        ErrorKind.BAD_RESPONSE,
        False,
    )
    assert str(err).startswith("presign: bad answer: ") and names in str(err)


@async_test
async def test_a_listing_of_garbage_names_the_entry_and_field() -> None:
    async with harness() as (fake, client):
        rows = [examples_entry(), examples_entry(id="f-2", filename=["x"])]
        fake.on(KB_FILES, reply(200, page(rows)), reply(200, {"count": "many", "results": []}))
        bad_row = await fails(client.list_files(KB, 1, 100))
        bad_count = await fails(client.list_files(KB, 1, 100))
        fake.on(KB_FILES + "f-1/", reply(200, examples_entry(id=None)))
        bad_get = await fails(client.get_file(KB, "f-1"))
    assert str(bad_row) == "list files: bad answer: results[1].filename is a list, not a string"
    assert "count is a string" in str(bad_count)
    assert str(bad_get) == "get file: bad answer: entry.id is null, not an id"
    assert all(e.error_kind == ErrorKind.BAD_RESPONSE for e in (bad_row, bad_count, bad_get))


async def endless(request: web.Request) -> web.StreamResponse:
    """A 200 that never ends: 1 MiB chunks, chunked encoding, no length."""
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    chunk = b"[" + b" " * (1024 * 1024 - 1)
    with contextlib.suppress(ConnectionError):
        for _ in range(400):
            await resp.write(chunk)
    return resp


async def declared_huge(request: web.Request) -> web.StreamResponse:
    """Declares 400 MB, then dawdles: only the declaration can stop the client in time."""
    resp = web.StreamResponse(status=200)
    resp.content_length = 400 * 1024 * 1024
    await resp.prepare(request)
    with contextlib.suppress(ConnectionError):
        await resp.write(b"[")
        await asyncio.sleep(30)
    return resp


@pytest.mark.parametrize("answer", [endless, declared_huge], ids=["streamed", "declared"])
@async_test
async def test_a_huge_answer_is_cut_off_not_read_whole(answer: Action) -> None:
    async with harness(timeout=20) as (fake, client):
        fake.on(KB_FILES, answer)
        tracemalloc.start()
        try:
            started = time.monotonic()
            err = await fails(client.register(KB, [ITEM]))
            elapsed = time.monotonic() - started
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert (err.kind, err.error_kind, err.maybe_applied) == (
        Severity.TRANSIENT,
        ErrorKind.BAD_RESPONSE,
        True,
    )
    assert str(err) == "register: bad answer: larger than 16 MiB"
    assert peak < 48 * 1024 * 1024
    assert elapsed < 15  # not the 20 s timeout


@async_test
async def test_a_long_error_body_is_not_read_whole() -> None:
    async with harness(max_body=1024 * 1024) as (fake, client):

        async def huge_400(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(status=400)
            await resp.prepare(request)
            padding = b" " * (1024 * 1024)
            with contextlib.suppress(ConnectionError):
                await resp.write(b'{"detail": "bad file"}')
                for _ in range(64):
                    await resp.write(padding)
            return resp

        fake.on(PRESIGN, huge_400)
        tracemalloc.start()
        try:
            err = await fails(client.presign("a", 1))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert (err.kind, err.error_kind) == (Severity.PERMANENT, ErrorKind.HTTP_4XX)
    assert peak < 16 * 1024 * 1024


# --- the duplicate-key 400 ------------------------------------------------------------------

DUPLICATES = [
    {"detail": "Duplicate File Upload"},
    {"files": [{"file": ["The file already exists in the knowledge base."]}]},
    {"detail": "檔案重複上傳"},
]


@pytest.mark.parametrize("body", DUPLICATES)
@async_test
async def test_a_duplicate_key_400_is_its_own_kind(body: dict) -> None:
    async with harness() as (fake, client):
        fake.on(KB_FILES, reply(400, body))
        err = await fails(client.register(KB, [ITEM]))
    assert (err.kind, err.error_kind, err.status, err.maybe_applied) == (
        Severity.TRANSIENT,
        ErrorKind.DUPLICATE_KEY,
        400,
        True,
    )
    assert str(err).startswith("register failed (HTTP 400): ")


@async_test
async def test_other_register_400s_stay_permanent_with_the_services_message() -> None:
    async with harness() as (fake, client):
        fake.on(KB_FILES, reply(400, {"detail": "Invalid UUID: 'x'"}))
        err = await fails(client.register(KB, [ITEM]))
        fake.on(PRESIGN, reply(400, {"detail": "Duplicate File Upload"}))
        presign = await fails(client.presign("a", 1))
    assert (err.kind, err.error_kind, err.maybe_applied) == (
        Severity.PERMANENT,
        ErrorKind.HTTP_4XX,
        False,
    )
    assert str(err) == "register failed (HTTP 400): Invalid UUID: 'x'"
    assert presign.error_kind == ErrorKind.HTTP_4XX  # only a register can be a duplicate key


@pytest.mark.parametrize(
    "body",
    [
        {"detail": "Unsupported file type: .exe"},
        {"files": [{"file": ["File type 'exe' is not supported."]}]},
        {"detail": "不支援的檔案類型"},
    ],
)
@async_test
async def test_a_register_refused_for_its_type_is_unsupported_type_for_good(body: dict) -> None:
    async with harness() as (fake, client):
        fake.on(KB_FILES, reply(400, body))
        err = await fails(client.register(KB, [ITEM]))
    assert (err.kind, err.error_kind, err.maybe_applied) == (
        Severity.PERMANENT,
        ErrorKind.UNSUPPORTED_TYPE,
        False,
    )


# --- the file, as uploaded ------------------------------------------------------------------


@async_test
async def test_upload_returns_the_size_mtime_and_content_hash_it_sent(tmp_path: Path) -> None:
    for size in (10, 300 * 1024):  # read whole, and streamed
        path, _ = write_file(tmp_path, f"f{size}", size)
        st = os.stat(path)
        async with harness() as (fake, client):
            sent = await client.upload(Presigned(f"{fake.root}/s3/", FIELDS), path, size, "f")
        digest = digest_of(Path(path).read_bytes())
        assert sent == Uploaded(size, st.st_mtime_ns, digest)


@pytest.mark.posix_only("makes symbolic links (a privilege on Windows)")
@pytest.mark.parametrize("size", [10, 300 * 1024])
@async_test
async def test_a_symlink_swapped_in_after_enqueue_is_not_followed(
    tmp_path: Path, size: int
) -> None:
    outside, _ = write_file(tmp_path, "secret.bin", size)
    link = tmp_path / "tree" / "doc.bin"
    link.parent.mkdir()
    link.symlink_to(outside)
    async with harness() as (fake, client):
        target = Presigned(f"{fake.root}/s3/", FIELDS)
        err = await fails(client.upload(target, str(link), size, "doc.bin"))
        assert fake.requests("s3/") == []
        # --follow-symlinks queued the link on purpose: then it is followed.
        await client.upload(target, str(link), size, "doc.bin", follow_symlinks=True)
    assert (err.kind, err.error_kind) == (Severity.PERMANENT, ErrorKind.UNREADABLE)
    assert str(err) == "local file unreadable (a symbolic link, not followed)"
    assert len(fake.requests("s3/")) == 1


@pytest.mark.parametrize("size", [10, 300 * 1024])
@async_test
async def test_a_file_that_grew_since_its_stat_is_retried_not_failed(
    tmp_path: Path, size: int
) -> None:
    path, _ = write_file(tmp_path, "grows.log", size)
    with open(path, "ab") as f:
        f.write(b"appended")
    async with harness() as (fake, client):
        err = await fails(client.upload(Presigned(f"{fake.root}/s3/", FIELDS), path, size, "g"))
    assert (err.kind, err.error_kind) == (Severity.TRANSIENT, ErrorKind.CHANGED)
    assert fake.requests("s3/") == []


@async_test
async def test_a_file_rewritten_while_it_streams_is_not_taken_for_uploaded(
    tmp_path: Path,
) -> None:
    size = 4 * 1024 * 1024
    path, _ = write_file(tmp_path, "torn.bin", size)
    received = 0

    async def slow_s3(request: web.Request) -> web.StreamResponse:
        nonlocal received
        while chunk := await request.content.read(64 * 1024):
            if not received:
                # The first bytes are here: the file is rewritten in place, same size.
                with open(path, "r+b") as f:
                    f.write(os.urandom(size))
                await asyncio.sleep(0.05)
            received += len(chunk)
        return web.Response(status=204)

    async with serve(slow_s3) as s3, harness() as (_, client):
        err = await fails(client.upload(Presigned(f"{s3}/", FIELDS), path, size, "torn.bin"))
    assert received > size  # the whole request went, and S3 said 204
    assert (err.kind, err.error_kind) == (Severity.TRANSIENT, ErrorKind.CHANGED)
    assert "written to while it was read" in str(err)


@async_test
async def test_a_file_truncated_while_it_streams_is_changed(tmp_path: Path) -> None:
    size = 4 * 1024 * 1024
    path, _ = write_file(tmp_path, "shrinks.bin", size)

    async def slow_s3(request: web.Request) -> web.StreamResponse:
        first = True
        while await request.content.read(64 * 1024):
            if first:
                os.truncate(path, 1000)
                first = False
        return web.Response(status=204)

    async with serve(slow_s3) as s3, harness() as (_, client):
        err = await fails(client.upload(Presigned(f"{s3}/", FIELDS), path, size, "s"))
    assert (err.kind, err.error_kind) == (Severity.TRANSIENT, ErrorKind.CHANGED)


# --- knowledge bases, labels, metadata, register extras --------------------------------------


@async_test
async def test_knowledge_bases_are_listed_across_pages() -> None:
    async with harness() as (fake, client):
        fake.on(
            "knowledge-bases/",
            reply(200, page([{"id": "kb1", "name": "HR", "filesCount": 3}], 2, "?page=2")),
            reply(200, page([{"id": "kb2", "name": "Legal"}], 2, None)),
        )
        fake.on(f"knowledge-bases/{KB}/", reply(200, {"id": KB, "name": "X", "filesCount": 0}))
        kbs = await client.list_knowledge_bases()
        one = await client.get_knowledge_base(KB)
        fake.on("knowledge-bases/nope/", reply(404, {"detail": "Not found."}))
        missing = await fails(client.get_knowledge_base("nope"))
    assert kbs == [KnowledgeBase("kb1", "HR", 3), KnowledgeBase("kb2", "Legal", None)]
    assert one == KnowledgeBase(KB, "X", 0)
    assert [s.query for s in fake.requests("knowledge-bases/")] == ["", "page=2"]
    assert (missing.kind, missing.error_kind) == (Severity.FATAL, ErrorKind.KB_NOT_FOUND)


@async_test
async def test_labels_are_listed_and_created() -> None:
    labels = f"knowledge-bases/{KB}/labels/"
    async with harness() as (fake, client):
        fake.on(
            labels,
            reply(200, page([{"id": "l1", "name": "hr"}, {"id": "l2", "name": "legal"}])),
            reply(201, {"id": "l3", "name": "batch-2026"}),
            reply(400, {"name": ["label with this name already exists."]}),
            reply(200, [{"id": None, "name": "x"}]),
        )
        listed = await client.list_labels(KB)
        made = await client.create_label(KB, "batch-2026")
        exists = await fails(client.create_label(KB, "hr"))
        garbage = await fails(client.list_labels(KB))
    assert listed == [Label("l1", "hr"), Label("l2", "legal")]
    assert made == Label("l3", "batch-2026")
    assert fake.requests(labels)[1].body == b'{"name":"batch-2026"}'
    assert (exists.kind, exists.error_kind, exists.status) == (
        Severity.PERMANENT,
        ErrorKind.LABEL_EXISTS,
        400,
    )
    assert garbage.error_kind == ErrorKind.BAD_RESPONSE and "results[0].id is null" in str(garbage)


@async_test
async def test_update_metadata_in_each_form_and_what_is_refused() -> None:
    path = KB_FILES + "f1/update-metadata/"
    async with harness() as (fake, client):
        fake.on(
            path,
            reply(405, {"detail": 'Method "PATCH" not allowed.'}),
            reply(400, {"labels": ["Expected a list of items"]}),
            reply(200, examples_entry(id="f1", labels=["l1"])),
            reply(204),
        )
        wrong_method = await fails(client.update_metadata(KB, "f1", ["l1"], {"a": "b"}))
        wrong_form = await fails(client.update_metadata(KB, "f1", ["l1"], None, "POST"))
        entry = await client.update_metadata(KB, "f1", ["l1"], {"a": "b"}, "POST", "ids")
        empty = await client.update_metadata(KB, "f1", None, {"a": "b"})
    assert (wrong_method.kind, wrong_method.error_kind, wrong_method.status) == (
        Severity.PERMANENT,
        ErrorKind.METHOD_NOT_ALLOWED,
        405,
    )
    assert (wrong_form.error_kind, wrong_form.status) == (ErrorKind.HTTP_4XX, 400)
    assert entry is not None and entry.labels == (Label("l1"),)
    assert empty is None
    seen = fake.requests(path)
    assert [s.method for s in seen] == ["PATCH", "POST", "POST", "PATCH"]
    assert [s.body for s in seen] == [
        b'{"labels":[{"id":"l1"}],"rawUserDefineMetadata":{"a":"b"}}',
        b'{"labels":[{"id":"l1"}]}',
        b'{"labels":["l1"],"rawUserDefineMetadata":{"a":"b"}}',
        b'{"rawUserDefineMetadata":{"a":"b"}}',
    ]


@async_test
async def test_register_sends_labels_metadata_and_parser_per_file() -> None:
    items = [
        RegisterItem("k1", "a.pdf", ("l1", "l2"), {"source": "nas"}, "parser-uuid"),
        RegisterItem("k2", "b.pdf"),
    ]
    async with harness() as (fake, client):
        answer = page([examples_entry(id="1", file="k1"), examples_entry(id="2", file="k2")])
        fake.on(KB_FILES, reply(201, answer), reply(201, answer))
        entries = await client.register(KB, items)
        await client.register(KB, items[:1], label_form="ids")
    assert [e.id for e in entries] == ["1", "2"]
    first, second = fake.requests(KB_FILES)
    assert first.body == (
        b'{"files":[{"file":"k1","filename":"a.pdf","labels":[{"id":"l1"},{"id":"l2"}],'
        b'"rawUserDefineMetadata":{"source":"nas"},"parser":"parser-uuid"},'
        b'{"file":"k2","filename":"b.pdf"}]}'
    )
    assert b'"labels":["l1","l2"]' in second.body


@async_test
async def test_a_field_value_echoed_in_a_message_is_redacted() -> None:
    async with harness() as (fake, client):
        fake.on(KB_FILES, reply(201, [examples_entry(createdAt=KEY)]))
        err = await fails(client.register(KB, [ITEM]))  # `fails` checks the key is absent
    assert err.error_kind == ErrorKind.BAD_RESPONSE and "[redacted]" in str(err)


def test_the_fixtures_speak_the_docs_by_default(
    maiagent: MaiAgentServer, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """The real service answers as its docs show, so that is what every test meets unless it
    asks for the example scripts' shapes."""
    assert maiagent.dialect == "docs"
    assert maiagent_factory().dialect == "docs"
    assert maiagent_factory(dialect="examples").dialect == "examples"


# --- the parser calls: supported types, why an entry failed, reparse --------------------------

TYPES = "parsers/supported-file-types/"


@pytest.mark.parametrize(
    "answer",
    [
        [{"fileType": "pdf", "parsers": []}, {"fileType": "TXT", "parsers": []}],
        {"count": 2, "next": None, "results": [{"fileType": ".pdf"}, {"file_type": "txt"}]},
        ["pdf", "txt"],
    ],
    ids=["docs", "page", "strings"],
)
@async_test
async def test_supported_types_in_every_shape(answer: Any) -> None:
    async with harness() as (fake, client):
        fake.on(TYPES, reply(200, answer))
        assert await client.supported_file_types() == frozenset({"pdf", "txt"})


@pytest.mark.parametrize("status", [404, 405])
@async_test
async def test_a_service_without_the_calls_says_so_by_none_or_false(status: int) -> None:
    async with harness() as (fake, client):
        fake.on(TYPES, reply(status, {"detail": "Not found."}))
        fake.on(f"{KB_FILES}e1/latest-failed-reason/", reply(status, {"detail": "Not found."}))
        fake.on(f"{KB_FILES}batch-reparse/", reply(status, {"detail": "Not found."}))
        assert await client.supported_file_types() is None
        assert await client.latest_failed_reason(KB, "e1") == (False, None)
        assert await client.batch_reparse(KB, [("e1", None)]) is False


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ({"reason": "no text found"}, "no text found"),
        ({"failedReason": "OCR needed"}, "OCR needed"),
        ({"latestFailedReason": {"message": "timeout"}}, "timeout"),
        (
            {"status": {"code": "failed", "message": "Embedding model missing"}},
            "Embedding model missing",
        ),
        ("plain words", "plain words"),
        ({"reason": None}, None),
    ],
)
@async_test
async def test_a_failed_reason_in_every_shape(answer: Any, reason: str | None) -> None:
    async with harness() as (fake, client):
        fake.on(f"{KB_FILES}e1/latest-failed-reason/", reply(200, answer))
        assert await client.latest_failed_reason(KB, "e1") == (True, reason)


@pytest.mark.parametrize("answer", [[{"id": "e1"}], {"detail": "ok"}, None])
@async_test
async def test_reparse_sends_a_top_level_array_and_takes_any_success(answer: Any) -> None:
    async with harness() as (fake, client):
        fake.on(f"{KB_FILES}batch-reparse/", reply(202 if answer is None else 200, answer))
        assert await client.batch_reparse(KB, [("e1", None), ("e2", "ocr-1")]) is True
        [seen] = fake.requests(f"{KB_FILES}batch-reparse/")
    assert seen.method == "PATCH"
    assert json.loads(seen.body) == [{"id": "e1"}, {"id": "e2", "parser": "ocr-1"}]
