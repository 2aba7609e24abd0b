"""Signalling process trees and waiting until they are really gone (zombies count as gone)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable

import psutil

from airflow_sentinel.clock import boottime

POLL_S = 0.02
KILL_WAIT_S = 5.0


def is_alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def send(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def wait_gone(
    procs: Iterable[psutil.Process], timeout: float, on_tick: Callable[[], None] | None = None
) -> list[psutil.Process]:
    """Wait up to ``timeout`` for every process to die; returns the survivors.

    Polls instead of calling psutil.wait_procs, which reaps children of ours and would
    take their exit status from the code that waits for them (``on_tick``).
    """
    alive = [p for p in procs if is_alive(p)]
    give_up = boottime() + timeout
    while alive and boottime() < give_up:
        if on_tick is not None:
            on_tick()
        time.sleep(POLL_S)
        alive = [p for p in alive if is_alive(p)]
    return alive


def stop_trees(procs: list[psutil.Process], grace: float) -> list[psutil.Process]:
    """SIGTERM every process at once; after ``grace`` SIGKILL them and all their
    descendants. Returns the processes that still live (normally none)."""
    trees: list[psutil.Process] = []
    for proc in procs:
        try:
            trees.extend([proc, *proc.children(recursive=True)])
        except psutil.Error:
            continue
        send(proc.pid, signal.SIGTERM)
    wait_gone(procs, grace)
    for member in trees:
        send(member.pid, signal.SIGKILL)
    return wait_gone(trees, KILL_WAIT_S)
