"""Prometheus metrics of one controller: gauges read from the last published view at each
scrape, counters fed by the events as they happen. Every series carries node_id."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from airflow_sentinel.controller import events as ev
from airflow_sentinel.controller.published import ACTIVE, NodeView
from airflow_sentinel.metastore.base import Event

PREFIX = "airflow_sentinel"
ROLES = ("active", "standby", "stopped")


def takeover_reason(detail: str) -> str:
    """became_active's detail, reduced to a label with few values."""
    if "it was free" in detail:
        return "free"
    if "taken back or handed over" in detail:
        return "handed_over"
    if "silence" in detail:
        return "silence"
    return "other"


def restart_reason(detail: str) -> str:
    return "hung" if detail.startswith("heartbeat older") else "unhealthy_start"


def exit_outcome(detail: str) -> str:
    """The first word of an exit's detail ("exited", "lost"), after the pid if it has one."""
    match = re.match(r"(?:pid \d+ )?([a-z]+) ", detail)
    return match.group(1) if match else "other"


class ViewCollector(Collector):
    """The state gauges, from the view the loop published last."""

    def __init__(self, view: Callable[[], NodeView | None], now: Callable[[], float]) -> None:
        self._view = view
        self._now = now

    def collect(self) -> Iterator[GaugeMetricFamily | InfoMetricFamily]:
        view = self._view()
        if view is None:
            return
        node = [view.node_id]

        def gauge(name: str, help_text: str, value: float | None) -> GaugeMetricFamily:
            family = GaugeMetricFamily(f"{PREFIX}_{name}", help_text, labels=["node_id"])
            if value is not None:
                family.add_metric(node, value)
            return family

        now = self._now()
        role = GaugeMetricFamily(
            f"{PREFIX}_role", "1 for the role this node is in", labels=["node_id", "role"]
        )
        for name in ROLES:
            role.add_metric([view.node_id, name], 1.0 if view.role == name else 0.0)
        yield role
        yield gauge(
            "epoch", "Fencing epoch of the lease this node holds (0: none)", view.epoch or 0
        )
        left = None if view.lease_left_s is None else view.lease_left_s - (now - view.cycle_at)
        yield gauge("lease_remaining_seconds", "Seconds until the held lease expires", left)
        yield gauge(
            "metastore_up",
            "1 if the metastore answered in the last cycle",
            _flag(view.metastore_reachable),
        )
        yield gauge(
            "scheduler_up",
            "1 if this node runs a proven scheduler",
            _flag(view.scheduler_state == "running"),
        )
        yield gauge(
            "scheduler_heartbeat_age_seconds",
            "Age of the scheduler's heartbeat row",
            view.heartbeat_age_s,
        )
        yield gauge("paused", "1 if the cluster is paused", _flag(view.paused))
        yield gauge("held", "1 if an upgrade holds the cluster", _flag(view.held is not None))
        yield gauge("fit", "1 if this node may lead (not cooling down)", _flag(view.fit))
        yield gauge(
            "cooldown_remaining_seconds", "Seconds of cooldown left", view.cooldown_left_s or 0.0
        )
        yield gauge(
            "instance_conflict",
            "1 if another live controller uses this node_id",
            _flag(view.conflict is not None),
        )
        yield gauge(
            "last_cycle_age_seconds", "Seconds since the control loop last ran", now - view.cycle_at
        )
        yield gauge(
            "active_probe",
            "1 if /active answers 200 here",
            _flag(view.role == ACTIVE and view.is_active(now)),
        )
        info = InfoMetricFamily(
            f"{PREFIX}_controller", "The controller's version and host", labels=["node_id"]
        )
        info.add_metric(node, {"version": view.version, "host": view.host})
        yield info


def _flag(value: bool) -> float:
    return 1.0 if value else 0.0


# (key, metric name, help, labels beyond node_id); fed by the events, see _counted.
COUNTERS = (
    ("takeovers", "takeovers", "Leases taken, by how", ("reason",)),
    ("demotions", "demotions", "Times this node gave up leading, by event", ("kind",)),
    ("starts", "scheduler_starts", "Schedulers started", ()),
    ("exits", "scheduler_exits", "Scheduler ends, by outcome", ("outcome",)),
    ("restarts", "scheduler_restarts", "Restarts, by reason", ("reason",)),
    ("fences", "fences", "Schedulers the guard killed at the lease deadline", ()),
    ("strays", "strays_stopped", "Stray and orphaned schedulers stopped", ()),
    ("conflicts", "instance_conflicts", "Conflicts over this node_id seen", ()),
    (
        "renew_failures",
        "lease_renewal_failures",
        "Renewals that failed or were not tried in time",
        (),
    ),
)
GIVING_UP = (ev.DEMOTED, ev.STEPPED_DOWN, ev.STOOD_DOWN, ev.HANDED_OVER)
PLAIN = {
    ev.SCHEDULER_STARTED: "starts",
    ev.SCHEDULER_FENCED: "fences",
    ev.STRAY_KILLED: "strays",
}


def _counted(event: Event) -> tuple[str, tuple[str, ...]] | None:
    """The counter an event moves, with its labels beyond node_id; None: none."""
    if event.kind == ev.BECAME_ACTIVE:
        return "takeovers", (takeover_reason(event.detail),)
    if event.kind in GIVING_UP:
        return "demotions", (event.kind,)
    if event.kind == ev.SCHEDULER_EXITED:
        return "exits", (exit_outcome(event.detail),)
    if event.kind == ev.SCHEDULER_RESTARTED:
        return "restarts", (restart_reason(event.detail),)
    if event.kind == ev.INSTANCE_CONFLICT and not event.detail.startswith("resolved"):
        return "conflicts", ()
    if event.kind in PLAIN:
        return PLAIN[event.kind], ()
    return None


class Metrics:
    """One registry per controller, so that tests can run several in one process."""

    def __init__(
        self,
        node_id: str,
        view: Callable[[], NodeView | None],
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node_id = node_id
        self.registry = CollectorRegistry()
        self.registry.register(ViewCollector(view, now))
        self.counters = {
            key: Counter(f"{PREFIX}_{name}", help_text, ["node_id", *by], registry=self.registry)
            for key, name, help_text, by in COUNTERS
        }
        for key, _, _, by in COUNTERS:
            if not by:
                self.counters[key].labels(node_id)  # present from the start, at 0
        self.renewals = Histogram(
            f"{PREFIX}_lease_renewal_seconds",
            "Time one lease renewal took",
            ["node_id"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )

    def on_event(self, event: Event) -> None:
        counted = _counted(event)
        if counted is not None:
            key, label = counted
            self.counters[key].labels(self.node_id, *label).inc()

    def on_renewal(self, seconds: float | None, ok: bool) -> None:
        """``seconds`` None: a renewal not tried (too close to the deadline): a failure."""
        if seconds is not None:
            self.renewals.labels(self.node_id).observe(seconds)
        if not ok:
            self.counters["renew_failures"].labels(self.node_id).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
