"""Several real controllers on this machine, each with its own node_id, and a stand-in
scheduler that detects overlap exactly (see fake_scheduler.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import psutil

from airflow_sentinel.clock import SystemClock
from airflow_sentinel.metastore import Metastore, open_metastore
from airflow_sentinel.metastore.base import LeaseRecord, NodeRecord

FAKE_SCHEDULER = Path(__file__).with_name("fake_scheduler.py")
T = TypeVar("T")

# The fast profile: 3 * 1 <= 4 and 2 * 1 + 1 + 0.4 <= 4.
FAST = {
    "lease_ttl": "4",
    "renew_interval": "1",
    "stop_timeout": "1",
    "start_timeout": "1.5",
    "max_restarts": "3",
    "cooldown": "600",
}


def wait_until(
    predicate: Callable[[], T | None], timeout: float, what: str, every: float = 0.05
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    give_up = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= give_up:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


@dataclass
class ProbeLine:
    at: float
    node: str
    pid: int
    what: str


@dataclass
class Cluster:
    root: Path
    metastore_url: str
    settings: dict[str, str] = field(default_factory=lambda: dict(FAST))
    extra_env: dict[str, str] = field(default_factory=dict)
    # Nodes that serve the HTTP API, on these loopback ports; the others have it off, so
    # that several controllers on one host do not compete for the default port.
    api_ports: dict[str, int] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _store: Metastore | None = None

    @property
    def lock(self) -> Path:
        return self.root / "scheduler.lock"

    @property
    def probe_log(self) -> Path:
        return self.root / "scheduler.log"

    def scheduler_command(self, *extra: str) -> str:
        args = [sys.executable, str(FAKE_SCHEDULER), "--lock", str(self.lock)]
        return " ".join([*args, "--log", str(self.probe_log), "--child", *extra])

    def env(self, node_id: str, command: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env["AIRFLOW_HOME"] = str(self.root / "home")
        env.update(self.extra_env)
        env["AIRFLOW__SENTINEL__METASTORE"] = self.metastore_url
        env["AIRFLOW__SENTINEL__SCHEDULER_COMMAND"] = command or self.scheduler_command()
        env["AIRFLOW__SENTINEL__SCHEMA_GATE"] = "off"  # the stand-in is not Airflow
        for key, value in self.settings.items():
            env[f"AIRFLOW__SENTINEL__{key.upper()}"] = value
        port = self.api_ports.get(node_id)
        env["AIRFLOW__SENTINEL__API_ADDRESS"] = f"127.0.0.1:{port}" if port else "off"
        return env

    def start(self, node_id: str, command: str | None = None) -> subprocess.Popen[bytes]:
        log = (self.root / f"{node_id}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "airflow_sentinel", "start", "--node-id", node_id],
            env=self.env(node_id, command),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[node_id] = process
        return process

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "airflow_sentinel", *args],
            env=self.env("cli"),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    # -- observation ---------------------------------------------------------------------
    @property
    def store(self) -> Metastore:
        if self._store is None:
            self._store = open_metastore(self.metastore_url, SystemClock())
        return self._store

    def lease(self) -> LeaseRecord | None:
        return self.store.read_lease("scheduler")

    def nodes(self) -> dict[str, NodeRecord]:
        return {n.node_id: n for n in self.store.nodes()}

    def schedulers(self) -> list[psutil.Process]:
        """Running stand-in schedulers of this cluster, outermost processes only."""
        found = self.all_probe_processes()
        pids = {p.pid for p in found}
        return [p for p in found if _parent(p) not in pids and p.is_running()]

    def all_probe_processes(self) -> list[psutil.Process]:
        """Stand-in schedulers of this cluster and their children (not their guards)."""
        return [
            p
            for p in psutil.process_iter(["cmdline", "status"])
            if (p.info["cmdline"] or [])[1:2] == [str(FAKE_SCHEDULER)]
            and str(self.lock) in p.info["cmdline"]
            and p.info["status"] != psutil.STATUS_ZOMBIE
        ]

    def scheduler_node(self, proc: psutil.Process) -> str | None:
        try:
            return proc.environ().get("AIRFLOW_SENTINEL_NODE_ID")
        except psutil.Error:
            return None

    def running_on(self) -> list[str]:
        return [n for n in (self.scheduler_node(p) for p in self.schedulers()) if n]

    def probe_lines(self) -> list[ProbeLine]:
        if not self.probe_log.exists():
            return []
        lines = []
        for raw in self.probe_log.read_text().splitlines():
            at, node, pid, what = raw.split(" ", 3)
            lines.append(ProbeLine(float(at), node, int(pid), what))
        return lines

    def overlaps(self) -> list[ProbeLine]:
        return [line for line in self.probe_lines() if line.what == "OVERLAP"]

    def wait_for_one_scheduler(
        self, timeout: float = 30, on: str | None = None, not_on: str | None = None
    ) -> str:
        """Wait until exactly one scheduler runs (on ``on``, or anywhere but ``not_on``)."""

        def one() -> str | None:
            running = self.running_on()
            if len(running) != 1 or running[0] == not_on:
                return None
            return running[0] if on in (None, running[0]) else None

        where = f" on {on}" if on else f" off {not_on}" if not_on else ""
        return wait_until(one, timeout, f"exactly one scheduler{where}")

    def epoch(self) -> int:
        lease = self.lease()
        return lease.epoch if lease is not None else 0

    def active(self) -> str | None:
        lease = self.lease()
        return lease.holder if lease is not None else None

    def pid_of(self, node_id: str) -> int:
        return self.processes[node_id].pid

    def kill_node(self, node_id: str) -> None:
        """SIGKILL the controller, its guard and its scheduler in one sweep, as when the
        host dies: nobody is left to give the lease back, so the others wait out the TTL.
        (A controller killed alone has its guard give the lease back.)"""
        controller = psutil.Process(self.pid_of(node_id))
        everything = [controller, *controller.children(recursive=True)]
        for proc in everything:
            with suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)
        self.processes[node_id].wait(timeout=30)

    def logs(self) -> str:
        parts = []
        # The controllers' own logs, then the schedulers' output (scheduler_log's default).
        found = [*sorted(self.root.glob("*.log")), *sorted(self.root.glob("home/logs/*.log"))]
        for log in found:
            parts.append(f"===== {log.name}\n{log.read_text(errors='replace')[-6000:]}")
        return "\n".join(parts)

    # -- teardown ------------------------------------------------------------------------
    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                with _quiet():
                    os.kill(process.pid, signal.SIGCONT)
                    process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def kill_everything(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        for proc in self.all_probe_processes():
            with _quiet():
                proc.kill()
        if self._store is not None:
            self._store.close()


@contextmanager
def _quiet() -> Iterator[None]:
    with suppress(ProcessLookupError, psutil.Error):
        yield


@contextmanager
def running_cluster(
    root: Path, metastore_url: str, cluster: Cluster | None = None
) -> Iterator[Cluster]:
    """``cluster``: one of a subclass, built by the caller; killed whole at the end too."""
    cluster = cluster or Cluster(root, metastore_url)
    (root / "home").mkdir(parents=True, exist_ok=True)
    try:
        yield cluster
    except BaseException:
        sys.stderr.write(cluster.logs())
        raise
    finally:
        cluster.kill_everything()


def _parent(proc: psutil.Process) -> int | None:
    """Its parent's pid, or None once it is gone (a scheduler that fails exits at once)."""
    try:
        return proc.ppid()
    except psutil.NoSuchProcess:
        return None
