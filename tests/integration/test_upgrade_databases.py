"""Database backups and restores on a real MariaDB, for a user whose password holds the
characters an option file treats specially."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from airflow_sentinel.upgrade.databases import open_database

ADMIN = "mysql+pymysql://root@127.0.0.1:3306/test"
DATABASE = "sentinel_dump_test"
USER = "sentinel_dump"
PASSWORD = "a\"b\\c#d'e f"  # a quote, a backslash, a comment sign, an apostrophe, a space


@pytest.fixture
def user_url() -> Iterator[str]:
    admin = sa.create_engine(ADMIN)
    with admin.begin() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {DATABASE}"))
        conn.execute(sa.text(f"CREATE DATABASE {DATABASE}"))
        conn.execute(sa.text(f"DROP USER IF EXISTS '{USER}'@'%'"))
        conn.execute(sa.text(f"CREATE USER '{USER}'@'%' IDENTIFIED BY :pw"), {"pw": PASSWORD})
        conn.execute(sa.text(f"GRANT ALL ON {DATABASE}.* TO '{USER}'@'%'"))
    try:
        yield f"mysql://{USER}:{quote(PASSWORD, safe='')}@127.0.0.1:3306/{DATABASE}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {DATABASE}"))
            conn.execute(sa.text(f"DROP USER IF EXISTS '{USER}'@'%'"))
        admin.dispose()


def rows(engine: sa.Engine) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text("SELECT id, name FROM work ORDER BY id"))]


def test_a_password_with_quotes_and_hashes_backs_up_and_restores(
    user_url: str, tmp_path: Path
) -> None:
    database = open_database(user_url)
    engine = database.engine()
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE work (id INT PRIMARY KEY, name VARCHAR(20))"))
        conn.execute(sa.text("INSERT INTO work VALUES (1, 'kept'), (2, 'also kept')"))
    before = rows(engine)
    dump = tmp_path / "database.sql"
    database.backup(dump)
    assert dump.stat().st_mode & 0o777 == 0o600
    assert PASSWORD not in dump.read_text()
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM work WHERE id = 1"))
        conn.execute(sa.text("INSERT INTO work VALUES (3, 'new')"))
    database.restore(dump)
    assert rows(engine) == before
    engine.dispose()
