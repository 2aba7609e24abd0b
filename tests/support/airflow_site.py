"""A real Airflow installation to upgrade: AIRFLOW_HOME with custom configuration, DAGs,
a plugin, connections, variables, pools and finished DAG runs, on SQLite, PostgreSQL or
MariaDB, run by a real failover controller.

The site lives at a fixed path per backend (Airflow writes absolute paths into its config
and database), is built once per test session, and is restored from that template before
each test: a copy of the folder, and for the servers a database created from a template.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from airflow_sentinel.airflow_env import ensure_airflow_venv
from airflow_sentinel.fence import FenceState
from airflow_sentinel.upgrade.db_fence import open_airflow_fence

OLD_EXTRAS = ("apache-airflow-providers-postgres", "pymysql")
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
MY_ADMIN = "mysql+pymysql://root@127.0.0.1:3306/test"

DAG = """
import pendulum
try:
    from airflow.providers.standard.operators.empty import EmptyOperator
except ImportError:
    from airflow.operators.empty import EmptyOperator
from airflow import DAG

with DAG("sentinel_{name}", schedule=None, start_date=pendulum.datetime(2024, 1, 1),
         catchup=False, tags=["sentinel"]):
    EmptyOperator(task_id="one") >> EmptyOperator(task_id="two")
"""
XCOM_DAG = """
import pendulum
try:
    from airflow.providers.standard.operators.python import PythonOperator
except ImportError:
    from airflow.operators.python import PythonOperator
from airflow import DAG

with DAG("sentinel_xcom", schedule=None, start_date=pendulum.datetime(2024, 1, 1),
         catchup=False, tags=["sentinel"]):
    PythonOperator(task_id="push", python_callable=lambda: {"rows": 3}) >> PythonOperator(
        task_id="pull", python_callable=lambda ti: ti.xcom_pull(task_ids="push")["rows"]
    )
"""
# Finished work whose rows must survive a migration, keyed by columns every version has.
WORK_KEYS = {
    "dag_run": ("dag_id", "run_id", "state"),
    "task_instance": ("dag_id", "task_id", "run_id", "map_index", "state"),
    "xcom": ("dag_id", "task_id", "run_id", "key"),
    "rendered_task_instance_fields": ("dag_id", "task_id", "run_id"),
}
BROKEN = """
from airflow import DAG  # an import error from before the upgrade: it must stay the only one
import not_a_module_anywhere
"""
PLUGIN = """
from airflow.plugins_manager import AirflowPlugin


class SentinelTestPlugin(AirflowPlugin):
    name = "sentinel_test_plugin"
