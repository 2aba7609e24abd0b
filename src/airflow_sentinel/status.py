"""Reading the cluster's state for `status`, `metadata` and `is-scheduler-running`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from airflow_sentinel.metastore.base import (
    PAUSED,
    EventRecord,
    LeaseRecord,
    Metastore,
    NodeRecord,
    switchover_flag,
)

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ClusterState:
    metastore: str
    service: str
    lease: LeaseRecord | None
    nodes: list[NodeRecord]
    flags: dict[str, str]
    lease_ttl: float

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
            "nodes": [
                {
                    **{k: v for k, v in asdict(n).items() if k != "last_heartbeat_age_s"},
                    "alive": self.alive(n),
                    "last_heartbeat_age_s": _round(n.last_heartbeat_age_s),
                }
                for n in self.nodes
            ],
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def read_cluster(store: Metastore, service: str, lease_ttl: float) -> ClusterState:
    return ClusterState(
        metastore=store.description,
        service=service,
        lease=store.read_lease(service),
        nodes=store.nodes(),
        flags=store.flags(),
        lease_ttl=lease_ttl,
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
            "yes" if node["fit"] else "cooling down",
            node["host"],
            node["version"],
        )
    console.print(table)


def render_events(events: list[EventRecord], console: Console) -> None:
    table = Table(title="events (newest first)")
    for column in ("id", "age", "node", "epoch", "event", "detail"):
        table.add_column(column)
    for e in events:
        table.add_row(
            str(e.id), f"{e.age_s:.0f}s", e.node_id, str(e.epoch or "-"), e.kind, e.detail
        )
    console.print(table)
