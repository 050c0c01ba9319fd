"""Shared fixtures: an in-process MaiAgent-compatible server on a real socket."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.maiagent_server import Faults, MaiAgentServer

_KNOBS = {field.name for field in dataclasses.fields(Faults)}


@pytest.fixture
def maiagent() -> Iterator[MaiAgentServer]:
    """A server with defaults: api key "test-key", one knowledge base "kb-test", no faults."""
    with MaiAgentServer().run_in_thread() as server:
        yield server


@pytest.fixture
def maiagent_factory() -> Iterator[Callable[..., MaiAgentServer]]:
    """Start servers with knobs set from the first request, e.g. `maiagent_factory(rps_limit=5)`.

    Keyword arguments named after a Faults knob go into a new Faults (so do not also pass
    faults=); the rest (api_key, kbs, faults) go to MaiAgentServer. Every server started is
    stopped at teardown.
    """
    with contextlib.ExitStack() as stack:

        def start(**kwargs: Any) -> MaiAgentServer:
            knobs = {name: kwargs.pop(name) for name in list(kwargs) if name in _KNOBS}
            if knobs:
                kwargs["faults"] = Faults(**knobs)
            return stack.enter_context(MaiAgentServer(**kwargs).run_in_thread())

        yield start
