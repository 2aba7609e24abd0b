"""Reading our scheduler's own heartbeat from Airflow's `job` table (health_check = heartbeat).

Every scheduler that uses the database has rows in `job`: a foreign scheduler, one on
another host, and the leftover rows of schedulers that died. Only our run's row counts.
Airflow writes ``hostname`` (``[core] hostname_callable``, by default the host name resolved
to its canonical name), ``unixname`` (the scheduler's user) and ``start_date`` when the
scheduler starts. Our row is the SchedulerJob row of this host and our user that started
first at or after our launch; its id is then pinned for the rest of the run, and a new
run (a new launch time) looks again.

The scheduler writes ``latest_heartbeat`` in UTC from this same host, so its age is
measured against this host's wall clock: no clock comparison between hosts.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import logging
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from airflow_sentinel.deadline import Call, DeadlinePassed, call_with_deadline
from airflow_sentinel.errors import UserError
from airflow_sentinel.metastore.sql import create_sql_engine
from airflow_sentinel.metastore.urls import normalize_metastore_url

log = logging.getLogger(__name__)

# Rows that started a little before our launch time still count (after any row that
# started after it): the wall clock may have been stepped back in between.
START_SLACK_S = 2.0
# Rows of this host and user read per look, newest first: ours is among the newest.
RECENT_ROWS = 20

JOB = sa.table(
    "job",
    sa.column("id"),
    sa.column("job_type"),
    sa.column("hostname"),
    sa.column("unixname"),
    sa.column("start_date"),
    sa.column("latest_heartbeat"),
)
COLUMNS = (
    JOB.c.id,
    JOB.c.hostname,
    JOB.c.unixname,
    JOB.c.start_date,
    JOB.c.latest_heartbeat,
)
SCHEDULER_JOBS = sa.select(*COLUMNS).where(JOB.c.job_type == "SchedulerJob")


class HeartbeatProbe(Protocol):
    def age(self, started_wall: float, now_wall: float) -> float | None:
        """Age in seconds of the heartbeat of our scheduler, launched at ``started_wall``;
        None when it has none yet or it cannot be read."""


@dataclass(frozen=True)
class SchedulerOwner:
    """What Airflow writes into the job row of a scheduler that this controller started."""

    hostnames: frozenset[str]
    unixname: str

    @classmethod
    def of_this_process(cls) -> SchedulerOwner:
        # The scheduler runs with our environment, so getuser() answers for it as for us.
        return cls(this_host_names(), getpass.getuser())


def this_host_names() -> frozenset[str]:
    """The names Airflow may record for this host: its default ``hostname_callable``
    (airflow.utils.net.getfqdn: the host name resolved to its canonical name), Python's
    socket.getfqdn(), the bare host name, and its address (get_host_ip_address)."""
    name = socket.gethostname()
    names = {name, socket.getfqdn()}
    try:
        infos = socket.getaddrinfo(name, None, 0, socket.SOCK_DGRAM, 0, socket.AI_CANONNAME)
    except OSError:
        infos = []
    canonical = next((info[3] for info in infos if info[3]), name)
    names.add(canonical)
    with contextlib.suppress(OSError):  # no address: get_host_ip_address would fail too
        names.add(socket.gethostbyname(canonical))
    return frozenset(n for n in names if n)


@dataclass(frozen=True)
class JobRow:
    id: int
    hostname: str | None
    unixname: str | None
    start: float | None  # seconds since the epoch
    heartbeat: float | None

    @classmethod
    def from_db(cls, row: Any) -> JobRow:
        return cls(
            int(row.id),
            row.hostname,
            row.unixname,
            as_epoch(row.start_date),
            as_epoch(row.latest_heartbeat),
        )


def own_row(rows: Iterable[JobRow], owner: SchedulerOwner, started_wall: float) -> JobRow | None:
    """The job row of the scheduler launched at ``started_wall``: of this host and user,
    and the first to start at or after the launch (a later one is another scheduler's,
    an earlier one a leftover). One in the slack before the launch counts only if none
    started after it."""
    candidates = [
        row
        for row in rows
        if row.hostname in owner.hostnames
        and row.unixname == owner.unixname
        and row.start is not None
        and row.start >= started_wall - START_SLACK_S
    ]
    return min(candidates, key=lambda row: _launch_order(row, started_wall), default=None)


def _launch_order(row: JobRow, started_wall: float) -> tuple[bool, float, int]:
    start = row.start if row.start is not None else 0.0
    return start < started_wall, start, row.id


def as_epoch(value: object) -> float | None:
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
    """Our scheduler's heartbeat (``any_scheduler``: the newest of any scheduler that
    started after the given time, wherever it runs, as an upgrade's verification needs)."""

    def __init__(
        self,
        airflow_db_url: str,
        timeout: float,
        *,
        any_scheduler: bool = False,
        owner: SchedulerOwner | None = None,
    ) -> None:
        try:
            url = normalize_metastore_url(airflow_db_url)
        except ValueError as exc:
            raise UserError(
                f"health_check = heartbeat: Airflow's sql_alchemy_conn: {exc}"
            ) from None
        if url.startswith("zookeeper:"):
            raise UserError("health_check = heartbeat: Airflow's sql_alchemy_conn must be SQL")
        self._url = url
        self._timeout = timeout
        self._engine = create_sql_engine(url, timeout, airflow_tables=True)
        self._owner = None if any_scheduler else owner or SchedulerOwner.of_this_process()
        self._run: float | None = None  # the launch time the pinned row belongs to
        self._pinned: int | None = None

    def age(self, started_wall: float, now_wall: float) -> float | None:
        if started_wall != self._run:
            self._run, self._pinned = started_wall, None  # a new run: find its row afresh
        rows = self._read(self._statement())
        if rows is None:
            return None
        beat = self._heartbeat(rows, started_wall)
        return None if beat is None else max(0.0, now_wall - beat)

    def _statement(self) -> sa.Select[Any]:
        if self._owner is None:
            return SCHEDULER_JOBS.order_by(JOB.c.id.desc()).limit(5)
        if self._pinned is not None:
            return SCHEDULER_JOBS.where(JOB.c.id == self._pinned)
        return (
            SCHEDULER_JOBS.where(
                JOB.c.unixname == self._owner.unixname,
                JOB.c.hostname.in_(sorted(self._owner.hostnames)),
            )
            .order_by(JOB.c.id.desc())
            .limit(RECENT_ROWS)
        )

    def _heartbeat(self, rows: list[JobRow], started_wall: float) -> float | None:
        if self._owner is None:
            fresh = [r.heartbeat for r in rows if (r.start or 0.0) >= started_wall - START_SLACK_S]
            return max((b for b in fresh if b is not None), default=None)
        row = own_row(rows, self._owner, started_wall)
        if row is None:
            return None
        if self._pinned is None and row.start is not None and row.start >= started_wall:
            self._pinned = row.id
            log.debug("scheduler job row %d is ours (host %s)", row.id, row.hostname)
        return row.heartbeat

    def _read(self, statement: sa.Select[Any]) -> list[JobRow] | None:
        try:
            rows = call_with_deadline(
                functools.partial(self._job_rows, statement), self._timeout, "heartbeat-probe"
            )
        except DeadlinePassed as late:
            log.warning("cannot read the scheduler heartbeat: %s", late)
            self._replace_engine()
            return None
        except SQLAlchemyError as exc:
            log.warning("cannot read the scheduler heartbeat: %s", type(exc).__name__)
            return None
        return [JobRow.from_db(row) for row in rows]

    def _job_rows(self, statement: sa.Select[Any]) -> Sequence[Any]:
        with self._engine.connect() as conn:
            return conn.execute(statement).all()

    def _replace_engine(self) -> None:
        """A hung database: the next read opens a connection of its own, and the stuck one
        is left to its thread (the engine is disposed in the background, best effort)."""
        Call(self._engine.dispose, "heartbeat-probe-dispose")
        self._engine = create_sql_engine(self._url, self._timeout, airflow_tables=True)

    def close(self) -> None:
        self._engine.dispose()
