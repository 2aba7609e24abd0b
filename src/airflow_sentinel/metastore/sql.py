"""SQL metastore (SQLite, MySQL/MariaDB, PostgreSQL) on SQLAlchemy 2 Core.

Expiry is judged on *locally observed time*: a standby records when it first saw the lease
row in its current state (holder, epoch, version) on its own monotonic clock, and may take
the lease over only when that state has stayed unchanged for the holder's ``ttl``. Every
renewal changes ``version``. No host compares its time of day with another's, so skewed
clocks cannot produce two holders; only clock *rates* matter, and the fence margin covers
their drift. The store's own clock is used for display (ages in ``status``) only.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from airflow_sentinel.clock import Clock
from airflow_sentinel.errors import MetastoreError
from airflow_sentinel.identity import HANDOVER, Instance
from airflow_sentinel.metastore.base import (
    Event,
    EventRecord,
    Lease,
    LeaseRecord,
    Metastore,
    NodeRecord,
    NodeReport,
)
from airflow_sentinel.metastore.observed import ObservedExpiry
from airflow_sentinel.metastore.urls import mask, scrub

metadata = sa.MetaData()

lease_table = sa.Table(
    "sentinel_lease",
    metadata,
    sa.Column("service", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(255), nullable=True),
    sa.Column("epoch", sa.BigInteger, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("ttl", sa.Double, nullable=False),
    sa.Column("changed_at", sa.Double, nullable=False),
    sa.Column("holder_instance", sa.String(255), nullable=True),
)

node_table = sa.Table(
    "sentinel_node",
    metadata,
    sa.Column("node_id", sa.String(255), primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("role", sa.String(32), nullable=False),
    sa.Column("scheduler_running", sa.Boolean, nullable=False),
    sa.Column("scheduler_pid", sa.Integer, nullable=True),
    sa.Column("fit", sa.Boolean, nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("epoch", sa.BigInteger, nullable=True),
    sa.Column("heartbeat_at", sa.Double, nullable=False),
    sa.Column("instance", sa.String(255), nullable=True),
    sa.Column("cooldown_left", sa.Double, nullable=True),
    sa.Column("api", sa.String(255), nullable=True),
    sa.Column("fingerprint", sa.Text, nullable=True),  # JSON: what doctor compares
)
# Columns added after the first release: ensure_schema adds them to existing tables.
ADDED_COLUMNS = (
    lease_table.c.holder_instance,
    node_table.c.instance,
    node_table.c.cooldown_left,
    node_table.c.api,
    node_table.c.fingerprint,
)

event_table = sa.Table(
    "sentinel_event",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Double, nullable=False),
    sa.Column("node_id", sa.String(255), nullable=False),
    sa.Column("service", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("detail", sa.String(1000), nullable=False),
    sa.Column("epoch", sa.BigInteger, nullable=True),
)

flag_table = sa.Table(
    "sentinel_flag",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("value", sa.String(1000), nullable=False),
)

PRUNE_EVERY = 50


def _server_now(dialect: str) -> sa.ColumnElement[Any]:
    """Seconds since the epoch on the database server's clock (display only)."""
    expression = {
        "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
        "mysql": "UNIX_TIMESTAMP(NOW(6))",
        "postgresql": "EXTRACT(EPOCH FROM clock_timestamp())",
    }[dialect]
    return sa.cast(sa.literal_column(expression), sa.Double)


def create_sql_engine(url: str, op_timeout: float, airflow_tables: bool = False) -> Engine:
    """``airflow_tables``: the engine reads Airflow's own tables. On MySQL their TIMESTAMP
    columns read back in the session's time zone; Airflow sets every session to UTC and
    reads its times as UTC, and so must we (never on our own tables: controllers of one
    cluster must all read those alike)."""
    parsed = make_url(url)
    seconds = max(1, round(op_timeout))
    connect_args: dict[str, Any] = {}
    if parsed.drivername == "sqlite":
        _create_private_sqlite_file(parsed.database or "")
        connect_args["timeout"] = op_timeout
    elif parsed.drivername.startswith("mysql"):
        connect_args.update(connect_timeout=seconds, read_timeout=seconds, write_timeout=seconds)
    else:
        # tcp_user_timeout bounds a send nobody acknowledges; keepalives bound a wait for an
        # answer that a partition dropped (libpq has no read timeout of its own).
        connect_args.update(
            connect_timeout=max(2, seconds),
            tcp_user_timeout=seconds * 1000,
            keepalives=1,
            keepalives_idle=seconds,
            keepalives_interval=1,
            keepalives_count=2,
        )
    engine = sa.create_engine(
        url, connect_args=connect_args, pool_pre_ping=True, pool_recycle=300, future=True
    )
    _set_session_timeouts(engine, parsed.drivername, seconds, utc=airflow_tables)
    return engine


