"""Fence benchmark: what the fence in Airflow's database costs a real scheduler, and what
raising it adds to a takeover.

`airflow`: a real Airflow installation (its own AIRFLOW_HOME and a fresh database), one
DAG of N trivial PythonOperator tasks, LocalExecutor. Runs alternate between the fence off
(no triggers installed, the scheduler without an epoch) and on (installed, raised to a new
epoch, the scheduler started with the epoch environment of its dialect, as the controller
starts it). Each run starts a scheduler, records its loop durations while idle, triggers
one DAG run, waits until every task succeeded and stops the scheduler again. Loop durations
come from Airflow's own `scheduler.scheduler_loop_duration` timer, sent over StatsD to a
listener in this process. On Airflow 3 the dag-processor and the api-server (the execution
API the tasks report to) run for the whole installation, without an epoch.

After each "on" run, with the scheduler still running, the fence is raised once more (what
a new active node does): the time of that raise, and the time until the old scheduler's
next write is rejected, prove that the fence was really in the scheduler's path.

`raise`: DbFence.state() and DbFence.raise_to() on an idle fence (no open transactions),
on PostgreSQL and MariaDB, as FenceKeeper.before_start calls them before every start.

    .venv/bin/python -m benchmarks.fence --parts raise --trials 50
    .venv/bin/python -m benchmarks.fence --parts airflow \\
        --airflow 3.3.2/postgresql --runs off,on,on,off --tasks 60
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import psutil
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from airflow_sentinel.airflow_env import ensure_airflow_venv
from airflow_sentinel.fence import REJECTION, DbFence, open_fence
from airflow_sentinel.soak.servers import free_port
from tests.support.fence_db import FENCE_BACKENDS, airflow_like_database

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
MY_ADMIN = "mysql+pymysql://root@127.0.0.1:3306/mysql"
LOOP_METRIC = "scheduler.scheduler_loop_duration"
DAG_ID = "sentinel_fence_benchmark"
# What the controller uses with the shipped defaults: db_fence_timeout is renew_interval,
# the raise waits at most min(renew_interval, db_fence_wait).
RENEW_INTERVAL = 3.0
DB_FENCE_WAIT = 10.0
# The environments: the project's cached ones, plus a PostgreSQL driver and StatsD's client
# (Airflow's own extras `postgres` and `statsd`), which a plain apache-airflow lacks.
EXTRAS = {
    "3": ("apache-airflow-providers-postgres", "statsd"),
    "2": ("apache-airflow-providers-postgres", "pymysql", "statsd"),
}
INSTALLATIONS = ("3.3.2/postgresql", "2.10.5/mariadb")
MODES = ("off", "on")
PARTS = ("raise", "writes", "airflow")
WARM_UP = "warm-up"  # a run with the fence off, before the measured ones: not summarised

DAG = """
import pendulum
try:
    from airflow.providers.standard.operators.python import PythonOperator
except ImportError:
    from airflow.operators.python import PythonOperator
try:
    from airflow.sdk import DAG
except ImportError:
    from airflow import DAG


def nothing():
    return None


with DAG("{dag_id}", schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False,
         max_active_tasks={tasks}, max_active_runs=1):
    for number in range({tasks}):
        PythonOperator(task_id=f"t{{number:03d}}", python_callable=nothing)
"""


# -- statistics and parsing ------------------------------------------------------------------
def p95(values: list[float]) -> float:
    """The 95th percentile, nearest rank (as benchmarks/failover.py reports it)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0, "min": float("nan"), "median": float("nan"), "p95": float("nan")}
    return {
        "n": len(values),
        "min": min(values),
        "median": statistics.median(values),
        "p95": p95(values),
    }


def parse_statsd(packet: bytes) -> list[tuple[str, float, str]]:
    """(name, value, type) of every metric in a StatsD packet (one per line)."""
    found = []
    for line in packet.decode(errors="replace").splitlines():
        name, sep, rest = line.partition(":")
        if not sep:
            continue
        value, _, kind = rest.partition("|")
        try:
            number = float(value)
        except ValueError:
            continue
        found.append((name.strip(), number, kind.split("|")[0].strip()))
    return found


