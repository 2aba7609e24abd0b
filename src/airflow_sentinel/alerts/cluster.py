"""Cluster-wide conditions: no scheduler anywhere, an upgrade hold that lasts, and their
return to normal. Every node watches the same metastore the same way; only the sender
sends: the active node, or when none is active the live node with the lowest node_id."""

from __future__ import annotations

from dataclasses import dataclass

from airflow_sentinel.alerts import model as m
from airflow_sentinel.metastore.base import HOLD
from airflow_sentinel.status import ClusterState


@dataclass(frozen=True)
class ClusterFacts:
    """What the conditions need of one read of the cluster."""

    active: str | None
    live: tuple[str, ...]  # node_ids that report and have not stopped
    running_on: tuple[str, ...]  # live nodes that run a scheduler
    hold: str | None  # the upgrade hold's reason
    epoch: int | None

    @classmethod
    def of(cls, state: ClusterState) -> ClusterFacts:
        return cls(
            active=state.active_node,
            live=tuple(sorted(n.node_id for n in state.nodes if state.alive(n))),
            running_on=tuple(n.node_id for n in state.running_nodes()),
            hold=state.flags.get(HOLD),
            epoch=state.lease.epoch if state.lease is not None else None,
        )

    @property
    def sender(self) -> str | None:
        """The one node that sends the cluster's alerts."""
        if self.active is not None:
            return self.active
        return self.live[0] if self.live else None


class Condition:
    """A condition that becomes an alert once it has lasted ``after`` seconds, and a
    resolved alert when it ends (only if it had become one)."""

    def __init__(self, after: float) -> None:
        self.after = after
        self.since: float | None = None
        self.fired = False

    def observe(self, holds: bool, now: float) -> str | None:
        """ "fire", "resolve" or None."""
        if not holds:
            fired, self.since, self.fired = self.fired, None, False
            return "resolve" if fired else None
        if self.since is None:
            self.since = now
        if not self.fired and now - self.since >= self.after:
            self.fired = True
            return "fire"
        return None

    def lasted(self, now: float) -> float:
        return 0.0 if self.since is None else now - self.since


class ReachWatch:
    """This node cannot read the metastore: then no node may lead for long (an active one
    that cannot renew stops its scheduler), and no node can tell the others. Each node
    that cannot reach it says so itself, once it has lasted ``after`` seconds: nodes that
    cannot reach the store cannot agree on a sender."""

    def __init__(self, node_id: str, after: float) -> None:
        self.node_id = node_id
        self.condition = Condition(after)

    def observe(self, reachable: bool, why: str, now: float, wall: float) -> list[m.Alert]:
        lasted = self.condition.lasted(now)
        change = self.condition.observe(not reachable, now)
        if change == "fire":
            return [self._unreachable(why, now, wall)]
        if change == "resolve":
            return [self._reachable(lasted, wall)]
        return []

    def _unreachable(self, why: str, now: float, wall: float) -> m.Alert:
        lasted = self.condition.lasted(now)
        return m.Alert(
            m.METASTORE_UNREACHABLE,
            m.CRITICAL,
            f"{self.node_id} cannot reach the metastore for {lasted:.0f}s: no node can lead "
            "while it lasts for them all",
            self.node_id,
            None,
            wall,
            (
                ("reason", why or "unknown"),
                ("threshold", f"alert_no_scheduler_after = {self.condition.after:g}s"),
                ("see", "airflow-sentinel test-connection"),
            ),
        )

    def _reachable(self, lasted: float, wall: float) -> m.Alert:
        return m.Alert(
            m.RESOLVED,
            m.INFO,
            f"resolved: {self.node_id} reaches the metastore again after {lasted:.0f}s",
            self.node_id,
            None,
            wall,
            topic=m.METASTORE_UNREACHABLE,
        )


class ClusterWatch:
    def __init__(self, no_scheduler_after: float, hold_after: float) -> None:
        self.no_scheduler = Condition(no_scheduler_after)
        self.hold = Condition(hold_after)
        self._hold_reason: str | None = None
        self._last_without: float = 0.0

    def observe(self, facts: ClusterFacts, now: float, wall: float) -> list[m.Alert]:
        """The alerts this read of the cluster brings; the caller sends them if it is the
        sender. A hold stops the schedulers on purpose: no 'no scheduler' alert then."""
        alerts = []
        without = not facts.running_on and facts.hold is None
        lasted = self.no_scheduler.lasted(now)
        change = self.no_scheduler.observe(without, now)
        if change == "fire":
            alerts.append(self._no_scheduler(facts, now, wall))
        elif change == "resolve":
            alerts.append(self._scheduler_back(facts, lasted, wall))
        if facts.hold is not None:
            self._hold_reason = facts.hold
        lasted = self.hold.lasted(now)
        change = self.hold.observe(facts.hold is not None, now)
        if change == "fire":
            alerts.append(self._held(facts, now, wall))
        elif change == "resolve":
            alerts.append(self._released(facts, lasted, wall))
        return alerts

    def _no_scheduler(self, facts: ClusterFacts, now: float, wall: float) -> m.Alert:
        lasted = self.no_scheduler.lasted(now)
        return m.Alert(
            m.NO_SCHEDULER,
            m.CRITICAL,
            f"no scheduler runs anywhere in the cluster for {lasted:.0f}s",
            None,
            facts.epoch,
            wall,
            (
                ("active node", facts.active or "none"),
                ("live nodes", ", ".join(facts.live) or "none"),
                ("threshold", f"alert_no_scheduler_after = {self.no_scheduler.after:g}s"),
            ),
        )

    def _scheduler_back(self, facts: ClusterFacts, lasted: float, wall: float) -> m.Alert:
        where = ", ".join(facts.running_on) or "nowhere (an upgrade holds the cluster)"
        return m.Alert(
            m.RESOLVED,
            m.INFO,
            f"resolved: a scheduler runs again on {where} after {lasted:.0f}s without one",
            None,
            facts.epoch,
            wall,
            (("active node", facts.active or "none"),),
            topic=m.NO_SCHEDULER,
        )

    def _held(self, facts: ClusterFacts, now: float, wall: float) -> m.Alert:
        lasted = self.hold.lasted(now)
        return m.Alert(
            m.HOLD_TOO_LONG,
            m.WARNING,
            f"an upgrade has held the cluster for {lasted:.0f}s: no scheduler may start",
            None,
            facts.epoch,
            wall,
            (
                ("hold", facts.hold or ""),
                ("threshold", f"alert_hold_after = {self.hold.after:g}s"),
                ("see", "airflow-sentinel upgrade status"),
            ),
        )

    def _released(self, facts: ClusterFacts, lasted: float, wall: float) -> m.Alert:
        return m.Alert(
            m.RESOLVED,
            m.INFO,
            f"resolved: the upgrade hold was released after {lasted:.0f}s",
            None,
            facts.epoch,
            wall,
            (("hold was", self._hold_reason or ""),),
            topic=m.HOLD_TOO_LONG,
        )
