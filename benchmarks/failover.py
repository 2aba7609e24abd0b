"""Failover benchmark: time from a fault until a scheduler runs again.

Three real controllers on this machine and the overlap-detecting stand-in scheduler from
the test suite (it starts in milliseconds, so the numbers measure the controller, not
Airflow's start-up). Every trial also checks that no two schedulers ever overlapped.
"switchover" is the metastore flag `airflow-sentinel switchover` sets; "switchover (API)"
is `POST /switchover` to the active node's API, which wakes both ends at once.
`--renewals` measures the lease renewal's latency with and without a scraper asking
`/metrics` ten times a second.

    .venv/bin/python -m benchmarks.failover --trials 10
    .venv/bin/python -m benchmarks.failover --profiles default \
        --faults "switchover,switchover (API)"
    .venv/bin/python -m benchmarks.failover --renewals 60
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families

from airflow_sentinel.config.profiles import PROFILES as SHIPPED
from airflow_sentinel.metastore.base import switchover_flag
from airflow_sentinel.soak.servers import free_port
from tests.support.backends import fresh_metastore_url, selected_backends
from tests.support.cluster import FAST, Cluster, running_cluster, wait_until

PROFILES = {
    "default": {"lease_ttl": "10", "renew_interval": "2", "stop_timeout": "5"},
    "old default": {"lease_ttl": "15", "renew_interval": "3", "stop_timeout": "5"},
    "fast": {k: v for k, v in SHIPPED["fast"].items() if k != "cooldown"},
    "lab": {k: v for k, v in SHIPPED["lab"].items() if k != "cooldown"},
}
FAULTS = (
    "scheduler killed",
    "active controller killed",
    "active node killed",
    "active controller frozen",
    "switchover",
    "switchover (API)",
)
TOKEN = "benchmark-token-0123456789abcdef"
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


def kill_node(cluster: Cluster) -> float:
    """The controller, its guard and the scheduler killed in one instant, as when a host
    dies: no one is left to give the lease back, so a standby waits out the TTL."""
    active = cluster.running_on()[0]
    controller = psutil.Process(cluster.pid_of(active))
    everything = [controller, *controller.children(recursive=True)]
    t0 = time.time()
    for proc in everything:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)
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


def api_switchover(cluster: Cluster) -> float:
    """From the request until the target's scheduler process runs."""
    active = cluster.running_on()[0]
    target = next(n for n in NODES if n != active)
    conn = http.client.HTTPConnection("127.0.0.1", cluster.api_ports[active], timeout=120)
    t0 = time.time()
    conn.request(
        "POST",
        "/switchover",
        body=json.dumps({"to": target}),
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    answer = conn.getresponse()
    body = answer.read()
    conn.close()
    if answer.status != 200:
        raise SystemExit(f"POST /switchover: {answer.status} {body[:300]!r}")
    took = new_start_after(cluster, t0)
    standby_again(cluster, active)
    return took


ACTIONS: dict[str, Callable[[Cluster], float]] = dict(
    zip(
        FAULTS,
        (kill_scheduler, kill_controller, kill_node, freeze_controller, switchover, api_switchover),
        strict=True,
    )
)


def with_api(cluster: Cluster, root: Path) -> None:
    token = root / "api-token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    cluster.settings["api_token_file"] = str(token)
    cluster.api_ports = {node: free_port("127.0.0.1") for node in NODES}


def run_profile(
    backend: str, profile: str, trials: int, faults: tuple[str, ...] = FAULTS
) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {fault: [] for fault in faults}
    with (
        tempfile.TemporaryDirectory() as tmp,
        fresh_metastore_url(backend, Path(tmp)) as url,
        running_cluster(Path(tmp), url) as cluster,
    ):
        cluster.settings = {**FAST, "start_timeout": "1", **PROFILES[profile]}
        with_api(cluster, Path(tmp))
        for node in NODES:
            cluster.start(node)
        cluster.wait_for_one_scheduler(timeout=60)
        wait_until(lambda: set(NODES) <= set(cluster.nodes()), 30, "every node registered")
        for trial in range(trials):
            for fault in faults:
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


def renewal_latency(backend: str, seconds: float) -> dict[str, dict[str, float]]:
    """One active controller, default profile but renewing every 0.5 s: its renewal
    histogram over ``seconds`` without, then with, a scraper at 10 requests a second."""
    found: dict[str, dict[str, float]] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        fresh_metastore_url(backend, Path(tmp)) as url,
        running_cluster(Path(tmp), url) as cluster,
    ):
        cluster.settings = {**FAST, "lease_ttl": "4", "renew_interval": "0.5"}
        cluster.api_ports = {"a": free_port("127.0.0.1")}
        cluster.start("a")
        cluster.wait_for_one_scheduler(timeout=60)
        for label, scrape in (("without a scraper", False), ("scraped 10/s", True)):
            before = renewal_histogram(cluster)
            stop = threading.Event()
            scraper = threading.Thread(target=scrape_until, args=(cluster, stop), daemon=True)
            if scrape:
                scraper.start()
            time.sleep(seconds)  # the measurement window itself
            stop.set()
            if scrape:
                scraper.join()
            found[label] = window(before, renewal_histogram(cluster))
        cluster.stop_all()
    return found


