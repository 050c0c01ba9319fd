"""Put on PYTHONPATH, this makes a Linux interpreter look like Windows' to the uploader: what
only POSIX has is gone before any of the program is imported.

- `fcntl`, `resource` and `termios` cannot be imported (ModuleNotFoundError, as on Windows);
- `os` has no O_NOFOLLOW, O_NONBLOCK, O_CLOEXEC or `pread`, `select` no `poll`;
- the event loop has no signal handlers: `add_signal_handler` and `remove_signal_handler`
  raise NotImplementedError, as Windows' ProactorEventLoop does.
"""

from __future__ import annotations

import asyncio.unix_events
import importlib.abc
import os
import select
import sys
from collections.abc import Sequence
from typing import Any

HIDDEN = frozenset({"fcntl", "resource", "termios"})


class _Hidden(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Sequence[str] | None = None, target: Any = None) -> None:
        if name in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _Hidden())
for _name in HIDDEN:
    sys.modules.pop(_name, None)
for _flag in ("O_NOFOLLOW", "O_NONBLOCK", "O_CLOEXEC", "pread"):
    if hasattr(os, _flag):
        delattr(os, _flag)
if hasattr(select, "poll"):
    del select.poll


def _no_signal_handlers(*_args: Any, **_kwargs: Any) -> Any:
    raise NotImplementedError


asyncio.unix_events._UnixSelectorEventLoop.add_signal_handler = _no_signal_handlers  # type: ignore[method-assign]
asyncio.unix_events._UnixSelectorEventLoop.remove_signal_handler = _no_signal_handlers  # type: ignore[method-assign]
