"""Real Airflow installations side by side on one host, and real schedulers started by hand.

Each installation has an AIRFLOW_HOME and a database of its own (or shares one, when a
test asks for that). Airflow 2.10 refuses LocalExecutor on SQLite, so there it runs the
SequentialExecutor; everywhere else LocalExecutor, whose workers are the children whose
titles and environments setproctitle rewrites.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import psutil
import sqlalchemy as sa

from airflow_sentinel.process.guard import is_guard, owner_of

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True)
class Installation:
    version: str
    venv: Path
    home: Path
    database: str  # Airflow's sql_alchemy_conn

    @property
    def airflow(self) -> Path:
        return self.venv / "bin" / "airflow"

    @property
    def scheduler_command(self) -> str:
        return f"{self.airflow} scheduler --skip-serve-logs"

    @property
    def executor(self) -> str:
        on_sqlite = self.database.startswith("sqlite")
        major = int(self.version.split(".")[0])
        return "SequentialExecutor" if major < 3 and on_sqlite else "LocalExecutor"

    def airflow_env(self) -> dict[str, str]:
        """Airflow's settings for this installation, as the controllers pass them on."""
        return {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.database,
            "AIRFLOW__CORE__EXECUTOR": self.executor,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PARALLELISM": "2",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "PATH": f"{self.venv / 'bin'}:{os.environ['PATH']}",
        }

    def env(self) -> dict[str, str]:
        """The whole environment of an `airflow` command of this installation."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.update(self.airflow_env(), AIRFLOW_HOME=str(self.home))
        return env

    def migrate(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [str(self.airflow), "db", "migrate"],
            env=self.env(),
            check=True,
            capture_output=True,
            timeout=300,
        )

    def start_scheduler(self, log: Path) -> subprocess.Popen[bytes]:
        """A scheduler started by hand (no controller, no guard), in a session of its own."""
        with log.open("ab") as out:
            return subprocess.Popen(
                self.scheduler_command.split(),
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )


def sqlite_installation(version: str, venv: Path, home: Path) -> Installation:
    found = Installation(version, venv, home, f"sqlite:///{home / 'airflow.db'}")
    found.migrate()
    return found


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database; its name (dropped afterwards)."""
    name = f"sentinel_af_{os.urandom(5).hex()}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    try:
        yield name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def stop_by_hand(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a scheduler started by hand and everything of its session."""
    try:
        members = [psutil.Process(process.pid), *psutil.Process(process.pid).children(True)]
    except psutil.Error:
        members = []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    for member in members:
        with contextlib.suppress(psutil.Error):
            member.kill()
    process.wait()


def guarded_schedulers(home: Path) -> list[psutil.Process]:
    """Live processes whose parent is a guard serving ``home``: the schedulers that
    controllers of that installation run (whatever their titles became)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        owner = owner_of(cmdline) if is_guard(cmdline) else None
        if owner is None or Path(owner.airflow_home) != home:
            continue
        with contextlib.suppress(psutil.Error):
            found += [c for c in proc.children() if c.status() != psutil.STATUS_ZOMBIE]
    return found


def longest_sqlite_heartbeat_run(database: Path) -> float:
    """Seconds between start and latest heartbeat of the longest-lived scheduler job."""
    with closing(sqlite3.connect(database, timeout=10)) as conn:
        rows = conn.execute(
            "select start_date, latest_heartbeat from job where job_type = 'SchedulerJob'"
        ).fetchall()
    return max((_utc(beat) - _utc(start) for start, beat in rows if start and beat), default=0.0)


def _utc(value: str) -> float:
    return datetime.fromisoformat(value).replace(tzinfo=timezone.utc).timestamp()
