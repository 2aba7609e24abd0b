"""Scale benchmark: many controllers on one metastore.

``--nodes`` real controllers (50 by default), each with a node_id of its own, as processes
on this machine, all on one metastore, running the test suite's stand-in scheduler (it
starts in milliseconds, so the numbers measure the controllers). Their HTTP API is off
and nothing but the controller loop runs (no alerts). Settings are the shipped defaults,
or a named profile of airflow_sentinel.config.profiles (``--profile fast``).

What is measured, per metastore:

1. start-up: from starting every controller at once until every node is in the registry
   and exactly one scheduler runs (polled every 0.25 s);
2. takeover, ``--trials`` times each: the active node killed whole (its controller, guard
   and scheduler SIGKILLed in one instant, benchmarks.failover.kill_node: a standby waits
   out the lease; the bound is lease_ttl + 0.5 s), and the active controller alone killed
   (benchmarks.failover.kill_controller: its guard gives the lease back); seconds until a
   stand-in scheduler logs that it runs, with no overlap and one scheduler afterwards;
3. `airflow-sentinel status` and `status --json`: wall time of 5 runs each (a whole
   process: Python's start-up included, so `--help` is timed too), and whether every
   node is listed;
4. the metastore's load over a window of ``--window`` seconds, from the server's own
   counters: PostgreSQL, a database of its own: xact_commit of pg_stat_database for it
   (read from another database), connections from pg_stat_activity; MariaDB: the global
   Questions and Threads_connected (the whole server: other clients count too); ZooKeeper:
   `srvr` Received (pings included) and Connections. Connections are also counted per
   controller process tree, at the kernel (psutil);
5. CPU (user + system, percent of one core) and memory (RSS, PSS) of all the controllers,
   of their guards and of the stand-in scheduler over that window, and how busy the
   machine's cores were.

PostgreSQL's max_connections is reported, never changed; MariaDB's can be raised for the
run with ``--mariadb-max-connections`` (SET GLOBAL, restored afterwards).

    .venv/bin/python -m benchmarks.scale
    .venv/bin/python -m benchmarks.scale --nodes 10 --trials 2 --backends zookeeper
    .venv/bin/python -m benchmarks.scale --profile fast --json /tmp/scale.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import sqlalchemy as sa

from airflow_sentinel.config.profiles import PROFILES, lease_ttl
from benchmarks.failover import kill_controller, kill_node, p95
from tests.support.backends import MYSQL_URL, POSTGRES_URL, fresh_metastore_url
from tests.support.cluster import Cluster, running_cluster, wait_until
from tests.support.zookeeper import four_letter

BACKENDS = ("postgresql", "mariadb", "zookeeper")
GUARD_MODULE = "airflow_sentinel.process.guard"
STATUS_RUNS = 5
MB = 1e6
TAKEOVER_SLACK = 0.5  # the bound: lease_ttl + this
POLL = 0.25  # how often start-up is checked: its resolution


# -- the metastore and its server's counters -------------------------------------------
@dataclass(frozen=True)
class Counters:
    operations: float  # cumulative, as the server counts them
    connections: int  # open now
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class Target:
    """A metastore for the cluster, and how to read its server's counters."""

    backend: str
    url: str
    server_port: int
    counter: str  # what `operations` counts
    read: Callable[[], Counters]
    limits: dict[str, str]


@contextlib.contextmanager
def target(backend: str, root: Path, mariadb_max_connections: int) -> Iterator[Target]:
    if backend == "postgresql":
        with postgresql_target() as found:
            yield found
    elif backend == "mariadb":
        with mariadb_target(root, mariadb_max_connections) as found:
            yield found
    elif backend == "zookeeper":
        with zookeeper_target(root) as found:
            yield found
    else:
        raise SystemExit(f"unknown backend {backend}; known: {', '.join(BACKENDS)}")