def _create_private_sqlite_file(path: str) -> None:
    if path and not Path(path).exists():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def _set_session_timeouts(engine: Engine, driver: str, seconds: int, utc: bool = False) -> None:
    if driver == "sqlite":
        return
    statements = (
        [f"SET SESSION innodb_lock_wait_timeout = {seconds}"]
        if driver.startswith("mysql")
        else [f"SET statement_timeout = {seconds * 1000}"]
    )
    if utc and driver.startswith("mysql"):
        statements.append("SET time_zone = '+00:00'")

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        for statement in statements:
            cursor.execute(statement)
        cursor.close()
        if driver.startswith("postgresql"):
            dbapi_connection.commit()


class SqlMetastore(Metastore):
    def __init__(self, url: str, clock: Clock, op_timeout: float = 10.0) -> None:
        self._url = url
        self._clock = clock
        self._engine = create_sql_engine(url, op_timeout)
        self._dialect = self._engine.dialect.name
        self._expiry = ObservedExpiry()
        self._events_written = 0

    @property
    def description(self) -> str:
        return mask(self._url)

    # -- plumbing ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _tx(self) -> Iterator[Connection]:
        try:
            with self._engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise MetastoreError(self._explain(exc)) from None

    def _explain(self, exc: SQLAlchemyError) -> str:
        original = getattr(exc, "orig", None) or exc
        first_line = (str(original).strip().splitlines() or [type(original).__name__])[0]
        return scrub(f"metastore {self.description}: {first_line}", self._url)

    def _now(self) -> sa.ColumnElement[Any]:
        return _server_now(self._dialect)

    def ensure_schema(self) -> None:
        # Several nodes may start at once: a CREATE that lost the race fails, and the next
        # checkfirst pass sees the table the winner made.
        for attempt in range(5):
            try:
                metadata.create_all(self._engine, checkfirst=True)
            except DBAPIError as exc:
                if attempt == 4:
                    raise MetastoreError(self._explain(exc)) from None
            except SQLAlchemyError as exc:
                raise MetastoreError(self._explain(exc)) from None
            else:
                break
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Bring tables made by an earlier version up to date (nullable columns only)."""
        try:
            inspector = sa.inspect(self._engine)
            for column in ADDED_COLUMNS:
                table = column.table.name
                if column.name in {c["name"] for c in inspector.get_columns(table)}:
                    continue
                kind = column.type.compile(dialect=self._engine.dialect)
                try:
                    with self._engine.begin() as conn:
                        conn.execute(
                            sa.text(f"ALTER TABLE {table} ADD COLUMN {column.name} {kind}")
                        )
                except DBAPIError:
                    inspector = sa.inspect(self._engine)  # another node added it first
                    if column.name not in {c["name"] for c in inspector.get_columns(table)}:
                        raise
        except SQLAlchemyError as exc:
            raise MetastoreError(self._explain(exc)) from None

    def check(self) -> str:
        with self._tx() as conn:
            if self._dialect == "sqlite":
                version = conn.execute(sa.text("select sqlite_version()")).scalar_one()
                return f"SQLite {version}"
            version = conn.execute(sa.text("select version()")).scalar_one()
            name = "PostgreSQL" if self._dialect == "postgresql" else "MySQL/MariaDB"
            return f"{name} {str(version).split(' on ')[0]}"

    # -- lease ---------------------------------------------------------------------------
    def _read_lease_row(self, conn: Connection, service: str) -> Any:
        query = sa.select(
            lease_table.c.holder,
            lease_table.c.epoch,
            lease_table.c.version,
            lease_table.c.ttl,
            lease_table.c.holder_instance,
            (self._now() - lease_table.c.changed_at).label("age"),
        ).where(lease_table.c.service == service)
        return conn.execute(query).one_or_none()

    def _ensure_lease_row(self, service: str) -> None:
        try:
            with self._engine.begin() as conn:
                if self._read_lease_row(conn, service) is None:
                    conn.execute(
                        lease_table.insert().values(
                            service=service,
                            holder=None,
                            epoch=0,
                            version=0,
                            ttl=0.0,
                            changed_at=self._now(),
                        )
                    )
        except IntegrityError:
            pass  # another node inserted it first
        except SQLAlchemyError as exc:
            raise MetastoreError(self._explain(exc)) from None

    def try_acquire(self, service: str, me: Instance, ttl: float) -> Lease | None:
        with self._tx() as conn:
            row = self._read_lease_row(conn, service)
        if row is None:
            self._ensure_lease_row(service)
            with self._tx() as conn:
                row = self._read_lease_row(conn, service)
            if row is None:
                raise MetastoreError(f"metastore {self.description}: lease row vanished")
        seen_at = self._clock.now()
        state = (row.holder, int(row.epoch), int(row.version))
        silent_for = self._expiry.seen_for(service, state, seen_at)
        waited = row.holder is not None and not self._reclaims(row, me)
        if waited and not self._expiry.expired(service, state, float(row.ttl), seen_at):
            return None
        # Claiming a handover keeps the epoch the transfer gave it: one step per holder.
        step = 0 if row.holder == me.node_id and row.holder_instance == HANDOVER else 1
        sent = self._clock.now()
        with self._tx() as conn:
            result = conn.execute(
                lease_table.update()
                .where(lease_table.c.service == service, lease_table.c.version == row.version)
                .values(
                    holder=me.node_id,
                    holder_instance=me.token,
                    epoch=lease_table.c.epoch + step,
                    version=lease_table.c.version + 1,
                    ttl=ttl,
                    changed_at=self._now(),
                )
            )
        if result.rowcount != 1:
            return None
        self._expiry.forget(service)
        return Lease(
            service,
            me.node_id,
            row.epoch + step,
            valid_until=sent + ttl,
            instance=me.token,
            taken_from=row.holder,
            silent_for=silent_for if waited else None,
        )

    @staticmethod
    def _reclaims(row: Any, me: Instance) -> bool:
        return bool(row.holder == me.node_id and me.may_reclaim(row.holder_instance))

    def takeover_due(self, service: str) -> float | None:
        return self._expiry.due(service)

    def renew(self, lease: Lease, ttl: float) -> Lease | None:
        sent = self._clock.now()
        changed = self._update_held(
            lease, version=lease_table.c.version + 1, ttl=ttl, changed_at=self._now()
        )
        return replace(lease, valid_until=sent + ttl) if changed else None

    def release(self, lease: Lease) -> bool:
        return self._update_held(
            lease,
            holder=None,
            holder_instance=None,
            version=lease_table.c.version + 1,
            changed_at=self._now(),
        )

    def transfer(self, lease: Lease, to_node: str) -> bool:
        return self._update_held(
            lease,
            holder=to_node,
            holder_instance=HANDOVER,
            epoch=lease_table.c.epoch + 1,
            version=lease_table.c.version + 1,
            changed_at=self._now(),
        )

    def _update_held(self, lease: Lease, **values: Any) -> bool:
        with self._tx() as conn:
            result = conn.execute(
                lease_table.update()
                .where(
                    lease_table.c.service == lease.service,
                    lease_table.c.holder == lease.holder,
                    lease_table.c.holder_instance == lease.instance,
                    lease_table.c.epoch == lease.epoch,
                )
                .values(**values)
            )
        return result.rowcount == 1

    def read_lease(self, service: str) -> LeaseRecord | None:
        with self._tx() as conn:
            row = self._read_lease_row(conn, service)
        if row is None:
            return None
        return LeaseRecord(
            service,
            row.holder,
            int(row.epoch),
            int(row.version),
            float(row.ttl),
            float(row.age),
            row.holder_instance,
        )

    # -- node registry -------------------------------------------------------------------
    def heartbeat(
        self, report: NodeReport, stale_after: float, me: Instance | None = None
    ) -> str | None:
        values = {
            "host": report.host,
            "role": report.role,
            "scheduler_running": report.scheduler_running,
            "scheduler_pid": report.scheduler_pid,
            "fit": report.fit,
            "version": report.version,
            "epoch": report.epoch,
            "instance": report.instance,
            "cooldown_left": report.cooldown_left_s,
            "api": report.api,
            "fingerprint": report.fingerprint,
            "heartbeat_at": self._now(),
        }
        row = node_table.c
        # The row is ours to write when it is ours already, or its instance is gone.
        claimable = sa.or_(
            row.instance == report.instance,
            row.instance.is_(None),
            row.role == "stopped",
            row.heartbeat_at < self._now() - stale_after,
        )
        update = node_table.update().where(row.node_id == report.node_id, claimable)
        with self._tx() as conn:
            if conn.execute(update.values(values)).rowcount == 1:
                return None
        try:
            with self._engine.begin() as conn:
                conn.execute(node_table.insert().values(node_id=report.node_id, **values))
        except IntegrityError:
            return self._claim_from_the_dead(report.node_id, values, me)
        except SQLAlchemyError as exc:
            raise MetastoreError(self._explain(exc)) from None
        return None

    def _claim_from_the_dead(
        self, node_id: str, values: dict[str, Any], me: Instance | None
    ) -> str | None:
        """Another instance's live-looking row: ours if ``me`` proves its instance dead
        (compare-and-set on that instance), else a conflict naming its host."""
        row = node_table.c
        with self._tx() as conn:
            other = conn.execute(
                sa.select(row.host, row.instance).where(row.node_id == node_id)
            ).one_or_none()
            if other is None:
                return None  # deleted meanwhile (clear-metadata): the next beat inserts it
            if me is not None and me.proven_dead(other.instance):
                taken = node_table.update().where(
                    row.node_id == node_id, row.instance == other.instance
                )
                if conn.execute(taken.values(values)).rowcount == 1:
                    return None
        return str(other.host)

    def nodes(self) -> list[NodeRecord]:
        age = (self._now() - node_table.c.heartbeat_at).label("age")
        query = sa.select(node_table, age).order_by(node_table.c.node_id)
        with self._tx() as conn:
            rows = conn.execute(query).all()
        return [
            NodeRecord(
                node_id=r.node_id,
                host=r.host,
                role=r.role,
                scheduler_running=bool(r.scheduler_running),
                scheduler_pid=r.scheduler_pid,
                fit=bool(r.fit),
                version=r.version,
                epoch=r.epoch,
                instance=r.instance,
                cooldown_left_s=r.cooldown_left,
                api=r.api,
                fingerprint=r.fingerprint,
                last_heartbeat_age_s=max(0.0, float(r.age)),
            )
            for r in rows
        ]

    # -- events --------------------------------------------------------------------------
    def record_event(self, event: Event, retention: int) -> None:
        with self._tx() as conn:
            conn.execute(
                event_table.insert().values(
                    at=self._now(),
                    node_id=event.node_id,
                    service=event.service,
                    kind=event.kind,
                    detail=event.detail[:1000],
                    epoch=event.epoch,
                )
            )
            self._events_written += 1
            if self._events_written % PRUNE_EVERY == 1:
                newest = conn.execute(sa.select(sa.func.max(event_table.c.id))).scalar_one()
                conn.execute(event_table.delete().where(event_table.c.id <= newest - retention))

    def events(self, limit: int) -> list[EventRecord]:
        age = (self._now() - event_table.c.at).label("age")
        query = sa.select(event_table, age).order_by(event_table.c.id.desc()).limit(limit)
        with self._tx() as conn:
            rows = conn.execute(query).all()
        return [
            EventRecord(
                r.id, max(0.0, float(r.age)), r.node_id, r.service, r.kind, r.detail, r.epoch
            )
            for r in rows
        ]

    # -- flags ---------------------------------------------------------------------------
    def set_flag(self, name: str, value: str | None) -> None:
        with self._tx() as conn:
            conn.execute(flag_table.delete().where(flag_table.c.name == name))
            if value is not None:
                conn.execute(flag_table.insert().values(name=name, value=value))

    def claim_flag(self, name: str, value: str) -> bool:
        try:
            with self._engine.begin() as conn:
                conn.execute(flag_table.insert().values(name=name, value=value))
        except IntegrityError:
            return False
        except SQLAlchemyError as exc:
            raise MetastoreError(self._explain(exc)) from None
        return True

    def flags(self) -> dict[str, str]:
        with self._tx() as conn:
            return {r.name: r.value for r in conn.execute(sa.select(flag_table))}

    def clear(self) -> None:
        with self._tx() as conn:
            for table in (event_table, node_table, flag_table):
                conn.execute(table.delete())

    def close(self) -> None:
        self._engine.dispose()
