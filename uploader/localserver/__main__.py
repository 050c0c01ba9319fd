"""`python -m uploader.localserver`: the server as a process (prints `listening on <base url>`),
every knob a flag."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal

import uploader.localserver
from uploader.localserver.app import MaiAgentServer
from uploader.localserver.dialects import DIALECTS
from uploader.localserver.faults import Faults


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Every Faults knob becomes a flag (--parse-delay, --no-list-size, ...)."""
    parser = argparse.ArgumentParser(
        prog="python -m uploader.localserver",
        description=uploader.localserver.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default="test-key")
    parser.add_argument("--kb", action="append", help="knowledge base ID or ID=NAME (repeatable)")
    parser.add_argument("--dialect", choices=DIALECTS, default="docs")
    for field in dataclasses.fields(Faults):
        flag = "--" + field.name.replace("_", "-")
        if isinstance(field.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
        else:
            kind = int if field.default is None else type(field.default)
            parser.add_argument(flag, type=kind, default=field.default)
    return parser.parse_args(argv)


async def _serve_forever(server: MaiAgentServer, port: int) -> None:
    await server.start(port=port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"listening on {server.base_url}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    try:
        faults = Faults(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Faults)})
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    kbs = dict(kb.partition("=")[::2] for kb in args.kb or ["kb-test"])
    kbs = {kb: name or kb for kb, name in kbs.items()}
    server = MaiAgentServer(api_key=args.api_key, kbs=kbs, faults=faults, dialect=args.dialect)
    try:
        import uvloop
    except ImportError:
        uvloop = None  # served outside the except block: its error is no context of theirs
    (asyncio.run if uvloop is None else uvloop.run)(_serve_forever(server, args.port))


if __name__ == "__main__":
    main()