def runs_order(text: str) -> list[str]:
    order = [m.strip() for m in text.split(",") if m.strip()]
    unknown = sorted(set(order) - set(MODES))
    if unknown or not order:
        raise ValueError(f"runs: unknown {unknown or 'none given'}; use {', '.join(MODES)}")
    return order


def ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f} ms"  # NaN: no samples


def pct(on: float, off: float) -> str:
    if math.isnan(off) or math.isnan(on) or off == 0:
        return "-"
    return f"{100 * (on - off) / off:+.1f} %"


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    memory = psutil.virtual_memory().total / 2**30
    return (
        f"machine: {os.cpu_count()} cores ({model or platform.machine()}), "
        f"{memory:.0f} GiB RAM, load average {load}, Python {platform.python_version()}"
    )


# -- StatsD --------------------------------------------------------------------------------
class StatsdListener:
    """A UDP listener on 127.0.0.1 keeping the scheduler's loop durations with their time."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.loops: list[tuple[float, float]] = []  # (received at, ms)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="statsd", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                packet = self.sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.time()
            for name, value, _kind in parse_statsd(packet):
                if name.endswith(LOOP_METRIC):
                    with self._lock:
                        self.loops.append((now, value))

    def between(self, start: float, end: float) -> list[float]:
        with self._lock:
            return [v for t, v in self.loops if start <= t < end]

    def count_since(self, start: float) -> int:
        with self._lock:
            return sum(1 for t, _v in self.loops if t >= start)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


# -- processes -----------------------------------------------------------------------------
class Processes:
    """Every process this benchmark starts, each in a session of its own; all of them (and
    their children) are ended by ``stop_all``, whatever happened."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
        try:
            members = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(True)]
        except psutil.Error:
            members = []
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        _gone, alive = psutil.wait_procs(members, timeout=timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        for member in alive:
            with contextlib.suppress(psutil.Error):
                member.kill()
        psutil.wait_procs(alive, timeout=10)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.running)):
            self.stop(proc, timeout=15)


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


# -- databases -----------------------------------------------------------------------------
@contextlib.contextmanager
def airflow_database(backend: str) -> Iterator[tuple[str, str]]:
    """A fresh database: (Airflow's URL, the URL this process opens the fence with)."""
    name = f"sentinel_fb_{uuid.uuid4().hex[:10]}"
    admin_url = PG_ADMIN if backend == "postgresql" else MY_ADMIN
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
        if backend == "postgresql":  # counts the calls of the check, in every session
            conn.exec_driver_sql(f"ALTER DATABASE {name} SET track_functions = 'pl'")
    if backend == "postgresql":
        urls = (
            f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}",
            f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}",
        )
    else:
        url = f"mysql+pymysql://root@127.0.0.1:3306/{name}"
        urls = (url, url)
    try:
        yield urls
    finally:
        with admin.connect() as conn:
            if backend == "postgresql":
                conn.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                )
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        admin.dispose()


# -- one installation ----------------------------------------------------------------------
@dataclass
class Run:
    number: int
    airflow: str
    database: str
    fence: str
    tasks: int
    epoch: int | None
    idle_loops: list[float] = field(default_factory=list)
    busy_loops: list[float] = field(default_factory=list)
    run_s: float = float("nan")  # trigger (queued_at) until the DAG run succeeded
    tasks_s: float = float("nan")  # trigger until the last task ended
    wall_s: float = float("nan")  # the trigger command returned until all succeeded (polled)
    live_raise_ms: float = float("nan")  # the raise with the scheduler still running
    rejected_after_s: float = float("nan")  # that raise until the scheduler was rejected
    check_calls: int | None = None  # PostgreSQL: calls of the check during the run
    check_ms: float | None = None  # and their total time

    @property
    def throughput(self) -> float:
        return float("nan") if math.isnan(self.tasks_s) else self.tasks / self.tasks_s


