"""Errors are typed: an `ApiError` carries a `Severity` and an `ErrorKind`, and nothing in the
code compares a kind with a string (a misspelt "fatel" would have been silently false)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from uploader.errors import ApiError, Unreachable
from uploader.model import FAILURE_KINDS, ErrorKind, Severity

ROOT = Path(__file__).resolve().parent.parent
# `x.kind == "fatal"`, `error_kind != "kb_not_found"`, `x.kind in ("a", "b")`, ... (verify's
# lists are a `kind` too: "missing", "duplicate"; they are not errors)
STRING_COMPARISON = re.compile(
    r"(\.kind|\berror_kind|\bseverity)\s*(==|!=|\bis\b|\bin\b)\s*[\(\[\{]?\s*[\"']"
)


def test_no_kind_is_compared_with_a_string() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in sorted([*(ROOT / "uploader").rglob("*.py"), *(ROOT / "tests").rglob("*.py")])
        if path.name != "test_errors.py"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if STRING_COMPARISON.search(line)
    ]
    assert found == []


def test_an_error_takes_only_known_kinds() -> None:
    with pytest.raises(ValueError):
        ApiError("x", kind=Severity.FATAL, error_kind="fatel")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ApiError("x", kind="fatel", error_kind=ErrorKind.AUTH)  # type: ignore[arg-type]


def test_every_kind_the_client_singles_out_is_one_retry_failed_takes() -> None:
    for kind in (ErrorKind.DUPLICATE_KEY, ErrorKind.LABEL_EXISTS, ErrorKind.METHOD_NOT_ALLOWED):
        assert kind.value in FAILURE_KINDS


def test_severity_reads_as_one_property() -> None:
    error = ApiError("x", kind=Severity.TRANSIENT, error_kind=ErrorKind.TIMEOUT)
    assert (error.transient, error.permanent, error.fatal) == (True, False, False)
    assert error.unanswered and error.outage_like
    gone = Unreachable("cannot reach 127.0.0.1:9 (connection refused)")
    assert gone.fatal and gone.error_kind is ErrorKind.NETWORK
