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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
KINDS = (
    KILL_CONTROLLER,
    KILL_SCHEDULER,
    FREEZE_CONTROLLER,
    PARTITION,
    RESTART_METASTORE,
    RESTART_CONTROLLER,
    SWITCHOVER,
)
# A controller killed with kill -9 comes back after this, as systemd's RestartSec would.
RESTART_DELAY = 1.0


def kinds_for(server: Server) -> tuple[str, ...]:
    """The faults that mean something for this metastore: SQLite has no server or wire."""
    if server.restartable:
        return KINDS
    return tuple(k for k in KINDS if k not in (PARTITION, RESTART_METASTORE))


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

    def pick(self, kind: str, busy: set[str]) -> Node:
        """The target: the node running the scheduler for kill-scheduler, else any."""
        free = [n for n in self.nodes if n.name not in busy] or list(self.nodes)
        if kind == KILL_SCHEDULER:
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
