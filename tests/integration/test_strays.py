"""Whose scheduler is it: real Airflow 2.10.5 and 3.3.2 schedulers, and other users, on one host.

Airflow's setproctitle erases a scheduler's environment (2.10's own within seconds; every
worker's), so none of this may depend on it: the guard's command line names our runs, and
the installation a scheduler serves is established from what survives.
"""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa

from airflow_sentinel.airflow_env import ensure_airflow_venv
from airflow_sentinel.clock import boottime
from airflow_sentinel.controller.health import this_host_names
from airflow_sentinel.metastore.base import EventRecord
from airflow_sentinel.process.guard import RunOwner
from tests.support.cluster import FAKE_SCHEDULER, Cluster, running_cluster, wait_until
from tests.support.instances import dead
from tests.support.privileges import SYSTEM_PYTHON, drop_capabilities, system_user
from tests.support.real_airflow import (
    Installation,
    guarded_schedulers,
    longest_sqlite_heartbeat_run,
    postgres_database,
    sqlite_installation,
    stop_by_hand,
)

pytestmark = [pytest.mark.slow]

# 2 * renew_interval + stop_timeout + fence margin <= lease_ttl; a real scheduler needs ~3 s
# to exit after SIGTERM.
REAL_AIRFLOW = {
    "lease_ttl": "10",
    "renew_interval": "2",
    "stop_timeout": "4",
    "start_timeout": "90",
    "health_check": "process",
}


@pytest.fixture(scope="module", params=["2.10.5", "3.3.2"])
def airflow(request: pytest.FixtureRequest) -> tuple[str, Path]:
    version = str(request.param)
    return version, ensure_airflow_venv(version)


@contextmanager
def real_cluster(root: Path) -> Iterator[Cluster]:
    """Controllers of the installation at ``root/home``; at the end they stop their
    schedulers cleanly, and whatever a guard of that installation still runs is killed."""
    with running_cluster(root, "unused") as cluster:
        try:
            yield cluster
        finally:
            cluster.stop_all()
            for proc in guarded_schedulers(cluster.root / "home"):
                with suppress(psutil.Error):
                    proc.resume()
                    proc.kill()


def configure(cluster: Cluster, ours: Installation, **settings: str) -> None:
    cluster.metastore_url = f"sqlite:///{cluster.root / 'metastore.db'}"
    cluster.extra_env = ours.airflow_env()
    cluster.settings.update(REAL_AIRFLOW, **settings)


def events(cluster: Cluster, kind: str, naming: str = "") -> list[EventRecord]:
    return [e for e in cluster.store.events(1000) if e.kind == kind and naming in e.detail]


class MostSchedulers:
    """Samples how many guarded schedulers of an installation run; remembers the most."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.most = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> MostSchedulers:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._done.wait(0.1):
            self.most = max(self.most, len(guarded_schedulers(self.home)))


# -- (a) two installations on one host ----------------------------------------------------
def erased(process: subprocess.Popen[bytes]) -> bool:
    """Whether setproctitle has erased the process's environment (as /proc shows it)."""
    try:
        return psutil.Process(process.pid).environ() == {}
    except psutil.Error:
        return False


