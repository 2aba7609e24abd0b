"""The fence on MySQL and MariaDB.

The scheduler's connections carry their epoch in a user variable, ``@sentinel_epoch``, set
by the driver's ``init_command`` on every new connection; the controller hands the
scheduler its database URL with that command added. MySQL has row triggers only: each one
calls one procedure that reads the fence's row with a shared lock (InnoDB keeps it in its
lock table until the transaction ends; nothing is written) and rejects an older epoch. The
raise locks the row for update, so it waits for every transaction holding it for share.
"""

from __future__ import annotations

import math

from sqlalchemy import bindparam, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError

from airflow_sentinel.fence.base import (
    FENCE_TABLE,
    REJECTION,
    SERVICE,
    Dialect,
    FenceError,
    driver_of,
)

VARIABLE = "@sentinel_epoch"
CHECK_PROCEDURE = "sentinel_fence_check"
TRIGGER_PREFIX = "sentinel_fence_"
INSTALL_LOCK = "airflow_sentinel_fence_install"
OPERATIONS = {"ins": "INSERT", "upd": "UPDATE", "del": "DELETE"}
# The drivers whose connect() runs an init_command (mysql:// and mariadb:// use mysqldb).
DRIVERS = ("pymysql", "mysqldb")

CREATE_TABLE = f"""
CREATE TABLE IF NOT EXISTS {FENCE_TABLE} (
    service VARCHAR(64) NOT NULL PRIMARY KEY,
    epoch BIGINT NOT NULL,
    raised_by VARCHAR(250) NULL,
    raised_at TIMESTAMP(6) NULL
) ENGINE=InnoDB"""

CREATE_ROW = f"INSERT IGNORE INTO {FENCE_TABLE} (service, epoch) VALUES ('{SERVICE}', 0)"

CREATE_CHECK = f"""
CREATE PROCEDURE {CHECK_PROCEDURE}(IN tbl VARCHAR(64), IN op VARCHAR(8))
BEGIN
    DECLARE fence BIGINT DEFAULT NULL;
    DECLARE msg VARCHAR(255);
    SELECT epoch INTO fence FROM {FENCE_TABLE} WHERE service = '{SERVICE}' LOCK IN SHARE MODE;
    IF fence IS NULL THEN
        SET msg = CONCAT('{REJECTION}: no fence row for the scheduler; ', op, ' on ', tbl,
                         ' refused');
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = msg;
    ELSEIF {VARIABLE} < fence THEN
        SET msg = CONCAT('{REJECTION}: this scheduler''s epoch ', {VARIABLE},
                         ' is older than the fence''s ', fence, '; ', op, ' on ', tbl,
                         ' refused');
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = msg;
    END IF;
END"""


def _trigger(table: str, short: str) -> str:
    return f"{TRIGGER_PREFIX}{table}_{short}"


