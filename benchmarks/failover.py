"""Failover benchmark: time from a fault until a scheduler runs again.

Three real controllers on this machine and the overlap-detecting stand-in scheduler from
the test suite (it starts in milliseconds, so the numbers measure the controller, not
Airflow's start-up). Every trial also checks that no two schedulers ever overlapped.

    .venv/bin/python -m benchmarks.failover --trials 10
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from airflow_sentinel.config.profiles import PROFILES as SHIPPED
from airflow_sentinel.metastore.base import switchover_flag
from tests.support.backends import fresh_metastore_url, selected_backends
from tests.support.cluster import FAST, Cluster, running_cluster, wait_until

PROFILES = {
    "default": {"lease_ttl": "15", "renew_interval": "3", "stop_timeout": "5"},
    "fast": {k: v for k, v in SHIPPED["fast"].items() if k != "cooldown"},
    "lab": {k: v for k, v in SHIPPED["lab"].items() if k != "cooldown"},
}
FAULTS = ("scheduler killed", "active controller killed", "active controller frozen", "switchover")
NODES = ("a", "b", "c")


def new_start_after(cluster: Cluster, t0: float, timeout: float = 120) -> float:
    """Seconds from ``t0`` until a stand-in scheduler logged that it runs."""

    def started() -> float | None:
        later = [line.at for line in cluster.probe_lines() if line.what == "start" and line.at > t0]
        return min(later) if later else None

    return wait_until(started, timeout, "a scheduler to run again", every=0.01) - t0


def standby_again(cluster: Cluster, node: str) -> None:
    wait_until(
        lambda: (
            (n := cluster.nodes().get(node)) is not None
            and n.role == "standby"
            and n.last_heartbeat_age_s < 2
        ),
        120,
        f"{node} to be a standby again",
    )


def kill_scheduler(cluster: Cluster) -> float:
    [proc] = cluster.schedulers()
    t0 = time.time()
    proc.kill()
    return new_start_after(cluster, t0)


def kill_controller(cluster: Cluster) -> float:
    active = cluster.running_on()[0]
    t0 = time.time()
    os.kill(cluster.pid_of(active), signal.SIGKILL)
    took = new_start_after(cluster, t0)
    cluster.processes[active].wait()
    cluster.start(active)
    standby_again(cluster, active)
    return took


def freeze_controller(cluster: Cluster) -> float:
    active = cluster.running_on()[0]
    t0 = time.time()
    os.kill(cluster.pid_of(active), signal.SIGSTOP)
    took = new_start_after(cluster, t0)
    os.kill(cluster.pid_of(active), signal.SIGCONT)
    standby_again(cluster, active)
    return took


def switchover(cluster: Cluster) -> float:
    active = cluster.running_on()[0]
    target = next(n for n in NODES if n != active)
    lease = cluster.lease()
    assert lease is not None
    t0 = time.time()
    cluster.store.set_flag(switchover_flag("scheduler"), f"{lease.epoch} {target}")
    took = new_start_after(cluster, t0)
    standby_again(cluster, active)
    return took


ACTIONS: dict[str, Callable[[Cluster], float]] = dict(
    zip(FAULTS, (kill_scheduler, kill_controller, freeze_controller, switchover), strict=True)
)


def run_profile(backend: str, profile: str, trials: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {fault: [] for fault in FAULTS}
    with (
        tempfile.TemporaryDirectory() as tmp,
        fresh_metastore_url(backend, Path(tmp)) as url,
        running_cluster(Path(tmp), url) as cluster,
    ):
        cluster.settings = {**FAST, "start_timeout": "1", **PROFILES[profile]}
        for node in NODES:
            cluster.start(node)
        cluster.wait_for_one_scheduler(timeout=60)
        wait_until(lambda: set(NODES) <= set(cluster.nodes()), 30, "every node registered")
        for trial in range(trials):
            for fault in FAULTS:
                cluster.wait_for_one_scheduler(timeout=60)
                took = ACTIONS[fault](cluster)
                results[fault].append(took)
                print(
                    f"{backend:10} {profile:7} #{trial + 1:<2} {fault:26} {took:7.2f}s", flush=True
                )
        overlaps = cluster.overlaps()
        if overlaps:
            raise SystemExit(f"OVERLAP detected: {overlaps}")
        cluster.stop_all()
    return results


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def table(all_results: dict[tuple[str, str], dict[str, list[float]]]) -> str:
    rows = [
        "| metastore | profile | fault | trials | min | median | p95 |",
        "|---|---|---|---|---|---|---|",
    ]
    for (backend, profile), results in all_results.items():
        for fault, values in results.items():
            rows.append(
                f"| {backend} | {profile} | {fault} | {len(values)} | {min(values):.2f} s "
                f"| {statistics.median(values):.2f} s | {p95(values):.2f} s |"
            )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default=",".join(selected_backends()))
    parser.add_argument("--profiles", default="default,fast")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args()
    all_results = {}
    for backend in args.backends.split(","):
        for profile in args.profiles.split(","):
            all_results[(backend, profile)] = run_profile(backend, profile, args.trials)
    print()
    print(table(all_results))
    if args.json:
        raw = {f"{b}/{p}": r for (b, p), r in all_results.items()}
        args.json.write_text(json.dumps(raw, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
