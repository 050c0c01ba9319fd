"""A slow uplink: uploads whose bytes are moving are never cut, never taken for an outage,
and `--bwlimit` reads rclone's rates. The uplink is the local server's S3 endpoint reading
every upload together no faster than a set rate (a real socket, the kernel's buffers full)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import KB, enqueue, invoke, one_line_error, rows, run_cli
from uploader.bandwidth import parse_bwlimit
from uploader.localserver import MaiAgentServer

MIB = 1 << 20


def test_a_slow_uplink_uploads_every_file_once_and_is_no_outage(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """The shape of 50 MB PDFs over a 20 Mbit/s office uplink with 10 workers, scaled down:
    each upload takes several times what a deadline of --timeout + 1 s per MiB allowed."""
    rate, workers, size, timeout = MIB, 10, MIB, 3.0
    assert size / (rate / workers) > 2 * (timeout + size / MIB)
    server = maiagent_factory(s3_bandwidth=rate)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(workers):
        (data / f"report{i}.pdf").write_bytes(os.urandom(size))
    db = tmp_path / "queue.db"
    enqueue(db, data)

    result = run_cli(
        db,
        "run",
        "--base-url",
        server.base_url,
        "--workers",
        str(workers),
        "--timeout",
        str(timeout),
        "--retry-delay",
        "0.01",
        timeout=90,
    )

    said = result.stdout + result.stderr
    assert result.returncode == 0, said
    assert "unreachable" not in said and "paused" not in said, said
    assert {job["state"] for job in rows(db)} == {"done"}
    assert {job["attempts"] for job in rows(db)} == {1}
    assert server.stats()["s3"] == workers, "an upload was cut and sent again"
    assert sorted(r["filename"] for r in server.records(KB)) == sorted(
        f"report{i}.pdf" for i in range(workers)
    )


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("2M", 2 * MIB),
        ("512k", 512 * 1024),
        ("512K", 512 * 1024),
        ("100", 100 * 1024),  # a bare number is KiB/s, as in rclone
        ("1.5M", 1.5 * MIB),
        ("10MiB", 10 * MIB),
        ("800B", 800),
        ("1G", 1 << 30),
        ("off", None),
        ("0", None),
    ],
)
def test_bwlimit_reads_rclones_rates(text: str, rate: float | None) -> None:
    assert parse_bwlimit(text) == rate


def test_a_bad_bwlimit_is_one_line(tmp_path: Path) -> None:
    result = invoke(tmp_path / "q.db", "run", "--bwlimit", "fast")
    assert "--bwlimit" in one_line_error(result)


@pytest.mark.slow
def test_a_run_that_finishes_nothing_for_long_says_why_and_what_to_change(
    tmp_path: Path, maiagent_factory: Callable[..., MaiAgentServer]
) -> None:
    """Ten uploads sharing an uplink that carries none of them to its end for more than
    five --timeout periods: the run says so once per period, naming --workers and --bwlimit."""
    rate, workers, size, timeout = MIB, 10, 5 * MIB // 4, 1.5
    assert size / (rate / workers) > 5 * timeout  # every file outlives the notice
    server = maiagent_factory(s3_bandwidth=rate)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(workers):
        (data / f"scan{i}.pdf").write_bytes(os.urandom(size))
    db = tmp_path / "queue.db"
    enqueue(db, data)

    result = run_cli(
        db,
        "run",
        "--base-url",
        server.base_url,
        "--workers",
        str(workers),
        "--timeout",
        str(timeout),
        "--retry-delay",
        "0.01",
        timeout=90,
    )

    assert result.returncode == 0, result.stderr
    (hint,) = [line for line in result.stderr.splitlines() if "no file finished" in line]
    assert "uploads in flight" in hint and "--workers" in hint and "--bwlimit" in hint
    assert {job["state"] for job in rows(db)} == {"done"}
