"""A database of its own per test, with the Airflow tables the fence guards (the columns
the tests write; real Airflow schemas are tested with real Airflow), and connections that
carry an epoch the way a scheduler's do."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from airflow_sentinel.fence import dialect_for
from tests.support.backends import MYSQL_URL, POSTGRES_URL

FENCE_BACKENDS = ("postgresql", "mariadb")
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
