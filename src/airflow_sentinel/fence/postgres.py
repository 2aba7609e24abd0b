"""The fence on PostgreSQL.

The scheduler's connections carry their epoch as a custom setting, ``sentinel.epoch``,
given through libpq's ``PGOPTIONS``. A statement-level trigger on each fenced table takes a
shared advisory lock (held to the end of the transaction, kept in memory: no row is
written, so the check costs no WAL) and then reads the fence's epoch; the raise takes the
same lock exclusively. Under read committed, every statement of the check function reads a
fresh snapshot, so the epoch is read after the lock is granted; under a stricter isolation
level the row is also locked for share, which turns a raise that committed after the
snapshot into a serialization failure: rejected either way.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url

from airflow_sentinel.fence.base import FENCE_TABLE, REJECTION, SERVICE, Dialect, driver_of

# The advisory lock (two-key form, apart from the one-key locks Airflow takes itself).
LOCK_CLASS = 1397050964  # "SENT"
LOCK_SCHEDULER = 1
SETTING = "sentinel.epoch"
CHECK_FUNCTION = "sentinel_fence_check"
TRIGGER_PREFIX = "sentinel_fence_"
# The drivers built on libpq, which reads PGOPTIONS (postgresql:// uses one of them).
DRIVERS = ("psycopg", "psycopg2", "psycopg2cffi")

CREATE_TABLE = f"""
CREATE TABLE IF NOT EXISTS {FENCE_TABLE} (
    service VARCHAR(64) PRIMARY KEY,
    epoch BIGINT NOT NULL,
    raised_by VARCHAR(250),
    raised_at TIMESTAMP WITH TIME ZONE
)"""

CREATE_ROW = f"""
INSERT INTO {FENCE_TABLE} (service, epoch) VALUES ('{SERVICE}', 0)
ON CONFLICT (service) DO NOTHING"""

CREATE_CHECK = f"""
CREATE OR REPLACE FUNCTION {CHECK_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $fence$
DECLARE
    mine TEXT := current_setting('{SETTING}', true);
    fence BIGINT;
BEGIN
    IF mine IS NULL OR mine = '' THEN
        RETURN NULL;  -- not a scheduler's connection
    END IF;
    PERFORM pg_advisory_xact_lock_shared({LOCK_CLASS}, {LOCK_SCHEDULER});
    IF current_setting('transaction_isolation') = 'read committed' THEN
        SELECT epoch INTO fence FROM {FENCE_TABLE} WHERE service = '{SERVICE}';
    ELSE
        SELECT epoch INTO fence FROM {FENCE_TABLE} WHERE service = '{SERVICE}' FOR SHARE;
    END IF;
    -- The message is built by concatenation: no placeholders for a driver to expand.
    IF fence IS NULL THEN
        RAISE EXCEPTION USING MESSAGE = '{REJECTION}: no fence row for the scheduler; '
            || TG_OP || ' on ' || TG_TABLE_NAME || ' refused';
    END IF;
    IF mine::BIGINT < fence THEN
        RAISE EXCEPTION USING MESSAGE = '{REJECTION}: this scheduler''s epoch ' || mine
            || ' is older than the fence''s ' || fence || '; ' || TG_OP || ' on '
            || TG_TABLE_NAME || ' refused';
    END IF;
    RETURN NULL;
END
$fence$"""


class Postgres(Dialect):
    name = "postgresql"

    def install(self, conn: Connection, tables: tuple[str, ...]) -> None:
        # Two controllers that start together both install: one after the other (the lock
        # is the transaction's), and each change is whole or absent for everyone else.
        conn.execute(text("SELECT pg_advisory_xact_lock(:c, 0)"), {"c": LOCK_CLASS})
        conn.exec_driver_sql(CREATE_TABLE)
        conn.exec_driver_sql(CREATE_ROW)
        conn.exec_driver_sql(CREATE_CHECK)
        for table in tables:
            trigger = f"{TRIGGER_PREFIX}{table}"
            conn.exec_driver_sql(f'DROP TRIGGER IF EXISTS {trigger} ON "{table}"')
            conn.exec_driver_sql(
                f'CREATE TRIGGER {trigger} BEFORE INSERT OR UPDATE OR DELETE ON "{table}" '
                f"FOR EACH STATEMENT EXECUTE FUNCTION {CHECK_FUNCTION}()"
            )

    def remove(self, conn: Connection) -> None:
        for table in sorted(self.fenced_tables(conn, enabled_only=False)):
            conn.exec_driver_sql(f'DROP TRIGGER IF EXISTS {TRIGGER_PREFIX}{table} ON "{table}"')
        conn.exec_driver_sql(f"DROP FUNCTION IF EXISTS {CHECK_FUNCTION}()")
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {FENCE_TABLE}")

    def fenced_tables(self, conn: Connection, enabled_only: bool = True) -> set[str]:
        rows = conn.execute(
            text(
                "SELECT c.relname, t.tgname, t.tgenabled FROM pg_trigger t "
                "JOIN pg_class c ON c.oid = t.tgrelid "
                "WHERE NOT t.tgisinternal AND pg_table_is_visible(c.oid) "
                "AND t.tgname LIKE 'sentinel_fence_%'"
            )
        )
        return {
            r.relname
            for r in rows
            if r.tgname == f"{TRIGGER_PREFIX}{r.relname}"
            and (not enabled_only or r.tgenabled != "D")
        }

    def existing_tables(self, conn: Connection, names: tuple[str, ...]) -> set[str]:
        rows = conn.execute(
            text(
                "SELECT c.relname FROM pg_class c WHERE c.relkind IN ('r', 'p') "
                "AND pg_table_is_visible(c.oid) AND c.relname = ANY(:names)"
            ),
            {"names": list(names)},
        )
        return {r.relname for r in rows}

    def backend_id(self, conn: Connection) -> int:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())

    def begin_raise(self, conn: Connection, wait: float) -> int | None:
        ms = max(1, int(wait * 1000))
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {ms}")
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ms + 5000}")
        conn.execute(
            text("SELECT pg_advisory_xact_lock(:c, :k)"), {"c": LOCK_CLASS, "k": LOCK_SCHEDULER}
        )
        # A check under repeatable read also holds the row for share: wait for those too.
        row = conn.execute(
            text(f"SELECT epoch FROM {FENCE_TABLE} WHERE service = :s FOR UPDATE"), {"s": SERVICE}
        ).first()
        return None if row is None else int(row[0])

    def blockers(self, conn: Connection, backend: int) -> list[int]:
        rows = conn.execute(text("SELECT unnest(pg_blocking_pids(:p))"), {"p": backend})
        return [int(r[0]) for r in rows]

    def end_backend(self, conn: Connection, backend: int) -> None:
        conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": backend})

    def cancel(self, conn: Connection, backend: int) -> None:
        conn.execute(text("SELECT pg_cancel_backend(:p)"), {"p": backend})

    def check_session(self, url: str) -> str | None:
        parsed = make_url(url)
        if driver_of(parsed, "psycopg2") not in DRIVERS:
            return (
                f"the driver {parsed.drivername} does not read PGOPTIONS; the fence needs "
                "postgresql+psycopg or postgresql+psycopg2"
            )
        return None

    def scheduler_env(self, epoch: int, url: str, environ: dict[str, str]) -> dict[str, str]:
        mine = f"-c {SETTING}={int(epoch)}"
        parsed = make_url(url)
        options = parsed.query.get("options")
        if options is not None:
            # libpq's options in the URL replace PGOPTIONS: the epoch goes beside them.
            first = options if isinstance(options, str) else " ".join(options)
            with_epoch = parsed.update_query_dict({"options": f"{first} {mine}".strip()})
            return {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": with_epoch.render_as_string(False)}
        return {"PGOPTIONS": f"{environ.get('PGOPTIONS', '').strip()} {mine}".strip()}
