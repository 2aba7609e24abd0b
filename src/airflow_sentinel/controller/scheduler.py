"""The supervised scheduler's state machine.

    STOPPED --start--> STARTING --proven--> RUNNING
    STARTING|RUNNING --stop--> STOPPING
    STARTING|RUNNING|STOPPING --ended--> STOPPED

A run is *proven* once it has shown it works (stayed alive, or heartbeat, within
start_timeout). A run that ends or is killed before that is a failed start.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from airflow_sentinel.clock import Clock
from airflow_sentinel.errors import SentinelError
from airflow_sentinel.process.guard import RunOwner
from airflow_sentinel.process.handle import Launcher, RunEnded, SchedulerRun

log = logging.getLogger(__name__)


class RunState(str, Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"


ALLOWED = {
    (RunState.STOPPED, RunState.STARTING),
    (RunState.STARTING, RunState.RUNNING),
    (RunState.STARTING, RunState.STOPPING),
    (RunState.RUNNING, RunState.STOPPING),
    (RunState.STARTING, RunState.STOPPED),
    (RunState.RUNNING, RunState.STOPPED),
    (RunState.STOPPING, RunState.STOPPED),
}


class BadTransition(SentinelError):
    pass


@dataclass(frozen=True)
class StopRequest:
    """When a graceful stop was asked for, and the grace before SIGKILL."""

    at: float
    grace: float


@dataclass(frozen=True)
class RunView:
    """What the policy needs to know about the scheduler, frozen for one cycle."""

    state: RunState
    started_at: float | None
    pid: int | None


class SupervisedScheduler:
    def __init__(self, launcher: Launcher, argv: list[str], clock: Clock) -> None:
        self._launcher = launcher
        self.argv = argv
        self._clock = clock
        # The stop asked of the current (or the last) run; read when its end is reported.
        self.last_stop: StopRequest | None = None
        self.state = RunState.STOPPED
        self.run: SchedulerRun | None = None
        self.started_at: float | None = None
        self.failed_starts = 0

    def _move(self, new: RunState) -> None:
        if (self.state, new) not in ALLOWED:
            raise BadTransition(f"scheduler cannot go from {self.state.value} to {new.value}")
        log.debug("scheduler %s -> %s", self.state.value, new.value)
        self.state = new

    def view(self) -> RunView:
        pid = self.run.scheduler_pid if self.run is not None else None
        return RunView(self.state, self.started_at, pid)

    @property
    def active(self) -> bool:
        return self.state is not RunState.STOPPED

    def start(
        self,
        env: Mapping[str, str],
        fence_at: float,
        grace: float,
        now: float,
        owner: RunOwner | None = None,
    ) -> None:
        self._move(RunState.STARTING)
        self.last_stop = None
        try:
            self.run = self._launcher.launch(self.argv, env, fence_at, grace, owner)
        except OSError:
            self._move(RunState.STOPPED)
            self.failed_starts += 1
            raise
        self.started_at = now

    def proven(self) -> None:
        self._move(RunState.RUNNING)
        self.failed_starts = 0

    def extend(self, fence_at: float) -> None:
        if self.run is not None:
            self.run.extend(fence_at)

    def stop(self, grace: float) -> None:
        """Ask for a graceful stop; the end arrives later through ``ended``."""
        if self.run is None or self.state is RunState.STOPPING:
            return
        if self.state is RunState.STARTING:
            self.failed_starts += 1  # stopped before it proved itself
        self._move(RunState.STOPPING)
        self.last_stop = StopRequest(self._clock.now(), grace)
        self.run.stop(grace)

    def ended(self, how: RunEnded) -> bool:
        """Record the end of the run; True when it was a failed start."""
        failed = self.state is RunState.STARTING and how.outcome != "refused"
        if failed:
            self.failed_starts += 1
        self._move(RunState.STOPPED)
        self.run = None
        self.started_at = None
        return failed

    def stop_and_wait(self, grace: float, timeout: float) -> RunEnded | None:
        """Stop and block until the run has ended (the scheduler and its children are dead)."""
        run = self.run
        if run is None:
            return RunEnded("exited", 0)
        self.stop(grace)
        ended = run.wait(timeout)
        if ended is not None:
            self.ended(ended)
        return ended
