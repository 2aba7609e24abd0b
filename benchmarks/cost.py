"""Cost benchmark: what one controller costs at the shipped defaults, on each metastore.

Real controllers with every setting at its shipped default (lease_ttl 15 s, renew_interval
3 s, the HTTP API on, on a loopback port of its own per node), running the test suite's
stand-in scheduler, so that Airflow's own cost is not counted. Two windows per metastore:

1. node a alone: it becomes active and runs the stand-in through its guard; measured once
   its scheduler proved itself (GET /active answers 200, after start_timeout);
2. node b added: it becomes a standby; measured once GET /standby answers 200 and two more
   cycles have passed. Node a stays active in this window.

What is measured, per window of ``--seconds``:

* memory at the end of the window, from psutil's memory_full_info: RSS, USS (what the
  process alone holds), PSS (shared pages split among the processes that map them) and
  the peak RSS (VmHWM), of the controller and of its guard (`python -m
  airflow_sentinel.process.guard`); the stand-in scheduler under the guard is not counted.
  MB here are 10^6 bytes.
* CPU: user + system seconds of the controller and of the guard over the window (their
  children excluded), as percent of one core.
* metastore operations, per node. A *transaction* is one database transaction (ZooKeeper
  has none: each request stands alone); a *statement* is one SQL statement the server
  executed, a *request* one packet a ZooKeeper server received (pings included); a *round
  trip* is one request the client sent (one TCP data segment from the controller's
  process to the server, counted by the kernel: `ss -ti` data_segs_out, per socket). Where
  the server can tell nodes apart the count is per node; where it cannot, the standby's
  count is the total of window 2 minus node a's rate from window 1.

  - PostgreSQL: a database of its own; xact_commit + xact_rollback of pg_stat_database for
    it, read from a connection to another database, so that these reads are not counted.
    pg_stat_statements is not loaded on the test server, so no statement count. Backends
    flush their counters about once a second (idle ones within 10 s): the count at each end
    of the window lags by a second or two, alike at both ends.
  - MariaDB: one database user per node; information_schema.USER_STATISTICS, which needs
    the server's userstat on: switched on for the run when it is off, and back off after.
    Statements are SELECT + UPDATE + OTHER commands (COMMIT and ROLLBACK are OTHER);
    transactions are COMMIT_TRANSACTIONS + ROLLBACK_TRANSACTIONS as the server counts them
    (a transaction that touched no table is not one). COM_PING (SQLAlchemy's pre-ping) is
    no statement there, but is a round trip.
  - ZooKeeper: a standalone server of its own whose `cons` four-letter word is allowed (the
    test suite's server allows only ruok and srvr): `recved` per connection, mapped to a
    node by the connection's local port.
  - SQLite: there is no server. Write transactions come from the database header's file
    change counter (offset 24; it moves once per write transaction in rollback-journal
    mode, the default the metastore keeps). All transactions come from a third window in
    which `strace -f -e trace=fcntl` follows both controllers: each SQLite transaction takes
    its SHARED lock once through the PENDING byte (F_RDLCK at 1073741824), each write
    transaction its RESERVED lock (F_WRLCK at 1073741825). That window is not used for CPU.

The operations per cycle are the rates times the active node's measured cycle (the window
over its lease renewals, from its /metrics), which the standby's loop shares.

    .venv/bin/python -m benchmarks.cost
    .venv/bin/python -m benchmarks.cost --backends sqlite,zookeeper --seconds 10
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import psutil
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from airflow_sentinel.config.settings import KEYS
from airflow_sentinel.soak.servers import free_port
from tests.support.backends import ALL_BACKENDS, MYSQL_URL, POSTGRES_URL
from tests.support.cluster import Cluster, running_cluster, wait_until
from tests.support.zookeeper import Ensemble, free_port_block

DEFAULTS = {key.name: key.default for key in KEYS}
RENEW_INTERVAL = float(DEFAULTS["renew_interval"])
START_TIMEOUT = float(DEFAULTS["start_timeout"])
NODES = ("a", "b")
TOTAL = "cluster"  # counts the server cannot attribute to one node
GUARD_MODULE = "airflow_sentinel.process.guard"
MB = 1e6
TARGET_MB = 60.0
TARGET_CPU = 1.0
TARGET_OPS = 1.0
# Columns of the operations table: the metric, and its heading.
OPS_COLUMNS = (
    ("transactions", "transactions/s"),
    ("write transactions", "write transactions/s"),
    ("statements", "statements/s"),
    ("requests", "requests/s"),
    ("round trips", "round trips/s"),
)
HOW = {
    "sqlite": "transactions and write transactions from the SQLite locks (strace), write "
    "transactions also from the file change counter; no server, no round trips",
    "mariadb": "transactions and statements from information_schema.USER_STATISTICS, one "
    "user per node; round trips from the kernel (data segments sent)",
    "postgresql": "transactions from pg_stat_database (a database of its own; standby = "
    "window 2 minus node a's rate); no statement count (pg_stat_statements not loaded); "
    "round trips from the kernel",
    "zookeeper": "requests from `cons` (packets received per connection, pings included); "
    "round trips from the kernel",
}

Counts = dict[str, dict[str, float]]  # node (or TOTAL) -> metric -> count


# -- meters: counts at the server, or at the kernel ----------------------------------------
class Meter(Protocol):
    def read(self, pids: Mapping[str, int]) -> Counts:
        """Counters now, keyed by node (``node/port`` for one connection) or TOTAL."""


def delta(before: Counts, after: Counts) -> Counts:
    """After minus before; a key new at the end (a connection opened meanwhile) counts
    from zero, one gone by then (closed meanwhile) loses what it did in the window."""
    return {
        key: {m: value - before.get(key, {}).get(m, 0.0) for m, value in metrics.items()}
        for key, metrics in after.items()
    }


def by_node(counts: Counts) -> Counts:
    """Connections (``node/port``) summed into their node; connections of no node dropped."""
    summed: Counts = {}
    for key, metrics in counts.items():
        node = key.partition("/")[0]
        if node == "?":
            continue
        into = summed.setdefault(node, {})
        for metric, value in metrics.items():
            into[metric] = into.get(metric, 0.0) + value
    return summed


def local_ports(pids: Mapping[str, int], server_port: int) -> dict[int, str]:
    """The local port of every connection from a node's controller to the server."""
    found = {}
    for node, pid in pids.items():
        with contextlib.suppress(psutil.Error):
            for conn in psutil.Process(pid).net_connections(kind="tcp"):
                if conn.raddr and conn.raddr.port == server_port:
                    found[conn.laddr.port] = node
    return found


