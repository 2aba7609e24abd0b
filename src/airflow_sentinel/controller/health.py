"""Reading the scheduler's own heartbeat from Airflow's `job` table (health_check = heartbeat).

The scheduler writes ``latest_heartbeat`` in UTC from this same host, so its age is
measured against this host's wall clock: no clock comparison between hosts.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from airflow_sentinel.errors import UserError
from airflow_sentinel.metastore.sql import create_sql_engine
from airflow_sentinel.metastore.urls import normalize_metastore_url

log = logging.getLogger(__name__)

# Rows of scheduler jobs that started a little before our launch time still count: the
# scheduler's clock is this host's clock, but job rows are written a moment after exec.
START_SLACK_S = 2.0

QUERY = sa.text(
    "SELECT start_date, latest_heartbeat FROM job "
    "WHERE job_type = 'SchedulerJob' ORDER BY id DESC LIMIT 5"
)


class HeartbeatProbe(Protocol):
    def age(self, started_wall: float, now_wall: float) -> float | None:
        """Age in seconds of the newest heartbeat of a scheduler started at or after
        ``started_wall``; None when there is none yet or it cannot be read."""


def _as_epoch(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


class JobTableProbe:
    def __init__(self, airflow_db_url: str, timeout: float) -> None:
        try:
            url = normalize_metastore_url(airflow_db_url)
        except ValueError as exc:
            raise UserError(
                f"health_check = heartbeat: Airflow's sql_alchemy_conn: {exc}"
            ) from None
        if url.startswith("zookeeper:"):
            raise UserError("health_check = heartbeat: Airflow's sql_alchemy_conn must be SQL")
        self._engine = create_sql_engine(url, timeout)

    def age(self, started_wall: float, now_wall: float) -> float | None:
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(QUERY).all()
        except SQLAlchemyError as exc:
            log.warning("cannot read the scheduler heartbeat: %s", type(exc).__name__)
            return None
        beats = [
            _as_epoch(row.latest_heartbeat)
            for row in rows
            if (_as_epoch(row.start_date) or 0.0) >= started_wall - START_SLACK_S
        ]
        newest = max((b for b in beats if b is not None), default=None)
        return None if newest is None else max(0.0, now_wall - newest)

    def close(self) -> None:
        self._engine.dispose()