"""

# Options changed from the defaults; some moved or were removed in Airflow 3.
CUSTOM = {
    ("core", "load_examples"): "False",
    ("core", "parallelism"): "7",
    ("core", "max_active_tasks_per_dag"): "5",
    ("core", "dag_concurrency"): "9",  # its old name, set too: 2.10 reads the new one (5)
    ("core", "dags_are_paused_at_creation"): "False",
    ("webserver", "instance_name"): "Sentinel upgrade test",  # -> [api] instance_name
    # -> metrics_allow_list, which 2.10's own file sets too (empty) and 2.10 reads instead
    ("metrics", "statsd_allow_list"): "scheduler,executor",
    ("core", "check_slas"): "False",  # removed in 3
    ("scheduler", "scheduler_heartbeat_sec"): "2",
    ("logging", "logging_level"): "WARNING",
}
TEAM_SECTION = "\n[team]\n# not an Airflow option: kept as it is\nowner = data-platform\n"


CELERY_EXTRAS = (
    *OLD_EXTRAS,
    # 2.10.5's own constraints: unpinned, the resolver picks a provider whose tasks all fail
    "apache-airflow-providers-celery==3.10.0",
    "celery==5.4.0",
    "kombu==5.4.2",
)


@dataclass
class Site:
    backend: str
    base: Path
    old_version: str
    label: str = ""  # names the database when two sites share a server
    extras: tuple[str, ...] = OLD_EXTRAS
    options: tuple[tuple[str, str, str], ...] = ()  # (section, key, value) set on top

    @property
    def home(self) -> Path:
        return self.base / "home"

    @property
    def env_link(self) -> Path:
        return self.base / "env"

    @property
    def template(self) -> Path:
        return self.base / "template"

    @property
    def old_env(self) -> Path:
        return ensure_airflow_venv(self.old_version, extras=self.extras)

    @property
    def db_name(self) -> str:
        return f"sentinel_upgrade_{self.label or self.backend}"

    @property
    def db_url(self) -> str:
        if self.backend == "sqlite":
            return f"sqlite:///{self.home / 'airflow.db'}"
        if self.backend == "postgresql":
            return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{self.db_name}"
        return f"mysql+pymysql://root@127.0.0.1:3306/{self.db_name}"

    def environ(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env["AIRFLOW_HOME"] = str(self.home)
        env["PATH"] = f"{self.env_link / 'bin'}:{Path(sys.executable).parent}:{env['PATH']}"
        return env

    def airflow(self, *args: str, timeout: float = 600) -> str:
        done = subprocess.run(
            [str(self.env_link / "bin" / "airflow"), *args],
            env=self.environ(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, f"airflow {' '.join(args)}: {done.stderr[-2000:]}"
        return done.stdout

    def sentinel(
        self, *args: str, timeout: float = 1800, extra_env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(Path(sys.executable).parent / "airflow-sentinel"), *args],
            env={**self.environ(), **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    # -- building -------------------------------------------------------------------------
    def build_template(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)
        self.home.mkdir(parents=True)
        self.env_link.symlink_to(self.old_env)
        self._create_database(self.db_name)
        self.airflow("config", "list")  # writes the default airflow.cfg
        self._customise_config()
        (self.home / "dags").mkdir(exist_ok=True)
        for name in ("alpha", "beta", "gamma"):
            (self.home / "dags" / f"{name}.py").write_text(DAG.format(name=name))
        (self.home / "dags" / "xcom.py").write_text(XCOM_DAG)
        (self.home / "dags" / "broken.py").write_text(BROKEN)
        (self.home / "plugins").mkdir(exist_ok=True)
        (self.home / "plugins" / "sentinel_plugin.py").write_text(PLUGIN)
        self.airflow("db", "migrate")
        self.airflow(
            "connections",
            "add",
            "sentinel_pg",
            "--conn-uri",
            "postgres://user:s3cret@db.example:5432/warehouse",
        )
        self.airflow("variables", "set", "sentinel_var", '{"answer": 42}')
        self.airflow("pools", "set", "sentinel_pool", "3", "upgrade test pool")
        self.airflow("dags", "test", "sentinel_alpha", "2024-01-02")
        for day in ("2024-01-02", "2024-01-03"):
            self.airflow("dags", "test", "sentinel_xcom", day)
        self._snapshot()

    def _customise_config(self) -> None:
        cfg = self.home / "airflow.cfg"
        text = cfg.read_text()
        values = dict(CUSTOM)
        values[("database", "sql_alchemy_conn")] = self.db_url
        values[("core", "executor")] = (
            "SequentialExecutor" if self.backend == "sqlite" else "LocalExecutor"
        )
        for section, key, value in self.options:
            values[(section, key)] = value
        for (section, key), value in values.items():
            text = _set_option(text, section, key, value)
        sentinel = (
            "\n[sentinel]\n"
            # A bare program name, found through PATH as the default is: the schema gate
            # must see the installation the symlink points at before every start.
            "scheduler_command = airflow scheduler --skip-serve-logs\n"
            "lease_ttl = 12\nrenew_interval = 2\nstop_timeout = 5\nstart_timeout = 180\n"
            "health_check = heartbeat\nheartbeat_grace = 60\n"
        )
        cfg.write_text(text + TEAM_SECTION + sentinel)
        cfg.chmod(0o600)

    def _snapshot(self) -> None:
        shutil.copytree(self.home, self.template, symlinks=True)
        if self.backend != "sqlite":
            self._copy_database(self.db_name, f"{self.db_name}_template")

    def restore(self) -> None:
        """The site exactly as built: files, database, and the old environment in use."""
        shutil.rmtree(self.home, ignore_errors=True)
        shutil.copytree(self.template, self.home, symlinks=True)
        self.env_link.unlink(missing_ok=True)
        self.env_link.symlink_to(self.old_env)
        shutil.rmtree(self.base / "upgrades", ignore_errors=True)
        if self.backend != "sqlite":
            self._copy_database(f"{self.db_name}_template", self.db_name)

    # -- databases ----------------------------------------------------------------------
    def _admin(self) -> sa.Engine:
        url = PG_ADMIN if self.backend == "postgresql" else MY_ADMIN
        return sa.create_engine(url, isolation_level="AUTOCOMMIT")

    def _create_database(self, name: str) -> None:
        if self.backend == "sqlite":
            return
        engine = self._admin()
        with engine.connect() as conn:
            _terminate(conn, self.backend, name)
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
        engine.dispose()

    def _copy_database(self, source: str, target: str) -> None:
        if self.backend == "postgresql":
            engine = self._admin()
            with engine.connect() as conn:
                _terminate(conn, self.backend, source)
                _terminate(conn, self.backend, target)
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS {target}"))
                conn.execute(sa.text(f"CREATE DATABASE {target} TEMPLATE {source}"))
            engine.dispose()
            return
        self._create_database(target)
        dump = subprocess.run(
            ["mariadb-dump", "-h127.0.0.1", "-uroot", "--single-transaction", source],
            capture_output=True,
            check=True,
        )
        subprocess.run(["mariadb", "-h127.0.0.1", "-uroot", target], input=dump.stdout, check=True)

    def drop_databases(self) -> None:
        if self.backend == "sqlite":
            return
        engine = self._admin()
        with engine.connect() as conn:
            for name in (self.db_name, f"{self.db_name}_template"):
                _terminate(conn, self.backend, name)
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
        engine.dispose()

    def table_rows(self) -> dict[str, list[tuple[object, ...]]]:
        """Every row of every Airflow table (not ours), sorted: the database's contents."""
        url = self.db_url.replace("+psycopg2", "+psycopg")
        engine = sa.create_engine(url)
        found: dict[str, list[tuple[object, ...]]] = {}
        with engine.connect() as conn:
            for table in sorted(sa.inspect(conn).get_table_names()):
                if table.startswith("sentinel_"):
                    continue
                query = sa.select(sa.text("*")).select_from(sa.table(table))  # quoted name
                rows = conn.execute(query).fetchall()
                found[table] = sorted((tuple(r) for r in rows), key=repr)
        engine.dispose()
        return found

    def work(self) -> dict[str, list[tuple[str, ...]]]:
        """The finished work (runs, task instances, XComs, rendered fields), by key."""
        url = self.db_url.replace("+psycopg2", "+psycopg")
        engine = sa.create_engine(url)
        found: dict[str, list[tuple[str, ...]]] = {}
        with engine.connect() as conn:
            for table, columns in WORK_KEYS.items():
                query = sa.text(f"SELECT {', '.join(columns)} FROM {table}")  # our names
                found[table] = sorted((tuple(map(str, r)) for r in conn.execute(query)), key=repr)
        engine.dispose()
        return found

    def revision(self) -> str:
        url = self.db_url.replace("+psycopg2", "+psycopg")
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            value = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        engine.dispose()
        return str(value)

    # -- controller -----------------------------------------------------------------------
    @contextlib.contextmanager
    def controller(self) -> Iterator[subprocess.Popen[bytes]]:
        log = (self.base / "controller.log").open("ab")
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "airflow-sentinel"), "start", "--node-id", "node-a"],
            env=self.environ(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()
            # Shown by pytest only when the test fails: what the controller saw and did.
            tail = (self.base / "controller.log").read_text(errors="replace")[-6000:]
            sys.stderr.write(f"===== controller.log (end)\n{tail}\n")

    def leave_a_dangling_permission(self) -> None:
        """What Flask-AppBuilder's permission race leaves: a row without its action, held
        by a role (two DAG-parsing processes creating the same action at once)."""
        url = self.db_url.replace("+psycopg2", "+psycopg")
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO ab_view_menu (name) VALUES ('DAG:sentinel_race')"))
            menu = conn.execute(
                sa.text("SELECT id FROM ab_view_menu WHERE name = 'DAG:sentinel_race'")
            ).scalar()
            conn.execute(
                sa.text(
                    "INSERT INTO ab_permission_view (permission_id, view_menu_id) VALUES (NULL, :m)"
                ),
                {"m": menu},
            )
            view = conn.execute(
                sa.text("SELECT id FROM ab_permission_view WHERE view_menu_id = :m"), {"m": menu}
            ).scalar()
            conn.execute(sa.text("INSERT INTO ab_role (name) VALUES ('SentinelRace')"))
            role = conn.execute(
                sa.text("SELECT id FROM ab_role WHERE name = 'SentinelRace'")
            ).scalar()
            conn.execute(
                sa.text(
                    "INSERT INTO ab_permission_view_role (permission_view_id, role_id) "
                    "VALUES (:v, :r)"
                ),
                {"v": view, "r": role},
            )
        engine.dispose()

    # -- the fence in Airflow's database ------------------------------------------------
    def install_fence(self) -> FenceState | None:
        """The fence installed (as a controller's start does), or None where there is none."""
        fence = open_airflow_fence("auto", self.db_url, wait=5)
        if fence is None:
            return None
        try:
            return fence.install()
        finally:
            fence.close()

    def fence_state(self) -> FenceState | None:
        fence = open_airflow_fence("auto", self.db_url, wait=5)
        if fence is None:
            return None
        try:
            return fence.state()
        finally:
            fence.close()

    def newest_scheduler_heartbeat(self) -> str | None:
        url = self.db_url.replace("+psycopg2", "+psycopg")
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            value = conn.execute(
                sa.text("SELECT MAX(latest_heartbeat) FROM job WHERE job_type = 'SchedulerJob'")
            ).scalar()
        engine.dispose()
        return None if value is None else str(value)


def _terminate(conn: sa.Connection, backend: str, name: str) -> None:
    if backend == "postgresql":
        conn.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n "
                "AND pid <> pg_backend_pid()"
            ),
            {"n": name},
        )


def _set_option(text: str, section: str, key: str, value: str) -> str:
    """Set ``key`` in ``[section]`` of an airflow.cfg text, keeping everything else."""
    pattern = re.compile(
        rf"(^\[{re.escape(section)}\]\n(?:(?!^\[).*\n)*?)^{re.escape(key)} = .*$", re.MULTILINE
    )
    if pattern.search(text):
        return pattern.sub(lambda m: f"{m.group(1)}{key} = {value}", text, count=1)
    header = re.compile(rf"^\[{re.escape(section)}\]\n", re.MULTILINE)
    if header.search(text):
        return header.sub(lambda m: f"{m.group(0)}{key} = {value}\n", text, count=1)
    return text + f"\n[{section}]\n{key} = {value}\n"
