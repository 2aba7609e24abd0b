"""Proof that work runs after an upgrade: a one-task DAG of ours, parsed by the target's own
DAG processor, scheduled by the new scheduler and run by the configured executor, then
removed with every row it made. A heartbeat says the scheduler lives; only a task that
succeeds says the executor, its workers and (on Airflow 3) the execution API work too.

The file goes into the DAGs folder before the services start, so the first parse finds it:
a processor discovers new files only every few minutes. It is never one of the operator's
DAGs, and it is scheduled `@once` and unpaused by its own definition, so nothing else of
the installation is touched.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from airflow_sentinel.controller.health import as_epoch
from airflow_sentinel.metastore.sql import create_sql_engine
from airflow_sentinel.metastore.urls import normalize_metastore_url
from airflow_sentinel.upgrade.installation import QUIET_BOOTSTRAP, AirflowEnv

DAG_ID = "airflow_sentinel_canary"
FILE_NAME = f"{DAG_ID}.py"
TASK_ID = "canary"
RETRIES = 2
SOURCE = f'''"""Placed by airflow-sentinel to verify an upgrade; it removes this file and the
DAG's rows when the check is over. Safe to delete."""
from datetime import timedelta

import pendulum

try:
    from airflow.sdk import DAG, task
except ImportError:  # Airflow 2
    from airflow import DAG
    from airflow.decorators import task

with DAG(
    "{DAG_ID}",
    schedule="@once",
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    is_paused_upon_creation=False,
    tags=["airflow-sentinel"],
):

    # Retried: the first task after a start can meet an api-server still warming up.
    @task(task_id="{TASK_ID}", retries={RETRIES}, retry_delay=timedelta(seconds=5))
    def canary() -> None:
        print("airflow-sentinel canary ran")

    canary()
