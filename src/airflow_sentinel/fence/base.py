"""The fence in Airflow's own database: what every dialect provides.

A table of ours holds the current epoch of the scheduler service. Triggers on the tables
through which a scheduler changes what runs reject a write from a connection that carries
an older epoch. The scheduler's connections carry the epoch the controller started it with
(a session setting), and so do the processes it forks (Airflow 2's DAG processor and
LocalExecutor task processes). Connections without one (api-server, webserver, Celery
workers, Airflow 3's task runners, which go through the api-server, migrations, people)
are not affected.

A write that passed the check holds a shared lock until its transaction ends; raising the
epoch takes the lock exclusively, so it waits for every such transaction to end (commit or
roll back) before it can commit, and every check after it sees the new epoch. A raise that
stays blocked longer than ``db_fence_wait`` ends the connections that block it: they
belong to a scheduler of an older epoch (no scheduler of the new epoch runs before the
raise), and ending them rolls their writes back.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from airflow_sentinel.deadline import Call, DeadlinePassed, call_with_deadline
from airflow_sentinel.errors import SentinelError
from airflow_sentinel.metastore.urls import mask, scrub

log = logging.getLogger(__name__)

FENCE_TABLE = "sentinel_fence"
SERVICE = "scheduler"
# Written by every scheduler: what it runs (dag_run, task_instance) and its own liveness
# (job: a fenced-out scheduler stops looking alive, so the new one adopts its tasks at once).
REQUIRED_TABLES = ("dag_run", "task_instance", "job")
# Written by schedulers where the Airflow version has them: callbacks queued for the DAG
# processor (a stale scheduler would queue them twice) and missed deadlines (Airflow 3.1+).
OPTIONAL_TABLES = ("callback_request", "deadline")
# The words every rejection starts with: what the scheduler's log is searched for.
REJECTION = "airflow-sentinel fence"
# Seconds, beyond a raise's own wait, for the connections it needs and their answers.
CONNECT_SLACK = 2.0


def driver_of(url: URL, default: str) -> str:
    """The DBAPI driver a URL names (``default``: the dialect's own, when it names none),
    read from the URL alone: the driver need not be installed here."""
    return url.drivername.partition("+")[2] or default


class FenceError(SentinelError):
    """The fence could not be read, installed, raised or removed; the message says why."""


@dataclass(frozen=True)
class FenceState:
    """What is installed in Airflow's database."""

    table: bool
    epoch: int | None  # None: no row for the scheduler
    fenced: tuple[str, ...]  # tables that carry our triggers
    unfenced: tuple[str, ...]  # tables that exist and should, but do not
    missing_tables: tuple[str, ...] = ()  # required Airflow tables that do not exist

    @property
    def complete(self) -> bool:
        return self.problem() is None

    def problem(self) -> str | None:
        """Why the fence is not whole, in words for an operator; None when it is."""
        if self.missing_tables:
            return f"{not_yet_migrated(self.missing_tables)} (run airflow db migrate first)"
        if not self.table:
            return f"the table {FENCE_TABLE} is missing"
        if self.epoch is None:
            return f"{FENCE_TABLE} has no row for the scheduler"
        if self.unfenced:
            if len(self.unfenced) == 1:
                return f"the table {self.unfenced[0]} has no fence trigger"
            return f"the tables {', '.join(self.unfenced)} have no fence trigger"
        return None


def not_yet_migrated(tables: tuple[str, ...]) -> str:
    """Airflow's tables that do not exist, in words."""
    if len(tables) == 1:
        return f"Airflow's table {tables[0]} does not exist yet"
    return f"Airflow's tables {', '.join(tables)} do not exist yet"


@dataclass(frozen=True)
class RaiseResult:
    """The outcome of one attempt to raise the fence to ``epoch``."""

    raised: bool
    epoch: int  # raised: the fence's epoch now; above the one asked for: as found; else asked
    waited_s: float = 0.0
    ended: tuple[int, ...] = ()  # connections ended because they blocked the raise
    why: str = ""  # when not raised


@dataclass
class _Attempt:
    """What the raising thread tells the watching one."""

    backend: int | None = None
    started: threading.Event = field(default_factory=threading.Event)


class Dialect(ABC):
    """The SQL of one database family; the engine and connections are the caller's."""

    name: str

    @abstractmethod
    def install(self, conn: Connection, tables: tuple[str, ...]) -> None:
        """Create (or replace) the table, its row, the check and the triggers."""

    @abstractmethod
    def remove(self, conn: Connection) -> None:
        """Drop the triggers, the check and the table."""

    @abstractmethod
    def fenced_tables(self, conn: Connection) -> set[str]:
        """The tables that carry our triggers (all of them, for every operation)."""

    @abstractmethod
    def existing_tables(self, conn: Connection, names: tuple[str, ...]) -> set[str]:
        """Which of ``names`` exist in the database."""

    @abstractmethod
    def backend_id(self, conn: Connection) -> int:
        """This connection's id as the server's admin functions know it."""

    @abstractmethod
    def begin_raise(self, conn: Connection, wait: float) -> int | None:
        """Wait (at most ``wait`` seconds) until no transaction that passed the check is
        open, and hold that until the transaction ends; the fence's epoch (None: no row)."""

    @abstractmethod
    def blockers(self, conn: Connection, backend: int) -> list[int]:
        """The connections that block the raise running as ``backend``."""

    @abstractmethod
    def end_backend(self, conn: Connection, backend: int) -> None:
        """End that connection (its open transaction rolls back)."""

    @abstractmethod
    def cancel(self, conn: Connection, backend: int) -> None:
        """Cancel the statement that ``backend`` runs (it stays connected)."""

    @abstractmethod
    def scheduler_env(self, epoch: int, url: str, environ: dict[str, str]) -> dict[str, str]:
        """The environment variables that make a scheduler's connections carry ``epoch``."""

    def check_session(self, url: str) -> str | None:
        """Why connections to ``url`` cannot carry an epoch; None when they can."""
        return None


class DbFence:
    """The fence of one Airflow database: install, check, raise, remove."""

    def __init__(self, dialect: Dialect, engine: Engine, url: str, timeout: float) -> None:
        self.dialect = dialect
        self._engine = engine
        self.url = url
        self.timeout = timeout

    @property
    def description(self) -> str:
        return mask(self.url)

    def close(self) -> None:
        self._engine.dispose()

    # -- bounded calls -------------------------------------------------------------------
    def _bounded(self, what: str, fn: Callable[[Connection], Any], timeout: float) -> Any:
        def run() -> Any:
            with self._engine.begin() as conn:
                return fn(conn)

        try:
            return call_with_deadline(run, timeout, name=f"sentinel-fence-{what}")
        except DeadlinePassed:
            raise FenceError(
                f"cannot {what} the fence in {self.description}: no answer within {timeout:g}s"
            ) from None
        except SQLAlchemyError as exc:
            raise FenceError(
                f"cannot {what} the fence in {self.description}: {self._why(exc)}"
            ) from None

    def _why(self, exc: BaseException) -> str:
        text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        return scrub(text[0] if text else type(exc).__name__, self.url)

    # -- install, check, remove ----------------------------------------------------------
    def state(self) -> FenceState:
        return self._bounded("read", self._state, self.timeout)  # type: ignore[no-any-return]

    def _state(self, conn: Connection) -> FenceState:
        wanted = REQUIRED_TABLES + OPTIONAL_TABLES
        existing = self.dialect.existing_tables(conn, (*wanted, FENCE_TABLE))
        table = FENCE_TABLE in existing
        epoch = None
        if table:
            row = conn.execute(
                sa.text(f"SELECT epoch FROM {FENCE_TABLE} WHERE service = :s"), {"s": SERVICE}
            ).first()
            epoch = None if row is None else int(row[0])
        fenced = self.dialect.fenced_tables(conn)
        present = tuple(t for t in wanted if t in existing)
        return FenceState(
            table=table,
            epoch=epoch,
            fenced=tuple(t for t in present if t in fenced),
            unfenced=tuple(t for t in present if t not in fenced),
            missing_tables=tuple(t for t in REQUIRED_TABLES if t not in existing),
        )

    def install(self) -> FenceState:
        """Install or repair the fence; the epoch already recorded is kept."""

        def run(conn: Connection) -> None:
            existing = self.dialect.existing_tables(conn, REQUIRED_TABLES + OPTIONAL_TABLES)
            missing = tuple(t for t in REQUIRED_TABLES if t not in existing)
            if missing:
                raise FenceError(
                    f"cannot install the fence in {self.description}: "
                    f"{not_yet_migrated(missing)} (run airflow db migrate first)"
                )
            present = tuple(t for t in REQUIRED_TABLES + OPTIONAL_TABLES if t in existing)
            self.dialect.install(conn, present)

        self._bounded("install", run, self.timeout * 3)
        return self.state()

    def remove(self) -> None:
        self._bounded("remove", self.dialect.remove, self.timeout * 3)

    def reset(self, epoch: int) -> None:
        """Set the fence's epoch outright (after the metastore's epochs started again)."""

        def run(conn: Connection) -> None:
            if FENCE_TABLE not in self.dialect.existing_tables(conn, (FENCE_TABLE,)):
                raise FenceError(f"the fence is not installed in {self.description}")
            done = conn.execute(
                sa.text(f"UPDATE {FENCE_TABLE} SET epoch = :e WHERE service = :s"),
                {"e": epoch, "s": SERVICE},
            )
            if done.rowcount == 0:
                raise FenceError(f"the fence is not installed in {self.description}")

        self._bounded("reset", run, self.timeout)

    # -- raise ---------------------------------------------------------------------------
    def raise_to(self, epoch: int, holder: str, wait: float, end_blockers: bool) -> RaiseResult:
        """Raise the fence to ``epoch`` (never lower it), waiting at most ``wait`` seconds
        for the transactions that passed the check; with ``end_blockers``, the connections
        still blocking it after that are ended and the raise goes on."""
        attempt = _Attempt()
        started = _now()
        call: Call[int] = Call(
            lambda: self._raise(epoch, holder, wait + CONNECT_SLACK, attempt),
            name="sentinel-fence-raise",
        )
        if not attempt.started.wait(self.timeout) and not call.done():
            return RaiseResult(False, epoch, _now() - started, why="no connection to the database")
        ended: tuple[int, ...] = ()
        if not call.wait(wait) and attempt.backend is not None:
            if end_blockers:
                ended = self._end_blockers(attempt.backend)
                call.wait(CONNECT_SLACK)
            if not call.done():
                self._cancel(attempt.backend)
                call.wait(CONNECT_SLACK)
                return RaiseResult(
                    False,
                    epoch,
                    _now() - started,
                    ended,
                    why=f"transactions that passed the check are still open after {wait:g}s",
                )
        if not call.done():
            return RaiseResult(False, epoch, _now() - started, why="no answer from the database")
        try:
            found = call.result()
        except (SQLAlchemyError, FenceError) as exc:
            why = str(exc) if isinstance(exc, FenceError) else self._why(exc)
            return RaiseResult(False, epoch, _now() - started, ended, why=why)
        waited = _now() - started
        if found > epoch:
            return RaiseResult(
                False,
                found,
                waited,
                ended,
                why=f"the fence is at epoch {found}, above this lease's epoch {epoch}",
            )
        return RaiseResult(True, epoch, waited, ended)

    def _raise(self, epoch: int, holder: str, wait: float, attempt: _Attempt) -> int:
        """On the raising thread: the fence's epoch after the raise (higher than ``epoch``
        when it already was)."""
        try:
            with self._engine.begin() as conn:
                attempt.backend = self.dialect.backend_id(conn)
                attempt.started.set()
                found = self.dialect.begin_raise(conn, wait)
                if found is None:
                    raise FenceError(f"the fence is not installed in {self.description}")
                if found > epoch:
                    return found
                conn.execute(
                    sa.text(
                        f"UPDATE {FENCE_TABLE} SET epoch = :e, raised_by = :h, "
                        "raised_at = CURRENT_TIMESTAMP WHERE service = :s"
                    ),
                    {"e": epoch, "h": holder[:250], "s": SERVICE},
                )
                return epoch
        finally:
            attempt.started.set()

    def _end_blockers(self, backend: int) -> tuple[int, ...]:
        def run(conn: Connection) -> tuple[int, ...]:
            ended = []
            for other in self.dialect.blockers(conn, backend):
                if other != backend:
                    self.dialect.end_backend(conn, other)
                    ended.append(other)
            return tuple(ended)

        try:
            return self._bounded("end the blockers of", run, self.timeout)  # type: ignore[no-any-return]
        except FenceError as exc:
            log.warning("%s", exc)
            return ()

    def _cancel(self, backend: int) -> None:
        try:
            self._bounded("cancel the raise of", lambda c: self.dialect.cancel(c, backend), 5.0)
        except FenceError as exc:
            log.warning("%s", exc)


def _now() -> float:
    return time.monotonic()