@dataclass
class Installation:
    version: str
    backend: str
    base: Path
    tasks: int
    parallelism: int
    statsd_port: int
    processes: Processes
    airflow_url: str = ""
    fence_url: str = ""
    venv: Path = Path()
    api_port: int = 0

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def home(self) -> Path:
        return self.base / "home"

    @property
    def airflow(self) -> str:
        return str(self.venv / "bin" / "airflow")

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW") and k != "PGOPTIONS"
        }
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "PATH": f"{self.venv / 'bin'}:{env.get('PATH', '')}",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.airflow_url,
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
                "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(self.parallelism),
                "AIRFLOW__METRICS__STATSD_ON": "True",
                "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
                "AIRFLOW__METRICS__STATSD_PORT": str(self.statsd_port),
                "AIRFLOW__WEBSERVER__SECRET_KEY": "sentinel-fence-benchmark-secret",
                "AIRFLOW__API_AUTH__JWT_SECRET": "sentinel-fence-benchmark-jwt-secret-" + "x" * 64,
            }
        )
        if self.major >= 3:
            base_url = f"http://127.0.0.1:{self.api_port}"
            env["AIRFLOW__API__BASE_URL"] = base_url
            env["AIRFLOW__API__PORT"] = str(self.api_port)
            env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"{base_url}/execution/"
        env.update(extra or {})
        return env

    def cli(self, *args: str, timeout: float = 600) -> str:
        done = subprocess.run(
            [self.airflow, *args],
            env=self.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)}: {done.stderr[-2000:]}")
        return done.stdout

    def engine(self) -> sa.Engine:
        return sa.create_engine(self.fence_url, poolclass=NullPool)

    # -- set-up ----------------------------------------------------------------------------
    def prepare(self) -> None:
        self.venv = ensure_airflow_venv(self.version, extras=EXTRAS[str(self.major)])
        self.api_port = free_port("127.0.0.1")
        (self.home / "dags").mkdir(parents=True)
        (self.home / "dags" / "fence_benchmark.py").write_text(
            DAG.format(dag_id=DAG_ID, tasks=self.tasks)
        )
        print(f"{self.label}: airflow db migrate", flush=True)
        self.cli("db", "migrate", timeout=900)

    @property
    def label(self) -> str:
        return f"Airflow {self.version} on {self.backend}"

    def start_services(self) -> None:
        """Airflow 3's api-server and dag-processor (no epoch, as in production)."""
        if self.major < 3:
            return
        port = ("--port", str(self.api_port))
        self.processes.start(
            [self.airflow, "api-server", "--host", "127.0.0.1", *port, "--workers", "1"],
            self.env(),
            self.base / "api-server.log",
        )
        self.processes.start(
            [self.airflow, "dag-processor"], self.env(), self.base / "dag-processor.log"
        )
        wait_for("the api-server", self._api_healthy, 240, every=1)

    def _api_healthy(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.api_port}/api/v2/monitor/health"
            with urllib.request.urlopen(url, timeout=5) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def dag_ready(self) -> bool:
        engine = self.engine()
        try:
            with engine.begin() as conn:
                serialized = conn.execute(
                    sa.text("SELECT COUNT(*) FROM serialized_dag WHERE dag_id = :d"), {"d": DAG_ID}
                ).scalar_one()
                if not serialized:
                    return False
                conn.execute(
                    sa.text("UPDATE dag SET is_paused = :f WHERE dag_id = :d"),
                    {"f": False, "d": DAG_ID},
                )
                return True
        finally:
            engine.dispose()

    # -- one run -----------------------------------------------------------------------------
    def run(
        self,
        number: int,
        mode: str,
        fence: DbFence,
        epoch: int,
        statsd: StatsdListener,
        idle: float,
    ) -> Run:
        result = Run(number, self.version, self.backend, mode, self.tasks, None)
        extra: dict[str, str] = {}
        if mode == "on":
            fence.install()
            raised = fence.raise_to(epoch, "benchmark", RENEW_INTERVAL, end_blockers=False)
            if not raised.raised:
                raise RuntimeError(f"raise to epoch {epoch} failed: {raised.why}")
            result.epoch = epoch
            extra = fence.dialect.scheduler_env(epoch, self.airflow_url, self.env())
        else:
            fence.remove()
        before = self.check_stats()
        log = self.base / f"scheduler-{number}-{mode}.log"
        started = time.time()
        scheduler = self.processes.start(
            [self.airflow, "scheduler", "--skip-serve-logs"], self.env(extra), log
        )
        try:
            wait_for("the DAG to be parsed", self.dag_ready, 300, every=1)
            wait_for(
                "the scheduler's first loops",
                lambda: scheduler.poll() is None and statsd.count_since(started) >= 3,
                300,
            )
            if scheduler.poll() is not None:
                raise RuntimeError(f"the scheduler exited: see {log}")
            idle_from = time.time()
            time.sleep(idle)
            trigger_at = time.time()
            result.idle_loops = statsd.between(idle_from, trigger_at)
            run_id = f"fence_{number}_{mode}_{uuid.uuid4().hex[:6]}"
            self.cli("dags", "trigger", DAG_ID, "--run-id", run_id, timeout=300)
            triggered = time.time()
            wait_for(
                f"the {self.tasks} tasks of {run_id}",
                lambda: self._finished(run_id, scheduler, log),
                900,
            )
            done_at = time.time()
            result.busy_loops = statsd.between(trigger_at, done_at)
            result.wall_s = done_at - triggered
            result.run_s, result.tasks_s = self._durations(run_id)
            if mode == "on":
                self._prove(result, fence, epoch + 1, log)
        finally:
            self.processes.stop(scheduler)
        after = self.check_stats()
        if before is not None and after is not None:
            result.check_calls = after[0] - before[0]
            result.check_ms = after[1] - before[1]
        return result

    def check_stats(self) -> tuple[int, float] | None:
        """PostgreSQL: calls of the fence's check function so far, and their total ms
        (every session's, also those without an epoch, whose check returns at once)."""
        if self.backend != "postgresql":
            return None
        engine = self.engine()
        try:
            with engine.connect() as conn:
                row = conn.execute(
                    sa.text(
                        "SELECT COALESCE(SUM(calls), 0), COALESCE(SUM(total_time), 0) "
                        "FROM pg_stat_user_functions WHERE funcname = 'sentinel_fence_check'"
                    )
                ).one()
        finally:
            engine.dispose()
        return int(row[0]), float(row[1])

    def _finished(self, run_id: str, scheduler: subprocess.Popen[bytes], log: Path) -> bool:
        if scheduler.poll() is not None:
            raise RuntimeError(f"the scheduler exited during the run: see {log}")
        engine = self.engine()
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.text(
                        "SELECT state, COUNT(*) FROM task_instance WHERE dag_id = :d "
                        "AND run_id = :r GROUP BY state"
                    ),
                    {"d": DAG_ID, "r": run_id},
                ).all()
                run_state = conn.execute(
                    sa.text("SELECT state FROM dag_run WHERE dag_id = :d AND run_id = :r"),
                    {"d": DAG_ID, "r": run_id},
                ).scalar()
        finally:
            engine.dispose()
        states = {str(state): int(n) for state, n in rows}
        bad = {s: n for s, n in states.items() if s in ("failed", "upstream_failed")}
        if bad or run_state == "failed":
            raise RuntimeError(f"{run_id}: tasks {states}, run {run_state}: see {self.home}/logs")
        return states.get("success", 0) == self.tasks and run_state == "success"

    def _durations(self, run_id: str) -> tuple[float, float]:
        engine = self.engine()
        try:
            with engine.connect() as conn:
                queued, ended = conn.execute(
                    sa.text(
                        "SELECT queued_at, end_date FROM dag_run WHERE dag_id = :d AND run_id = :r"
                    ),
                    {"d": DAG_ID, "r": run_id},
                ).one()
                last = conn.execute(
                    sa.text(
                        "SELECT MAX(end_date) FROM task_instance WHERE dag_id = :d AND run_id = :r"
                    ),
                    {"d": DAG_ID, "r": run_id},
                ).scalar_one()
        finally:
            engine.dispose()
        return (ended - queued).total_seconds(), (last - queued).total_seconds()

    def _prove(
        self,
        result: Run,
        fence: DbFence,
        epoch: int,
        log: Path,
    ) -> None:
        """Raise the fence under the running scheduler, as a new active node would; its
        next write must be rejected."""
        offset = log.stat().st_size
        t0 = time.monotonic()
        raised = fence.raise_to(epoch, "benchmark-proof", RENEW_INTERVAL, end_blockers=True)
        result.live_raise_ms = 1000 * (time.monotonic() - t0)
        if not raised.raised:
            raise RuntimeError(f"the raise under the running scheduler failed: {raised.why}")

        def rejected() -> bool:
            with log.open("rb") as f:
                f.seek(offset)
                return REJECTION.encode() in f.read()

        wait_for(f"the scheduler's rejection in {log}", rejected, 120, every=0.1)
        result.rejected_after_s = time.monotonic() - t0


