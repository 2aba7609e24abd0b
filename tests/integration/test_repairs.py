"""The permission rows Flask-AppBuilder's race leaves behind, removed on every SQL database,
and nothing else with them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from airflow_sentinel.upgrade import repairs
from airflow_sentinel.upgrade.databases import Database, open_database
from tests.support.backends import fresh_metastore_url

META = sa.MetaData()
ACTIONS = sa.Table(
    "ab_permission",
    META,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(100)),
)
RESOURCES = sa.Table(
    "ab_view_menu",
    META,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(250)),
)
VIEWS = sa.Table(
    "ab_permission_view",
    META,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("permission_id", sa.Integer, sa.ForeignKey("ab_permission.id"), nullable=True),
    sa.Column("view_menu_id", sa.Integer, sa.ForeignKey("ab_view_menu.id"), nullable=True),
    sa.UniqueConstraint("permission_id", "view_menu_id"),
)
ROLES = sa.Table(
    "ab_role", META, sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.String(64))
)
LINKS = sa.Table(
    "ab_permission_view_role",
    META,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("permission_view_id", sa.Integer, sa.ForeignKey("ab_permission_view.id")),
    sa.Column("role_id", sa.Integer, sa.ForeignKey("ab_role.id")),
)


@pytest.fixture(params=("sqlite", "mariadb", "postgresql"))
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with fresh_metastore_url(str(request.param), tmp_path) as url:
        yield open_database(url)


def _fill(engine: sa.Engine) -> None:
    META.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(ACTIONS), [{"id": 1, "name": "can_read"}])
        conn.execute(sa.insert(RESOURCES), [{"id": 1, "name": "DAG:a"}, {"id": 2, "name": "DAG:b"}])
        conn.execute(
            sa.insert(VIEWS),
            [
                {"id": 1, "permission_id": 1, "view_menu_id": 1},  # sound
                {"id": 2, "permission_id": None, "view_menu_id": 2},  # the race's loser
                {"id": 3, "permission_id": None, "view_menu_id": 1},
                {"id": 4, "permission_id": 1, "view_menu_id": None},
                {"id": 5, "permission_id": 1, "view_menu_id": 2},  # sound
            ],
        )
        conn.execute(sa.insert(ROLES), [{"id": 1, "name": "Viewer"}])
        conn.execute(
            sa.insert(LINKS),
            [
                {"id": 1, "permission_view_id": 1, "role_id": 1},
                {"id": 2, "permission_view_id": 2, "role_id": 1},
                {"id": 3, "permission_view_id": 5, "role_id": 1},
            ],
        )


def _rows(engine: sa.Engine) -> dict[str, list[tuple[object, ...]]]:
    with engine.connect() as conn:
        return {
            t.name: [tuple(r) for r in conn.execute(sa.select(t).order_by(t.c.id))]
            for t in META.sorted_tables
        }


def test_only_the_rows_without_an_action_or_resource_go_with_their_role_links(
    database: Database,
) -> None:
    engine = database.engine()
    _fill(engine)
    before = _rows(engine)
    assert repairs.dangling_permissions(database) == [2, 3, 4]

    removed = repairs.remove_dangling_permissions(database)

    assert removed == {"ab_permission_view_role": 1, "ab_permission_view": 3}
    after = _rows(engine)
    assert after["ab_permission_view"] == [(1, 1, 1), (5, 1, 2)]
    assert after["ab_permission_view_role"] == [(1, 1, 1), (3, 5, 1)]
    for table in ("ab_permission", "ab_view_menu", "ab_role"):
        assert after[table] == before[table]
    assert repairs.remove_dangling_permissions(database) == {}  # nothing left to do
    engine.dispose()


def test_a_database_without_the_tables_has_nothing_to_repair(database: Database) -> None:
    assert repairs.dangling_permissions(database) == []
    assert repairs.remove_dangling_permissions(database) == {}
