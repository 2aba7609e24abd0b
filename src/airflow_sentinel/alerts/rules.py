"""Which of this node's events are alerts. Each is a fact only this node saw (its takeover,
its fence, its step-down, a stray on its host), so this node alone sends it: once per
cluster without any coordination."""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

from airflow_sentinel.alerts import model as m
from airflow_sentinel.controller import events as ev
from airflow_sentinel.metastore.base import Event

HOUR = 3600.0
EXIT_REASONS_KEPT = 5
# describe_takeover's words (controller/lease_keeper.py); the unit tests hold them together.
_SILENCE = re.compile(
    r"took the scheduler lease from (?P<holder>.+?)(?: \(its epoch \d+\))? "
    r"after (?P<silence>[\d.]+)s of silence"
)
_FREE = "(it was free)"


@dataclass(frozen=True)
class Takeover:
    from_node: str | None  # None: the lease was free (released, or never taken)
    silence_s: float | None


def parse_takeover(detail: str) -> Takeover | None:
    """How a became_active took the lease; None for a planned handover or a node taking
    back its own lease, which are no failover."""
    found = _SILENCE.search(detail)
    if found:
        return Takeover(found["holder"], float(found["silence"]))
    if _FREE in detail:
        return Takeover(None, None)
    return None


class RestartRate:
    """Restarts of the scheduler on this node within the last hour. The first start in an
    epoch is this node taking over; every further one in that epoch is a restart."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._epoch: int | None = None
        self._restarts: deque[float] = deque()

    def started(self, epoch: int | None, now: float) -> int | None:
        """Note a start; the count of the last hour's restarts when it exceeds the limit."""
        if epoch != self._epoch:
            self._epoch = epoch
            return None
        self._restarts.append(now)
        while self._restarts and now - self._restarts[0] > HOUR:
            self._restarts.popleft()
        return len(self._restarts) if len(self._restarts) > self.limit else None


class EventRules:
    """Turns this node's events into alerts. ``now`` is the clock's monotonic time (for
    rates), ``wall`` the time shown."""

    def __init__(self, node_id: str, restarts_per_hour: int) -> None:
        self.node_id = node_id
        self.restarts = RestartRate(restarts_per_hour)
        self._exits: deque[str] = deque(maxlen=EXIT_REASONS_KEPT)

    def on_event(self, event: Event, now: float, wall: float) -> m.Alert | None:
        if event.kind in (ev.SCHEDULER_EXITED, ev.SCHEDULER_RESTARTED, ev.SCHEDULER_REFUSED):
            self._exits.append(f"{event.kind}: {event.detail}")
        if event.kind == ev.SCHEDULER_STARTED:
            return self._started(event, now, wall)
        build = _BUILDERS.get(event.kind)
        return None if build is None else build(self, event, wall)

    def _alert(
        self,
        event: Event,
        wall: float,
        kind: str,
        severity: str,
        summary: str,
        *facts: tuple[str, str],
        topic: str = "",
    ) -> m.Alert:
        return m.Alert(
            kind, severity, summary, event.node_id, event.epoch, wall, tuple(facts), topic
        )

    def _started(self, event: Event, now: float, wall: float) -> m.Alert | None:
        count = self.restarts.started(event.epoch, now)
        if count is None:
            return None
        return self._alert(
            event,
            wall,
            m.RESTARTS,
            m.WARNING,
            f"{event.node_id} restarted its scheduler {count} times within an hour",
            ("limit", f"alert_restarts_per_hour = {self.restarts.limit}"),
            ("last exits", " | ".join(self._exits) or "none seen"),
        )

    def _became_active(self, event: Event, wall: float) -> m.Alert | None:
        taken = parse_takeover(event.detail)
        if taken is None or (taken.from_node is None and (event.epoch or 0) <= 1):
            return None  # planned, taken back, or the cluster's very first lease
        source = taken.from_node or "a released lease"
        silence = "" if taken.silence_s is None else f" after {taken.silence_s:.1f}s of silence"
        return self._alert(
            event,
            wall,
            m.FAILOVER,
            m.CRITICAL if taken.silence_s is not None else m.WARNING,
            f"failover: {event.node_id} took over the scheduler from {source}{silence}, "
            f"epoch {event.epoch}",
            ("new active", event.node_id),
            ("previous", taken.from_node or "none (the lease was released)"),
            ("silence", f"{taken.silence_s:.1f}s" if taken.silence_s is not None else "none"),
            ("detail", event.detail),
        )

    def _fenced(self, event: Event, wall: float) -> m.Alert:
        return self._alert(
            event,
            wall,
            m.FENCED,
            m.CRITICAL,
            f"fence fired on {event.node_id}: its scheduler was killed at the lease deadline",
            ("detail", event.detail),
        )

    def _stepped_down(self, event: Event, wall: float) -> m.Alert:
        exits = list(self._exits)
        self._exits.clear()
        return self._alert(
            event,
            wall,
            m.STEPPED_DOWN,
            m.CRITICAL,
            f"{event.node_id} stepped down: {event.detail}",
            ("detail", event.detail),
            *((f"exit {n}", reason) for n, reason in enumerate(exits, 1)),
        )

    def _stray(self, event: Event, wall: float) -> m.Alert:
        stopped = event.kind == ev.STRAY_KILLED
        what = "stray scheduler stopped" if stopped else "stray scheduler found (not stopped)"
        return self._alert(
            event,
            wall,
            m.STRAY,
            m.WARNING,
            f"{what} on {event.node_id}",
            ("detail", event.detail),
            topic=event.kind,
        )

    def _conflict(self, event: Event, wall: float) -> m.Alert:
        if event.detail.startswith("resolved"):
            return self._alert(
                event,
                wall,
                m.RESOLVED,
                m.INFO,
                f"resolved: {event.node_id} owns its node_id again",
                ("detail", event.detail),
                topic=m.INSTANCE_CONFLICT,
            )
        return self._alert(
            event,
            wall,
            m.INSTANCE_CONFLICT,
            m.CRITICAL,
            f"instance conflict: two controllers use node_id {event.node_id}",
            ("detail", event.detail),
        )

    def _refused(self, event: Event, wall: float) -> m.Alert:
        return self._alert(
            event,
            wall,
            m.SCHEMA_REFUSED,
            m.CRITICAL,
            f"{event.node_id} refused to start its scheduler: the database schema does not "
            "match its Airflow",
            ("detail", event.detail),
        )


_BUILDERS = {
    ev.BECAME_ACTIVE: EventRules._became_active,
    ev.SCHEDULER_FENCED: EventRules._fenced,
    ev.STEPPED_DOWN: EventRules._stepped_down,
    ev.STRAY_KILLED: EventRules._stray,
    ev.STRAY_FOUND: EventRules._stray,
    ev.INSTANCE_CONFLICT: EventRules._conflict,
    ev.SCHEDULER_REFUSED: EventRules._refused,
}