@pytest.mark.airflow
def test_a_foreign_installations_scheduler_lives_and_our_own_stray_dies(
    airflow: tuple[str, Path], tmp_path: Path
) -> None:
    version, venv = airflow
    theirs = sqlite_installation(version, venv, tmp_path / "staging" / "home")
    with real_cluster(tmp_path / "production") as cluster:
        ours = sqlite_installation(version, venv, cluster.root / "home")
        configure(cluster, ours)
        foreign = theirs.start_scheduler(tmp_path / "staging.log")
        stray = ours.start_scheduler(tmp_path / "by-hand.log")
        try:
            if version.startswith("2."):
                # From here on, nothing in their own /proc entries names an installation.
                wait_until(lambda: erased(foreign) and erased(stray), 60, "erased environments")
            cluster.start("a", command=ours.scheduler_command)
            wait_until(lambda: stray.poll() is not None, 120, "our stray to be stopped")
            [killed] = wait_until(
                lambda: events(cluster, "stray_killed", f"pid {stray.pid}:"), 30, "stray_killed"
            )
            [started] = wait_until(
                lambda: events(cluster, "scheduler_started"), 90, "our own scheduler"
            )
            [reported] = wait_until(
                lambda: events(cluster, "scheduler_foreign", f"pid {foreign.pid}:"),
                30,
                "the other installation's scheduler reported as foreign",
            )
            if version.startswith("2."):
                # The DAG processor manager keeps its log open in our log folder.
                assert "dag_processor_manager.log open" in killed.detail
                assert "installation not established" in reported.detail
            else:
                assert "its environment names this installation" in killed.detail
                assert f"AIRFLOW_HOME {theirs.home} " in reported.detail
            assert killed.id < started.id  # never beside a stray of ours
            assert foreign.poll() is None, "the other installation's scheduler was touched"
            assert len(events(cluster, "scheduler_foreign", f"pid {foreign.pid}:")) == 1
        finally:
            stop_by_hand(foreign)
            stop_by_hand(stray)


# -- (b) several controllers on one host ---------------------------------------------------
@pytest.mark.airflow
def test_controllers_sharing_a_host_never_kill_each_others_scheduler(
    airflow: tuple[str, Path], tmp_path: Path, metastore_url: str
) -> None:
    version, venv = airflow
    with real_cluster(tmp_path) as cluster:
        ours = sqlite_installation(version, venv, cluster.root / "home")
        configure(cluster, ours)
        cluster.metastore_url = metastore_url  # every metastore; Airflow's database is SQLite
        with MostSchedulers(ours.home) as sampler:
            cluster.start("a", command=ours.scheduler_command)
            wait_until(lambda: cluster.active() == "a", 60, "a to lead")
            cluster.start("b", command=ours.scheduler_command)
            cluster.start("c", command=ours.scheduler_command)
            wait_until(lambda: {"a", "b", "c"} <= set(cluster.nodes()), 60, "b and c registered")
            # The standbys look at a's scheduler every cycle, long after setproctitle has
            # erased what its own /proc said about it.
            wait_until(
                lambda: longest_sqlite_heartbeat_run(ours.home / "airflow.db") >= 20,
                120,
                "one scheduler that heartbeats for 20 s",
            )
            assert len(guarded_schedulers(ours.home)) == 1
        assert events(cluster, "stray_killed") == []
        assert len(events(cluster, "scheduler_started")) == 1
        assert sampler.most == 1


# -- stopping a stray never holds up the cycle ------------------------------------------------
DEAF_SCHEDULER = Path(__file__).resolve().parents[1] / "support" / "deaf_scheduler.py"


def test_the_controller_renews_while_a_stray_that_ignores_sigterm_waits_for_sigkill(
    tmp_path: Path,
) -> None:
    with running_cluster(tmp_path, f"sqlite:///{tmp_path / 'metastore.db'}") as cluster:
        # A long grace: the stray outlives several renewals before its SIGKILL.
        cluster.settings.update(lease_ttl="20", renew_interval="2", stop_timeout="10")
        command = f"{sys.executable} {DEAF_SCHEDULER} --name {tmp_path}"
        cluster.start("a", command=command)
        wait_until(lambda: events(cluster, "scheduler_started"), 30, "a's scheduler")
        stray = subprocess.Popen(
            [*shlex.split(command), "--deaf"],
            env=cluster.env("by-hand", command),
            start_new_session=True,
        )
        try:
            wait_until(lambda: events(cluster, "stray_killed", f"pid {stray.pid}:"), 30, "SIGTERM")
            lease = cluster.lease()
            assert lease is not None
            renewed_twice = lease.version + 2

            def renewed_while_the_stray_lives() -> bool:
                now = cluster.lease()
                return now is not None and now.version >= renewed_twice and stray.poll() is None

            wait_until(renewed_while_the_stray_lives, 8, "two renewals within its grace")
            assert stray.wait(timeout=30) == -9  # SIGKILL, once stop_timeout has passed
            assert events(cluster, "demoted") == []
            assert len(events(cluster, "scheduler_started")) == 1
        finally:
            stray.kill()
            stray.wait()


