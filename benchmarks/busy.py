"""False-failover soak: controllers on a machine kept busy, and no fault at all.

For each metastore, one cluster of three real controllers per profile (the new default
and the old one, side by side, each on a metastore of its own), running the test suite's
stand-in scheduler, while hogs keep the machine busy for ``--minutes``:

* CPU: one process per core spinning in a Python loop, at the controllers' priority;
* I/O: one process writing 8 MiB blocks to a file beside the metastore (the same disk as
  PostgreSQL's, MariaDB's and SQLite's data here) and calling fsync after each, so that
  every write transaction of every database waits behind it.

Nothing is killed or stopped, so every change of holder in the window is a false
failover, and every demotion a false one. Counted per cluster, over the window only (the
cluster has settled before it starts): epoch changes, the events `demoted`,
`became_active`, `scheduler_fenced` and `error`, and the controllers' WARNING and ERROR
log lines. The overlap detector of the stand-in checks that no two schedulers ever ran.

    .venv/bin/python -m benchmarks.busy
    .venv/bin/python -m benchmarks.busy --backends sqlite,postgresql --minutes 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from benchmarks.failover import PROFILES
from tests.support.backends import fresh_metastore_url, selected_backends
from tests.support.cluster import FAST, Cluster, running_cluster, wait_until

NODES = ("a", "b", "c")
COUNTED = ("demoted", "became_active", "scheduler_fenced", "error")
BLOCK = 8 * 1024 * 1024


def spin() -> None:
    while True:
        pass


def write_and_sync(path: str) -> None:
    block = os.urandom(BLOCK)
    with Path(path).open("wb", buffering=0) as out:
        while True:
            for _ in range(8):
                out.write(block)
                os.fsync(out.fileno())
            out.seek(0)


@contextlib.contextmanager
def hogs(folder: Path) -> Iterator[list[multiprocessing.Process]]:
    workers = [
        multiprocessing.Process(target=spin, daemon=True) for _ in range(os.cpu_count() or 1)
    ]
    workers.append(
        multiprocessing.Process(target=write_and_sync, args=(str(folder / "hog.bin"),), daemon=True)
    )
    for worker in workers:
        worker.start()
    try:
        yield workers
    finally:
        for worker in workers:
            worker.kill()
        for worker in workers:
            worker.join(timeout=10)
        (folder / "hog.bin").unlink(missing_ok=True)


@dataclass
class Window:
    backend: str
    profile: str
    seconds: float
    epoch_changes: int
    events: dict[str, int] = field(default_factory=dict)
    warnings: int = 0
    overlaps: int = 0
    machine_busy_percent: float = 0.0


def log_warnings(cluster: Cluster) -> int:
    count = 0
    for node in NODES:
        log = cluster.root / f"{node}.log"
        if log.exists():
            text = log.read_text(errors="replace")
            count += sum(" WARNING " in line or " ERROR " in line for line in text.splitlines())
    return count


def counted_events(cluster: Cluster) -> Counter[str]:
    return Counter(e.kind for e in cluster.store.events(100_000) if e.kind in COUNTED)


@contextlib.contextmanager
def settled_cluster(backend: str, profile: str, root: Path) -> Iterator[Cluster]:
    with (
        fresh_metastore_url(backend, root) as url,
        running_cluster(root, url) as cluster,
    ):
        cluster.settings = {**FAST, "start_timeout": "1", **PROFILES[profile]}
        for node in NODES:
            cluster.start(node)
        cluster.wait_for_one_scheduler(timeout=60)
        wait_until(lambda: set(NODES) <= set(cluster.nodes()), 60, "every node registered")
        yield cluster
        cluster.stop_all()


def soak(backend: str, profiles: list[str], minutes: float) -> list[Window]:
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        clusters = {}
        for profile in profiles:
            root = tmp / profile.replace(" ", "-")
            root.mkdir()
            clusters[profile] = stack.enter_context(settled_cluster(backend, profile, root))
        before = {
            p: (c.epoch(), counted_events(c), log_warnings(c), len(c.overlaps()))
            for p, c in clusters.items()
        }
        psutil.cpu_percent()
        began = time.monotonic()
        with hogs(tmp):
            deadline = began + minutes * 60
            while time.monotonic() < deadline:
                time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
                print(f"  {backend}: {deadline - time.monotonic():5.0f} s left", flush=True)
        busy = psutil.cpu_percent()
        took = time.monotonic() - began
        windows = []
        for profile, cluster in clusters.items():
            epoch, events, warnings, overlaps = before[profile]
            windows.append(
                Window(
                    backend,
                    profile,
                    took,
                    cluster.epoch() - epoch,
                    dict(counted_events(cluster) - events),
                    log_warnings(cluster) - warnings,
                    len(cluster.overlaps()) - overlaps,
                    busy,
                )
            )
        return windows


def table(windows: list[Window]) -> str:
    lines = [
        "| metastore | profile | window | machine busy | epoch changes | demotions "
        "| fences | errors | WARNING/ERROR lines | overlaps |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for w in windows:
        lines.append(
            f"| {w.backend} | {w.profile} | {w.seconds / 60:.1f} min "
            f"| {w.machine_busy_percent:.0f} % | {w.epoch_changes} "
            f"| {w.events.get('demoted', 0)} | {w.events.get('scheduler_fenced', 0)} "
            f"| {w.events.get('error', 0)} | {w.warnings} | {w.overlaps} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default=",".join(selected_backends()))
    parser.add_argument("--profiles", default="default,old default")
    parser.add_argument("--minutes", type=float, default=5.0, help="per metastore")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args()
    profiles = [p.strip() for p in args.profiles.split(",")]
    unknown = sorted(set(profiles) - set(PROFILES))
    if unknown:
        parser.error(f"unknown profile(s) {', '.join(unknown)}; known: {', '.join(PROFILES)}")
    windows: list[Window] = []
    for backend in args.backends.split(","):
        windows += soak(backend.strip(), profiles, args.minutes)
    print()
    print(table(windows))
    if args.json:
        args.json.write_text(json.dumps([asdict(w) for w in windows], indent=2))
    return 0 if not any(w.overlaps for w in windows) else 1


if __name__ == "__main__":
    sys.exit(main())
