"""Database backups and restores on real servers: MariaDB for a user whose password holds
the characters an option file treats specially; PostgreSQL and MariaDB with the fence in
Airflow's database."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from airflow_sentinel.fence import REJECTION
from airflow_sentinel.upgrade import db_fence
from airflow_sentinel.upgrade.databases import open_database
from airflow_sentinel.upgrade.db_fence import open_airflow_fence
from tests.support.fence_db import FENCE_BACKENDS, airflow_like_database, scheduler_engine

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


# -- the fence in Airflow's database: backup, restore, and the rollback's repair ---------
def _work(url: str) -> list[tuple[object, ...]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        found = [tuple(r) for r in conn.execute(sa.text("SELECT id, state FROM dag_run"))]
    engine.dispose()
    return sorted(found, key=repr)


def _dumped(dump: Path, backend: str) -> str:
    """What the dump holds: its table of contents (PostgreSQL's is compressed), its text."""
    if backend == "postgresql":
        listing = subprocess.run(
            ["pg_restore", "-l", str(dump)], capture_output=True, text=True, check=False
        )
        assert listing.returncode == 0, listing.stderr
        return listing.stdout
    return dump.read_text()


def _refused(url: str, epoch: int) -> bool:
    """Whether a scheduler's connection at ``epoch`` is refused a write to dag_run."""
    engine = scheduler_engine(url, epoch)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE dag_run SET state = state"))
    except sa.exc.DBAPIError as exc:
        assert REJECTION in str(exc)
        return True
    finally:
        engine.dispose()
    return False


@pytest.mark.parametrize("backend", FENCE_BACKENDS)
@pytest.mark.parametrize("at_restore", ["installed again", "still removed"])
def test_a_restore_keeps_the_fence_out_and_the_rollback_makes_it_whole_at_its_epoch(
    backend: str, at_restore: str, tmp_path: Path
) -> None:
    """The migrate step removed the fence after the backup; the migration then failed (the
    fence is still removed) or a later step did (it was installed again). The restore
    brings the tables back with the triggers of the backup, not the fence's table; the
    repair makes the fence whole at the epoch it had, and it rejects a stale scheduler."""
    with airflow_like_database(backend) as url:
        fence = open_airflow_fence("on", url, wait=5)
        assert fence is not None
        try:
            fence.install()
            fence.reset(7)
            engine = sa.create_engine(url)
            with engine.begin() as conn:
                conn.execute(sa.text("INSERT INTO dag_run VALUES (1, 'a', 'success')"))
            engine.dispose()
            before = _work(url)
            database = open_database(url)
            dump = tmp_path / f"database.{database.suffix}"
            database.backup(dump)
            listed = _dumped(dump, backend)
            assert "sentinel_fence_dag_run" in listed  # the triggers come with their tables
            assert "CREATE TABLE `sentinel_fence`" not in listed  # MariaDB's text
            assert "TABLE public sentinel_fence " not in listed  # PostgreSQL's contents

            facts: dict[str, object] = {}
            assert db_fence.remove_before_migration(fence, facts, lambda: None)
            assert facts["fence"] == {  # what a resumed step knows
                "installed": True,
                "epoch": 7,
                "fenced": ["dag_run", "task_instance", "job"],
                "database": fence.description,
            }
            assert not fence.state().table and fence.state().fenced == ()
            with sa.create_engine(url).begin() as conn:  # what the migration did
                conn.execute(sa.text("INSERT INTO dag_run VALUES (2, 'b', 'queued')"))
            if at_restore == "installed again":
                note = db_fence.install_after_migration(fence, facts)
                assert note.endswith(
                    "installed again at epoch 7 (fenced: dag_run, task_instance, job)"
                )
            database.restore(dump)
            assert _work(url) == before
            note = db_fence.repair_after_restore(fence, facts)
            assert note == "; fence whole at epoch 7 (fenced: dag_run, task_instance, job)"
            state = fence.state()
            assert state.complete and state.epoch == 7
            assert _refused(url, 6) and not _refused(url, 7)
        finally:
            fence.close()
