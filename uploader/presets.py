"""The reference script's settings, for its users: its three network presets as `--network`,
and its setting names answered with the option that does the same here.

The presets are the script's README's "效能調優建議" (good, average, poor networks), less
`batch_size`: the script read its files in batches of that many to bound its memory, while
here the queue streams them, so no batch size exists to tune.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any


class Network(str, enum.Enum):
    GOOD = "good"
    AVERAGE = "average"
    POOR = "poor"


@dataclass(frozen=True)
class Preset:
    workers: int
    max_retries: int
    retry_delay: float
    timeout: float

    def as_options(self) -> dict[str, Any]:
        return {
            "workers": self.workers,
            "max_retries": self.max_retries,
            "retry_delay": self.retry_delay,
            "timeout": self.timeout,
        }


PRESETS: Mapping[Network, Preset] = {
    Network.GOOD: Preset(workers=20, max_retries=3, retry_delay=1.0, timeout=180.0),
    Network.AVERAGE: Preset(workers=10, max_retries=5, retry_delay=2.0, timeout=300.0),
    Network.POOR: Preset(workers=5, max_retries=5, retry_delay=5.0, timeout=600.0),
}


def apply(
    network: Network | None, options: Mapping[str, Any], explicit: Collection[str]
) -> dict[str, Any]:
    """`options` with the preset's values, except those the user gave (`explicit`): an option
    typed next to --network says what the user wants for that one setting."""
    chosen = dict(options)
    if network is None:
        return chosen
    for name, value in PRESETS[network].as_options().items():
        if name not in explicit:
            chosen[name] = value
    return chosen


# The script's UploadConfig fields whose name is not an option here, with the option to give
# instead, None for none (`max_retries` and `retry_delay` are options of the same name).
RENAMED: Mapping[str, str | None] = {
    "max_concurrent_uploads": "--workers",
    "timeout_seconds": "--timeout",
    "batch_size": None,
}