def run_installation(
    spec: str, order: list[str], tasks: int, parallelism: int, idle: float, warmup: int
) -> list[Run]:
    version, backend = spec.split("/")
    processes = Processes()
    statsd = StatsdListener()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="sentinel-fence-bench-") as tmp:
        inst = Installation(version, backend, Path(tmp), tasks, parallelism, statsd.port, processes)
        try:
            with airflow_database(backend) as (airflow_url, fence_url):
                inst.airflow_url, inst.fence_url = airflow_url, fence_url
                inst.prepare()
                fence = open_fence("on", fence_url, RENEW_INTERVAL, DB_FENCE_WAIT)
                assert fence is not None
                try:
                    inst.start_services()
                    epoch = 1
                    for number, mode in enumerate([WARM_UP] * warmup + order, start=1):
                        result = inst.run(number, mode, fence, epoch, statsd, idle)
                        if mode == "on":
                            epoch += 2  # the proof raised it once more
                        runs.append(result)
                        print(run_line(result), flush=True)
                finally:
                    processes.stop_all()
                    fence.close()
        finally:
            processes.stop_all()
            statsd.close()
    return runs


# -- the raise -----------------------------------------------------------------------------
def raise_trials(backend: str, trials: int) -> dict[str, list[float]]:
    """state() then raise_to() on an idle fence, as before every start; ms each."""
    found: dict[str, list[float]] = {"state()": [], "raise_to()": [], "state() + raise_to()": []}
    with airflow_like_database(backend) as url:
        fence = open_fence("on", url, RENEW_INTERVAL, DB_FENCE_WAIT)
        assert fence is not None
        try:
            fence.install()
            for trial in range(1, trials + 1):
                t0 = time.perf_counter()
                problem = fence.state().problem()
                t1 = time.perf_counter()
                wait = min(RENEW_INTERVAL, DB_FENCE_WAIT)
                result = fence.raise_to(trial, "benchmark", wait, end_blockers=False)
                t2 = time.perf_counter()
                if problem is not None or not result.raised:
                    raise RuntimeError(f"{backend}: {problem or result.why}")
                found["state()"].append(1000 * (t1 - t0))
                found["raise_to()"].append(1000 * (t2 - t1))
                found["state() + raise_to()"].append(1000 * (t2 - t0))
        finally:
            fence.close()
    return found