# -- (c) another user's stray, and a controller that may not signal it --------------------
def stand_in_command(cluster: Cluster) -> str:
    # An interpreter the other user may run; the stand-in needs nothing but the stdlib.
    return " ".join(
        [
            SYSTEM_PYTHON,
            str(FAKE_SCHEDULER),
            "--lock",
            str(cluster.lock),
            "--log",
            str(cluster.probe_log),
            "--child",
        ]
    )


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """A cluster folder another user can reach (pytest's own is private to root)."""
    with tempfile.TemporaryDirectory(prefix="sentinel-users-", dir="/tmp") as root:
        Path(root).chmod(0o755)
        yield Path(root)


def start_without_privileges(cluster: Cluster, node_id: str, command: str) -> None:
    log = (cluster.root / f"{node_id}.log").open("ab")
    cluster.processes[node_id] = subprocess.Popen(
        [sys.executable, "-m", "airflow_sentinel", "start", "--node-id", node_id],
        env=cluster.env(node_id, command),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=drop_capabilities,  # noqa: PLW1509 - before exec, in the child only
    )


def guard_as(
    user: str, owner: RunOwner, command: list[str], env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], int]:
    """A real guard run by ``user`` (as a controller of an earlier day would have left it);
    the pid of the scheduler it started."""
    checkout = Path(__file__).resolve().parents[2]
    site = next((checkout / ".venv" / "lib").glob("python3*/site-packages"))
    guard = subprocess.Popen(
        [
            SYSTEM_PYTHON,
            "-m",
            "airflow_sentinel.process.guard",
            *owner.arguments(),
            "--deadline",
            f"{boottime() + 3600:.6f}",
            "--grace",
            "1",
            "--",
            *command,
        ],
        env={**env, "PYTHONPATH": f"{checkout / 'src'}:{site}"},
        user=user,
        group=user,
        stdin=subprocess.PIPE,  # held open: the guard stops its run when this closes
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert guard.stdout is not None
    verb, _, pid = guard.stdout.readline().decode().strip().partition(" ")
    assert verb == "started", verb
    return guard, int(pid)


def test_another_users_strays_are_reported_once_by_a_controller_that_may_not_signal_them(
    shared_root: Path,
) -> None:
    with system_user() as other, running_cluster(shared_root, "unused") as cluster:
        cluster.metastore_url = f"sqlite:///{cluster.root / 'metastore.db'}"
        cluster.probe_log.touch(mode=0o666)
        cluster.probe_log.chmod(0o666)
        command = stand_in_command(cluster)
        by_hand_env = cluster.env("by-hand", command)
        # Unguarded, of our installation: its /proc tells nothing to the controller.
        stray = subprocess.Popen(
            [*shlex.split(command), "--stray"],
            env=by_hand_env,
            user=other,
            group=other,
            start_new_session=True,
        )
        # Under a guard of node a for our installation, left by an earlier controller:
        # ours, on the guard's word, and not ours to signal.
        home = str(cluster.root / "home")
        earlier = RunOwner("a", dead("a").token, home, f"{home}/airflow.cfg")
        guard, guarded = guard_as(other, earlier, [*shlex.split(command), "--stray"], by_hand_env)
        try:
            start_without_privileges(cluster, "a", command)
            wait_until(lambda: events(cluster, "stray_found", f"pid {guarded}:"), 60, "stray_found")
            wait_until(
                lambda: events(cluster, "scheduler_foreign", f"pid {stray.pid}:"),
                30,
                "scheduler_foreign",
            )
            [found] = events(cluster, "stray_found", f"pid {guarded}:")
            assert "not allowed to signal" in found.detail
            assert events(cluster, "scheduler_started") == []  # not beside a stray of ours
            assert cluster.processes["a"].poll() is None

            guard.kill()  # the earlier run ends; the scheduler dies with its guard
            wait_until(lambda: cluster.running_on() == ["a"], 30, "our own scheduler")
            assert stray.poll() is None  # never signalled
            assert len(events(cluster, "scheduler_foreign", f"pid {stray.pid}:")) == 1
            assert len(events(cluster, "stray_found", f"pid {guarded}:")) == 1
            log = (cluster.root / "a.log").read_text()
            assert "Traceback" not in log and "PermissionError" not in log
        finally:
            guard.kill()  # its scheduler dies with it (PDEATHSIG)
            guard.wait()
            stray.kill()
            stray.wait()


# -- (d) the heartbeat of our own scheduler ---------------------------------------------------
def insert_job_row(db: sa.Engine, hostname: str, started: datetime, beat: datetime) -> None:
    with db.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO job (job_type, state, hostname, unixname, start_date, "
                "latest_heartbeat) VALUES ('SchedulerJob', 'running', :host, 'root', :s, :b)"
            ),
            {"host": hostname, "s": started, "b": beat},
        )


