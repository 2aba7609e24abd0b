"""Schedulers on this host that are not the one the controller runs: strays of this
installation (stopped, or reported while paused), foreign ones (reported once), and the
orphans a dead guard left to us (killed). The stopper sees each stop through without
blocking the loop."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable

import psutil

from airflow_sentinel.clock import Clock
from airflow_sentinel.config.settings import Settings
from airflow_sentinel.controller import events as ev
from airflow_sentinel.identity import Instance
from airflow_sentinel.process.strays import Identity, Kind, describe, find_schedulers, installation
from airflow_sentinel.process.tree import TreeStopper, is_alive

Emit = Callable[[str, str, int], None]

REPORTED = {
    Kind.STRAY: ev.STRAY_FOUND,
    Kind.DENIED: ev.STRAY_FOUND,
    Kind.FOREIGN: ev.SCHEDULER_FOREIGN,
}


class StrayKeeper:
    def __init__(
        self, settings: Callable[[], Settings], instance: Instance, clock: Clock, emit: Emit
    ) -> None:
        self._settings = settings
        self._instance = instance
        self._emit = emit
        self._stopper = TreeStopper(clock)
        # Schedulers reported once already (stray_found, scheduler_foreign).
        self._reported: set[tuple[psutil.Process, Kind]] = set()
        # Children of ours are only orphans once the controller is their subreaper.
        self.subreaper = False

    def next_deadline(self) -> float | None:
        """When a stop under way needs a look: a SIGKILL due, or a check of its end."""
        return self._stopper.next_deadline()

    def kill_orphans(self, guard_pid: int | None) -> None:
        """SIGKILL our children that are not the current guard (left by a guard that died),
        and reap those that died; the stopper sees the kills through, without waiting."""
        if not self.subreaper:
            return
        try:
            children = psutil.Process().children()
        except psutil.Error:
            return
        for orphan in (c for c in children if c.pid != guard_pid):
            if is_alive(orphan) and not self._stopper.stopping(orphan):
                what = describe(orphan)
                if self._stopper.stop(orphan, grace=0.0):
                    self._emit(ev.STRAY_KILLED, f"orphan pid {orphan.pid}: {what}", logging.WARNING)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(orphan.pid, os.WNOHANG)

    def handle(self, guard_pid: int | None, paused: bool) -> bool:
        """Stop (or report) this installation's schedulers that we did not start, and report
        foreign ones once; True while one of ours still runs here, or is being stopped."""
        settings = self._settings()
        stopping = self._stopper.poll()  # SIGKILL for those whose grace is over
        me = Identity(
            settings.node_id,
            self._instance.token,
            installation(settings.airflow_home, settings.airflow_cfg),
        )
        found = find_schedulers(settings.scheduler_argv, me, _tree_of(guard_pid))
        self._reported &= {(f.proc, f.verdict.kind) for f in found}  # forget the gone
        kill = settings.stray_action == "kill" and not paused  # paused: report only
        for finding in found:
            kind = finding.verdict.kind
            if kind is Kind.STRAY and kill:
                if not self._stopper.stopping(finding.proc) and self._stopper.stop(
                    finding.proc, settings.stop_timeout
                ):
                    self._emit(ev.STRAY_KILLED, finding.detail, logging.WARNING)
            elif kind in REPORTED and (finding.proc, kind) not in self._reported:
                self._reported.add((finding.proc, kind))
                self._emit(REPORTED[kind], finding.detail, logging.WARNING)
        return stopping or any(f.verdict.kind in (Kind.STRAY, Kind.DENIED) for f in found)


def _tree_of(guard_pid: int | None) -> set[int]:
    """The guard and everything under it: the scheduler we run, never a stray."""
    if guard_pid is None:
        return set()
    try:
        return {guard_pid, *(p.pid for p in psutil.Process(guard_pid).children(recursive=True))}
    except psutil.Error:
        return {guard_pid}