'''
FINISHED_BAD = ("failed", "upstream_failed", "skipped", "removed")


def place(dags_folder: Path) -> Path:
    """Write the canary DAG atomically, readable by the services' user as the folder is."""
    path = dags_folder / FILE_NAME
    partial = dags_folder / f".{FILE_NAME}.partial"
    partial.write_text(SOURCE)
    partial.chmod(0o644)
    owner = dags_folder.stat()
    if os.geteuid() == 0:
        os.chown(partial, owner.st_uid, owner.st_gid)
    partial.replace(path)
    return path


def remove_file(dags_folder: Path) -> bool:
    path = dags_folder / FILE_NAME
    (dags_folder / f".{FILE_NAME}.partial").unlink(missing_ok=True)
    if not path.exists():
        return False
    path.unlink()
    for cached in (dags_folder / "__pycache__").glob(f"{DAG_ID}.*.pyc"):
        cached.unlink(missing_ok=True)
    return True


@dataclass(frozen=True)
class Progress:
    parsed: bool  # the DAG is in the `dag` table: a processor parsed our file
    run_state: str | None  # of its one DAG run, None before the scheduler creates it
    task_state: str | None
    tries: int = 0

    def stage(self) -> str:
        if not self.parsed:
            return "not parsed"
        if self.run_state is None:
            return "parsed; the scheduler created no run"
        return f"run {self.run_state}, task {self.task_state or 'not scheduled'}"


def verdict(progress: Progress) -> bool | None:
    """True: it succeeded; False: it failed; None: not finished yet."""
    if progress.run_state == "success" and progress.task_state == "success":
        return True
    if progress.run_state == "failed" or progress.task_state in FINISHED_BAD:
        return False
    return None


DAG = sa.table("dag", sa.column("dag_id"), sa.column("last_parsed_time"))
DAG_RUN = sa.table("dag_run", sa.column("dag_id"), sa.column("state"))
TASK = sa.table(
    "task_instance",
    sa.column("dag_id"),
    sa.column("task_id"),
    sa.column("state"),
    sa.column("try_number"),
)
LOG = sa.table("log", sa.column("dag_id"))


class Watch:
    """Reads the canary's progress, and the DAGs' parse times, from Airflow's database."""

    def __init__(self, airflow_db_url: str, op_timeout: float = 10.0) -> None:
        url = normalize_metastore_url(airflow_db_url)
        self._engine = create_sql_engine(url, op_timeout, airflow_tables=True)
        self._last = Progress(False, None, None)

    def progress(self) -> Progress:
        """The canary's progress; the last one read while the database does not answer
        (a blip must not fail the check, its deadline still runs)."""
        try:
            with self._engine.connect() as conn:
                self._last = self._read(conn)
        except SQLAlchemyError:
            pass
        return self._last

    @staticmethod
    def _read(conn: sa.Connection) -> Progress:
        parsed = conn.execute(sa.select(DAG.c.dag_id).where(DAG.c.dag_id == DAG_ID)).first()
        run = conn.execute(sa.select(DAG_RUN.c.state).where(DAG_RUN.c.dag_id == DAG_ID)).first()
        task = conn.execute(
            sa.select(TASK.c.state, TASK.c.try_number).where(
                TASK.c.dag_id == DAG_ID, TASK.c.task_id == TASK_ID
            )
        ).first()
        return Progress(
            parsed is not None,
            None if run is None else str(run[0]),
            None if task is None or task[0] is None else str(task[0]),
            0 if task is None or task[1] is None else int(task[1]),
        )

    def newest_parse(self) -> float | None:
        """When the operator's DAGs were last parsed (seconds since the epoch), None when
        unknown."""
        query = sa.select(sa.func.max(DAG.c.last_parsed_time)).where(DAG.c.dag_id != DAG_ID)
        try:
            with self._engine.connect() as conn:
                return as_epoch(conn.execute(query).scalar())
        except SQLAlchemyError:
            return None  # not answering now: the check's deadline runs on

    def present(self) -> bool:
        with self._engine.connect() as conn:
            found = conn.execute(sa.select(DAG.c.dag_id).where(DAG.c.dag_id == DAG_ID)).first()
        return found is not None

    def delete_log_rows(self) -> int:
        with self._engine.begin() as conn:
            return int(conn.execute(sa.delete(LOG).where(LOG.c.dag_id == DAG_ID)).rowcount or 0)

    def close(self) -> None:
        self._engine.dispose()


def follow(
    read: Callable[[], Progress],
    timeout: float,
    clock: Callable[[], float] = time.monotonic,
    pause: Callable[[float], Any] = time.sleep,
) -> tuple[bool, Progress, float]:
    """Poll until the canary finishes or ``timeout`` passes: (succeeded, last progress,
    seconds waited). A finished run ends the wait at once, either way."""
    started = clock()
    while True:
        progress = read()
        outcome = verdict(progress)
        waited = clock() - started
        if outcome is not None:
            return outcome, progress, waited
        if waited >= timeout:
            return False, progress, waited
        pause(0.5)


def failure(progress: Progress, timeout: float, executor: str, dags_folder: Path) -> str:
    """The one line that says where the canary got stuck, and what to look at."""
    if not progress.parsed:
        return (
            f"canary DAG {DAG_ID} was not parsed within {timeout:g}s: is a DAG processor "
            f"running (on Airflow 3: `airflow dag-processor`), and does it read {dags_folder}?"
        )
    if progress.run_state is None:
        return f"canary DAG {DAG_ID} was parsed but no run was created within {timeout:g}s"
    if verdict(progress) is False:
        return (
            f"canary task {DAG_ID}.{TASK_ID} ended {progress.task_state or progress.run_state} "
            f"on {executor} after {max(progress.tries, 1)} tries: see its log and the "
            "scheduler's"
        )
    return (
        f"canary task {DAG_ID}.{TASK_ID} still {progress.task_state or 'not queued'} after "
        f"{timeout:g}s on {executor}: does the executor have a worker"
        " (on Airflow 3, can it reach the api-server's execution API)?"
    )


def clean(
    env: AirflowEnv,
    home: Path,
    db_url: str,
    dags_folder: Path | None,
    logs: Path | None,
) -> list[str]:
    """Remove the file first (so no processor brings the DAG back), then its rows: every
    table's through Airflow's own `dags delete`, then the audit log's, which it keeps; then
    its task logs. A folder given as None is left alone."""
    done = []
    if dags_folder is not None and remove_file(dags_folder):
        done.append("file")
    watch = Watch(db_url)
    try:
        if watch.present():
            env.run(
                ["dags", "delete", "-y", DAG_ID],
                home,
                secret_url=db_url,
                bootstrap=QUIET_BOOTSTRAP,
            )
            done.append("DAG rows")
        if watch.delete_log_rows():
            done.append("log rows")
    finally:
        watch.close()
    task_logs = None if logs is None else logs / f"dag_id={DAG_ID}"
    if task_logs is not None and task_logs.is_dir():
        shutil.rmtree(task_logs, ignore_errors=True)
        done.append("task logs" if not task_logs.exists() else "task logs (in part)")
    return done


def writable_folder(dags_folder: Path) -> str | None:
    """Why the canary cannot be placed in ``dags_folder``, or None."""
    if not dags_folder.is_dir():
        return f"the DAGs folder {dags_folder} does not exist"
    if not os.access(dags_folder, os.W_OK | os.X_OK):
        return f"the DAGs folder {dags_folder} is not writable by this user"
    return None
