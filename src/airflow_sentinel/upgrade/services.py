"""What runs Airflow during an upgrade: the failover controllers (through the metastore)
and this node's other services (systemd units or configured commands)."""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import time
from dataclasses import dataclass

import psutil

from airflow_sentinel.metastore.base import HOLD, UPGRADE_LOCK, Metastore
from airflow_sentinel.process.strays import matches
from airflow_sentinel.upgrade.installation import UpgradeError, last_line

SERVICE = "scheduler"


@dataclass
class Controllers:
    """The failover controllers of the cluster, seen through their metastore."""

    store: Metastore

    def hold(self, run_id: str) -> None:
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.store.set_flag(HOLD, f"upgrade {run_id} on {socket.gethostname()} since {since}")

    def release(self) -> None:
        self.store.set_flag(HOLD, None)

    def wait_until_none_runs(self, timeout: float, stale_after: float) -> None:
        """Until no controller reports a scheduler, no lease is live, and no scheduler
        process runs on this host; UpgradeError naming what still runs at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            running = self.still_running(stale_after)
            if not running:
                return
            if time.monotonic() >= deadline:
                raise UpgradeError(
                    f"schedulers still run after {timeout:g}s on hold: {', '.join(running)}"
                )
            time.sleep(0.5)

    def still_running(self, stale_after: float) -> list[str]:
        running = [
            f"{n.node_id} (pid {n.scheduler_pid})"
            for n in self.store.nodes()
            if n.scheduler_running and n.last_heartbeat_age_s < stale_after
        ]
        lease = self.store.read_lease(SERVICE)
        if lease is not None and lease.holder is not None:
            age = lease.age_s if lease.age_s is not None else 0.0
            if age < lease.ttl:
                running.append(f"lease held by {lease.holder}")
        running.extend(f"pid {pid} on this host" for pid in local_schedulers())
        return running

    # -- the cluster upgrade lock ---------------------------------------------------------
    def claim_lock(self, record: dict[str, str]) -> dict[str, str] | None:
        """Take the lock; None when taken, else the holder's record."""
        if self.store.claim_flag(UPGRADE_LOCK, json.dumps(record, sort_keys=True)):
            return None
        return self.lock() or {}

    def lock(self) -> dict[str, str] | None:
        raw = self.store.flags().get(UPGRADE_LOCK)
        return json.loads(raw) if raw else None

    def release_lock(self, run_id: str) -> None:
        held = self.lock()
        if held is not None and held.get("run") == run_id:
            self.store.set_flag(UPGRADE_LOCK, None)


@dataclass(frozen=True)
class ServiceSet:
    """What one Airflow version runs on this node besides the scheduler the controller
    keeps: systemd units, or a start command."""

    units: tuple[str, ...] = ()
    start_command: str = ""

    def describe(self) -> str:
        return ", ".join([*self.units, *(["start command"] if self.start_command else [])])


@dataclass(frozen=True)
class LocalServices:
    """This node's other Airflow services, for the old version and for the target: crossing
    to Airflow 3 the webserver becomes the api-server and a dag-processor is needed, so a
    rollback must start what the old version ran, not what the new one does."""

    old: ServiceSet = ServiceSet()
    new: ServiceSet = ServiceSet()
    stop_command: str = ""  # stops whatever of them runs, either version's

    def stop(self) -> str:
        units = tuple(dict.fromkeys([*self.old.units, *self.new.units]))
        for unit in units:  # one by one: the target's units may not be installed yet
            _run(["systemctl", "stop", unit], accept=(0, SYSTEMCTL_NOT_LOADED))
        if self.stop_command:
            _run(shlex.split(self.stop_command))
        parts = [*units, *(["stop command"] if self.stop_command else [])]
        return f"stopped: {', '.join(parts)}" if parts else "no local services configured"

    def start(self, version: str) -> str:
        """Start the services of ``version``: "new" (the target) or "old"."""
        chosen = self.new if version == "new" else self.old
        if chosen.units:
            _run(["systemctl", "start", *chosen.units])
        if chosen.start_command:
            _run(shlex.split(chosen.start_command))
        what = chosen.describe()
        return f"started the {version} version's {what}" if what else "no local services configured"


# Crossing to Airflow 3: the services that change, as `upgrade plan` lists them.
AIRFLOW_3_SERVICES = (
    "webserver -> api-server: `airflow webserver` is gone; run `airflow api-server` "
    "(its options moved from [webserver] to [api])",
    "dag-processor: now a service of its own; without `airflow dag-processor` no DAG "
    "file is parsed and new DAGs never appear",
    "triggerer: unchanged (`airflow triggerer`), needed for deferrable tasks",
    "scheduler: kept by the failover controller, as before",
    "tasks reach the api-server's execution API with tokens the scheduler signs: both need "
    "one [api_auth] jwt_secret (configure adds one, the same on every node, if the file has "
    "none)",
    "verify runs a canary task, which needs all of these: pass --api-url to check the "
    "api-server's health too",
)


def local_schedulers() -> list[int]:
    """Pids of `airflow scheduler` processes on this host, whoever started them."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] == psutil.STATUS_ZOMBIE or "airflow_sentinel" in " ".join(cmdline):
            continue
        if matches(cmdline, ["airflow", "scheduler"]):
            found.append(int(proc.info["pid"]))
    return found


SYSTEMCTL_NOT_LOADED = 5  # `systemctl stop` of a unit that does not exist: nothing runs


def _run(argv: list[str], accept: tuple[int, ...] = (0,)) -> None:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UpgradeError(f"{argv[0]}: cannot run ({type(exc).__name__})") from None
    if done.returncode not in accept:
        raise UpgradeError(f"{' '.join(argv[:3])} failed: {last_line(done.stderr)}")
