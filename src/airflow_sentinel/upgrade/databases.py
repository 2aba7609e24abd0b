"""Backup and restore of Airflow's metadata database, one class per database type.

The sentinel's own tables (``sentinel_*``) are left out of both: a restore must never move
a lease epoch backwards or drop the upgrade lock. The fence's triggers and check (see
airflow_sentinel.fence) are dumped with Airflow's tables and come back with them; its
table, like all of ours, does not (db_fence says what the rollback does about that).
Passwords go to the dump tools through their environment or a private option file, never
through their argument list.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError

from airflow_sentinel.metastore.sql import create_sql_engine
from airflow_sentinel.metastore.urls import normalize_metastore_url, scrub
from airflow_sentinel.upgrade.installation import UpgradeError, last_line

OWN_PREFIX = "sentinel_"
# Tables whose rows are work or settings an operator would miss after a restore.
WORK_TABLES = ("dag_run", "task_instance", "xcom", "variable", "connection", "slot_pool")


class Database(ABC):
    """Airflow's metadata database."""

    suffix: str
    tools: tuple[str, ...] = ()

    def __init__(self, url: str) -> None:
        self.url = url
        self.sa_url: URL = make_url(normalize_metastore_url(url))

    def missing_tools(self) -> list[str]:
        return [t for t in self.tools if _tool(t) is None]

    @abstractmethod
    def backup(self, target: Path) -> None: ...

    @abstractmethod
    def restore(self, source: Path) -> None: ...

    def engine(self) -> sa.Engine:
        return create_sql_engine(self.sa_url.render_as_string(hide_password=False), 30)

    def check(self) -> None:
        engine = self.engine()
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except SQLAlchemyError as exc:
            raise UpgradeError(self._explain("cannot reach the database", exc)) from None
        finally:
            engine.dispose()

    def tables(self) -> list[str]:
        engine = self.engine()
        try:
            names = sa.inspect(engine).get_table_names()
        finally:
            engine.dispose()
        return sorted(n for n in names if not n.startswith(OWN_PREFIX))

    def row_counts(self, tables: tuple[str, ...] | None = None) -> dict[str, int]:
        """Rows per table: of ``tables`` where present, or of every Airflow table."""
        present = set(self.tables())
        tables = tuple(sorted(present)) if tables is None else tables
        engine = self.engine()
        try:
            with engine.connect() as conn:
                count = sa.select(sa.func.count())
                return {
                    t: int(conn.execute(count.select_from(sa.table(t))).scalar() or 0)
                    for t in tables
                    if t in present
                }
        finally:
            engine.dispose()

    def _explain(self, what: str, exc: BaseException) -> str:
        original = getattr(exc, "orig", None) or exc
        return scrub(f"{what}: {last_line(str(original))}", self.url)

    def _run_tool(self, argv: list[str], env: dict[str, str], **kwargs: object) -> None:
        kwargs.setdefault("stdout", subprocess.PIPE)
        done = subprocess.run(  # type: ignore[call-overload]
            argv, env=env, stderr=subprocess.PIPE, text=True, check=False, **kwargs
        )
        if done.returncode != 0:
            raise UpgradeError(scrub(f"{argv[0]} failed: {_tool_error(done.stderr)}", self.url))


def _tool_error(stderr: str) -> str:
    """The tool's own error line (pg_restore follows it with the SQL that failed)."""
    for line in stderr.splitlines():
        if "error:" in line.lower() or line.upper().startswith("ERROR"):
            return line.strip()[:300]
    return last_line(stderr)


