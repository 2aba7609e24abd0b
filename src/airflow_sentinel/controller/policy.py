"""The controller's decisions: pure functions from one frozen snapshot to one action.

Nothing here does I/O or reads a clock; ``Snapshot.now`` is the only time.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from airflow_sentinel.config.settings import Settings
from airflow_sentinel.controller.scheduler import RunState, RunView

# A scheduler is not started when its fence would fall sooner than this.
MIN_RUNWAY = 1.0


class LeaseStatus(str, Enum):
    NONE = "none"  # we hold no lease
    HELD = "held"  # renewed (or acquired) this cycle
    UNREACHABLE = "unreachable"  # renewal failed with a store error; lease maybe still ours
    LOST = "lost"  # the store says it is no longer ours


class Leadership(str, Enum):
    WAIT = "wait"  # standby, do nothing
    ACQUIRE = "acquire"  # standby, try to take the lease
    KEEP = "keep"  # active, carry on
    DEMOTE = "demote"  # active, stop now: the lease is gone or about to be
    STEP_DOWN = "step_down"  # active, too many failed starts here: release and cool down
    HAND_OVER = "hand_over"  # active, planned switchover
    STAND_DOWN = "stand_down"  # active, but held for an upgrade or in conflict: stop, release


class Supervision(str, Enum):
    NOTHING = "nothing"
    START = "start"
    PROVEN = "proven"
    FAILED_START = "failed_start"  # did not prove itself in start_timeout: kill, count
    HUNG = "hung"  # was healthy, heartbeat now too old: restart


@dataclass(frozen=True)
class Timing:
    lease_ttl: float
    stop_timeout: float
    fence_margin: float
    start_timeout: float
    heartbeat_grace: float
    max_restarts: int
    heartbeat_mode: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> Timing:
        return cls(
            lease_ttl=settings.lease_ttl,
            stop_timeout=settings.stop_timeout,
            fence_margin=settings.fence_margin,
            start_timeout=settings.start_timeout,
            heartbeat_grace=settings.heartbeat_grace,
            max_restarts=settings.max_restarts,
            heartbeat_mode=settings.health_check == "heartbeat",
        )

    def fence_at(self, valid_until: float) -> float:
        """When the guard SIGKILLs the scheduler: before any other node may lead."""
        return valid_until - self.fence_margin

    def demote_at(self, valid_until: float) -> float:
        """When the controller begins a graceful stop if it has not renewed by then."""
        return self.fence_at(valid_until) - self.stop_timeout


@dataclass(frozen=True)
class Snapshot:
    now: float
    lease: LeaseStatus
    valid_until: float | None
    paused: bool
    held: bool
    conflict: bool  # another live instance reports under our node_id
    fit: bool
    switchover_requested: bool
    failed_starts: int
    run: RunView
    heartbeat_age: float | None  # age of its newest heartbeat since it started; None: unknown


def decide_leadership(s: Snapshot, t: Timing) -> Leadership:
    if s.lease is LeaseStatus.NONE:
        eligible = s.fit and not (s.paused or s.held or s.conflict)
        return Leadership.ACQUIRE if eligible else Leadership.WAIT
    if s.lease is LeaseStatus.LOST or s.valid_until is None:
        return Leadership.DEMOTE
    if s.now >= t.demote_at(s.valid_until):
        return Leadership.DEMOTE
    if s.lease is LeaseStatus.UNREACHABLE:
        return Leadership.KEEP
    if s.held or s.conflict:
        return Leadership.STAND_DOWN
    if s.paused:
        return Leadership.KEEP
    if s.switchover_requested:
        return Leadership.HAND_OVER
    if s.failed_starts >= t.max_restarts:
        return Leadership.STEP_DOWN
    return Leadership.KEEP


def decide_supervision(s: Snapshot, t: Timing) -> Supervision:
    """Only called for an active node that keeps its lease."""
    if s.paused or s.held or s.valid_until is None:
        return Supervision.NOTHING
    run = s.run
    if run.state is RunState.STOPPED:
        room = t.fence_at(s.valid_until) - s.now
        return Supervision.START if room >= MIN_RUNWAY else Supervision.NOTHING
    if run.state is RunState.STARTING and run.started_at is not None:
        if _proves_itself(s, t, run.started_at):
            return Supervision.PROVEN
        if s.now - run.started_at >= t.start_timeout:
            return Supervision.FAILED_START
    # An unknown age (Airflow's database did not answer) is not proof of a hang.
    stale = s.heartbeat_age is not None and s.heartbeat_age > t.heartbeat_grace
    if run.state is RunState.RUNNING and t.heartbeat_mode and stale:
        return Supervision.HUNG
    return Supervision.NOTHING


def _proves_itself(s: Snapshot, t: Timing, started_at: float) -> bool:
    if t.heartbeat_mode:
        return s.heartbeat_age is not None and s.heartbeat_age <= t.heartbeat_grace
    return s.now - started_at >= t.start_timeout
