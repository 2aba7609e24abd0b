"""A real Airflow installation on PostgreSQL or MariaDB for the fence in Airflow's database,
kept busy by DAGs whose every task appends one line "dag_id run_id task_id try_number" to a
shared file, and the controllers of its nodes, each in a freezer cgroup of its own (so that
a whole node, controller, guard, scheduler and every child, freezes and thaws at once).

Airflow 3 runs its tasks through the api-server's execution API and parses DAGs in a
dag-processor: both are started beside the controllers (they are no scheduler: their
connections carry no epoch and are never fenced). Airflow 2.10 parses and runs everything
from the scheduler.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psutil
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from airflow_sentinel.process.guard import is_guard
from airflow_sentinel.soak.servers import free_port
from tests.support.cluster import Cluster, wait_until

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
MY_ADMIN = "mysql+pymysql://root@127.0.0.1:3306/test"
FREEZER = Path("/sys/fs/cgroup/freezer")
EXTRAS = ("apache-airflow-providers-postgres", "pymysql")

DAGS = """
import os
from datetime import timedelta

import pendulum
from airflow import DAG

try:
    from airflow.providers.standard.operators.python import PythonOperator
except ImportError:
    from airflow.operators.python import PythonOperator

RECORDS = {records!r}


def record(ti, **_):
    line = f"{{ti.dag_id}} {{ti.run_id}} {{ti.task_id}} {{ti.try_number}}\\n"
    fd = os.open(RECORDS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


for n in range({dags}):
    with DAG(
        f"sentinel_busy_{{n}}",
        schedule=timedelta(seconds={every}),
        start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=2,
        is_paused_upon_creation=False,
    ) as dag:
        for t in range({tasks}):
            PythonOperator(task_id=f"record_{{t}}", python_callable=record)
    globals()[dag.dag_id] = dag
"""


@dataclass
class Site:
    """One Airflow installation (its home, database and services) for two nodes."""

    version: str
    venv: Path
    backend: str  # postgresql | mariadb
    root: Path
    db_name: str
    api_port: int = 0
    services: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def records(self) -> Path:
        return self.root / "records.txt"

    @property
    def url(self) -> str:
        if self.backend == "postgresql":
            return f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.db_name}"
        return f"mysql+pymysql://root@127.0.0.1:3306/{self.db_name}"

    @property
    def airflow(self) -> Path:
        return self.venv / "bin" / "airflow"

    @property
    def scheduler_command(self) -> str:
        return f"{self.airflow} scheduler --skip-serve-logs"

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def airflow_env(self) -> dict[str, str]:
        env = {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.url,
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PARALLELISM": "3",
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.home / "dags"),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "30",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "PATH": f"{self.venv / 'bin'}:{os.environ['PATH']}",
        }
        if self.major >= 3:
            env |= {
                "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{self.api_port}",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": (
                    f"http://127.0.0.1:{self.api_port}/execution/"
                ),
                "AIRFLOW__API_AUTH__JWT_SECRET": "sentinel-db-fence-test-" + "0" * 64,
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            }
        else:
            env["AIRFLOW__SCHEDULER__DAG_DIR_LIST_INTERVAL"] = "5"
        return env

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.update(self.airflow_env(), AIRFLOW_HOME=str(self.home))
        return env

    def engine(self) -> sa.Engine:
        return sa.create_engine(self.url, poolclass=NullPool)

    # -- what happened ---------------------------------------------------------------------
    def executions(self) -> Counter[tuple[str, ...]]:
        """How often each (dag, run, task, try) ran."""
        if not self.records.exists():
            return Counter()
        return Counter(tuple(line.split()) for line in self.records.read_text().splitlines())


@contextlib.contextmanager
def fresh_database(backend: str) -> Iterator[str]:
    name = f"sentinel_dbf_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(
        PG_ADMIN if backend == "postgresql" else MY_ADMIN,
        isolation_level="AUTOCOMMIT",
        poolclass=NullPool,
    )
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        with admin.connect() as conn:
            if backend == "postgresql":
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            else:
                for (pid,) in conn.exec_driver_sql(
                    f"SELECT id FROM information_schema.PROCESSLIST WHERE db = '{name}'"
                ).all():
                    with contextlib.suppress(sa.exc.DBAPIError):
                        conn.exec_driver_sql(f"KILL {int(pid)}")
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        admin.dispose()


@contextlib.contextmanager
def airflow_site(
    root: Path, version: str, venv: Path, backend: str, dags: int = 3, tasks: int = 2
) -> Iterator[Site]:
    """A migrated installation with busy DAGs, and (Airflow 3) its api-server and
    dag-processor running; all stopped and the database dropped at the end."""
    with fresh_database(backend) as name:
        site = Site(version, venv, backend, root, name, api_port=free_port("127.0.0.1"))
        (site.home / "dags").mkdir(parents=True)
        (site.home / "dags" / "busy.py").write_text(
            DAGS.format(records=str(site.records), dags=dags, tasks=tasks, every=10)
        )
        subprocess.run(
            [str(site.airflow), "db", "migrate"],
            env=site.env(),
            check=True,
            capture_output=True,
            timeout=600,
        )
        try:
            if site.major >= 3:
                for name_, args in (
                    ("api-server", ["api-server", "--workers", "1", "-p", str(site.api_port)]),
                    ("dag-processor", ["dag-processor"]),
                ):
                    with (root / f"{name_}.log").open("ab") as out:
                        site.services.append(
                            subprocess.Popen(
                                [str(site.airflow), *args],
                                env=site.env(),
                                stdin=subprocess.DEVNULL,
                                stdout=out,
                                stderr=subprocess.STDOUT,
                                start_new_session=True,
                            )
                        )
            yield site
        finally:
            for service in site.services:
                kill_tree(service.pid)
                service.wait()


def kill_tree(pid: int) -> None:
    try:
        leader = psutil.Process(pid)
        procs = [leader, *leader.children(recursive=True)]
    except psutil.Error:
        return
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=10)


# -- nodes in freezer cgroups ------------------------------------------------------------------
class NodeGroup:
    """The processes of one node: its controller and every descendant. A freezer cgroup
    when the host has a usable one; otherwise the controller's process tree, stopped with
    SIGSTOP in one sweep."""

    def __init__(self, label: str) -> None:
        self.path = FREEZER / f"sentinel-test-{label}-{uuid.uuid4().hex[:8]}"
        self.usable = False
        self.leader: int | None = None
        self._stopped: list[psutil.Process] = []
        with contextlib.suppress(OSError):
            self.path.mkdir()
            (self.path / "freezer.state").write_text("THAWED")
            self.usable = True

    def enter(self) -> None:
        """In the child, before exec: every process it starts is in the group."""
        if self.usable:
            (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def pids(self) -> list[int]:
        if self.usable:
            text = (self.path / "cgroup.procs").read_text()
            return [int(p) for p in text.split()]
        if self.leader is None:
            return []
        try:
            leader = psutil.Process(self.leader)
            return [leader.pid, *(p.pid for p in leader.children(recursive=True))]
        except psutil.Error:
            return []

    def adopt(self, pids: list[int]) -> None:
        """Move these processes into this group (they take its state: thawed here)."""
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, OSError):
                (self.path / "cgroup.procs").write_text(str(pid))
        if not self.usable:
            for pid in pids:
                with contextlib.suppress(psutil.Error):
                    psutil.Process(pid).resume()

    def scheduler_trees(self) -> list[int]:
        """The pids of every process below this node's guards (schedulers and children)."""
        found = []
        for pid in self.pids():
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if is_guard(proc.cmdline()):
                    found += [c.pid for c in proc.children(recursive=True)]
        return found

    def state(self) -> str:
        return (self.path / "freezer.state").read_text().strip() if self.usable else "?"

    def freeze(self) -> None:
        if self.usable:
            (self.path / "freezer.state").write_text("FROZEN")
            wait_until(lambda: self.state() == "FROZEN", 30, "the freezer to freeze", 0.01)
            return
        self._stopped = [psutil.Process(p) for p in self.pids()]
        for proc in self._stopped:
            with contextlib.suppress(psutil.Error):
                proc.suspend()

    def thaw(self) -> None:
        if self.usable:
            (self.path / "freezer.state").write_text("THAWED")
            wait_until(lambda: self.state() == "THAWED", 30, "the freezer to thaw", 0.01)
            return
        for proc in self._stopped:
            with contextlib.suppress(psutil.Error):
                proc.resume()

    def kill_all(self, timeout: float = 30) -> None:
        """SIGKILL every process of the node (thawed first: a frozen one cannot die)."""
        with contextlib.suppress(OSError):
            self.thaw()
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)

    def remove(self) -> None:
        self.kill_all()
        if self.usable:
            wait_until(lambda: not self.pids(), 30, "the cgroup to empty", 0.1)
            with contextlib.suppress(OSError):
                self.path.rmdir()

    def schedulers(self) -> list[psutil.Process]:
        """The live schedulers of this node: the children of its guards."""
        found = []
        for pid in self.pids():
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if is_guard(proc.cmdline()):
                    found += [c for c in proc.children() if c.status() != psutil.STATUS_ZOMBIE]
        return found


