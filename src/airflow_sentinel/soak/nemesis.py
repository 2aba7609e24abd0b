"""Faults, each on a node chosen by a seeded random generator, so a run can be replayed.

A fault is injected, held for a while, then healed. Holds are drawn relative to the
lease TTL, so "frozen" and "cut off" always outlast the lease, which is the case that
matters: the node must have lost its lease, and known it, before another one starts.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from airflow_sentinel.soak.nodes import Node
from airflow_sentinel.soak.probe import boottime
from airflow_sentinel.soak.recorder import Recorder
from airflow_sentinel.soak.servers import Server

KILL_CONTROLLER = "kill-controller"
KILL_SCHEDULER = "kill-scheduler"
FREEZE_CONTROLLER = "freeze-controller"
PARTITION = "partition"
RESTART_METASTORE = "restart-metastore"
RESTART_CONTROLLER = "restart-controller"
SWITCHOVER = "switchover"
FREEZE_METASTORE = "freeze-metastore"
DUPLICATE_NODE = "duplicate-node"
FREEZE_NODE = "freeze-node"
KINDS = (
    KILL_CONTROLLER,
    KILL_SCHEDULER,
    FREEZE_CONTROLLER,
    PARTITION,
    RESTART_METASTORE,
    RESTART_CONTROLLER,
    SWITCHOVER,
    FREEZE_METASTORE,
    DUPLICATE_NODE,
    FREEZE_NODE,
)
# Faults only a fence in Airflow's database can make safe: with the whole node frozen, its
# guard cannot kill the scheduler, which runs on for a moment after the thaw. They are
# drawn only when the soak has such a database, and its writes are checked.
NEED_AIRFLOW_DB = (FREEZE_NODE,)
# A controller killed with kill -9 comes back after this, as systemd's RestartSec would.
RESTART_DELAY = 1.0


def kinds_for(server: Server, airflow_db: bool = False) -> tuple[str, ...]:
    """The faults that mean something for this metastore (SQLite has no server or wire)
    and this soak (a whole-node freeze needs Airflow's database, whose writes show what a
    scheduler did after its node came back)."""
    kinds = KINDS if airflow_db else tuple(k for k in KINDS if k not in NEED_AIRFLOW_DB)
    if server.restartable:
        return kinds
    return tuple(k for k in kinds if k not in (PARTITION, RESTART_METASTORE, FREEZE_METASTORE))


@dataclass
class Injected:
    kind: str
    node: str
    at: float
    heal_at: float
    heal: Callable[[], None]
    ok: bool = True
    detail: str = ""


@dataclass
class Nemesis:
    nodes: Sequence[Node]
    server: Server
    recorder: Recorder
    ttl: float
    rng: random.Random
    # Makes a controller on the spare host that takes the given node's name (a clone).
    clone_of: Callable[[Node], Node] | None = None
    clones: list[Node] = field(default_factory=list)

    def pick(self, kind: str, busy: set[str]) -> Node:
        """The target: the node running the scheduler for kill-scheduler and freeze-node
        (whose scheduler must be replaced while it is frozen), else any."""
        free = [n for n in self.nodes if n.name not in busy] or list(self.nodes)
        if kind in (KILL_SCHEDULER, FREEZE_NODE):
            running = {p.node for p in self.recorder.alive()}
            with_scheduler = [n for n in free if n.name in running]
            free = with_scheduler or free
        return self.rng.choice(free)

    def inject(self, kind: str, node: Node) -> Injected:
        action: Callable[[Node], Injected] = getattr(self, "_" + kind.replace("-", "_"))
        return action(node)

    def _now(self, kind: str, target: str, hold: float, heal: Callable[[], None]) -> Injected:
        at = boottime()
        return Injected(kind, target, at, at + hold, heal)

    def _kill_controller(self, node: Node) -> Injected:
        fault = self._now(KILL_CONTROLLER, node.name, RESTART_DELAY, node.start)
        node.kill()
        return fault

    def _kill_scheduler(self, node: Node) -> Injected:
        fault = self._now(KILL_SCHEDULER, node.name, 0, lambda: None)
        probes = [p for p in self.recorder.alive() if p.node == node.name]
        for probe in probes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(probe.pid, signal.SIGKILL)
        if not probes:
            fault.ok, fault.detail = False, "no scheduler was running on the node"
        return fault

    def _freeze_controller(self, node: Node) -> Injected:
        hold = self.ttl * self.rng.uniform(1.25, 2.0)
        fault = self._now(FREEZE_CONTROLLER, node.name, hold, lambda: node.signal(signal.SIGCONT))
        node.signal(signal.SIGSTOP)
        return fault

    def _freeze_node(self, node: Node) -> Injected:
        """The controller, its guard, the scheduler and its children stopped at once (the
        host stalls), for two to three lease TTLs: long enough that another node takes
        over and its scheduler is writing when this one thaws, the case the fence in
        Airflow's database is for. Thawed all at once too."""
        hold = self.ttl * self.rng.uniform(2.0, 3.0)
        fault = self._now(FREEZE_NODE, node.name, hold, node.thaw)
        if node.freezer is None:
            fault.ok, fault.detail = False, "the node has no freezer"
            return fault
        if not node.running:
            fault.ok, fault.detail = False, "the controller was not running"
            return fault
        count = node.freeze()
        fault.detail = f"{count} processes frozen ({node.freezer.method})"
        return fault

    def _partition(self, node: Node) -> Injected:
        hold = self.ttl * self.rng.uniform(1.25, 2.5)
        fault = self._now(PARTITION, node.name, hold, node.host.heal)
        node.host.cut(self.server.host)
        return fault

    def _restart_metastore(self, node: Node) -> Injected:
        down = self.rng.uniform(0.5, 2.0)
        fault = self._now(RESTART_METASTORE, "metastore", down, self.server.start)
        self.server.stop()
        return fault

    def _restart_controller(self, node: Node) -> Injected:
        fault = self._now(RESTART_CONTROLLER, node.name, 0.5, node.start)
        if not node.stop(timeout=60):
            fault.ok, fault.detail = False, "the controller ignored SIGTERM for 60 s"
        return fault

    def _switchover(self, node: Node) -> Injected:
        fault = self._now(SWITCHOVER, node.name, 0, lambda: None)
        done = node.run("switchover", "--timeout", "30", timeout=90)
        if done.returncode:
            fault.ok, fault.detail = False, (done.stderr or done.stdout).strip()[-300:]
        return fault

    def _freeze_metastore(self, node: Node) -> Injected:
        hold = self.ttl * self.rng.uniform(1.25, 2.0)
        fault = self._now(FREEZE_METASTORE, "metastore", hold, self.server.thaw)
        self.server.freeze()
        return fault

    def _duplicate_node(self, node: Node) -> Injected:
        """A clone of ``node`` (same host name, so the same node_id) starts on the spare
        host. Half the time ``node`` is frozen first, past its TTL, so the clone takes the
        name over and ``node`` comes back to a conflict; otherwise the clone meets a live
        owner and must be refused. Healed by stopping the clone (and thawing ``node``)."""
        if self.clone_of is None:
            fault = self._now(DUPLICATE_NODE, node.name, 0, lambda: None)
            fault.ok, fault.detail = False, "no spare host for a clone"
            return fault
        clone = self.clone_of(node)
        self.clones.append(clone)
        takeover = self.rng.random() < 0.5
        hold = self.ttl * self.rng.uniform(1.5, 2.5)
        fault = self._now(DUPLICATE_NODE, node.name, hold, lambda: self._end_clone(node, clone))
        if takeover:
            node.signal(signal.SIGSTOP)
            time.sleep(self.ttl * 1.25)  # until its report is stale: the clone may claim it
        clone.start()
        fault.detail = "clone took the name over" if takeover else "clone met a live owner"
        return fault

    def _end_clone(self, node: Node, clone: Node) -> None:
        node.signal(signal.SIGCONT)
        time.sleep(self.ttl)  # the owner, back, meets the clone: it must keep out of the way
        clone.stop(timeout=60)
        self.clones.remove(clone)
