"""Whether a run resumes one that stopped before its end, as opposed to a routine run over new
or changed files: only the first deserves "resuming" (a weekly incremental run that says it
resumes reads as if the last one had broken)."""

from __future__ import annotations

from .exitcodes import ExitCode
from .store.engine import Engine
from .store.runs import RunsStore

# How a run ends when it went through its queue: done, some files failed, nothing to do.
_WENT_THROUGH = (ExitCode.OK, ExitCode.FAILED, ExitCode.NOTHING_TO_DO)


async def resumes(engine: Engine) -> bool:
    """The last run was interrupted, stopped (an outage, a refused key) or never ended."""
    last = await RunsStore(engine).runs(last=1)
    if not last:
        return False
    return last[0]["ended_at"] is None or last[0]["exit_code"] not in _WENT_THROUGH
