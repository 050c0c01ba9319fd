"""The bar the uploader is measured against: the protocol's calls and nothing else.

`upload DIR`: for every file, presign -> S3 multipart POST (policy fields, file last) ->
register, with `--workers` coroutines over one aiohttp session. No queue, no database, no
retries, no progress: an error is counted and the file dropped. Small files are read whole
(the cheapest way for a script); big ones are streamed by aiohttp from the open file.

`stream FILE`: one presign and one plain aiohttp streaming POST of FILE to the S3 endpoint,
the bar for big files.

Both print one JSON line: files, bytes, seconds (inside the event loop), errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Iterator

import aiohttp

SMALL = 1 << 20


def walk(root: str) -> Iterator[str]:
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            yield os.path.join(folder, name)


class Bare:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, api_key: str, kb: str):
        self.session = session
        self.base = base_url if base_url.endswith("/") else base_url + "/"
        self.headers = {"Authorization": f"Api-Key {api_key}"}
        self.kb = kb

    async def presign(self, name: str, size: int) -> dict:
        body = {
            "filename": name,
            "modelName": "chatbot-file",
            "fieldName": "file",
            "fileSize": size,
        }
        url = self.base + "upload-presigned-url/"
        async with self.session.post(url, json=body, headers=self.headers) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def post(self, presigned: dict, path: str, name: str, whole: bool) -> None:
        form = aiohttp.FormData()
        for key, value in presigned["fields"].items():
            form.add_field(key, value)
        with open(path, "rb") as f:
            content = f.read() if whole else f
            form.add_field("file", content, filename=name)
            async with self.session.post(presigned["url"], data=form) as resp:
                resp.raise_for_status()
                await resp.read()

    async def register(self, key: str, name: str) -> None:
        url = f"{self.base}knowledge-bases/{self.kb}/files/"
        body = {"files": [{"file": key, "filename": name}]}
        async with self.session.post(url, json=body, headers=self.headers) as resp:
            resp.raise_for_status()
            await resp.read()

    async def one(self, path: str) -> int:
        name, size = os.path.basename(path), os.path.getsize(path)
        presigned = await self.presign(name, size)
        await self.post(presigned, path, name, size <= SMALL)
        await self.register(presigned["fields"]["key"], name)
        return size


async def upload(args: argparse.Namespace) -> dict:
    paths = list(walk(args.folder))[: args.limit or None]
    pending = iter(paths)
    counts = {"files": 0, "bytes": 0, "errors": 0}
    tenth = max(len(paths) // 10, 1)
    marks: list[float] = []  # seconds at every tenth of the files: is it flat?
    async with aiohttp.ClientSession() as session:
        bare = Bare(session, args.base_url, args.api_key, args.kb)

        async def worker() -> None:
            for path in pending:
                try:
                    counts["bytes"] += await bare.one(path)
                    counts["files"] += 1
                except (aiohttp.ClientError, asyncio.TimeoutError, KeyError):
                    counts["errors"] += 1
                if (counts["files"] + counts["errors"]) % tenth == 0:
                    marks.append(round(time.perf_counter() - start, 3))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.workers)))
        return {**counts, "seconds": time.perf_counter() - start, "marks": marks}


async def stream(args: argparse.Namespace) -> dict:
    size = os.path.getsize(args.file)
    name = os.path.basename(args.file)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        bare = Bare(session, args.base_url, args.api_key, args.kb)
        start = time.perf_counter()
        presigned = await bare.presign(name, size)
        await bare.post(presigned, args.file, name, whole=False)
        seconds = time.perf_counter() - start
    return {"files": 1, "bytes": size, "errors": 0, "seconds": seconds}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bare_client")
    sub = parser.add_subparsers(dest="mode", required=True)
    up = sub.add_parser("upload")
    up.add_argument("folder")
    up.add_argument("--workers", type=int, default=10)
    up.add_argument("--limit", type=int, default=0, help="only the first N files")
    st = sub.add_parser("stream")
    st.add_argument("file")
    for p in (up, st):
        p.add_argument("--base-url", required=True)
        p.add_argument("--api-key", required=True)
        p.add_argument("--kb", required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    coro = upload(args) if args.mode == "upload" else stream(args)
    print(json.dumps(asyncio.run(coro)), flush=True)


if __name__ == "__main__":
    main()