def start_node(
    cluster: Cluster, node: str, site: Site, group: NodeGroup, **settings: str
) -> subprocess.Popen[bytes]:
    """A controller of ``node`` inside its group, its scheduler's output in a file of its
    own (root/NODE-scheduler.log)."""
    env = cluster.env(node, site.scheduler_command)
    env["AIRFLOW__SENTINEL__SCHEDULER_LOG"] = str(scheduler_log(cluster, node))
    for key, value in settings.items():
        env[f"AIRFLOW__SENTINEL__{key.upper()}"] = value
    with (cluster.root / f"{node}.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "airflow_sentinel", "start", "--node-id", node],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=group.enter if group.usable else None,  # noqa: PLW1509
        )
    group.leader = process.pid
    cluster.processes[node] = process
    return process


def scheduler_log(cluster: Cluster, node: str) -> Path:
    return cluster.root / f"{node}-scheduler.log"


# -- Airflow's database ------------------------------------------------------------------------
@dataclass(frozen=True)
class SchedulerJob:
    id: int
    start_date: datetime
    latest_heartbeat: datetime | None
    state: str | None

    @property
    def beat(self) -> bool:
        """It has heartbeat at least once after it started."""
        if self.latest_heartbeat is None:
            return False
        return (self.latest_heartbeat - self.start_date).total_seconds() >= 1.0


def scheduler_jobs(engine: sa.Engine) -> list[SchedulerJob]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT id, start_date, latest_heartbeat, state FROM job "
                "WHERE job_type = 'SchedulerJob' ORDER BY id"
            )
        ).all()
    return [SchedulerJob(int(r[0]), r[1], r[2], r[3]) for r in rows]


def fence_epoch(engine: sa.Engine) -> int | None:
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT epoch FROM sentinel_fence WHERE service = 'scheduler'")
        ).first()
    return None if row is None else int(row[0])


def attributed_to(engine: sa.Engine, job_id: int) -> dict[str, set[tuple[object, ...]]]:
    """The rows that name ``job_id`` as the scheduler that created or queued them."""
    with engine.connect() as conn:
        runs = conn.execute(
            sa.text("SELECT id FROM dag_run WHERE creating_job_id = :j"), {"j": job_id}
        ).all()
        tis = conn.execute(
            sa.text(
                "SELECT dag_id, run_id, task_id, map_index, queued_dttm FROM task_instance "
                "WHERE queued_by_job_id = :j"
            ),
            {"j": job_id},
        ).all()
    return {"dag_run": {tuple(r) for r in runs}, "task_instance": {tuple(r) for r in tis}}
