"""A database of its own per test, with the Airflow tables the fence guards (the columns
the tests write; real Airflow schemas are tested with real Airflow), and connections that
carry an epoch the way a scheduler's do."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from airflow_sentinel.fence import dialect_for
from tests.support.backends import MYSQL_URL, POSTGRES_URL

FENCE_BACKENDS = ("postgresql", "mariadb")
# The fenced tables and the column a test changes in each.
FENCED = {"dag_run": "state", "task_instance": "state", "job": "latest_heartbeat"}
TABLES = (
    "CREATE TABLE dag_run (id INTEGER PRIMARY KEY, dag_id VARCHAR(250), state VARCHAR(20))",
    "CREATE TABLE task_instance (id INTEGER PRIMARY KEY, task_id VARCHAR(250), state VARCHAR(20))",
    "CREATE TABLE job (id INTEGER PRIMARY KEY, job_type VARCHAR(30), latest_heartbeat VARCHAR(40))",
)


@contextmanager
def airflow_like_database(backend: str) -> Iterator[str]:
    """The URL of a new database holding the fenced tables; dropped afterwards."""
    name = f"sentinel_f_{uuid.uuid4().hex[:10]}"
    admin_url = POSTGRES_URL if backend == "postgresql" else MYSQL_URL
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    url = sa.make_url(admin_url).set(database=name).render_as_string(False)
    try:
        engine = sa.create_engine(url, poolclass=NullPool)
        with engine.begin() as conn:
            for statement in TABLES:
                conn.exec_driver_sql(statement)
        engine.dispose()
        yield url
    finally:
        with admin.connect() as conn:
            if backend == "postgresql":
                conn.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                )
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
            else:
                # A connection left in a transaction would hold DROP DATABASE up.
                ids = conn.exec_driver_sql(
                    "SELECT ID FROM information_schema.PROCESSLIST "
                    f"WHERE DB = '{name}' AND ID <> CONNECTION_ID()"
                ).scalars()
                for connection_id in list(ids):
                    with contextlib.suppress(sa.exc.DBAPIError):
                        conn.exec_driver_sql(f"KILL CONNECTION {int(connection_id)}")
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        admin.dispose()


def scheduler_engine(url: str, epoch: int | None) -> sa.Engine:
    """An engine whose connections carry ``epoch`` exactly as the controller gives it to a
    scheduler (PGOPTIONS for libpq, the URL's init_command for MySQL); None: no epoch."""
    if epoch is None:
        return sa.create_engine(url, poolclass=NullPool)
    dialect = dialect_for(url)
    assert dialect is not None
    env = dialect.scheduler_env(epoch, url, {})
    if "PGOPTIONS" in env:
        return sa.create_engine(url, poolclass=NullPool, connect_args={"options": env["PGOPTIONS"]})
    return sa.create_engine(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], poolclass=NullPool)


def backend_of(url: str) -> str:
    return "postgresql" if url.startswith("postgresql") else "mariadb"


def read_tables(url: str) -> dict[str, list[tuple[object, ...]]]:
    """Every row of the fenced tables, read by a connection without an epoch."""
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return {
                table: [
                    tuple(r) for r in conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY id")
                ]
                for table in FENCED
            }
    finally:
        engine.dispose()


def seed(url: str) -> None:
    """Two rows in each fenced table (ids 1 and 2), written without an epoch."""
    engine = sa.create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        for table in FENCED:
            for row_id in (1, 2):
                conn.exec_driver_sql(f"INSERT INTO {table} VALUES ({row_id}, 'r{row_id}', 'x')")
    engine.dispose()


def error_text(exc: BaseException) -> str:
    """The server's message for a failed statement: the first line, without driver codes."""
    orig = getattr(exc, "orig", None) or exc
    args: tuple[object, ...] = tuple(getattr(orig, "args", ()))
    if len(args) >= 2 and isinstance(args[0], int):  # PyMySQL: (code, message)
        return str(args[1])
    text = str(orig).strip().splitlines()
    return text[0] if text else ""


def lock_waiters(url: str) -> int:
    """How many connections to this database wait for a lock now (on MariaDB, as of at
    most 0.1 s ago: see wait_for_lock_waiters)."""
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            if backend_of(url) == "postgresql":
                query = (
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
            else:
                query = (
                    "SELECT count(*) FROM information_schema.INNODB_TRX t "
                    "JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id "
                    "WHERE t.trx_state = 'LOCK WAIT' AND p.DB = DATABASE()"
                )
            return int(conn.exec_driver_sql(query).scalar_one())
    finally:
        engine.dispose()


def wait_for(condition: Callable[[], bool], timeout: float, what: str, every: float = 0.02) -> None:
    """Return once ``condition()`` holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        time.sleep(every)


def wait_for_lock_waiters(url: str, count: int, timeout: float, what: str) -> None:
    """Until exactly ``count`` connections to this database wait for a lock. InnoDB
    refreshes what INNODB_TRX shows only after 0.1 s without a reader: asked more often, it
    shows the same rows for ever."""
    every = 0.02 if backend_of(url) == "postgresql" else 0.15
    wait_for(lambda: lock_waiters(url) == count, timeout, what, every)