def _tool(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


class SqliteDatabase(Database):
    suffix = "sqlite"

    @property
    def path(self) -> Path:
        return Path(self.sa_url.database or "")

    def backup(self, target: Path) -> None:
        """SQLite's online backup API: a consistent copy while others may write."""
        target.touch(mode=0o600)
        source = contextlib.closing(sqlite3.connect(self.path, timeout=30))
        try:
            with source as src, contextlib.closing(sqlite3.connect(target)) as dst:
                src.backup(dst)
                own = dst.execute(
                    "SELECT name FROM sqlite_master WHERE type='table' AND name LIKE ?",
                    (f"{OWN_PREFIX}%",),
                ).fetchall()
                for (name,) in own:
                    dst.execute(f'DROP TABLE "{name}"')
                dst.commit()
        except sqlite3.Error as exc:  # a full disk, a read-only folder, a locked database
            raise UpgradeError(f"backup of {self.path} into {target} failed: {exc}") from None

    def restore(self, source: Path) -> None:
        """Replace every table but ours with the backup's, in one transaction, in place.

        The file itself is not replaced: controllers may hold it open for their leases.
        """
        conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            conn.execute("PRAGMA foreign_keys=OFF")
            conn.execute("ATTACH DATABASE ? AS backup", (str(source),))
            conn.execute("BEGIN IMMEDIATE")
            _drop_sqlite_objects(conn)
            _copy_sqlite_objects(conn)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise UpgradeError(f"restore of {self.path} failed: {exc}") from None
        finally:
            conn.close()


def _objects(conn: sqlite3.Connection, schema: str) -> list[tuple[str, str, str | None]]:
    return conn.execute(
        f"SELECT type, name, sql FROM {schema}.sqlite_master "  # noqa: S608 (names from the catalog)
        "WHERE name NOT LIKE 'sqlite_%' AND tbl_name NOT LIKE ?",
        (f"{OWN_PREFIX}%",),
    ).fetchall()


def _drop_sqlite_objects(conn: sqlite3.Connection) -> None:
    order = {"trigger": 0, "view": 1, "index": 2, "table": 3}
    for kind, name, sql in sorted(_objects(conn, "main"), key=lambda o: order.get(o[0], 9)):
        if kind == "index" and sql is None:
            continue  # automatic index: dropped with its table
        conn.execute(f'DROP {kind.upper()} IF EXISTS main."{name}"')


def _copy_sqlite_objects(conn: sqlite3.Connection) -> None:
    order = {"table": 0, "index": 1, "view": 2, "trigger": 3}
    for kind, name, sql in sorted(_objects(conn, "backup"), key=lambda o: order.get(o[0], 9)):
        if sql is None:
            continue
        conn.execute(sql)
        if kind == "table":
            conn.execute(f'INSERT INTO main."{name}" SELECT * FROM backup."{name}"')  # noqa: S608 (names from the catalog)
    has_sequence = conn.execute(
        "SELECT 1 FROM backup.sqlite_master WHERE name = 'sqlite_sequence'"
    ).fetchone()
    if has_sequence:
        conn.execute("DELETE FROM main.sqlite_sequence WHERE name NOT LIKE ?", (f"{OWN_PREFIX}%",))
        conn.execute("INSERT INTO main.sqlite_sequence SELECT * FROM backup.sqlite_sequence")


# The functions in the schema, by name and with their argument types (to drop them by).
FUNCTIONS = (
    "SELECT p.proname, p.oid::regprocedure::text FROM pg_proc p "
    "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = current_schema()"
)


class PostgresDatabase(Database):
    suffix = "pgdump"
    tools = ("pg_dump", "pg_restore")

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        url = self.sa_url
        env.update(
            PGHOST=url.host or "",
            PGPORT=str(url.port or 5432),
            PGUSER=url.username or "",
            PGDATABASE=url.database or "",
        )
        if url.password:
            env["PGPASSWORD"] = str(url.password)
        if "sslmode" in url.query:
            env["PGSSLMODE"] = str(url.query["sslmode"])
        return env

    def backup(self, target: Path) -> None:
        target.touch(mode=0o600)
        self._run_tool(
            ["pg_dump", "-Fc", "--exclude-table", f"{OWN_PREFIX}*", "-f", str(target)],
            self._env(),
        )

    def restore(self, source: Path) -> None:
        self._drop_objects()
        self._run_tool(
            [
                "pg_restore",
                "--single-transaction",
                "--exit-on-error",
                "-d",
                self._env()["PGDATABASE"],
                str(source),
            ],
            self._env(),
        )

    def _drop_objects(self) -> None:
        engine = self.engine()
        statements = (
            (
                "SELECT table_name FROM information_schema.views "
                "WHERE table_schema = current_schema()",
                "VIEW",
            ),
            ("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()", "TABLE"),
            (
                "SELECT sequencename FROM pg_sequences WHERE schemaname = current_schema()",
                "SEQUENCE",
            ),
            (
                "SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
                "WHERE n.nspname = current_schema() AND t.typtype = 'e'",
                "TYPE",
            ),
        )
        try:
            with engine.begin() as conn:
                for query, kind in statements:
                    for (name,) in conn.execute(sa.text(query)).fetchall():
                        if not name.startswith(OWN_PREFIX):
                            conn.execute(sa.text(f'DROP {kind} IF EXISTS "{name}" CASCADE'))
                # The fence's check: pg_dump dumped it (and its triggers, with the tables
                # they are on), and pg_restore creates it again, which it cannot beside one
                # that exists. Its triggers went with their tables; its table stays.
                for name, function in conn.execute(sa.text(FUNCTIONS)).fetchall():
                    if name.startswith(OWN_PREFIX):
                        conn.execute(sa.text(f"DROP FUNCTION IF EXISTS {function}"))
        except SQLAlchemyError as exc:
            raise UpgradeError(self._explain("cannot clear the database", exc)) from None
        finally:
            engine.dispose()


class MysqlDatabase(Database):
    suffix = "sql"

    @property
    def tools(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("mariadb-dump|mysqldump", "mariadb|mysql")

    def missing_tools(self) -> list[str]:
        return [t.replace("|", " or ") for t in self.tools if _tool(*t.split("|")) is None]

    @contextlib.contextmanager
    def _option_file(self) -> Iterator[str]:
        """The connection, password included, in a file only the owner can read."""
        url = self.sa_url
        lines = ["[client]", f"host={url.host}", f"port={url.port or 3306}"]
        if url.username:
            lines.append(f"user={url.username}")
        if url.password:
            lines.append(f"password={_option_value(str(url.password))}")
        fd, path = tempfile.mkstemp(prefix="sentinel-my-", suffix=".cnf")
        try:
            os.write(fd, ("\n".join(lines) + "\n").encode())
            os.close(fd)
            yield path
        finally:
            Path(path).unlink()

    def backup(self, target: Path) -> None:
        dump = _tool("mariadb-dump", "mysqldump") or "mysqldump"
        database = self.sa_url.database or ""
        ignored = [f"--ignore-table={database}.{t}" for t in self._own_tables()]
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with self._option_file() as options, os.fdopen(fd, "w") as out:
            argv = [dump, f"--defaults-extra-file={options}", "--single-transaction"]
            argv += ["--routines", "--triggers", *ignored, database]
            self._run_tool(argv, dict(os.environ), stdout=out)

    def restore(self, source: Path) -> None:
        self._drop_tables()
        client = _tool("mariadb", "mysql") or "mysql"
        with self._option_file() as options, source.open() as dump:
            argv = [client, f"--defaults-extra-file={options}", self.sa_url.database or ""]
            self._run_tool(argv, dict(os.environ), stdin=dump)

    def _own_tables(self) -> list[str]:
        engine = self.engine()
        try:
            return [n for n in sa.inspect(engine).get_table_names() if n.startswith(OWN_PREFIX)]
        finally:
            engine.dispose()

    def _drop_tables(self) -> None:
        engine = self.engine()
        try:
            with engine.begin() as conn:
                conn.execute(sa.text("SET FOREIGN_KEY_CHECKS = 0"))
                for name in sa.inspect(conn).get_view_names():
                    conn.execute(sa.text(f"DROP VIEW IF EXISTS `{name}`"))
                for name in sa.inspect(conn).get_table_names():
                    if not name.startswith(OWN_PREFIX):
                        conn.execute(sa.text(f"DROP TABLE IF EXISTS `{name}`"))
                conn.execute(sa.text("SET FOREIGN_KEY_CHECKS = 1"))
        except SQLAlchemyError as exc:
            raise UpgradeError(self._explain("cannot clear the database", exc)) from None
        finally:
            engine.dispose()


def _option_value(value: str) -> str:
    """A value for a MySQL option file, quoted so that #, quotes, spaces and backslashes
    in it are read back as they were."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def open_database(url: str) -> Database:
    try:
        name = make_url(normalize_metastore_url(url)).get_backend_name()
    except ValueError as exc:
        raise UpgradeError(f"Airflow's sql_alchemy_conn: {exc}") from None
    kinds: dict[str, type[Database]] = {
        "sqlite": SqliteDatabase,
        "postgresql": PostgresDatabase,
        "mysql": MysqlDatabase,
    }
    return kinds[name](url)
