"""Other users and missing privileges, for tests that run as root.

``drop_capabilities`` (a ``preexec_fn``) empties the capability bounding set before exec:
the program then runs as uid 0 without a single capability. Towards another user's
processes it is exactly as unprivileged as any other user: kill(2) fails with EPERM and
/proc/PID/environ and /proc/PID/fd cannot be read (no CAP_KILL, no CAP_SYS_PTRACE), while
it can still use this checkout's root-owned interpreter and files.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil

from airflow_sentinel.process.tree import is_alive
from tests.support.cluster import wait_until

PR_CAPBSET_DROP = 24
# An interpreter every user may run (this checkout's may live under a private /root).
SYSTEM_PYTHON = "/usr/bin/python3"


def drop_capabilities() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for capability in range(last + 1):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            os._exit(126)  # never run the program with privileges it was meant to lose


@contextlib.contextmanager
def system_user() -> Iterator[str]:
    """A throwaway system user (and group of the same name); its processes are killed and
    the user removed afterwards."""
    name = f"sentinel-t{uuid.uuid4().hex[:8]}"
    subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield name
    finally:
        uid = int(
            subprocess.run(["id", "-u", name], check=True, capture_output=True, text=True).stdout
        )
        wait_until(lambda: _killed_all_of(uid), 20, f"every process of {name} to die")
        subprocess.run(["userdel", name], check=True, capture_output=True)


def _killed_all_of(uid: int) -> bool:
    left = [
        p for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == uid
    ]
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)
    return not [p for p in left if is_alive(p)]
