"""Shared fixtures: an in-process MaiAgent-compatible server on a real socket, and moto's S3."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.helpers import S3_BUCKET
from uploader.localserver import Faults, MaiAgentServer

# The session's PostgreSQL server and a fresh queue on it: `pg_server`, `pg_url`.
pytest_plugins = ["tests.pg_server"]

# The suite asserts English messages whatever this machine's locale (test_i18n asks for others).
os.environ["LANGUAGE"] = "en"

_KNOBS = {field.name for field in dataclasses.fields(Faults)}


@pytest.fixture
def dialect(request: pytest.FixtureRequest) -> str:
    """The API dialect `maiagent` and `maiagent_factory` speak: "examples" unless a test asks
    for another with `@pytest.mark.parametrize("dialect", DIALECTS, indirect=True)` (or a plain
    parametrize of `dialect`). "examples" until the client reads the documented shapes."""
    return getattr(request, "param", "docs")


@pytest.fixture
def maiagent(dialect: str) -> Iterator[MaiAgentServer]:
    """A server with defaults: api key "test-key", one knowledge base "kb-test", no faults,
    speaking `dialect`."""
    with MaiAgentServer(dialect=dialect).run_in_thread() as server:
        yield server


@pytest.fixture
def docs_server() -> Iterator[MaiAgentServer]:
    """Like `maiagent`, always speaking the docs dialect."""
    with MaiAgentServer(dialect="docs").run_in_thread() as server:
        yield server


@pytest.fixture
def maiagent_factory(dialect: str) -> Iterator[Callable[..., MaiAgentServer]]:
    """Start servers with knobs set from the first request, e.g. `maiagent_factory(rps_limit=5)`.

    Keyword arguments named after a Faults knob go into a new Faults (so do not also pass
    faults=); the rest (api_key, kbs, faults, dialect — `dialect` by default) go to
    MaiAgentServer. Every server started is stopped at teardown.
    """
    with contextlib.ExitStack() as stack:

        def start(**kwargs: Any) -> MaiAgentServer:
            knobs = {name: kwargs.pop(name) for name in list(kwargs) if name in _KNOBS}
            if knobs:
                kwargs["faults"] = Faults(**knobs)
            kwargs.setdefault("dialect", dialect)
            return stack.enter_context(MaiAgentServer(**kwargs).run_in_thread())

        yield start


@pytest.fixture(scope="session")
def s3() -> Iterator[Any]:
    """moto's S3 server on a free port of 127.0.0.1: a boto3 client for it (SigV4, as the
    service's presigned posts are), with the bucket `S3_BUCKET` made."""
    # Imported here: moto takes seconds to import, and only the S3 tests need it.
    import boto3
    from botocore.config import Config
    from moto.server import ThreadedMotoServer

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
        client.create_bucket(Bucket=S3_BUCKET)
        yield client
    finally:
        server.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests marked slow run first, so the two test processes of `make test` end on short
    tests together instead of one waiting for the other's last long scenario (the order is the
    same in every process, as pytest-xdist requires).

    `@pytest.mark.posix_only("why")`: skipped where the system is not POSIX (Windows),
    with the reason the test gives."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    if os.name == "posix":
        return
    for item in items:
        for mark in item.iter_markers("posix_only"):
            why = mark.args[0] if mark.args else mark.kwargs.get("reason", "needs POSIX")
            item.add_marker(pytest.mark.skip(reason=f"POSIX only: {why}"))