@dataclass
class KernelRoundTrips:
    """Requests sent to the server: TCP data segments per connection (``ss -ti``)."""

    server_port: int

    def read(self, pids: Mapping[str, int]) -> Counts:
        owners = local_ports(pids, self.server_port)
        output = subprocess.run(
            ["ss", "-tinH", "state", "established", f"( dport = :{self.server_port} )"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        counts: Counts = {}
        for port, info in _ss_sockets(output):
            sent = re.search(r"\bdata_segs_out:(\d+)", info)
            key = f"{owners.get(port, '?')}/{port}"
            counts[key] = {"round trips": float(sent.group(1)) if sent else 0.0}
        return counts


def _ss_sockets(output: str) -> Iterator[tuple[int, str]]:
    """(local port, tcp_info line) of each socket in ``ss -tinH`` output."""
    port: int | None = None
    for line in output.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            addresses = re.findall(r"\S+:(\d+)", line)
            port = int(addresses[0]) if addresses else None
        elif port is not None:
            yield port, line
            port = None


@dataclass
class PostgresDatabase:
    """Transactions of one database, from pg_stat_database, read from another database."""

    admin: sa.Engine
    database: str

    def read(self, pids: Mapping[str, int]) -> Counts:
        query = sa.text(
            "select xact_commit + xact_rollback from pg_stat_database where datname = :name"
        )
        with self.admin.begin() as conn:  # a transaction of its own: a fresh stats snapshot
            value = conn.execute(query, {"name": self.database}).scalar_one()
        return {TOTAL: {"transactions": float(value)}}


@dataclass
class MariaDbUsers:
    """Statements and transactions per database user, one user per node."""

    admin: sa.Engine
    users: dict[str, str]  # node -> user

    def read(self, pids: Mapping[str, int]) -> Counts:
        query = sa.text(
            "select USER, SELECT_COMMANDS + UPDATE_COMMANDS + OTHER_COMMANDS as statements,"
            " COMMIT_TRANSACTIONS + ROLLBACK_TRANSACTIONS as transactions"
            " from information_schema.USER_STATISTICS"
        )
        node_of = {user: node for node, user in self.users.items()}
        with self.admin.begin() as conn:
            rows = conn.execute(query).all()
        return {
            node_of[row.USER]: {
                "statements": float(row.statements),
                "transactions": float(row.transactions),
            }
            for row in rows
            if row.USER in node_of
        }


@dataclass
class ZooKeeperConnections:
    """Packets each connection's session sent the server, from the `cons` word."""

    port: int

    def read(self, pids: Mapping[str, int]) -> Counts:
        owners = local_ports(pids, self.port)
        counts: Counts = {}
        for line in four_letter_word(self.port, b"cons").splitlines():
            found = re.search(r"/[\d.]+:(\d+)\[\d+\]\((.*)\)", line)
            if found is None or "recved=" not in found.group(2):
                continue
            port = int(found.group(1))
            fields = dict(part.split("=", 1) for part in found.group(2).split(",") if "=" in part)
            counts[f"{owners.get(port, '?')}/{port}"] = {"requests": float(fields["recved"])}
        return counts


def four_letter_word(port: int, word: bytes) -> str:
    """The whole answer (the test helper reads one chunk only)."""
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(word)
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


@dataclass
class SqliteChangeCounter:
    """Write transactions of a SQLite file: its header's file change counter."""

    path: Path

    def read(self, pids: Mapping[str, int]) -> Counts:
        with self.path.open("rb") as db:
            db.seek(24)
            counter = int.from_bytes(db.read(4), "big")
        return {TOTAL: {"write transactions": float(counter)}}


# -- the metastores ---------------------------------------------------------------------
@dataclass
class Metastore:
    urls: dict[str, str]  # the URL each node's controller uses
    meter: Meter
    server_port: int | None  # for the kernel's count of round trips; None: no server


@contextlib.contextmanager
def metastore(backend: str, root: Path) -> Iterator[Metastore]:
    setups = {
        "sqlite": sqlite_metastore,
        "mariadb": mariadb_metastore,
        "postgresql": postgresql_metastore,
        "zookeeper": zookeeper_metastore,
    }
    with setups[backend](root) as store:
        yield store


@contextlib.contextmanager
def sqlite_metastore(root: Path) -> Iterator[Metastore]:
    path = root / "metastore.db"
    yield Metastore(dict.fromkeys(NODES, f"sqlite:///{path}"), SqliteChangeCounter(path), None)


def unique_name() -> str:
    return f"sentinel_cost_{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def postgresql_metastore(root: Path) -> Iterator[Metastore]:
    name = unique_name()
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    url = sa.make_url(POSTGRES_URL).set(database=name)
    try:
        yield Metastore(
            dict.fromkeys(NODES, url.render_as_string(False)),
            PostgresDatabase(admin, name),
            url.port or 5432,
        )
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@contextlib.contextmanager
def mariadb_metastore(root: Path) -> Iterator[Metastore]:
    name = unique_name()
    admin = sa.create_engine(MYSQL_URL)
    users = {node: f"{name}_{node}" for node in NODES}
    password = secrets.token_hex(12)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
        for user in users.values():
            conn.execute(sa.text(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}'"))
            conn.execute(sa.text(f"GRANT ALL ON {name}.* TO '{user}'@'127.0.0.1'"))
    base = sa.make_url(MYSQL_URL).set(database=name, password=password)
    urls = {node: base.set(username=user).render_as_string(False) for node, user in users.items()}
    try:
        with user_statistics(admin):
            yield Metastore(urls, MariaDbUsers(admin, users), base.port or 3306)
    finally:
        with admin.begin() as conn:
            for user in users.values():
                conn.execute(sa.text(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'"))
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()


@contextlib.contextmanager
def user_statistics(admin: sa.Engine) -> Iterator[None]:
    """The server's userstat on for the run; as it was afterwards."""
    with admin.begin() as conn:
        was_on = bool(conn.execute(sa.text("select @@global.userstat")).scalar_one())
        if not was_on:
            conn.execute(sa.text("SET GLOBAL userstat = 1"))
    try:
        yield
    finally:
        if not was_on:
            with admin.begin() as conn:
                conn.execute(sa.text("SET GLOBAL userstat = 0"))


class WordsEnsemble(Ensemble):
    """The test suite's server, with `cons` and `mntr` allowed as well."""

    def _config(self, index: int) -> Path:
        config = super()._config(index)
        text = config.read_text().replace(
            "4lw.commands.whitelist=ruok,srvr", "4lw.commands.whitelist=ruok,srvr,cons,mntr"
        )
        config.write_text(text)
        return config


@contextlib.contextmanager
def zookeeper_metastore(root: Path) -> Iterator[Metastore]:
    (root / "zookeeper").mkdir()
    ensemble = WordsEnsemble(root / "zookeeper", 1, free_port_block())
    try:
        ensemble.start_all()
        port = ensemble.client_port(0)
        url = f"zookeeper://127.0.0.1:{port}/sentinel-cost"
        yield Metastore(dict.fromkeys(NODES, url), ZooKeeperConnections(port), port)
    finally:
        ensemble.close()


# -- the cluster ----------------------------------------------------------------------------
@dataclass
class CostCluster(Cluster):
    """Controllers at the shipped defaults, each with a metastore URL of its own."""

    node_urls: dict[str, str] = field(default_factory=dict)

    def env(self, node_id: str, command: str | None = None) -> dict[str, str]:
        env = super().env(node_id, command)
        env["AIRFLOW__SENTINEL__METASTORE"] = self.node_urls.get(node_id, self.metastore_url)
        return env


@contextlib.contextmanager
def cost_cluster(root: Path, urls: dict[str, str]) -> Iterator[CostCluster]:
    cluster = CostCluster(root, urls[NODES[0]], settings={}, node_urls=urls)
    cluster.api_ports = {node: free_port("127.0.0.1") for node in NODES}
    with running_cluster(root, cluster.metastore_url, cluster):
        yield cluster


def http_get(cluster: Cluster, node: str, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", cluster.api_ports[node], timeout=5)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        return answer.status, answer.read().decode()
    except OSError:
        return 0, ""
    finally:
        conn.close()


def wait_probe(cluster: Cluster, node: str, probe: str, timeout: float) -> None:
    """Until the node's API says 200 to ``probe`` (/active, /standby): no metastore read."""
    wait_until(
        lambda: http_get(cluster, node, probe)[0] == 200, timeout, f"{node} {probe}", every=0.5
    )


def renewals(cluster: Cluster, node: str) -> float:
    """How many lease renewals the node has timed so far (its /metrics histogram)."""
    status, text = http_get(cluster, node, "/metrics")
    if status != 200:
        raise SystemExit(f"GET /metrics on {node}: {status}")
    for family in text_string_to_metric_families(text):
        if family.name == "airflow_sentinel_lease_renewal_seconds":
            return sum(s.value for s in family.samples if s.name.endswith("_count"))
    return 0.0


def guard_of(controller: psutil.Process) -> psutil.Process | None:
    for child in controller.children():
        with contextlib.suppress(psutil.Error):
            if GUARD_MODULE in child.cmdline():
                return child
    return None


def measured_processes(cluster: Cluster, nodes: tuple[str, ...]) -> dict[str, psutil.Process]:
    """Each node's controller, and the guard of the one that runs a scheduler."""
    found = {}
    for node in nodes:
        controller = psutil.Process(cluster.pid_of(node))
        found[node] = controller
        guard = guard_of(controller)
        if guard is not None:
            found[f"{node} guard"] = guard
    return found


# -- one window -------------------------------------------------------------------------
@dataclass(frozen=True)
class Memory:
    rss: float
    uss: float | None
    pss: float | None
    peak_rss: float  # VmHWM


@dataclass
class Window:
    seconds: float
    cpu_percent: dict[str, float]  # process -> percent of one core
    memory: dict[str, Memory]  # process -> at the end of the window
    ops: Counts  # node or TOTAL -> metric -> count in the window
    connections: Counts  # node/port or TOTAL -> metric -> count in the window
    cycles: float  # the active node's renewals in the window


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)  # children_* excluded: not this process


def memory_of(proc: psutil.Process) -> Memory:
    full = proc.memory_full_info()
    peak = 0.0
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = float(line.split()[1]) * 1024
    return Memory(
        float(full.rss), getattr(full, "uss", None), getattr(full, "pss", None), float(peak)
    )


def read_all(meters: list[Meter], pids: Mapping[str, int]) -> Counts:
    counts: Counts = {}
    for meter in meters:
        for key, metrics in meter.read(pids).items():
            counts.setdefault(key, {}).update(metrics)
    return counts


def measure_window(
    cluster: Cluster, store: Metastore, nodes: tuple[str, ...], seconds: float
) -> Window:
    procs = measured_processes(cluster, nodes)
    pids = {node: cluster.pid_of(node) for node in nodes}
    meters: list[Meter] = [store.meter]
    if store.server_port is not None:
        meters.append(KernelRoundTrips(store.server_port))
    renewed = renewals(cluster, NODES[0])
    before = read_all(meters, pids)
    cpu_before = {name: cpu_seconds(p) for name, p in procs.items()}
    began = time.monotonic()
    time.sleep(seconds)  # the window itself
    cpu_after = {name: cpu_seconds(p) for name, p in procs.items()}
    took = time.monotonic() - began
    connections = delta(before, read_all(meters, pids))
    return Window(
        seconds=took,
        cpu_percent={n: 100 * (cpu_after[n] - cpu_before[n]) / took for n in procs},
        memory={name: memory_of(p) for name, p in procs.items()},
        ops=by_node(connections),
        connections=connections,
        cycles=renewals(cluster, NODES[0]) - renewed,
    )


# -- SQLite: its locks, traced --------------------------------------------------------------
PENDING_SHARED = re.compile(r"F_SETLK, \{l_type=F_RDLCK, l_whence=SEEK_SET, l_start=1073741824,")
# Only fcntl stops the traced threads (seccomp-bpf): the controller hardly slows down.
STRACE = ("strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=fcntl")
RESERVED = re.compile(r"F_SETLK, \{l_type=F_WRLCK, l_whence=SEEK_SET, l_start=1073741825,")


def trace_sqlite_locks(cluster: Cluster, seconds: float) -> tuple[float, Counts]:
    """SQLite transactions per node over ``seconds``, from their successful lock calls."""
    tracers = {}
    for node in NODES:
        out = cluster.root / f"strace-{node}.txt"
        tracers[node] = (out, start_strace(cluster.pid_of(node), out))
    began = time.monotonic()
    time.sleep(seconds)  # the traced window
    took = time.monotonic() - began
    counts: Counts = {}
    for node, (out, tracer) in tracers.items():
        tracer.send_signal(signal.SIGINT)  # detaches from the controller
        tracer.wait(timeout=30)
        calls = [line for line in out.read_text().splitlines() if line.rstrip().endswith("= 0")]
        counts[node] = {
            "transactions": float(sum(1 for c in calls if PENDING_SHARED.search(c))),
            "write transactions": float(sum(1 for c in calls if RESERVED.search(c))),
        }
    return took, counts


def start_strace(pid: int, out: Path) -> subprocess.Popen[bytes]:
    if shutil.which("strace") is None:
        raise SystemExit("the sqlite backend needs strace, to count SQLite's transactions")
    tracer = subprocess.Popen(
        [*STRACE, "-o", str(out), "-p", str(pid)],
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1)  # attached to every thread by then
    if tracer.poll() is not None:
        raise SystemExit(f"strace could not attach to pid {pid} (exit {tracer.returncode})")
    return tracer


# -- one metastore ----------------------------------------------------------------------
@dataclass
class Result:
    backend: str
    active: Window  # node a alone, active
    standby: Window  # node b added, standby (a still active)
    traced: Counts | None = None  # SQLite: per node, over traced_seconds
    traced_seconds: float = 0.0


def measure_backend(backend: str, seconds: float) -> Result:
    with (
        tempfile.TemporaryDirectory() as tmp,
        metastore(backend, Path(tmp)) as store,
        cost_cluster(Path(tmp), store.urls) as cluster,
    ):
        first, second = NODES
        cluster.start(first)
        wait_probe(cluster, first, "/active", timeout=START_TIMEOUT + 120)
        time.sleep(RENEW_INTERVAL)  # the cycle after the scheduler proved itself
        active = measure_window(cluster, store, (first,), seconds)
        print(f"{backend}: active window done", flush=True)
        cluster.start(second)
        wait_probe(cluster, second, "/standby", timeout=120)
        time.sleep(2 * RENEW_INTERVAL)  # its start-up events written
        standby = measure_window(cluster, store, NODES, seconds)
        print(f"{backend}: standby window done", flush=True)
        result = Result(backend, active, standby)
        if backend == "sqlite":
            result.traced_seconds, result.traced = trace_sqlite_locks(cluster, seconds)
            print(f"{backend}: traced window done", flush=True)
        cluster.stop_all()
    return result


def rates(result: Result) -> dict[str, dict[str, float]]:
    """Operations per second of the active node and of the standby, per metric."""
    one, two = result.active, result.standby
    active = {m: v / one.seconds for m, v in one.ops.get("a", {}).items()}
    standby = {m: v / two.seconds for m, v in two.ops.get("b", {}).items()}
    for metric, value in one.ops.get(TOTAL, {}).items():
        active.setdefault(metric, value / one.seconds)
    for metric, value in two.ops.get(TOTAL, {}).items():
        if metric not in standby:  # the server's total, less what node a does alone
            standby[metric] = value / two.seconds - one.ops[TOTAL][metric] / one.seconds
    if result.traced is not None:  # the traced counts are per node: they win
        active.update({m: v / result.traced_seconds for m, v in result.traced["a"].items()})
        standby.update({m: v / result.traced_seconds for m, v in result.traced["b"].items()})
    return {"active": active, "standby": standby}


def cycle_seconds(result: Result) -> float | None:
    window = result.active
    return window.seconds / window.cycles if window.cycles else None


# -- tables -----------------------------------------------------------------------------
def mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value / MB:.1f}"


def memory_table(results: list[Result]) -> str:
    rows = [
        "| metastore | process | RSS MB | USS MB | PSS MB | peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        active, guard = r.active.memory["a"], r.active.memory.get("a guard")
        lines = [("controller (active)", active)]
        if guard is not None:
            lines += [("guard", guard), ("controller + guard", add(active, guard))]
        lines.append(("controller (standby)", r.standby.memory["b"]))
        for name, m in lines:
            rows.append(
                f"| {r.backend} | {name} | {mb(m.rss)} | {mb(m.uss)} | {mb(m.pss)} "
                f"| {mb(m.peak_rss)} |"
            )
    return "\n".join(rows)


def add(one: Memory, two: Memory) -> Memory:
    def both(x: float | None, y: float | None) -> float | None:
        return None if x is None or y is None else x + y

    return Memory(
        one.rss + two.rss,
        both(one.uss, two.uss),
        both(one.pss, two.pss),
        one.peak_rss + two.peak_rss,
    )


def cpu_table(results: list[Result]) -> str:
    rows = [
        "| metastore | role | window | controller | guard | controller + guard |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        for role, window, node in (("active", r.active, "a"), ("standby", r.standby, "b")):
            controller = window.cpu_percent[node]
            guard = window.cpu_percent.get(f"{node} guard")
            guard_text = "-" if guard is None else f"{guard:.2f} %"
            rows.append(
                f"| {r.backend} | {role} | {window.seconds:.0f} s | {controller:.2f} % "
                f"| {guard_text} | {controller + (guard or 0.0):.2f} % |"
            )
    return "\n".join(rows)


def ops_table(results: list[Result]) -> str:
    heads = " | ".join(head for _, head in OPS_COLUMNS)
    rows = [
        f"| metastore | role | {heads} | cycle | per cycle |",
        "|---|---|" + "---|" * len(OPS_COLUMNS) + "---|---|",
    ]
    for r in results:
        cycle = cycle_seconds(r)
        for role, found in rates(r).items():
            cells = " | ".join(f"{found[m]:.2f}" if m in found else "n/a" for m, _ in OPS_COLUMNS)
            per_cycle = ", ".join(
                f"{found[m] * cycle:.1f} {m}" for m, _ in OPS_COLUMNS if m in found and cycle
            )
            cycle_text = f"{cycle:.2f} s" if cycle else "n/a"
            rows.append(f"| {r.backend} | {role} | {cells} | {cycle_text} | {per_cycle} |")
    return "\n".join(rows)


def verdicts(results: list[Result]) -> str:
    lines = []
    for r in results:
        active, guard = r.active.memory["a"], r.active.memory.get("a guard")
        resident = active.rss + (guard.rss if guard is not None else 0.0)
        idle = r.standby.cpu_percent["b"]
        worst = max(
            (v for role in rates(r).values() for m, v in role.items() if m != "write transactions"),
            default=0.0,
        )
        lines.append(
            f"- {r.backend}: controller + guard RSS {resident / MB:.1f} MB "
            f"({'within' if resident / MB <= TARGET_MB else 'over'} {TARGET_MB:g} MB); "
            f"standby CPU {idle:.2f} % "
            f"({'within' if idle <= TARGET_CPU else 'over'} {TARGET_CPU:g} %); "
            f"most operations/s of a node {worst:.2f} "
            f"({'within' if worst <= TARGET_OPS else 'over'} {TARGET_OPS:g}/s)"
        )
    return "\n".join(lines)


def report(results: list[Result]) -> str:
    how = "\n".join(f"- {r.backend}: {HOW[r.backend]}" for r in results)
    return "\n\n".join(
        [
            "Memory at the end of each window (MB = 10^6 bytes):",
            memory_table(results),
            "CPU, percent of one core (user + system, children excluded):",
            cpu_table(results),
            "Metastore operations per second per node:",
            ops_table(results),
            how,
            "Targets:",
            verdicts(results),
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default=",".join(ALL_BACKENDS), help="comma-separated")
    parser.add_argument("--seconds", type=float, default=60.0, help="each window's length")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - set(ALL_BACKENDS))
    if unknown:
        parser.error(f"unknown backend(s) {', '.join(unknown)}; known: {', '.join(ALL_BACKENDS)}")
    results = [measure_backend(backend, args.seconds) for backend in backends]
    print()
    print(report(results))
    if args.json:
        raw = {r.backend: {**asdict(r), "rates": rates(r)} for r in results}
        args.json.write_text(json.dumps(raw, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
