"""The periodic INFO line that says what this node is doing, so that a healthy standby and a
dead one look different in the journal even when nothing happens for hours."""

from __future__ import annotations

import contextlib
import logging

from airflow_sentinel.controller.published import ACTIVE, NodeView
from airflow_sentinel.errors import MetastoreError
from airflow_sentinel.metastore.base import LeaseRecord, Metastore

log = logging.getLogger("airflow_sentinel.controller")
SERVICE = "scheduler"


class StatusLine:
    """Due once every ``interval`` seconds of the controller clock (0: never); the first
    one comes after the first full interval, as the start is logged already."""

    def __init__(self, interval: float, now: float) -> None:
        self.interval = interval
        self._next = now + interval

    def due(self, now: float) -> bool:
        if self.interval <= 0 or now < self._next:
            return False
        self._next = now + self.interval
        return True

    def maybe_log(self, view: NodeView, store: Metastore | None) -> None:
        """Log the line when due. A standby reads the lease for it, minutes apart; ``store``
        None: it did not answer this cycle, so it is not asked again. That read stays within
        the cycle's bound (four store calls, a stop and a kill): a standby stops no
        scheduler, and the read is bounded by the store's operation timeout."""
        if not self.due(view.cycle_at):
            return
        lease = None
        if view.role != ACTIVE and store is not None:
            with contextlib.suppress(MetastoreError):  # the cycle logs the store's trouble
                lease = store.read_lease(SERVICE)
        line = describe(view, lease, reachable=store is not None)
        log.info(line, extra={"epoch": view.epoch})


def describe(view: NodeView, lease: LeaseRecord | None, reachable: bool = True) -> str:
    """One line: the role, with the scheduler (active) or the leader (standby)."""
    mode = _mode(view)
    if view.role == ACTIVE:
        return f"status: active with epoch {view.epoch}, {_scheduler(view)}{mode}"
    if not reachable:
        return f"status: {view.role}, metastore unreachable{mode}"
    if lease is None or lease.holder is None:
        return f"status: {view.role}, no node holds the lease{mode}"
    return f"status: {view.role} behind {lease.holder} (epoch {lease.epoch}){mode}"


def _scheduler(view: NodeView) -> str:
    if view.scheduler_pid is None:
        state = view.scheduler_state or "not running"
        return f"scheduler {state}"
    health = "healthy" if view.scheduler_state == "running" else view.scheduler_state or "stopped"
    line = f"{health} scheduler pid {view.scheduler_pid}"
    if view.heartbeat_age_s is not None:
        line += f", heartbeat {view.heartbeat_age_s:.0f}s ago"
    if view.lease_left_s is not None:
        line += f", lease {view.lease_left_s:.1f}s left"
    return line


def _mode(view: NodeView) -> str:
    parts = []
    if view.paused:
        parts.append("cluster paused")
    if view.held:
        parts.append(f"cluster held: {view.held}")
    if view.cooldown_left_s is not None:
        parts.append(f"cooling down {view.cooldown_left_s:.0f}s more")
    if view.conflict:
        parts.append(f"node_id also in use on {view.conflict}")
    return "".join(f"; {p}" for p in parts)
