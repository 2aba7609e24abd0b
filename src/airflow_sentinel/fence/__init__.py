"""The fence in Airflow's database (see base.py): opened for the database Airflow uses."""

from __future__ import annotations

import logging
import math
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import NullPool

from airflow_sentinel.errors import UserError
from airflow_sentinel.fence.base import (
    CONNECT_SLACK,
    REJECTION,
    DbFence,
    Dialect,
    FenceError,
    FenceState,
    RaiseResult,
)
from airflow_sentinel.metastore.urls import normalize_metastore_url, scrub

log = logging.getLogger(__name__)

__all__ = [
    "REJECTION",
    "DbFence",
    "FenceError",
    "FenceState",
    "RaiseResult",
    "backend_name",
    "dialect_for",
    "open_fence",
]


def dialect_for(url: str) -> Dialect | None:
    """The fence's SQL for this database; None where there is none (SQLite)."""
    from airflow_sentinel.fence.mysql import MySql
    from airflow_sentinel.fence.postgres import Postgres

    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError:
        return None
    if backend == "postgresql":
        return Postgres()
    if backend in ("mysql", "mariadb"):
        return MySql()
    return None


def open_fence(mode: str, url: str, timeout: float, wait: float) -> DbFence | None:
    """The fence for Airflow's database at ``url`` under ``db_fence = mode``; None when it
    is off (or auto on a database without one). ``on`` where it cannot be is a UserError."""
    if mode == "off":
        return None
    # Our own connections use our drivers, as the heartbeat and schema checks do (Airflow's
    # psycopg2 or mysqlclient may not be installed here); the scheduler keeps Airflow's.
    try:
        ours = normalize_metastore_url(url)
    except ValueError:
        ours = url
    dialect = dialect_for(ours)
    if dialect is None:
        if mode == "on":
            raise UserError(
                "db_fence = on needs Airflow's database on PostgreSQL or MySQL/MariaDB; it is "
                f"{backend_name(url)} (use db_fence = auto or off)"
            )
        return None
    problem = dialect.check_session(url)
    if problem is not None:
        if mode == "on":
            raise UserError(f"db_fence = on: {problem} (or use db_fence = off)")
        return None
    try:
        engine = _engine(ours, timeout, wait)
    except (ArgumentError, ImportError) as exc:
        # A driver this installation does not have (Airflow's may live elsewhere).
        why = f"the database URL cannot be used here: {scrub(str(exc).splitlines()[0], url)}"
        if mode == "on":
            raise UserError(f"db_fence = on: {why} (or use db_fence = off)") from None
        log.warning("db_fence: off, %s", why)
        return None
    return DbFence(dialect, engine, url, timeout)


def backend_name(url: str) -> str:
    try:
        return make_url(url).get_backend_name()
    except ArgumentError:
        return "not a database URL"


def _engine(url: str, timeout: float, wait: float) -> sa.Engine:
    """One connection per use (a raise changes its session's lock timeout), each bounded:
    a raise's answer may take ``wait`` seconds."""
    parsed = make_url(url)
    seconds = max(1, math.ceil(timeout))
    answer = math.ceil(wait + 2 * CONNECT_SLACK)
    connect_args: dict[str, Any]
    if parsed.get_backend_name() == "postgresql":
        connect_args = {
            "connect_timeout": max(2, seconds),
            "keepalives": 1,
            "keepalives_idle": seconds,
            "keepalives_interval": 1,
            "keepalives_count": 2,
        }
    else:
        connect_args = {
            "connect_timeout": seconds,
            "read_timeout": max(seconds, answer),
            "write_timeout": seconds,
        }
    return sa.create_engine(url, connect_args=connect_args, poolclass=NullPool, future=True)
