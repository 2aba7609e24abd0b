"""Signalling process trees and waiting until they are really gone (zombies count as gone)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psutil

from airflow_sentinel.clock import Clock, boottime

POLL_S = 0.02
KILL_WAIT_S = 5.0


def is_alive(proc: psutil.Process) -> bool:
    """Running and not a zombie; a pid reused by another process counts as gone."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
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


def signal_process(proc: psutil.Process, sig: int) -> bool:
    """Send ``sig`` unless the process is gone (or its pid reused); False if not allowed."""
    try:
        proc.send_signal(sig)
    except psutil.AccessDenied:
        return False
    except psutil.NoSuchProcess:
        pass  # gone already: nothing to stop
    return True


def descendants(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


# After SIGKILL a tree is gone within milliseconds: look again soon, for this long at most.
GONE_POLL_S = 0.05
# While a tree has its grace, look this often whether it left early (each look is a
# whole control cycle, renewal included: not too often).
GRACE_POLL_S = 1.0


@dataclass
class _Stop:
    root: psutil.Process
    members: set[psutil.Process]  # the root and every descendant seen so far
    kill_at: float
    look_at: float  # the next poll, to notice an early exit (or the end after SIGKILL)
    killed_at: float | None = None

    def alive(self) -> list[psutil.Process]:
        return [p for p in self.members if is_alive(p)]

    def due(self) -> float | None:
        if self.killed_at is None:
            return min(self.kill_at, self.look_at)
        if self.look_at < self.killed_at + KILL_WAIT_S:
            return self.look_at
        return None  # it outlived SIGKILL: the regular cycle looks at it


@dataclass
class TreeStopper:
    """Stops process trees without ever waiting for them.

    ``stop`` sends SIGTERM at once and notes when the grace ends. Each ``poll`` (once per
    control cycle, and at ``next_deadline``) sends SIGKILL to the whole tree once the
    grace is over or the root has exited, adds descendants born since, and forgets trees
    that are gone. Descendants are remembered because they re-parent elsewhere when their
    parent dies, and would no longer be found under it.
    """

    clock: Clock
    _stops: list[_Stop] = field(default_factory=list)

    def stop(self, proc: psutil.Process, grace: float) -> bool:
        """Begin stopping ``proc`` and its descendants; False if it may not be signalled."""
        if self.stopping(proc):
            return True
        members = {proc, *descendants(proc)}
        if not signal_process(proc, signal.SIGTERM):
            return False
        now = self.clock.now()
        self._stops.append(_Stop(proc, members, now + max(0.0, grace), now))
        self.poll()  # without a grace: SIGKILL now
        return True

    def stopping(self, proc: psutil.Process) -> bool:
        return any(proc in stop.members for stop in self._stops)

    def poll(self) -> bool:
        """SIGKILL the trees whose time has come; True while any process being stopped lives."""
        now = self.clock.now()
        for stop in self._stops:
            for member in list(stop.members):
                stop.members.update(descendants(member))
            alive = stop.alive()
            if alive and (now >= stop.kill_at or not is_alive(stop.root)):
                for member in alive:
                    signal_process(member, signal.SIGKILL)
                if stop.killed_at is None:
                    stop.killed_at = now
            stop.look_at = now + (GRACE_POLL_S if stop.killed_at is None else GONE_POLL_S)
        self._stops = [stop for stop in self._stops if stop.alive()]
        return bool(self._stops)

    def next_deadline(self) -> float | None:
        """When ``poll`` should run next; None when nothing is being stopped."""
        return min((d for d in (s.due() for s in self._stops) if d is not None), default=None)
