"""Reading the cluster's state for `status`, `metadata` and `is-scheduler-running`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from airflow_sentinel.errors import UserError
from airflow_sentinel.metastore.base import (
    CONFLICT_PREFIX,
    HOLD,
    PAUSED,
    UPGRADE_LOCK,
    EventRecord,
    LeaseRecord,
    Metastore,
    NodeRecord,
    switchover_flag,
)

SCHEMA_VERSION = 1  # additions keep the version; a change or removal bumps it
# Not in status: the age is rounded below, and the fingerprint (hosts, paths) is doctor's.
NOT_IN_STATUS = frozenset({"last_heartbeat_age_s", "fingerprint"})
BECAME_ACTIVE = "became_active"
# Events read for the last failover: enough to reach back past a busy hour.
RECENT_EVENTS = 200


@dataclass(frozen=True)
class ClusterState:
    metastore: str
    service: str
    lease: LeaseRecord | None
    nodes: list[NodeRecord]
    flags: dict[str, str]
    lease_ttl: float
    last_takeover: EventRecord | None = None

    @property
    def active_node(self) -> str | None:
        """The lease holder, unless its lease has gone unrenewed for longer than a TTL."""
        lease = self.lease
        if lease is None or lease.holder is None:
            return None
        if lease.age_s is not None and lease.ttl > 0 and lease.age_s > lease.ttl:
            return None
        return lease.holder

    def alive(self, node: NodeRecord) -> bool:
        return node.role != "stopped" and node.last_heartbeat_age_s <= self.lease_ttl

    def running_nodes(self) -> list[NodeRecord]:
        return [n for n in self.nodes if n.scheduler_running and self.alive(n)]

    def to_json(self) -> dict[str, Any]:
        switchover = self.flags.get(switchover_flag(self.service))
        return {
            "schema_version": SCHEMA_VERSION,
            "metastore": self.metastore,
            "service": self.service,
            "active_node": self.active_node,
            "epoch": self.lease.epoch if self.lease else 0,
            "lease_age_s": _round(self.lease.age_s) if self.lease else None,
            "paused": PAUSED in self.flags,
            "switchover_to": switchover.partition(" ")[2] if switchover else None,
            "hold": self._hold(),
            "conflicts": {
                name[len(CONFLICT_PREFIX) :]: value
                for name, value in sorted(self.flags.items())
                if name.startswith(CONFLICT_PREFIX)
            },
            "last_failover": _event_json(self.last_takeover),
            "nodes": [
                {
                    **{k: v for k, v in asdict(n).items() if k not in NOT_IN_STATUS},
                    "alive": self.alive(n),
                    "last_heartbeat_age_s": _round(n.last_heartbeat_age_s),
                }
                for n in self.nodes
            ],
        }

    def _hold(self) -> dict[str, Any] | None:
        reason = self.flags.get(HOLD)
        lock = self.flags.get(UPGRADE_LOCK)
        if reason is None and lock is None:
            return None
        try:
            upgrade = json.loads(lock) if lock else None
        except ValueError:
            upgrade = {"raw": lock}
        return {"reason": reason, "upgrade_lock": upgrade}


def _event_json(event: EventRecord | None) -> dict[str, Any] | None:
    if event is None:
        return None
    return {
        "node_id": event.node_id,
        "epoch": event.epoch,
        "detail": event.detail,
        "age_s": _round(event.age_s),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def read_cluster(
    store: Metastore, service: str, lease_ttl: float, with_history: bool = False
) -> ClusterState:
    """The cluster as the store has it. A report counts as live for one lease TTL: the
    smaller of ours and the one the holder wrote, so a fast cluster's stale reports are
    not trusted for the default TTL of a command run without its settings."""
    lease = store.read_lease(service)
    if lease is not None and lease.ttl > 0:
        lease_ttl = min(lease_ttl, lease.ttl)
    takeover = None
    if with_history:
        events = store.events(RECENT_EVENTS)
        takeover = next((e for e in events if e.kind == BECAME_ACTIVE), None)
    return ClusterState(
        metastore=store.description,
        service=service,
        lease=lease,
        nodes=store.nodes(),
        flags=store.flags(),
        lease_ttl=lease_ttl,
        last_takeover=takeover,
    )


def render_status(state: ClusterState, console: Console) -> None:
    data = state.to_json()
    active = data["active_node"] or "none"
    mode = (
        "PAUSED (maintenance: controllers start and stop nothing)" if data["paused"] else "normal"
    )
    console.print(f"metastore: {data['metastore']}")
    console.print(f"active node: [bold]{active}[/bold]   epoch: {data['epoch']}   mode: {mode}")
    if data["switchover_to"]:
        console.print(f"switchover requested to: {data['switchover_to']}")
    _render_notes(data, console)
    table = Table()
    for column in ("node", "role", "scheduler", "pid", "heartbeat age", "fit", "host", "version"):
        table.add_column(column)
    for node in data["nodes"]:
        role = node["role"] if node["alive"] else f"{node['role']} (not heard from)"
        table.add_row(
            node["node_id"],
            role,
            "running" if node["scheduler_running"] else "-",
            str(node["scheduler_pid"] or "-"),
            f"{node['last_heartbeat_age_s']:.1f}s",
            _fitness(node),
            node["host"],
            node["version"],
        )
    console.print(table)


def _fitness(node: dict[str, Any]) -> str:
    if node["fit"]:
        return "yes"
    left = node.get("cooldown_left_s")
    return f"cooling down ({left:.0f}s left)" if left else "cooling down"


def _render_notes(data: dict[str, Any], console: Console) -> None:
    """What an operator must know before acting: holds, conflicts, the last failover."""
    hold = data["hold"]
    if hold is not None:
        lock = hold["upgrade_lock"] or {}
        run = f" (run {lock.get('run')} on {lock.get('node')}, to {lock.get('to')})" if lock else ""
        reason = hold["reason"] or "no hold flag; only the upgrade lock"
        console.print(f"[bold]HELD[/bold]: {reason}{run}: no scheduler starts until released")
        if lock:
            console.print(
                f"  released when run {lock.get('run')} ends: on {lock.get('node')}, "
                f"`airflow-sentinel upgrade status {lock.get('run')}` says where it stands; "
                f"`airflow-sentinel upgrade rollback {lock.get('run')}` or `... resume` ends it"
            )
    for node_id, where in data["conflicts"].items():
        console.print(
            f"[bold]CONFLICT[/bold]: a second controller on {where} uses node_id "
            f"'{node_id}'; it will not lead until the first one stops"
        )
    last = data["last_failover"]
    if last is not None:
        console.print(
            f"last takeover: {last['node_id']} {last['detail']} ({last['age_s']:.0f}s ago)"
        )


def render_events(events: list[EventRecord], console: Console) -> None:
    table = Table(title="events (newest first)")
    for column in ("id", "age", "node", "epoch", "event", "detail"):
        table.add_column(column)
    for e in events:
        table.add_row(
            str(e.id), f"{e.age_s:.0f}s", e.node_id, str(e.epoch or "-"), e.kind, e.detail
        )
    console.print(table)


def choose_target(state: ClusterState, active: str, target: str | None) -> str:
    candidates = [
        n
        for n in state.nodes
        if n.node_id != active and state.alive(n) and n.fit and n.role == "standby"
    ]
    if target is not None:
        known = {n.node_id for n in state.nodes}
        if target == active:
            raise UserError(f"--to: {target} is already the active node")
        if target not in known:
            raise UserError(
                f"--to: unknown node '{target}'; known nodes: {', '.join(sorted(known)) or 'none'}"
            )
        if target not in {n.node_id for n in candidates}:
            raise UserError(
                f"--to: {target} is not a healthy standby (see `airflow-sentinel status`)"
            )
        return target
    if not candidates:
        raise UserError("no healthy standby to hand the scheduler to")
    return min(candidates, key=lambda n: n.last_heartbeat_age_s).node_id
