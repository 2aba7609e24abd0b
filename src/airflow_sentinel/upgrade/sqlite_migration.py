"""Migrating a SQLite metadata database without losing the rows that reference a rebuilt
table.

SQLite cannot alter a column, so Alembic rebuilds the table: a copy, then DROP TABLE of the
original. Airflow turns foreign keys on for every SQLite connection, and with them on, the
DROP deletes the rows of every table that references the original with ON DELETE CASCADE.
Airflow 3.0's migration 1cdc775ca98f rebuilds dag_run, and so deletes every task instance,
XCom and rendered template with it.

SQLite's own procedure for schema changes is the way out: foreign keys off for the whole
migration, then ``PRAGMA foreign_key_check`` to prove that every reference still resolves
(`check`). The bootstrap below runs the target's `airflow` command with one more connect
handler, which turns them off after Airflow's has turned them on, and keeps the migrations'
own ``PRAGMA foreign_keys=ON`` from turning them back on.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

# Run by the target environment's python as `python -c BOOTSTRAP db migrate`.
BOOTSTRAP = """
import re, sys
from sqlalchemy import event
from airflow import settings
from airflow.utils import orm_event_handlers

airflow_handlers = orm_event_handlers.setup_event_handlers
turns_on = re.compile(r"^\\s*PRAGMA\\s+foreign_keys\\s*=\\s*(on|1|true|yes)\\s*;?\\s*$", re.I)

def keys_off(dbapi_connection, record):
    dbapi_connection.execute("PRAGMA foreign_keys=OFF")

def keep_off(conn, cursor, statement, parameters, context, executemany):
    if turns_on.match(statement):
        return "PRAGMA foreign_keys=OFF", parameters
    return statement, parameters

def setup_event_handlers(engine):
    airflow_handlers(engine)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", keys_off)
        event.listen(engine, "before_cursor_execute", keep_off, retval=True)

settings.setup_event_handlers = setup_event_handlers
settings.dispose_orm()
settings.configure_orm()
from airflow.__main__ import main
sys.argv = ["airflow", *sys.argv[1:]]
sys.exit(main())
"""


def broken_references(path: Path) -> list[str]:
    """Tables with rows whose foreign key points at nothing, as "table: N rows"."""
    with contextlib.closing(sqlite3.connect(path, timeout=60)) as conn:
        rows = conn.execute("PRAGMA foreign_key_check").fetchall()
    counts: dict[str, int] = {}
    for table, *_ in rows:
        counts[table] = counts.get(table, 0) + 1
    return [f"{table}: {n} rows" for table, n in sorted(counts.items())]
