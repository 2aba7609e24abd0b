"""This host's clock against the metastore server's.

Informational only: leases are judged on locally observed durations, so skewed clocks
cannot make two leaders (see metastore/base.py). Skew shows in `status` ages and in logs
compared across hosts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from airflow_sentinel.clock import SystemClock
from airflow_sentinel.deadline import DeadlinePassed, call_with_deadline
from airflow_sentinel.doctor.findings import INFO, OK, Line
from airflow_sentinel.errors import SentinelError
from airflow_sentinel.metastore.urls import ZOOKEEPER, mask

BOUND_S = 2.0
CHECK = "clock"


@dataclass(frozen=True)
class Skew:
    offset_s: float  # the server's time minus ours, at the middle of the round trip
    within_s: float  # half the round trip: the offset is known to this much


def measure(read_server_time: Callable[[], float], now: Callable[[], float] = time.time) -> Skew:
    before = now()
    server = read_server_time()
    after = now()
    return Skew(server - (before + after) / 2, (after - before) / 2)


def server_time_reader(url: str, timeout: float, lease_ttl: float) -> Callable[[], float] | None:
    """How to read the metastore server's time; None for SQLite, which has no server (its
    time is this host's)."""
    if url.startswith("sqlite"):
        return None
    if url.startswith(f"{ZOOKEEPER}://"):
        return lambda: _zookeeper_time(url, timeout, lease_ttl)
    return lambda: _sql_time(url, timeout)


def _sql_time(url: str, timeout: float) -> float:
    from airflow_sentinel.metastore.sql import _server_now, create_sql_engine

    engine = create_sql_engine(url, timeout)
    try:
        with engine.connect() as conn:
            return float(conn.execute(sa.select(_server_now(engine.dialect.name))).scalar_one())
    finally:
        engine.dispose()


def _zookeeper_time(url: str, timeout: float, lease_ttl: float) -> float:
    """The mtime of a znode touched just now: ZooKeeper has no other way to tell time."""
    from airflow_sentinel.metastore.zookeeper import ZooKeeperMetastore

    # the session timeout the controllers ask for, which the servers are known to grant
    store = ZooKeeperMetastore(url, SystemClock(), timeout, session_timeout=lease_ttl)
    try:
        return store._server_now()
    finally:
        store.close()


def clock_line(url: str, timeout: float, lease_ttl: float, bound: float = BOUND_S) -> Line:
    reader = server_time_reader(url, timeout, lease_ttl)
    if reader is None:
        return Line(OK, CHECK, "clock: SQLite has no server clock; nothing to compare")
    try:
        skew = call_with_deadline(lambda: measure(reader), timeout, "doctor-clock")
    except (DeadlinePassed, SentinelError, sa.exc.SQLAlchemyError, OSError) as exc:
        why = "no answer in time" if isinstance(exc, DeadlinePassed) else type(exc).__name__
        return Line(INFO, CHECK, f"clock: the time of {mask(url)} could not be read ({why})")
    return skew_line(skew, bound)


def skew_line(skew: Skew, bound: float = BOUND_S) -> Line:
    """Beyond ``bound`` it is worth a line of its own; it is never a finding."""
    detail = {"offset_s": round(skew.offset_s, 3), "within_s": round(skew.within_s, 3)}
    ahead = "ahead of" if skew.offset_s > 0 else "behind"
    amount = f"{abs(skew.offset_s):.2f}s (±{skew.within_s:.2f}s)"
    if abs(skew.offset_s) - skew.within_s > bound:
        text = (
            f"clock: the metastore server's clock is {amount} {ahead} this host's, more than "
            f"{bound:g}s; leases do not depend on it (durations are measured locally), but "
            "ages in status and log times across hosts do: run NTP (chrony) on both"
        )
        return Line(INFO, CHECK, text, detail)
    offset = f"offset {skew.offset_s:+.2f}s ±{skew.within_s:.2f}s"
    text = f"clock: this host and the metastore server agree within {bound:g}s ({offset})"
    return Line(OK, CHECK, text, detail)
