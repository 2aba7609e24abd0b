"""The survival check: every table of the backup followed through the target's migrations."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from airflow_sentinel.upgrade import sqlite_migration
from airflow_sentinel.upgrade.survival import compare, summary

# Counts as taken from a real 2.10.5 SQLite database and after Airflow 3.3.2's own
# migration, which dropped the task instances and XComs with the rebuilt dag_run.
BEFORE = {
    "dag_run": 2,
    "task_instance": 4,
    "xcom": 4,
    "log": 6,
    "dataset": 1,
    "task_fail": 3,
    "serialized_dag": 3,
    "variable": 1,
}


def test_the_loss_of_airflow_3s_sqlite_migration_is_named_table_by_table() -> None:
    after = {"dag_run": 2, "task_instance": 0, "xcom": 0, "_xcom_archive": 0, "log": 7}
    after |= {"asset": 1, "serialized_dag": 0, "variable": 1}
    result = compare(BEFORE, after, "2.10.5", "3.3.2")
    assert not result.ok
    assert result.losses == [
        "task_instance: 4 -> 0: 4 rows lost",
        "xcom: 4 -> xcom 0 + _xcom_archive 0: 4 rows lost",
    ]
    assert summary(result, len(BEFORE)).startswith("rows lost in the migration: task_instance")


def test_renames_splits_drops_and_growth_are_not_losses() -> None:
    after = {"dag_run": 2, "task_instance": 4, "xcom": 3, "_xcom_archive": 1, "log": 9}
    after |= {"asset": 1, "serialized_dag": 0, "variable": 1}
    result = compare(BEFORE, after, "2.10.5", "3.3.2")
    assert result.ok, result.losses
    lines = dict(line.split(": ", 1) for line in result.lines)
    assert lines["dataset"] == "1 -> asset 1"
    assert lines["xcom"] == "4 -> xcom 3 + _xcom_archive 1"
    assert lines["log"] == "6 -> 9"
    assert lines["task_fail"].startswith("3 rows, dropped by Airflow 3.0.0")
    assert "not compared" in lines["serialized_dag"]
    assert summary(result, len(BEFORE)) == f"rows of all {len(BEFORE)} tables survived"


def test_a_table_that_disappears_outside_a_known_change_is_a_loss() -> None:
    before = {"dag_run": 2, "slot_pool": 2, "ab_user": 0}
    result = compare(before, {"dag_run": 2}, "2.9.3", "2.10.5")
    assert result.losses == [
        "slot_pool: 2 rows before, the table is gone"
    ]  # empty ab_user: no loss


def test_rows_removed_on_purpose_before_the_migration_are_not_losses_but_named() -> None:
    before = {"ab_permission_view": 10, "ab_permission_view_role": 4}
    after = {"ab_permission_view": 8, "ab_permission_view_role": 3}
    removed = {"ab_permission_view": 2, "ab_permission_view_role": 1}
    result = compare(before, after, "2.10.5", "3.3.2", removed=removed)
    assert result.ok, result.losses
    assert result.lines[0] == (
        "ab_permission_view: 8 -> 8 (2 invalid rows removed before the migration)"
    )
    # One more row gone than was removed is still a loss.
    after["ab_permission_view"] = 7
    assert not compare(before, after, "2.10.5", "3.3.2", removed=removed).ok


def test_airflow_3s_renames_apply_only_when_crossing_3_0() -> None:
    result = compare({"dataset": 1}, {"asset": 1}, "2.9.3", "2.10.5")
    assert not result.ok  # within 2.x, a missing dataset table is a loss, not a rename
    assert compare({"asset": 1}, {"asset": 1}, "3.0.6", "3.3.2").ok


def test_broken_references_after_a_migration_are_counted_per_table(tmp_path: Path) -> None:
    path = tmp_path / "airflow.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE dag_run (id INTEGER PRIMARY KEY)")
        conn.execute("CREATE TABLE task_instance (run INTEGER REFERENCES dag_run(id))")
        conn.execute("INSERT INTO dag_run VALUES (1)")
        conn.executemany("INSERT INTO task_instance VALUES (?)", [(1,), (2,), (3,)])
    assert sqlite_migration.broken_references(path) == ["task_instance: 2 rows"]


def test_our_own_tables_are_neither_followed_nor_counted() -> None:
    """The fence's table is ours: the migrate step removes it with the fence (and installs
    it again), so it is gone or changed after the migration, and that is no loss."""
    before = {"dag_run": 2, "sentinel_fence": 1, "sentinel_leases": 3}
    result = compare(before, {"dag_run": 2}, "2.10.5", "3.3.2")
    assert result.ok, result.losses
    assert result.lines == ["dag_run: 2 -> 2"]
    assert summary(result) == "rows of all 1 tables survived"
