"""Rows that a target's migration cannot carry and that hold nothing, removed before it runs.

Flask-AppBuilder's permission sync (Airflow 2's web server and every DAG-parsing process)
races with itself: when two processes create the same action at once, the loser commits a
permission row whose action is NULL (Flask-AppBuilder issue 1383). Such a row grants
nothing; the FAB provider's migration that makes both columns NOT NULL (3.5.0, which
Airflow 3 installs) then fails on it, and the upgrade would roll back every time. The rows
and the role links that point at them are deleted in one transaction, after the backup
(a rollback brings them back) and counted, so the survival check knows they went on purpose.
"""

from __future__ import annotations

import sqlalchemy as sa

from airflow_sentinel.upgrade.databases import Database

PERMISSIONS = "ab_permission_view"
ROLE_LINKS = "ab_permission_view_role"
_VIEWS = sa.table(
    PERMISSIONS, sa.column("id"), sa.column("permission_id"), sa.column("view_menu_id")
)
_LINKS = sa.table(ROLE_LINKS, sa.column("permission_view_id"))
_DANGLING = sa.select(_VIEWS.c.id).where(
    sa.or_(_VIEWS.c.permission_id.is_(None), _VIEWS.c.view_menu_id.is_(None))
)


def dangling_permissions(database: Database) -> list[int]:
    """Ids of permission rows without an action or a resource; none without the table."""
    if PERMISSIONS not in database.tables():
        return []
    engine = database.engine()
    try:
        with engine.connect() as conn:
            return sorted(int(row[0]) for row in conn.execute(_DANGLING))
    finally:
        engine.dispose()


def remove_dangling_permissions(database: Database) -> dict[str, int]:
    """Delete them and their role links; rows removed per table (empty when none)."""
    ids = dangling_permissions(database)
    if not ids:
        return {}
    has_links = ROLE_LINKS in database.tables()
    engine = database.engine()
    try:
        with engine.begin() as conn:
            removed = {}
            if has_links:
                unlinked = sa.delete(_LINKS).where(_LINKS.c.permission_view_id.in_(ids))
                removed[ROLE_LINKS] = conn.execute(unlinked).rowcount
            dropped = sa.delete(_VIEWS).where(_VIEWS.c.id.in_(ids))
            removed[PERMISSIONS] = conn.execute(dropped).rowcount
    finally:
        engine.dispose()
    return {table: count for table, count in removed.items() if count}


def describe(removed: dict[str, int]) -> str:
    rows = removed.get(PERMISSIONS, 0)
    links = removed.get(ROLE_LINKS, 0)
    return (
        f"removed {rows} permission rows without an action (Flask-AppBuilder's race) and "
        f"{links} role links to them"
    )