def scheduler_rows_of_this_host(db: sa.Engine, since: datetime) -> int:
    with db.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM job WHERE job_type = 'SchedulerJob' AND start_date >= "
                    ":since AND hostname IN :names AND latest_heartbeat > start_date"
                ).bindparams(sa.bindparam("names", expanding=True)),
                {"since": since, "names": sorted(this_host_names())},
            ).scalar_one()
        )


@pytest.mark.airflow
def test_a_hung_scheduler_is_restarted_while_other_schedulers_heartbeat_in_its_database(
    tmp_path: Path,
) -> None:
    # 2.10 with the PostgreSQL driver; two schedulers on one PostgreSQL database is
    # Airflow's own HA mode, so the foreign one runs as it would in production.
    venv = ensure_airflow_venv("2.10.5", extras=("apache-airflow-providers-postgres", "pymysql"))
    with postgres_database() as name, real_cluster(tmp_path / "ours") as cluster:
        url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
        ours = Installation("2.10.5", venv, cluster.root / "home", url)
        ours.migrate()
        theirs = Installation("2.10.5", venv, tmp_path / "theirs" / "home", url)
        theirs.home.mkdir(parents=True)
        configure(cluster, ours, health_check="heartbeat", heartbeat_grace="10")
        db = sa.create_engine(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
        foreign: subprocess.Popen[bytes] | None = None
        try:
            began = datetime.now(timezone.utc)
            cluster.start("a", command=ours.scheduler_command)
            [scheduler] = wait_until(lambda: guarded_schedulers(ours.home), 90, "our scheduler")
            healthy = f"scheduler pid {scheduler.pid} healthy"
            wait_until(
                lambda: healthy in (cluster.root / "a.log").read_text(), 120, "its first heartbeat"
            )
            # Rows that must not count: a scheduler on another host, started after ours,
            # and a leftover of this host; both with heartbeats that stay fresh.
            now = datetime.now(timezone.utc)
            insert_job_row(db, "scheduler-2.elsewhere.example", now, now + timedelta(days=1))
            insert_job_row(
                db, socket.gethostname(), now - timedelta(hours=1), now + timedelta(days=1)
            )
            # And a real foreign scheduler of this host, on the same database.
            foreign = theirs.start_scheduler(tmp_path / "theirs.log")
            wait_until(
                lambda: scheduler_rows_of_this_host(db, began) >= 2, 120, "the foreign heartbeat"
            )

            scheduler.suspend()  # SIGSTOP: alive, and hung
            [restarted] = wait_until(
                lambda: events(cluster, "scheduler_restarted"), 120, "our hung scheduler restarted"
            )
            assert "heartbeat older than 10s" in restarted.detail
            wait_until(lambda: not scheduler.is_running(), 30, "the hung scheduler killed")
            assert foreign.poll() is None  # another installation's: never touched
        finally:
            if foreign is not None:
                stop_by_hand(foreign)
            db.dispose()