def scrape_until(cluster: Cluster, stop: threading.Event) -> None:
    while not stop.wait(0.1):
        conn = http.client.HTTPConnection("127.0.0.1", cluster.api_ports["a"], timeout=5)
        conn.request("GET", "/metrics")
        conn.getresponse().read()
        conn.close()


def renewal_histogram(cluster: Cluster) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", cluster.api_ports["a"], timeout=5)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "airflow_sentinel_lease_renewal_seconds":
            continue
        for sample in family.samples:
            key = sample.name.rsplit("_", 1)[-1]
            values[f"le={sample.labels['le']}" if key == "bucket" else key] = sample.value
    return values


def window(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Count, mean and p95 (the upper bound of its bucket) of the renewals between."""
    count = after.get("count", 0.0) - before.get("count", 0.0)  # none yet: no series
    total = after.get("sum", 0.0) - before.get("sum", 0.0)
    buckets = sorted(
        (float(k[3:]), after[k] - before.get(k, 0.0)) for k in after if k.startswith("le=")
    )
    p95_bound = next((le for le, n in buckets if n >= 0.95 * count), float("inf"))
    return {
        "renewals": count,
        "mean_ms": 1000 * total / count if count else 0.0,
        "p95_le_ms": 1000 * p95_bound,
    }


def renewal_table(backend: str, found: dict[str, dict[str, float]]) -> str:
    rows = [
        f"| {backend} | {k} | {v['renewals']:.0f} | {v['mean_ms']:.2f} ms "
        f"| <= {v['p95_le_ms']:g} ms |"
        for k, v in found.items()
    ]
    return "\n".join(
        ["| metastore | load | renewals | mean | p95 |", "|---|---|---|---|---|", *rows]
    )


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
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument(
        "--renewals", type=float, metavar="S", help="measure renewals for S seconds instead"
    )
    args = parser.parse_args()
    if args.renewals:
        for backend in args.backends.split(","):
            print(renewal_table(backend, renewal_latency(backend, args.renewals)), flush=True)
        return 0
    faults = tuple(f.strip() for f in args.faults.split(","))
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        parser.error(f"unknown fault(s) {', '.join(unknown)}; known: {', '.join(FAULTS)}")
    all_results = {}
    for backend in args.backends.split(","):
        for profile in args.profiles.split(","):
            all_results[(backend, profile)] = run_profile(backend, profile, args.trials, faults)
    print()
    print(table(all_results))
    if args.json:
        raw = {f"{b}/{p}": r for (b, p), r in all_results.items()}
        args.json.write_text(json.dumps(raw, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
