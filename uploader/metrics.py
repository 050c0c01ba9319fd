"""`sync --watch --metrics-addr HOST:PORT`: what a long-running mirror exposes to Prometheus
(prometheus_client, on a registry of its own): files and bytes by state and failed files by
error kind per knowledge base, read from the database after every cycle, and the cycles
themselves (how many, how long the last took, its exit code)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from .i18n import _


def parse_addr(text: str) -> tuple[str, int]:
    """HOST:PORT ([::1]:9100 for IPv6; :9100 for every interface)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(_("{text!r} is not HOST:PORT (e.g. 127.0.0.1:9100)").format(text=text))
    return host.strip("[]") or "0.0.0.0", int(port)


class Metrics:
    """The exporter: served from a thread of its own from the moment it is made."""

    def __init__(self, host: str, port: int) -> None:
        self.registry = CollectorRegistry()
        self.files = Gauge(
            "uploader_files", "Files per state.", ["kb_id", "state"], registry=self.registry
        )
        self.bytes = Gauge(
            "uploader_bytes", "Bytes of the files per state.", ["kb_id", "state"],
            registry=self.registry,
        )  # fmt: skip
        self.errors = Gauge(
            "uploader_failed_files", "Failed files per error kind.", ["kind"],
            registry=self.registry,
        )  # fmt: skip
        self.cycles = Counter(
            "uploader_sync_cycles", "Sync cycles done.", ["exit_code"], registry=self.registry
        )
        self.cycle_seconds = Gauge(
            "uploader_sync_cycle_seconds", "How long the last sync cycle took.",
            registry=self.registry,
        )  # fmt: skip
        self.server, self.thread = start_http_server(port, addr=host, registry=self.registry)

    @property
    def address(self) -> tuple[str, int]:
        return self.server.server_address[:2]  # type: ignore[return-value]

    def cycle(
        self,
        seconds: float,
        exit_code: int,
        states: Mapping[str, Mapping[str, tuple[int, int]]],
        errors: Mapping[str, int],
    ) -> None:
        """One cycle ended: its time and code, and the queue as it left it."""
        self.cycles.labels(exit_code=str(exit_code)).inc()
        self.cycle_seconds.set(seconds)
        for kb, by_state in states.items():
            for state, (files, nbytes) in by_state.items():
                self.files.labels(kb_id=kb, state=state).set(files)
                self.bytes.labels(kb_id=kb, state=state).set(nbytes)
        for kind, n in errors.items():
            self.errors.labels(kind=kind).set(n)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
