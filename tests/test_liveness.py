"""Liveness by lock: real child processes hold, lose (SIGKILL) and release their run locks,
including two children in separate pid namespaces that share a hostname and are both PID 1."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, without_dac_override
from uploader.liveness import RunLock, _judge, make_owner, parse_owner, runs_dir

# A run in miniature: take the lock, print the owner id, then judge each owner read from
# stdin ("True"/"False"/"None") until stdin closes, and release the lock on the way out.
_CHILD = """
import sys
from uploader.liveness import LockError, RunLock, make_owner
folder, host, pid = sys.argv[1], sys.argv[2], sys.argv[3]
owner = make_owner(host=host or None, pid=int(pid) if pid else None)
try:
    lock = RunLock.take(folder, owner)
except LockError as exc:
    print("error:", exc, flush=True)
    raise SystemExit(2)
print(lock.owner, flush=True)
for line in sys.stdin:
    print(lock.is_dead(line.strip()), flush=True)
lock.release()
"""


class Child:
    """One run holding its lock, in its own process."""

    def __init__(self, folder: Path, host: str = "", pid: str = "", launcher: tuple = ()) -> None:
        self.proc = subprocess.Popen(
            [*launcher, sys.executable, "-c", _CHILD, str(folder), host, pid],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.launched = bool(launcher) and "unshare" in launcher[0]
        self.owner = self._line()

    def _line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def judge(self, owner: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(owner + "\n")
        self.proc.stdin.flush()
        return self._line()

    def kill(self) -> None:
        """SIGKILL the run itself: under `unshare --fork` that is the launcher's child (PID 1 of
        its namespace); the launcher exits once it is gone."""
        target = self.proc.pid
        if self.launched:
            children = Path(f"/proc/{target}/task/{target}/children").read_text().split()
            target = int(children[0])
        os.kill(target, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def finish(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(timeout=30)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return runs_dir(tmp_path / "uploader.db")


@pytest.fixture
def me(folder: Path) -> Iterator[RunLock]:
    with RunLock.take(folder) as lock:
        yield lock


def _lock_file(folder: Path, owner: str) -> Path:
    parsed = parse_owner(owner)
    assert parsed is not None
    return folder / f"{parsed.token}.lock"


@pytest.mark.posix_only("kills or suspends a child process with POSIX signals")
def test_a_child_holding_its_lock_is_alive_and_dead_once_killed(folder: Path, me: RunLock) -> None:
    child = Child(folder)
    assert me.is_dead(child.owner) is False
    assert me.is_dead(child.owner) is False  # asking does not disturb the holder
    child.kill()
    assert _lock_file(folder, child.owner).exists()
    assert me.is_dead(child.owner) is True
    assert not _lock_file(folder, child.owner).exists(), "the taker removes the stale file"
    assert me.is_dead(child.owner) is None


@pytest.mark.posix_only("kills or suspends a child process with POSIX signals")
def test_a_clean_exit_removes_the_lock_file(folder: Path, me: RunLock) -> None:
    child = Child(folder)
    assert _lock_file(folder, child.owner).exists()
    assert child.finish() == 0
    assert not _lock_file(folder, child.owner).exists()
    assert me.is_dead(child.owner) is None


def test_an_exit_by_an_error_keeps_the_file_as_the_proof_of_death(
    folder: Path, me: RunLock
) -> None:
    owner = make_owner()
    with pytest.raises(RuntimeError), RunLock.take(folder, owner):
        raise RuntimeError("the database was locked at the run's end")
    assert _lock_file(folder, owner).exists()
    assert me.is_dead(owner) is True


@pytest.mark.posix_only("kills or suspends a child process with POSIX signals")
def test_two_containers_with_one_hostname_and_one_pid_see_each_other_alive(folder: Path) -> None:
    first = Child(folder, host="box", pid="1")
    second = Child(folder, host="box", pid="1")
    assert first.owner.split(":")[:2] == second.owner.split(":")[:2] == ["box", "1"]
    assert first.judge(second.owner) == "False"
    assert second.judge(first.owner) == "False"
    assert first.judge(first.owner) == "False"
    second.kill()
    assert first.judge(second.owner) == "True"
    assert first.finish() == 0


@pytest.mark.posix_only("uses fcntl, fork or namespaces")
def test_two_real_pid_namespaces_both_pid_1_see_each_other_alive(folder: Path) -> None:
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare or "unshare", "--pid", "--fork", "--map-root-user", "true"])
    if unshare is None or probe.returncode != 0:
        pytest.skip("cannot make pid namespaces here (unshare --pid)")
    launcher = (unshare, "--pid", "--fork", "--map-root-user")
    first = Child(folder, launcher=launcher)
    second = Child(folder, launcher=launcher)
    assert parse_owner(first.owner).pid == parse_owner(second.owner).pid == "1"  # type: ignore[union-attr]
    assert parse_owner(first.owner).host == parse_owner(second.owner).host  # type: ignore[union-attr]
    assert first.judge(second.owner) == "False"
    assert second.judge(first.owner) == "False"
    second.kill()
    assert first.judge(second.owner) == "True"
    assert first.finish() == 0


@pytest.mark.posix_only("uses fcntl, fork or namespaces")
def test_our_own_lock_is_never_dead(folder: Path, me: RunLock) -> None:
    # The kernel fact the module does not rely on, checked: a second open file of the same
    # process cannot take our flock either.
    assert _judge(me.path, remove=True) is False
    assert me.path.exists()
    assert me.is_dead(me.owner) is False
    assert me.dead_owners([me.owner, me.owner]) == []


def test_two_locks_of_one_process_judge_each_other_alive(folder: Path, me: RunLock) -> None:
    with RunLock.take(folder) as other:
        assert me.is_dead(other.owner) is False
        assert other.is_dead(me.owner) is False
    assert me.is_dead(other.owner) is None


def test_owners_without_a_lock_are_unknown(folder: Path, me: RunLock) -> None:
    old_version = "box:4242:1a2b3c4d"
    traversal = "box:1:../../../../etc/passwd"
    never_locked = make_owner()
    assert [me.is_dead(o) for o in (old_version, traversal, never_locked, "", "x")] == [None] * 5
    assert me.dead_owners([old_version, never_locked]) == []


@pytest.mark.posix_only("kills or suspends a child process with POSIX signals")
def test_sweep_cleans_stale_files_but_spares_owners_that_hold_rows(
    folder: Path, me: RunLock
) -> None:
    kept, stale, alive = Child(folder), Child(folder), Child(folder)
    kept.kill()
    stale.kill()
    assert me.sweep(keep=[kept.owner]) == 1
    assert not _lock_file(folder, stale.owner).exists()
    assert _lock_file(folder, kept.owner).exists()
    assert _lock_file(folder, alive.owner).exists()
    assert me.dead_owners([kept.owner, alive.owner, me.owner]) == [kept.owner]
    assert alive.finish() == 0


def test_the_folder_and_file_are_owner_only(folder: Path, me: RunLock) -> None:
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(me.path.stat().st_mode) == 0o600
    assert me.path.read_text().strip() == me.owner
    assert [p.name for p in folder.iterdir()] == [me.path.name], "no temporary file is left"


@pytest.mark.posix_only("needs file modes that bind (chmod)")
def test_a_read_only_folder_is_one_clear_line(tmp_path: Path) -> None:
    launcher = without_dac_override()
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    child = Child(folder / "uploader.db.runs", launcher=launcher)
    assert child.owner == (
        f"error: cannot create the run lock in {folder / 'uploader.db.runs'}: Permission denied"
    )
    assert child.proc.wait(timeout=30) == 2
    os.chmod(folder, 0o700)


def test_take_refuses_an_owner_it_did_not_make(folder: Path) -> None:
    with pytest.raises(ValueError):
        RunLock.take(folder, "box:1:deadbeef")


@pytest.mark.posix_only("kills or suspends a child process with POSIX signals")
def test_without_remove_the_proof_stays_until_forget(folder: Path, me: RunLock) -> None:
    dead, alive = Child(folder), Child(folder)
    dead.kill()
    assert me.dead_owners([dead.owner, alive.owner], remove=False) == [dead.owner]
    assert me.is_dead(dead.owner, remove=False) is True, "still provable: the reclaim may retry"
    me.forget(alive.owner)
    me.forget(me.owner)
    assert _lock_file(folder, alive.owner).exists() and me.path.exists()
    me.forget(dead.owner)
    assert not _lock_file(folder, dead.owner).exists()
    assert me.is_dead(dead.owner) is None
    assert alive.finish() == 0
