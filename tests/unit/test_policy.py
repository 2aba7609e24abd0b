"""The controller's pure decisions, one snapshot at a time."""

from __future__ import annotations

from dataclasses import replace

import pytest

from airflow_sentinel.controller.policy import (
    Leadership,
    LeaseStatus,
    Snapshot,
    Supervision,
    Timing,
    decide_leadership,
    decide_supervision,
)
from airflow_sentinel.controller.scheduler import RunState, RunView

T = Timing(
    lease_ttl=15.0,
    stop_timeout=5.0,
    fence_margin=1.0,
    start_timeout=60.0,
    heartbeat_grace=60.0,
    max_restarts=3,
    heartbeat_mode=False,
)
NOW = 1000.0
STOPPED = RunView(RunState.STOPPED, None, None)

ACTIVE = Snapshot(
    now=NOW,
    lease=LeaseStatus.HELD,
    valid_until=NOW + 15.0,
    paused=False,
    held=False,
    conflict=False,
    fit=True,
    switchover_requested=False,
    failed_starts=0,
    run=STOPPED,
    heartbeat_age=None,
)
STANDBY = replace(ACTIVE, lease=LeaseStatus.NONE, valid_until=None)


def test_deadlines_leave_the_fence_margin_before_expiry() -> None:
    assert T.fence_at(NOW + 15) == NOW + 14
    assert T.demote_at(NOW + 15) == NOW + 9


@pytest.mark.parametrize(
    ("snapshot", "expected"),
    [
        (STANDBY, Leadership.ACQUIRE),
        (replace(STANDBY, paused=True), Leadership.WAIT),
        (replace(STANDBY, fit=False), Leadership.WAIT),
        (ACTIVE, Leadership.KEEP),
        (replace(ACTIVE, lease=LeaseStatus.LOST), Leadership.DEMOTE),
        (replace(ACTIVE, lease=LeaseStatus.UNREACHABLE), Leadership.KEEP),
        (replace(ACTIVE, lease=LeaseStatus.UNREACHABLE, now=NOW + 8.99), Leadership.KEEP),
        (replace(ACTIVE, lease=LeaseStatus.UNREACHABLE, now=NOW + 9.0), Leadership.DEMOTE),
        (replace(ACTIVE, now=NOW + 20.0), Leadership.DEMOTE),
        (replace(ACTIVE, switchover_requested=True), Leadership.HAND_OVER),
        (replace(ACTIVE, failed_starts=3), Leadership.STEP_DOWN),
        (replace(ACTIVE, failed_starts=2), Leadership.KEEP),
        # Paused: keep the role, but a lost lease still demotes (the fence is never paused).
        (replace(ACTIVE, paused=True, failed_starts=5), Leadership.KEEP),
        (replace(ACTIVE, paused=True, switchover_requested=True), Leadership.KEEP),
        (replace(ACTIVE, paused=True, lease=LeaseStatus.LOST), Leadership.DEMOTE),
        # Held for an upgrade: the active node stands down, standbys do not take over, a
        # hold overrides a pause, and an unreachable store still keeps its role until demote.
        (replace(ACTIVE, held=True), Leadership.STAND_DOWN),
        (replace(ACTIVE, held=True, paused=True), Leadership.STAND_DOWN),
        (replace(STANDBY, held=True), Leadership.WAIT),
        (replace(ACTIVE, held=True, lease=LeaseStatus.UNREACHABLE), Leadership.KEEP),
        (replace(ACTIVE, held=True, valid_until=NOW + 5), Leadership.DEMOTE),
        # Another live instance owns our node_id: never lead, give up a lease we hold.
        (replace(STANDBY, conflict=True), Leadership.WAIT),
        (replace(ACTIVE, conflict=True), Leadership.STAND_DOWN),
        (replace(ACTIVE, conflict=True, lease=LeaseStatus.LOST), Leadership.DEMOTE),
    ],
)
def test_leadership(snapshot: Snapshot, expected: Leadership) -> None:
    assert decide_leadership(snapshot, T) is expected


def _running(state: RunState, started_ago: float, age: float | None = None) -> Snapshot:
    return replace(ACTIVE, run=RunView(state, NOW - started_ago, 7), heartbeat_age=age)


def test_a_stopped_scheduler_is_started() -> None:
    assert decide_supervision(ACTIVE, T) is Supervision.START


def test_no_start_when_the_fence_is_about_to_fall() -> None:
    almost_gone = replace(ACTIVE, valid_until=NOW + T.fence_margin + 0.5)
    assert decide_supervision(almost_gone, T) is Supervision.NOTHING


def test_nothing_is_started_while_held() -> None:
    held = replace(ACTIVE, held=True, lease=LeaseStatus.UNREACHABLE)
    assert decide_supervision(held, T) is Supervision.NOTHING


def test_nothing_is_started_or_stopped_while_paused() -> None:
    assert decide_supervision(replace(ACTIVE, paused=True), T) is Supervision.NOTHING
    hung = replace(_running(RunState.RUNNING, 500, age=999), paused=True)
    assert decide_supervision(hung, replace(T, heartbeat_mode=True)) is Supervision.NOTHING


def test_process_mode_proves_a_start_by_staying_alive() -> None:
    assert decide_supervision(_running(RunState.STARTING, 59.9), T) is Supervision.NOTHING
    assert decide_supervision(_running(RunState.STARTING, 60.0), T) is Supervision.PROVEN


def test_heartbeat_mode_proves_a_start_by_its_first_heartbeat() -> None:
    hb = replace(T, heartbeat_mode=True)
    assert decide_supervision(_running(RunState.STARTING, 5, age=None), hb) is Supervision.NOTHING
    assert decide_supervision(_running(RunState.STARTING, 5, age=1.0), hb) is Supervision.PROVEN
    late = _running(RunState.STARTING, 60, age=None)
    assert decide_supervision(late, hb) is Supervision.FAILED_START


def test_heartbeat_mode_restarts_a_hung_scheduler_only_past_the_grace() -> None:
    hb = replace(T, heartbeat_mode=True)
    assert decide_supervision(_running(RunState.RUNNING, 500, age=59), hb) is Supervision.NOTHING
    assert decide_supervision(_running(RunState.RUNNING, 500, age=61), hb) is Supervision.HUNG


def test_an_unreadable_heartbeat_is_not_a_hang() -> None:
    hb = replace(T, heartbeat_mode=True)
    assert decide_supervision(_running(RunState.RUNNING, 500, age=None), hb) is Supervision.NOTHING


def test_process_mode_never_calls_a_running_scheduler_hung() -> None:
    assert decide_supervision(_running(RunState.RUNNING, 500, age=999), T) is Supervision.NOTHING


def test_a_stopping_scheduler_is_left_alone() -> None:
    assert decide_supervision(_running(RunState.STOPPING, 500), T) is Supervision.NOTHING
