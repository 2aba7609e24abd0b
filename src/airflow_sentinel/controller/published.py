"""What the control loop publishes for others to read: a frozen view of what it last
decided and did, and its events as they happen. The HTTP API, the metrics and the status
page read only this; nothing they do can reach into the loop or hold it up."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from airflow_sentinel.metastore.base import Event

log = logging.getLogger("airflow_sentinel.controller")

ACTIVE, STANDBY, STOPPED = "active", "standby", "stopped"


@dataclass(frozen=True)
class NodeView:
    """One controller at the end of one cycle. Times are the controller clock's seconds."""

    node_id: str
    host: str
    version: str
    role: str  # active, standby, stopped
    epoch: int | None
    lease_left_s: float | None  # until the lease expires, while we hold it
    scheduler_state: str | None  # starting, running (it passed its start check), stopping
    scheduler_pid: int | None
    heartbeat_age_s: float | None  # of its heartbeat row (health_check = heartbeat)
    paused: bool
    held: str | None  # who holds the cluster, when an upgrade does
    fit: bool
    cooldown_left_s: float | None
    conflict: str | None  # the host of another live instance under our node_id
    metastore_reachable: bool
    cycle_at: float  # when this cycle ended
    cycle_every_s: float  # renew_interval: the next cycle is due this long after

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    # -- the probes' questions -----------------------------------------------------------
    def live(self, now: float) -> bool:
        """The loop ran within its deadline: a cycle every renew_interval, each store call
        bounded by one more, and one cycle's slack."""
        return now - self.cycle_at <= 3 * self.cycle_every_s

    def is_active(self, now: float) -> bool:
        """Holds a valid lease and runs a scheduler that proved itself."""
        return (
            self.role == ACTIVE
            and self.lease_left_s is not None
            and self.lease_left_s - (now - self.cycle_at) > 0
            and self.scheduler_state == "running"
            and self.live(now)
        )

    def is_fit_standby(self, now: float) -> bool:
        """Would take over: a standby that sees the metastore, is not cooling down, has
        its node_id to itself, and whose loop runs."""
        return (
            self.role == STANDBY
            and self.fit
            and self.conflict is None
            and self.metastore_reachable
            and self.live(now)
        )

    def is_ready(self, now: float) -> bool:
        """Part of the cluster: the metastore answered in the last cycle, no conflict."""
        return (
            self.role != STOPPED
            and self.metastore_reachable
            and self.conflict is None
            and self.live(now)
        )


EventListener = Callable[[Event], None]


class Publisher:
    """The latest view, swapped whole (readers never see half of one), and the listeners
    that hear every event. A listener that fails is logged and kept out of the loop."""

    def __init__(self) -> None:
        self._view: NodeView | None = None
        self._listeners: list[EventListener] = []
        self._lock = threading.Lock()

    def publish(self, view: NodeView) -> None:
        self._view = view

    def latest(self) -> NodeView | None:
        return self._view

    def subscribe(self, listener: EventListener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def event(self, event: Event) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # a reader's bug must not stop the loop
                log.exception("an event listener failed")