@contextlib.contextmanager
def postgresql_target() -> Iterator[Target]:
    """A database of its own, so that pg_stat_database counts this cluster alone."""
    name = f"sentinel_scale_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    url = sa.make_url(POSTGRES_URL).set(database=name)

    def read() -> Counters:
        # Autocommit: every statement gets a fresh snapshot of the statistics.
        with admin.connect() as conn:
            commits, rollbacks = conn.execute(
                sa.text(
                    "select xact_commit, xact_rollback from pg_stat_database where datname = :n"
                ),
                {"n": name},
            ).one()
            connections = conn.execute(
                sa.text("select count(*) from pg_stat_activity where datname = :n"), {"n": name}
            ).scalar_one()
        return Counters(float(commits), int(connections), {"rollbacks": float(rollbacks)})

    try:
        yield Target(
            "postgresql",
            url.render_as_string(False),
            url.port or 5432,
            "pg_stat_database xact_commit, its own database",
            read,
            postgresql_limits(admin),
        )
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def postgresql_limits(admin: sa.Engine) -> dict[str, str]:
    with admin.connect() as conn:
        return {
            "max_connections": str(conn.execute(sa.text("show max_connections")).scalar_one()),
            "superuser_reserved_connections": str(
                conn.execute(sa.text("show superuser_reserved_connections")).scalar_one()
            ),
            "client connections before the run": str(
                conn.execute(
                    sa.text(
                        "select count(*) from pg_stat_activity"
                        " where backend_type = 'client backend'"
                    )
                ).scalar_one()
            ),
        }


@contextlib.contextmanager
def mariadb_target(root: Path, max_connections: int) -> Iterator[Target]:
    admin = sa.create_engine(MYSQL_URL)

    def read() -> Counters:
        status = global_status(admin, ("Questions", "Threads_connected"))
        return Counters(float(status["Questions"]), int(status["Threads_connected"]))

    try:
        with (
            fresh_metastore_url("mariadb", root) as url,
            mariadb_connection_limit(admin, max_connections) as limits,
        ):
            port = sa.make_url(url).port or 3306
            yield Target("mariadb", url, port, "global Questions", read, limits)
    finally:
        admin.dispose()


def global_status(admin: sa.Engine, names: tuple[str, ...]) -> dict[str, str]:
    wanted = ", ".join(f"'{name}'" for name in names)
    with admin.connect() as conn:
        rows = conn.execute(sa.text(f"SHOW GLOBAL STATUS WHERE Variable_name IN ({wanted})"))
        return {str(name): str(value) for name, value in rows.all()}


@contextlib.contextmanager
def mariadb_connection_limit(admin: sa.Engine, wanted: int) -> Iterator[dict[str, str]]:
    """The server's max_connections, raised to ``wanted`` for the run if it is lower."""
    before = global_status(admin, ("Threads_connected",))["Threads_connected"]
    with admin.connect() as conn:
        was = int(conn.execute(sa.text("select @@global.max_connections")).scalar_one())
        if wanted > was:
            conn.execute(sa.text(f"SET GLOBAL max_connections = {int(wanted)}"))
    limits = {"max_connections": str(was), "threads connected before the run": before}
    if wanted > was:
        limits["max_connections"] = f"{was}, raised to {wanted} for the run"
    try:
        yield limits
    finally:
        if wanted > was:
            with admin.connect() as conn:
                conn.execute(sa.text(f"SET GLOBAL max_connections = {was}"))


@contextlib.contextmanager
def zookeeper_target(root: Path) -> Iterator[Target]:
    """The test suite's shared server (this process starts it): its counters are ours."""
    with fresh_metastore_url("zookeeper", root) as url:
        port = int(urllib.parse.urlsplit(url).netloc.split(",")[0].rpartition(":")[2])

        def read() -> Counters:
            answer = four_letter(port, b"srvr")
            found = dict(re.findall(r"^(Received|Connections): (\d+)", answer, re.MULTILINE))
            if len(found) != 2:
                raise SystemExit(f"srvr on port {port} answered {answer!r}")
            return Counters(float(found["Received"]), int(found["Connections"]))

        version = re.search(r"^Zookeeper version: ([^,\s]+)", four_letter(port, b"srvr"), re.M)
        limits = {
            "version": version.group(1) if version else "?",
            "maxClientCnxns (per client address)": "60 (ZooKeeper's default; not set)",
        }
        counter = "srvr Received (requests, pings included)"
        yield Target("zookeeper", url, port, counter, read, limits)


# -- the controllers' processes -------------------------------------------------------
def node_names(count: int) -> list[str]:
    width = len(str(count))
    return [f"n{i:0{width}d}" for i in range(1, count + 1)]


def process_groups(cluster: Cluster) -> dict[str, list[psutil.Process]]:
    """Every controller, every guard, and the stand-in scheduler's processes."""
    groups: dict[str, list[psutil.Process]] = {"controllers": [], "guards": [], "scheduler": []}
    for process in cluster.processes.values():
        with contextlib.suppress(psutil.Error):
            controller = psutil.Process(process.pid)
            groups["controllers"].append(controller)
            for child in controller.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    kind = "guards" if GUARD_MODULE in child.cmdline() else "scheduler"
                    groups[kind].append(child)
    return groups


def cpu_seconds(proc: psutil.Process) -> float:
    try:
        times = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)  # children excluded: they are counted apart


