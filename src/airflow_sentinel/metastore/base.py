"""The metastore contract. Every backend (SQL, ZooKeeper) implements exactly this.

Rules every backend follows:

* Losing a race is a return value (``None`` or ``False``); an unreachable or failing store
  raises :class:`~airflow_sentinel.errors.MetastoreError`. The controller treats the two
  differently: a lost lease demotes at once; a store error demotes only when the lease's
  local validity runs out.
* The lease changes hands only by compare-and-set. ``epoch`` grows by at least one every
  time the lease is acquired and never goes backwards: it is the fencing token.
* ``Lease.valid_until`` is on the caller's clock (``Clock.now()``). The backend guarantees
  that no other node can acquire the lease before that instant, as long as clock *rates*
  agree to within the fence margin. Host clocks need not agree on the time of day.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from airflow_sentinel.identity import Instance


@dataclass(frozen=True)
class Lease:
    """A lease this node holds."""

    service: str
    holder: str
    epoch: int
    valid_until: float
    instance: str = ""  # the holding controller's instance token
    # How it was taken (for the log): from whom, and how long we saw it unchanged before.
    taken_from: str | None = None
    silent_for: float | None = None


@dataclass(frozen=True)
class LeaseRecord:
    """The lease as any node reads it."""

    service: str
    holder: str | None
    epoch: int
    version: int
    ttl: float
    age_s: float | None  # seconds since its last change, on the store's clock; display only
    instance: str | None = None


@dataclass(frozen=True)
class NodeReport:
    """What a controller reports about itself with every heartbeat."""

    node_id: str
    host: str
    role: str
    scheduler_running: bool
    scheduler_pid: int | None
    fit: bool
    version: str
    epoch: int | None
    instance: str | None = None  # the reporting controller's instance token
    cooldown_left_s: float | None = None  # stepped down: seconds until it may lead again
    api: str | None = None  # where its HTTP API answers (http://HOST:PORT), if it serves one
    fingerprint: str | None = None  # JSON: what must be alike on every master (doctor)


@dataclass(frozen=True)
class NodeRecord(NodeReport):
    """A node's last report, as any node reads it."""

    last_heartbeat_age_s: float = 0.0


@dataclass(frozen=True)
class Event:
    node_id: str
    service: str
    kind: str
    detail: str = ""
    epoch: int | None = None


@dataclass(frozen=True)
class EventRecord:
    id: int
    age_s: float
    node_id: str
    service: str
    kind: str
    detail: str
    epoch: int | None


PAUSED = "paused"
# Set by a controller refused because another live instance reports under its node_id.
CONFLICT_PREFIX = "conflict:"
# Set by an upgrade: every controller stops its scheduler, gives up its lease, takes none.
HOLD = "hold"
# The cluster upgrade lock: claimed by the node that does the cluster-wide upgrade steps.
UPGRADE_LOCK = "upgrade"


def switchover_flag(service: str) -> str:
    return f"switchover:{service}"


class Metastore(ABC):
    """Leadership, node registry, event log and cluster flags."""

    @property
    @abstractmethod
    def description(self) -> str:
        """Where this metastore is, with any password masked."""

    @abstractmethod
    def ensure_schema(self) -> None:
        """Create what the backend needs; safe when several nodes do it at once."""

    @abstractmethod
    def check(self) -> str:
        """Round-trip to the store; returns its server description. Raises if unreachable."""

    # -- lease ---------------------------------------------------------------------------
    @abstractmethod
    def try_acquire(self, service: str, me: Instance, ttl: float) -> Lease | None:
        """Take the lease if it is free, or recorded for ``me.node_id`` with a holder
        instance that ``me.may_reclaim`` (this instance, a dead predecessor on the same boot,
        or a handover to this node); any other holder only after observed expiry.

        ``None`` means another node or instance holds it (or may still hold it). ``ttl`` is
        this node's promise to others: they wait that long after the lease last changed.
        The epoch grows by one, except when claiming a handover, whose transfer already
        moved it: the epoch moves by exactly one per change of holder.
        """

    def takeover_due(self, service: str) -> float | None:
        """When (on the clock given to the store) the lease that ``try_acquire`` last found
        held by another node will have been unchanged for its TTL; None when none was. No
        I/O: a standby looks again at that instant, instead of at its next poll."""
        return None

    @abstractmethod
    def renew(self, lease: Lease, ttl: float) -> Lease | None:
        """Extend a held lease. ``None``: it is no longer this instance's (someone else's,
        another instance's with the same node_id, or released)."""

    @abstractmethod
    def release(self, lease: Lease) -> bool:
        """Give the lease up so a standby may take it at once. Call only with nothing running.
        Only if the lease still names ``lease``'s holder, instance and epoch; any connection
        may do it (the guard of a dead controller does, through crash_release.py)."""

    @abstractmethod
    def transfer(self, lease: Lease, to_node: str) -> bool:
        """Hand the lease to ``to_node`` (planned switchover), epoch + 1, holder instance
        HANDOVER, so the target claims it without waiting and without a second increment.
        Call only with nothing running."""

    @abstractmethod
    def read_lease(self, service: str) -> LeaseRecord | None:
        """The lease as it stands, or None if it was never taken."""

    # -- node registry -------------------------------------------------------------------
    @abstractmethod
    def heartbeat(
        self, report: NodeReport, stale_after: float, me: Instance | None = None
    ) -> str | None:
        """Insert or update this node's row, unless another instance reports under the same
        node_id and was heard from within ``stale_after`` seconds (and has not stopped), and
        ``me`` (the reporting instance, when given) cannot prove it dead: then nothing is
        written and that instance's host is returned (a conflict). A controller restarted
        after a crash thereby takes its dead predecessor's row at once."""

    @abstractmethod
    def nodes(self) -> list[NodeRecord]:
        """Every registered node, sorted by node_id."""

    # -- events --------------------------------------------------------------------------
    @abstractmethod
    def record_event(self, event: Event, retention: int) -> None:
        """Append to the event log, keeping at most about ``retention`` events."""

    @abstractmethod
    def events(self, limit: int) -> list[EventRecord]:
        """The newest ``limit`` events, newest first."""

    # -- cluster flags -------------------------------------------------------------------
    @abstractmethod
    def set_flag(self, name: str, value: str | None) -> None:
        """Set a cluster-wide flag; ``None`` clears it."""

    @abstractmethod
    def claim_flag(self, name: str, value: str) -> bool:
        """Set a flag only if it is not set (compare-and-set); False if it already was."""

    @abstractmethod
    def flags(self) -> dict[str, str]:
        """Every flag that is set."""

    @abstractmethod
    def clear(self) -> None:
        """Forget nodes, events and flags. Leases stay, so epochs never go backwards."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""
