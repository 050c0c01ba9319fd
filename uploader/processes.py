"""Is a process of this host still running? Asked by pid, the only way that differs by system.

POSIX asks with `kill(pid, 0)`. Windows must not: its `os.kill(pid, 0)` sends Ctrl+C
(CTRL_C_EVENT is 0) to the console process group `pid`. There the process is opened and its
exit code read instead.
"""

from __future__ import annotations

import os
import sys

_STILL_ACTIVE = 259
_QUERY_LIMITED_INFORMATION = 0x1000
_INVALID_PARAMETER = 87  # OpenProcess's answer for a pid that names no process


def is_running(pid: int) -> bool | None:
    """True: running; False: no such process; None: cannot tell (not ours to ask)."""
    if sys.platform == "win32":
        return _windows_is_running(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return None
    return True


if sys.platform == "win32":
    import ctypes
    from ctypes import wintypes

    def _windows_is_running(pid: int) -> bool | None:
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        handle = kernel32.OpenProcess(_QUERY_LIMITED_INFORMATION, False, pid)
        if not handle:
            return False if ctypes.get_last_error() == _INVALID_PARAMETER else None
        try:
            code = wintypes.DWORD()
            if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
                return None
            return code.value == _STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