def connections_to(proc: psutil.Process, port: int) -> int:
    try:
        found = proc.net_connections(kind="tcp")
    except psutil.Error:
        return 0
    return sum(
        1 for c in found if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


def connections_per_controller(cluster: Cluster, port: int) -> list[int]:
    """Connections to the server held by each controller's whole process tree."""
    counts = []
    for process in cluster.processes.values():
        with contextlib.suppress(psutil.Error):
            controller = psutil.Process(process.pid)
            tree = [controller, *controller.children(recursive=True)]
            counts.append(sum(connections_to(p, port) for p in tree))
    return counts


# -- 1. start-up --------------------------------------------------------------------------
@dataclass
class Startup:
    registered_s: float
    one_scheduler_s: float
    first_start_s: float
    events: int


def start_everything(cluster: Cluster, nodes: list[str]) -> Startup:
    began = time.time()
    for node in nodes:
        cluster.start(node)
    print(f"  {len(nodes)} controllers spawned in {time.time() - began:.1f}s", flush=True)
    registered = wait_until(
        lambda: time.time() if len(cluster.nodes()) == len(nodes) else None,
        600,
        "every node registered",
        every=POLL,
    )
    cluster.wait_for_one_scheduler(timeout=600)
    one = time.time()
    first = wait_until(lambda: first_start(cluster), 60, "the scheduler to log its start")
    return Startup(
        registered_s=registered - began,
        one_scheduler_s=one - began,
        first_start_s=first - began,
        events=len(cluster.store.events(100_000)),
    )


def first_start(cluster: Cluster) -> float | None:
    """When the first stand-in scheduler logged that it runs (its process shows first)."""
    starts = [line.at for line in cluster.probe_lines() if line.what == "start"]
    return min(starts) if starts else None


# -- 2. takeover ----------------------------------------------------------------------------
@dataclass
class Takeover:
    fault: str
    seconds: list[float]
    epochs: list[int]
    new_active: list[str]


FAULTS: dict[str, Callable[[Cluster], float]] = {
    "active node killed": kill_node,
    "active controller killed": kill_controller,
}


def takeovers(cluster: Cluster, fault: str, trials: int) -> Takeover:
    found = Takeover(fault, [], [], [])
    for trial in range(trials):
        cluster.wait_for_one_scheduler(timeout=120)
        killed = cluster.running_on()[0]
        epoch = cluster.epoch()
        took = FAULTS[fault](cluster)
        now_on = cluster.wait_for_one_scheduler(timeout=120)
        found.seconds.append(took)
        found.epochs.append(cluster.epoch() - epoch)
        found.new_active.append(now_on)
        print(
            f"  {fault} #{trial + 1}: {killed} killed, {now_on} runs the scheduler "
            f"after {took:.2f}s (epoch +{found.epochs[-1]})",
            flush=True,
        )
        check_one_scheduler(cluster)
    return found


def check_one_scheduler(cluster: Cluster) -> None:
    overlaps = cluster.overlaps()
    if overlaps:
        raise SystemExit(f"OVERLAP detected: {overlaps}")
    running = cluster.schedulers()
    if len(running) != 1:
        raise SystemExit(f"{len(running)} schedulers run, not one: {running}")


# -- 3. status -------------------------------------------------------------------------------
@dataclass
class StatusRuns:
    command: str
    seconds: list[float]
    listed: list[int]  # nodes found in each output
    output_bytes: int


def time_cli(cluster: Cluster, args: tuple[str, ...], nodes: list[str]) -> StatusRuns:
    runs = StatusRuns(" ".join(args), [], [], 0)
    for _ in range(STATUS_RUNS):
        began = time.monotonic()
        done = cluster.cli(*args)
        runs.seconds.append(time.monotonic() - began)
        if done.returncode != 0:
            raise SystemExit(f"airflow-sentinel {runs.command}: exit {done.returncode}\n{done}")
        runs.listed.append(nodes_listed(args, done.stdout, nodes))
        runs.output_bytes = len(done.stdout.encode())
    return runs


def nodes_listed(args: tuple[str, ...], output: str, nodes: list[str]) -> int:
    if "--json" in args:
        return len(json.loads(output)["nodes"])
    if "--help" in args:
        return 0
    return sum(1 for node in nodes if re.search(rf"\b{node}\b", output))


# -- 4 and 5. load, CPU and memory over a window ------------------------------------------
@dataclass
class Load:
    seconds: float
    operations: float
    extra: dict[str, float]
    server_connections: int
    per_controller: list[int]
    cpu_percent: dict[str, float]  # group -> percent of one core
    machine_busy_percent: float  # of all cores
    rss_mb: dict[str, float]
    pss_mb: dict[str, float]
    processes: dict[str, int]
    max_heartbeat_age_s: float


def measure_load(cluster: Cluster, store: Target, seconds: float) -> Load:
    groups = process_groups(cluster)
    cpu_before = {g: sum(cpu_seconds(p) for p in procs) for g, procs in groups.items()}
    psutil.cpu_percent()  # starts the machine's count: the next call covers the window
    before = store.read()
    began = time.monotonic()
    time.sleep(seconds)  # the window itself: the benchmark does nothing meanwhile
    after = store.read()
    took = time.monotonic() - began
    cpu_after = {g: sum(cpu_seconds(p) for p in procs) for g, procs in groups.items()}
    machine_busy = psutil.cpu_percent()
    rss, pss = memory_of(groups)
    return Load(
        seconds=took,
        operations=after.operations - before.operations,
        extra={k: v - before.extra.get(k, 0.0) for k, v in after.extra.items()},
        server_connections=after.connections,
        per_controller=connections_per_controller(cluster, store.server_port),
        cpu_percent={g: 100 * (cpu_after[g] - cpu_before[g]) / took for g in groups},
        machine_busy_percent=machine_busy,
        rss_mb=rss,
        pss_mb=pss,
        processes={g: len(procs) for g, procs in groups.items()},
        max_heartbeat_age_s=max(n.last_heartbeat_age_s for n in cluster.nodes().values()),
    )


def memory_of(groups: dict[str, list[psutil.Process]]) -> tuple[dict[str, float], dict[str, float]]:
    rss: dict[str, float] = {}
    pss: dict[str, float] = {}
    for group, procs in groups.items():
        rss[group] = pss[group] = 0.0
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                full = proc.memory_full_info()
                rss[group] += full.rss / MB
                pss[group] += getattr(full, "pss", 0.0) / MB
    return rss, pss


# -- one metastore ------------------------------------------------------------------------
@dataclass
class Result:
    backend: str
    profile: str
    nodes: int
    lease_ttl: float
    limits: dict[str, str]
    counter: str
    startup: Startup
    load: Load
    status: list[StatusRuns]
    takeovers: list[Takeover]


def run_backend(backend: str, args: argparse.Namespace) -> Result:
    nodes = node_names(args.nodes)
    with (
        tempfile.TemporaryDirectory() as tmp,
        target(backend, Path(tmp), args.mariadb_max_connections) as store,
        running_cluster(Path(tmp), store.url) as cluster,
    ):
        print(f"{backend}: limits {store.limits}", flush=True)
        # The profile as shipped: no test-suite overrides beyond what Cluster must set.
        cluster.settings = dict(PROFILES[args.profile])
        startup = start_everything(cluster, nodes)
        print(f"{backend}: start-up {startup}", flush=True)
        check_one_scheduler(cluster)
        time.sleep(args.settle)  # the start-up's burst over before the window
        load = measure_load(cluster, store, args.window)
        print(f"{backend}: load window done, {load.server_connections} connections", flush=True)
        status = [
            time_cli(cluster, ("--help",), nodes),
            time_cli(cluster, ("status",), nodes),
            time_cli(cluster, ("status", "--json"), nodes),
        ]
        print(f"{backend}: status timed", flush=True)
        took = [takeovers(cluster, fault, args.trials) for fault in FAULTS]
        check_one_scheduler(cluster)
        cluster.stop_all()
    return Result(
        backend,
        args.profile,
        len(nodes),
        lease_ttl(args.profile),
        store.limits,
        store.counter,
        startup,
        load,
        status,
        took,
    )


# -- the tables -----------------------------------------------------------------------------
def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def startup_table(results: list[Result]) -> str:
    return markdown(
        [
            "metastore",
            "profile",
            "nodes",
            "first scheduler",
            "all registered",
            "all registered + one scheduler",
            "events written",
        ],
        [
            [
                r.backend,
                r.profile,
                str(r.nodes),
                f"{r.startup.first_start_s:.1f} s",
                f"{r.startup.registered_s:.1f} s",
                f"{r.startup.one_scheduler_s:.1f} s",
                str(r.startup.events),
            ]
            for r in results
        ],
    )


def takeover_table(results: list[Result]) -> str:
    rows = []
    for r in results:
        for t in r.takeovers:
            s = t.seconds
            bound = r.lease_ttl + TAKEOVER_SLACK
            rows.append(
                [
                    r.backend,
                    r.profile,
                    str(r.nodes),
                    t.fault,
                    str(len(s)),
                    f"{statistics.median(s):.2f} s",
                    f"{p95(s):.2f} s",
                    f"{max(s):.2f} s",
                    f"{r.lease_ttl:g} s",
                    f"{sum(v <= bound for v in s)}/{len(s)}",
                    "+1 each" if set(t.epochs) == {1} else str(t.epochs),
                    "none, one scheduler after each",
                ]
            )
    return markdown(
        [
            "metastore",
            "profile",
            "nodes",
            "fault",
            "trials",
            "median",
            "p95",
            "max",
            "lease_ttl",
            f"within lease_ttl + {TAKEOVER_SLACK:g} s",
            "epoch",
            "overlap",
        ],
        rows,
    )


def status_table(results: list[Result]) -> str:
    rows = []
    for r in results:
        for runs in r.status:
            listed = "-" if runs.command == "--help" else f"{min(runs.listed)}/{r.nodes}"
            rows.append(
                [
                    r.backend,
                    str(r.nodes),
                    f"`{runs.command}`",
                    str(len(runs.seconds)),
                    f"{statistics.median(runs.seconds):.2f} s",
                    f"{max(runs.seconds):.2f} s",
                    listed,
                    f"{runs.output_bytes / 1000:.1f} kB",
                ]
            )
    return markdown(
        ["metastore", "nodes", "command", "runs", "median", "max", "nodes listed", "output"],
        rows,
    )


def load_table(results: list[Result]) -> str:
    rows = []
    for r in results:
        load = r.load
        rate = load.operations / load.seconds
        per = load.per_controller
        extra = ", ".join(f"{k} {v:g}" for k, v in load.extra.items())
        rows.append(
            [
                r.backend,
                str(r.nodes),
                r.counter + (f" ({extra})" if extra else ""),
                f"{load.seconds:.0f} s",
                f"{load.operations:.0f}",
                f"{rate:.1f}",
                f"{rate / r.nodes:.2f}",
                str(load.server_connections),
                f"{min(per)} to {max(per)} (total {sum(per)})",
                f"{load.max_heartbeat_age_s:.1f} s",
            ]
        )
    return markdown(
        [
            "metastore",
            "nodes",
            "counter",
            "window",
            "operations",
            "ops/s",
            "ops/s per node",
            "server connections (every client)",
            "connections per controller (kernel)",
            "oldest heartbeat after",
        ],
        rows,
    )


def cost_table(results: list[Result]) -> str:
    rows = []
    for r in results:
        load = r.load
        for group in ("controllers", "guards", "scheduler"):
            count = load.processes[group]
            rows.append(
                [
                    r.backend,
                    str(r.nodes),
                    group,
                    str(count),
                    f"{load.cpu_percent[group]:.1f} %",
                    f"{load.cpu_percent[group] / max(1, count):.2f} %",
                    f"{load.rss_mb[group]:.0f} MB",
                    f"{load.pss_mb[group]:.0f} MB",
                    f"{load.rss_mb[group] / max(1, count):.1f} MB",
                    f"{load.machine_busy_percent:.0f} %",
                ]
            )
    return markdown(
        [
            "metastore",
            "nodes",
            "processes",
            "count",
            "CPU (of one core)",
            "CPU each",
            "RSS",
            "PSS",
            "RSS each",
            "machine busy (all cores)",
        ],
        rows,
    )


def limits_table(results: list[Result]) -> str:
    return markdown(
        ["metastore", "limit", "value"],
        [[r.backend, k, v] for r in results for k, v in r.limits.items()],
    )


def report(results: list[Result]) -> str:
    parts = [
        ("Start-up: every controller started at once", startup_table(results)),
        ("Takeover: the active node, or its controller alone, killed", takeover_table(results)),
        ("`airflow-sentinel status` with every node registered", status_table(results)),
        ("Metastore load, from the server's counters", load_table(results)),
        ("CPU and memory over the same window", cost_table(results)),
        ("Server limits", limits_table(results)),
    ]
    return "\n\n".join(f"### {title}\n\n{table}" for title, table in parts)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="default")
    parser.add_argument("--window", type=float, default=30.0, help="seconds of the load window")
    parser.add_argument(
        "--settle", type=float, default=10.0, help="seconds between start-up and the window"
    )
    parser.add_argument(
        "--mariadb-max-connections",
        type=int,
        default=0,
        metavar="N",
        help="raise MariaDB's max_connections to N for the run (SET GLOBAL; restored after)",
    )
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args()
    results = []
    for backend in args.backends.split(","):
        results.append(run_backend(backend.strip(), args))
    print()
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