# -- the check on every write ----------------------------------------------------------------
WRITE_CASES = ("no fence", "fence, no epoch", "fence, epoch")
STATEMENTS = {
    "UPDATE 1 row": "UPDATE task_instance SET state = :s WHERE id = 1",
    "UPDATE 100 rows": "UPDATE task_instance SET state = :s WHERE id <= 100",
}


def writer(url: str, fence: DbFence, epoch: int | None) -> sa.Engine:
    """One pooled connection, carrying ``epoch`` as the controller gives it to a scheduler
    (PGOPTIONS for libpq, the URL's init_command for MySQL); None: no epoch."""
    if epoch is None:
        return sa.create_engine(url, pool_size=1)
    env = fence.dialect.scheduler_env(epoch, url, {})
    if "PGOPTIONS" in env:
        return sa.create_engine(url, pool_size=1, connect_args={"options": env["PGOPTIONS"]})
    return sa.create_engine(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], pool_size=1)


def write_trials(backend: str, trials: int, rounds: int = 5) -> dict[str, dict[str, list[float]]]:
    """One write statement per transaction (commit included), ms each, per statement and
    case; the cases take turns in ``rounds`` blocks to spread the machine's noise."""
    found: dict[str, dict[str, list[float]]] = {
        st: {case: [] for case in WRITE_CASES} for st in STATEMENTS
    }
    with airflow_like_database(backend) as url:
        setup = sa.create_engine(url, poolclass=NullPool)
        with setup.begin() as conn:
            conn.execute(
                sa.text("INSERT INTO task_instance (id, task_id, state) VALUES (:i, :t, 'queued')"),
                [{"i": i, "t": f"t{i}"} for i in range(1, 101)],
            )
        setup.dispose()
        fence = open_fence("on", url, RENEW_INTERVAL, DB_FENCE_WAIT)
        assert fence is not None
        try:
            per_block = max(1, trials // rounds)
            for _round in range(rounds):
                for case in WRITE_CASES:
                    if case == "no fence":
                        fence.remove()
                    else:
                        fence.install()  # at epoch 0: the writer's epoch 1 passes
                    engine = writer(url, fence, 1 if case == "fence, epoch" else None)
                    try:
                        for statement, sql in STATEMENTS.items():
                            found[statement][case] += timed_writes(engine, sql, per_block)
                    finally:
                        engine.dispose()
        finally:
            fence.close()
    return found


def timed_writes(engine: sa.Engine, sql: str, count: int, warm: int = 3) -> list[float]:
    took = []
    for i in range(warm + count):
        t0 = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(sa.text(sql), {"s": "running" if i % 2 else "queued"})
        if i >= warm:
            took.append(1000 * (time.perf_counter() - t0))
    return took


def writes_table(results: dict[str, dict[str, dict[str, list[float]]]]) -> str:
    rows = [
        "| database | statement (own transaction) | connection | trials | median | p95 "
        "| median added |",
        "|---|---|---|---|---|---|---|",
    ]
    for backend, statements in results.items():
        for statement, cases in statements.items():
            base = summary(cases["no fence"])["median"]
            for case, values in cases.items():
                s = summary(values)
                added = "" if case == "no fence" else f"{s['median'] - base:+.3f} ms"
                rows.append(
                    f"| {backend} | {statement} | {case} | {s['n']} | {s['median']:.3f} ms "
                    f"| {s['p95']:.3f} ms | {added} |"
                )
    return "\n".join(rows)


# -- tables --------------------------------------------------------------------------------
def run_line(r: Run) -> str:
    return (
        f"run {r.number} {r.airflow} {r.database} fence {r.fence}: {r.tasks} tasks in "
        f"{r.tasks_s:.1f}s ({r.throughput:.2f}/s), "
        f"loop median {ms(summary(r.busy_loops)['median'])}"
    )


def runs_table(runs: list[Run]) -> str:
    rows = [
        "| run | Airflow | database | fence | tasks | trigger → last task | tasks/s "
        "| trigger → run success | loops (busy) | loop median (busy) | loop p95 (busy) "
        "| loop median (idle) | loop p95 (idle) | checks run | their time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        busy, idle = summary(r.busy_loops), summary(r.idle_loops)
        calls = "-" if r.check_calls is None else str(r.check_calls)
        took = "-" if r.check_ms is None else f"{r.check_ms:.1f} ms"
        rows.append(
            f"| {r.number} | {r.airflow} | {r.database} | {r.fence} | {r.tasks} "
            f"| {r.tasks_s:.1f} s | {r.throughput:.2f} | {r.run_s:.1f} s | {busy['n']} "
            f"| {ms(busy['median'])} | {ms(busy['p95'])} | {ms(idle['median'])} "
            f"| {ms(idle['p95'])} | {calls} | {took} |"
        )
    return "\n".join(rows)


def modes_table(runs: list[Run]) -> str:
    """Per installation and mode: the runs' mean throughput and the pooled loops."""
    rows = [
        "| Airflow | database | fence | runs | mean trigger → last task | mean tasks/s "
        "| loop median (busy) | loop p95 (busy) | loop median (idle) | loop p95 (idle) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for airflow, database in dict.fromkeys((r.airflow, r.database) for r in runs):
        stats: dict[str, dict[str, float]] = {}
        for mode in MODES:
            mine = [
                r for r in runs if (r.airflow, r.database, r.fence) == (airflow, database, mode)
            ]
            if not mine:
                continue
            busy = summary([v for r in mine for v in r.busy_loops])
            idle = summary([v for r in mine for v in r.idle_loops])
            stats[mode] = {
                "runs": len(mine),
                "tasks_s": statistics.mean(r.tasks_s for r in mine),
                "throughput": statistics.mean(r.throughput for r in mine),
                "busy_median": busy["median"],
                "busy_p95": busy["p95"],
                "idle_median": idle["median"],
                "idle_p95": idle["p95"],
            }
            s = stats[mode]
            rows.append(
                f"| {airflow} | {database} | {mode} | {s['runs']:.0f} | {s['tasks_s']:.1f} s "
                f"| {s['throughput']:.2f} | {ms(s['busy_median'])} | {ms(s['busy_p95'])} "
                f"| {ms(s['idle_median'])} | {ms(s['idle_p95'])} |"
            )
        if set(MODES) <= set(stats):
            on, off = stats["on"], stats["off"]
            rows.append(
                f"| {airflow} | {database} | on vs off | | {pct(on['tasks_s'], off['tasks_s'])} "
                f"| {pct(on['throughput'], off['throughput'])} "
                f"| {pct(on['busy_median'], off['busy_median'])} "
                f"| {pct(on['busy_p95'], off['busy_p95'])} "
                f"| {pct(on['idle_median'], off['idle_median'])} "
                f"| {pct(on['idle_p95'], off['idle_p95'])} |"
            )
    return "\n".join(rows)


def proof_table(runs: list[Run]) -> str:
    rows = [
        "| run | Airflow | database | raise under the running scheduler | until its next "
        "write was rejected |",
        "|---|---|---|---|---|",
    ]
    for r in runs:
        if r.fence == "on":
            rows.append(
                f"| {r.number} | {r.airflow} | {r.database} | {ms(r.live_raise_ms)} "
                f"| {r.rejected_after_s:.2f} s |"
            )
    return "\n".join(rows)


def raise_table(results: dict[str, dict[str, list[float]]]) -> str:
    rows = ["| database | call | trials | min | median | p95 |", "|---|---|---|---|---|---|"]
    for backend, calls in results.items():
        for call, values in calls.items():
            s = summary(values)
            rows.append(
                f"| {backend} | {call} | {s['n']} | {s['min']:.2f} ms | {s['median']:.2f} ms "
                f"| {s['p95']:.2f} ms |"
            )
    return "\n".join(rows)


# -- main ----------------------------------------------------------------------------------
def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated")
    parser.add_argument(
        "--airflow",
        default=",".join(INSTALLATIONS),
        help="version/database pairs for the airflow part (comma-separated); databases: "
        "postgresql, mariadb",
    )
    parser.add_argument(
        "--runs", default="off,on,on,off", help="fence off/on per run, in this order"
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="unmeasured fence-off runs before the others"
    )
    parser.add_argument("--tasks", type=int, default=60, help="tasks in the DAG run of each run")
    parser.add_argument(
        "--parallelism", type=int, default=8, help="Airflow's [core] parallelism (task slots)"
    )
    parser.add_argument(
        "--idle", type=float, default=15, help="seconds of idle loops recorded before each trigger"
    )
    parser.add_argument("--trials", type=int, default=50, help="trials of the raise part")
    parser.add_argument(
        "--raise-backends",
        default=",".join(FENCE_BACKENDS),
        help="databases of the raise and writes parts",
    )
    parser.add_argument(
        "--writes", type=int, default=500, help="trials per statement and case of the writes part"
    )
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - set(PARTS):
        parser.error(f"--parts: use some of {', '.join(PARTS)}")
    try:
        order = runs_order(args.runs)
    except ValueError as exc:
        parser.error(str(exc))
    specs = [s.strip() for s in args.airflow.split(",") if s.strip()]
    for spec in specs:
        if spec.count("/") != 1 or spec.split("/")[1] not in FENCE_BACKENDS:
            parser.error(f"--airflow: {spec!r} is not VERSION/postgresql or VERSION/mariadb")
    signal.signal(signal.SIGTERM, _terminate)

    print(machine(), flush=True)
    raw: dict[str, Any] = {}
    outputs: list[str] = []
    backends = [b.strip() for b in args.raise_backends.split(",") if b.strip()]
    if "raise" in parts:
        results = {b: raise_trials(b, args.trials) for b in backends}
        raw["raise"] = results
        outputs.append(raise_table(results))
    if "writes" in parts:
        writes = {b: write_trials(b, args.writes) for b in backends}
        raw["writes"] = writes
        outputs.append(writes_table(writes))
    if "airflow" in parts:
        runs: list[Run] = []
        for spec in specs:
            runs += run_installation(
                spec, order, args.tasks, args.parallelism, args.idle, args.warmup
            )
        raw["airflow"] = [asdict(r) for r in runs]
        outputs += [runs_table(runs), modes_table(runs), proof_table(runs)]
    print()
    print("\n\n".join(outputs))
    print()
    print(machine())
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
