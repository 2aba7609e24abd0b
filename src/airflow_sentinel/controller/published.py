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
    demote_in_s: float | None  # until this node must have stopped its scheduler
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
    cycle_bound_s: float  # the longest a cycle may take: store timeouts, a stop, a kill
    leaving: bool = False  # demoting, stepping down or handing over: stopping its scheduler

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    # -- the probes' questions -----------------------------------------------------------
    def live(self, now: float) -> bool:
        """The loop ran within its deadline: the next cycle is due after renew_interval,
        and one cycle may take as long as its store calls, a stop and a kill take."""
        return now - self.cycle_at <= self.cycle_every_s + self.cycle_bound_s

    def is_active(self, now: float) -> bool:
        """Holds a lease it need not give up yet, and runs a scheduler that proved itself;
        never while it is stopping it, and never past its demote deadline, so that two
        nodes cannot both answer 200 across a handoff."""
        return (
            self.role == ACTIVE
            and not self.leaving
            and self.demote_in_s is not None
            and self.demote_in_s - (now - self.cycle_at) > 0
            and self.scheduler_state == "running"
            and now - self.cycle_at <= 2 * self.cycle_every_s
        )

    def is_fit_standby(self, now: float) -> bool:
        """Would take over: a standby that sees the metastore, is not cooling down, has
        its node_id to itself, whose loop runs, in a cluster neither paused nor held."""
        return (
            self.role == STANDBY
            and self.fit
            and self.conflict is None
            and self.metastore_reachable
            and not self.paused
            and self.held is None
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
ViewListener = Callable[[NodeView], None]
LifecycleListener = Callable[[str], None]
# The controller's life, as a service manager hears of it.
READY, RELOADING, STOPPING = "ready", "reloading", "stopping"


class Publisher:
    """The latest view, swapped whole (readers never see half of one), and the listeners
    that hear every event. A listener that fails is logged and kept out of the loop.

    View and lifecycle listeners run on the loop's own thread, at the end of each cycle:
    a watchdog ping that comes from here proves that the loop runs. They must be quick
    (no network, no disk waits); anything slow belongs on a thread of its own."""

    def __init__(self) -> None:
        self._view: NodeView | None = None
        self._listeners: list[EventListener] = []
        self._view_listeners: list[ViewListener] = []
        self._lifecycle_listeners: list[LifecycleListener] = []
        self._lock = threading.Lock()

    def publish(self, view: NodeView) -> None:
        self._view = view
        for listener in list(self._view_listeners):
            _call(listener, view)

    def on_view(self, listener: ViewListener) -> None:
        self._view_listeners.append(listener)

    def on_lifecycle(self, listener: LifecycleListener) -> None:
        self._lifecycle_listeners.append(listener)

    def lifecycle(self, state: str) -> None:
        """READY, RELOADING or STOPPING, from the loop."""
        for listener in list(self._lifecycle_listeners):
            _call(listener, state)

    def latest(self) -> NodeView | None:
        return self._view

    def subscribe(self, listener: EventListener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def event(self, event: Event) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            _call(listener, event)


def _call(listener: Callable[[Any], None], value: Any) -> None:
    try:
        listener(value)
    except Exception:  # a reader's bug must not stop the loop
        log.exception("a listener of the controller failed")