class MySql(Dialect):
    name = "mysql"

    def install(self, conn: Connection, tables: tuple[str, ...]) -> None:
        # MySQL commits each DDL statement on its own: replacing what exists would leave a
        # running scheduler's writes a moment without their check. Only what is missing is
        # created, so a repair while a scheduler runs never opens a gap.
        # Two controllers that start together both install: one after the other (the named
        # lock is the connection's, which ends with the install).
        got = conn.execute(text("SELECT GET_LOCK(:n, :t)"), {"n": INSTALL_LOCK, "t": 30})
        if got.scalar_one() != 1:
            raise FenceError("another installation of the fence did not finish within 30s")
        conn.exec_driver_sql(CREATE_TABLE)
        conn.exec_driver_sql(CREATE_ROW)
        if not self._has_procedure(conn):
            conn.exec_driver_sql(CREATE_CHECK)
        present = {name for name, _table in self._triggers(conn)}
        for table in tables:
            for short, operation in OPERATIONS.items():
                name = _trigger(table, short)
                if name in present:
                    continue
                conn.exec_driver_sql(
                    f"CREATE TRIGGER {name} BEFORE {operation} ON `{table}` FOR EACH ROW "
                    f"BEGIN IF {VARIABLE} IS NOT NULL THEN "
                    f"CALL {CHECK_PROCEDURE}('{table}', '{operation}'); END IF; END"
                )

    def _triggers(self, conn: Connection) -> list[tuple[str, str]]:
        rows = conn.execute(
            text(
                "SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE FROM information_schema.TRIGGERS "
                "WHERE TRIGGER_SCHEMA = DATABASE() AND TRIGGER_NAME LIKE 'sentinel\\_fence\\_%'"
            )
        )
        return [(r[0], r[1]) for r in rows]

    def remove(self, conn: Connection) -> None:
        for name, _table in self._triggers(conn):
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
        conn.exec_driver_sql(f"DROP PROCEDURE IF EXISTS {CHECK_PROCEDURE}")
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {FENCE_TABLE}")

    def _has_procedure(self, conn: Connection) -> bool:
        return bool(
            conn.execute(
                text(
                    "SELECT COUNT(*) FROM information_schema.ROUTINES "
                    "WHERE ROUTINE_SCHEMA = DATABASE() AND ROUTINE_NAME = :p"
                ),
                {"p": CHECK_PROCEDURE},
            ).scalar_one()
        )

    def fenced_tables(self, conn: Connection) -> set[str]:
        names = set(self._triggers(conn))
        if not self._has_procedure(conn):
            return set()
        tables = {table for _name, table in names}
        return {t for t in tables if all((_trigger(t, s), t) in names for s in OPERATIONS)}

    def existing_tables(self, conn: Connection, names: tuple[str, ...]) -> set[str]:
        query = text(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
            "AND TABLE_TYPE = 'BASE TABLE' AND TABLE_NAME IN :names"
        ).bindparams(bindparam("names", expanding=True))
        return {r[0] for r in conn.execute(query, {"names": list(names)})}

    def backend_id(self, conn: Connection) -> int:
        return int(conn.execute(text("SELECT CONNECTION_ID()")).scalar_one())

    def begin_raise(self, conn: Connection, wait: float) -> int | None:
        conn.exec_driver_sql(f"SET SESSION innodb_lock_wait_timeout = {max(1, math.ceil(wait))}")
        row = conn.execute(
            text(f"SELECT epoch FROM {FENCE_TABLE} WHERE service = :s FOR UPDATE"), {"s": SERVICE}
        ).first()
        return None if row is None else int(row[0])

    def blockers(self, conn: Connection, backend: int) -> list[int]:
        # MariaDB and MySQL 5.7 list lock waits in information_schema; MySQL 8 in
        # performance_schema.
        queries = (
            "SELECT b.trx_mysql_thread_id FROM information_schema.INNODB_LOCK_WAITS w "
            "JOIN information_schema.INNODB_TRX b ON b.trx_id = w.blocking_trx_id "
            "JOIN information_schema.INNODB_TRX r ON r.trx_id = w.requesting_trx_id "
            "WHERE r.trx_mysql_thread_id = :t",
            "SELECT b.trx_mysql_thread_id FROM performance_schema.data_lock_waits w "
            "JOIN information_schema.INNODB_TRX b "
            "ON b.trx_id = w.BLOCKING_ENGINE_TRANSACTION_ID "
            "JOIN information_schema.INNODB_TRX r "
            "ON r.trx_id = w.REQUESTING_ENGINE_TRANSACTION_ID "
            "WHERE r.trx_mysql_thread_id = :t",
        )
        for query in queries:
            try:
                with conn.begin_nested():
                    return [int(r[0]) for r in conn.execute(text(query), {"t": backend})]
            except DBAPIError:
                continue
        return []

    def end_backend(self, conn: Connection, backend: int) -> None:
        conn.exec_driver_sql(f"KILL CONNECTION {int(backend)}")

    def cancel(self, conn: Connection, backend: int) -> None:
        conn.exec_driver_sql(f"KILL QUERY {int(backend)}")

    def check_session(self, url: str) -> str | None:
        parsed = make_url(url)
        if driver_of(parsed, "mysqldb") not in DRIVERS:
            return (
                f"the driver {parsed.drivername} cannot run an init_command on connect; "
                "the fence needs mysql+pymysql or mysql+mysqldb (or mariadb+ either)"
            )
        if "init_command" in parsed.query:
            return (
                "the database URL already has an init_command; the fence needs its own to "
                "give the scheduler's connections their epoch"
            )
        return None

    def scheduler_env(self, epoch: int, url: str, environ: dict[str, str]) -> dict[str, str]:
        command = f"SET {VARIABLE} = {int(epoch)}"
        with_epoch = make_url(url).update_query_dict({"init_command": command})
        return {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": with_epoch.render_as_string(False)}
