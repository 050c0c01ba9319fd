"""One function decides a command's exit code from what it came to (`exitcodes.exit_code`):
a code per rule, and one order of precedence for `run`, `check`, `verify` and the others."""

from __future__ import annotations

import errno

import pytest

from uploader import checkup, cli
from uploader.client import out_of_files
from uploader.errors import ApiError, Unreachable
from uploader.exitcodes import Ending, ExitCode, exit_code, worst
from uploader.model import ErrorKind, Severity
from uploader.worker import RunResult


def refused() -> ApiError:
    return ApiError("API key rejected (HTTP 401)", kind=Severity.FATAL, error_kind=ErrorKind.AUTH)


def no_answer() -> ApiError:
    return ApiError("connection failed", kind=Severity.TRANSIENT, error_kind=ErrorKind.NETWORK)


def server_error() -> ApiError:
    return ApiError("HTTP 502", kind=Severity.TRANSIENT, error_kind=ErrorKind.HTTP_5XX, status=502)


def bad_request() -> ApiError:
    return ApiError("HTTP 400", kind=Severity.PERMANENT, error_kind=ErrorKind.HTTP_4XX, status=400)


def emfile() -> ApiError:
    return out_of_files(OSError(errno.EMFILE, "Too many open files"))


def test_ok_when_nothing_went_wrong() -> None:
    assert exit_code(Ending()) is ExitCode.OK


def test_failed_files_are_1() -> None:
    assert exit_code(Ending(failed=True)) is ExitCode.FAILED


def test_an_error_the_service_answered_is_1() -> None:
    assert exit_code(bad_request()) is ExitCode.FAILED


def test_running_out_of_open_files_is_bad_input() -> None:
    assert exit_code(Ending(error=emfile(), failed=True)) is ExitCode.USAGE


def test_a_refusal_is_3() -> None:
    assert exit_code(refused()) is ExitCode.REFUSED
    assert exit_code(Ending(refused=True, failed=True)) is ExitCode.REFUSED


@pytest.mark.parametrize("error", [no_answer(), server_error(), Unreachable("cannot reach")])
def test_a_service_out_of_reach_is_4(error: ApiError) -> None:
    assert exit_code(error) is ExitCode.UNREACHABLE


def test_interrupted_is_130() -> None:
    assert exit_code(Ending(interrupted=True, failed=True)) is ExitCode.INTERRUPTED


def test_what_stopped_the_command_comes_before_an_interruption() -> None:
    assert exit_code(Ending(error=refused(), interrupted=True)) is ExitCode.REFUSED
    assert exit_code(Ending(error=Unreachable("x"), interrupted=True)) is ExitCode.UNREACHABLE
    assert exit_code(Ending(error=emfile(), interrupted=True)) is ExitCode.USAGE


def test_an_interruption_comes_before_refused_knowledge_bases_and_failed_files() -> None:
    assert exit_code(Ending(interrupted=True, refused=True)) is ExitCode.INTERRUPTED


def test_refused_knowledge_bases_come_before_failed_files() -> None:
    assert exit_code(Ending(refused=True, failed=True)) is ExitCode.REFUSED


def test_unreachable_comes_before_refused() -> None:
    """The pool's gate gives up with a fatal error: it is 4, not the 3 of other fatal ones."""
    assert Unreachable("x").fatal
    assert exit_code(Ending(error=Unreachable("x"), refused=True)) is ExitCode.UNREACHABLE


def test_a_run_result_goes_through_the_same_function() -> None:
    result = RunResult(fatal=refused(), interrupted=True, failed_in_queue=3)
    assert exit_code(result.ending()) is ExitCode.REFUSED
    assert exit_code(RunResult(failed_in_queue=1).ending()) is ExitCode.FAILED
    unknown = RunResult(unknown_kbs={"kb-x": refused()}, failed_in_queue=1)
    assert exit_code(unknown.ending()) is ExitCode.REFUSED


def test_verify_and_check_out_of_open_files_are_bad_input_as_run() -> None:
    """They said 3, 'the service refused', for this process's own open-file limit."""
    assert cli.ServiceError(emfile()).exit_code == ExitCode.USAGE
    result = checkup.CheckResult("http://127.0.0.1/", "kb", False, error=emfile())
    assert result.exit_code == ExitCode.USAGE


def test_check_is_unreachable_only_when_no_step_got_an_answer() -> None:
    never = checkup.CheckResult("http://127.0.0.1/", "kb", False, error=no_answer())
    answered = checkup.CheckResult(
        "http://127.0.0.1/",
        "kb",
        False,
        steps=[checkup.StepResult(checkup.Step.KEY, True, 0.1, "ok")],
        error=no_answer(),
    )
    assert never.exit_code == ExitCode.UNREACHABLE
    assert answered.exit_code == ExitCode.FAILED


def test_several_jobs_end_with_the_highest_code_and_nothing_to_do_only_if_all_had_none() -> None:
    assert worst([]) is ExitCode.OK
    assert worst([ExitCode.OK, ExitCode.FAILED, ExitCode.REFUSED]) is ExitCode.REFUSED
    assert worst([ExitCode.NOTHING_TO_DO, ExitCode.NOTHING_TO_DO]) is ExitCode.NOTHING_TO_DO
    assert worst([ExitCode.OK, ExitCode.NOTHING_TO_DO]) is ExitCode.OK
    assert worst([ExitCode.NOTHING_TO_DO, ExitCode.FAILED]) is ExitCode.FAILED
