"""Did every row survive the migration? Row counts per table, from the backup and from the
migrated database, with the target's renames, splits and drops accounted for.

A table's rows may only grow (Airflow's own commands add audit rows); fewer rows after the
migration is a loss and fails the step. Tables are followed through the migrations of every
release crossed: Airflow 3.0 renamed the dataset tables to asset tables and moved XComs it
can no longer read into ``_xcom_archive``. A table that a release drops on purpose is named
in the report with the reason, not counted as lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from packaging.version import Version

from airflow_sentinel.upgrade.databases import OWN_PREFIX


@dataclass(frozen=True)
class SchemaChange:
    """What one Airflow release's migrations do to the tables."""

    version: str
    renamed: dict[str, str] = field(default_factory=dict)
    split: dict[str, tuple[str, ...]] = field(default_factory=dict)  # rows spread over these
    dropped: dict[str, str] = field(default_factory=dict)  # table -> why it is gone


AIRFLOW_3_0 = SchemaChange(
    version="3.0.0",
    renamed={
        "dataset": "asset",
        "dataset_alias": "asset_alias",
        "dataset_alias_dataset": "asset_alias_asset",
        "dataset_alias_dataset_event": "asset_alias_asset_event",
        "dataset_event": "asset_event",
        "dataset_dag_run_queue": "asset_dag_run_queue",
        "dagrun_dataset_event": "dagrun_asset_event",
        "dag_schedule_dataset_reference": "dag_schedule_asset_reference",
        "dag_schedule_dataset_alias_reference": "dag_schedule_asset_alias_reference",
        "task_outlet_dataset_reference": "task_outlet_asset_reference",
    },
    split={"xcom": ("xcom", "_xcom_archive")},  # pickled values are archived, not deleted
    dropped={
        "task_fail": "Airflow 3 keeps failed tries in task_instance_history",
        "dag_pickle": "Airflow 3 no longer pickles DAGs",
        "callback_request": "Airflow 3 replaced it with the callback table",
    },
)
CHANGES = (AIRFLOW_3_0,)

# Rebuilt from the DAG files by parsing: not the operator's data, and emptied by some
# migrations on purpose (Airflow 3.0 versions serialized DAGs afresh).
REGENERATED = frozenset({"serialized_dag", "dag_code", "import_error", "dag_warning"})


@dataclass(frozen=True)
class Survival:
    lines: list[str]  # one per table of the backup: what became of its rows
    losses: list[str]  # the subset that lost rows

    @property
    def ok(self) -> bool:
        return not self.losses


def crossed(from_version: str, to_version: str) -> list[SchemaChange]:
    low, high = Version(from_version), Version(to_version)
    return [c for c in CHANGES if low < Version(c.version) <= high]


def compare(
    before: dict[str, int],
    after: dict[str, int],
    from_version: str,
    to_version: str,
    removed: dict[str, int] | None = None,
) -> Survival:
    """Follow every table of ``before`` to where its rows are after the migration;
    ``removed`` are rows deleted on purpose before it (see ``repairs``)."""
    changes = crossed(from_version, to_version)
    removed = removed or {}
    lines, losses = [], []
    # Ours (the fence's table among them) are not Airflow's: the migrate step removes the
    # fence and installs it again itself, and the backup leaves them out.
    for table in sorted(t for t in before if not t.startswith(OWN_PREFIX)):
        line, lost = _follow(table, before[table] - removed.get(table, 0), after, changes)
        if removed.get(table):
            line += f" ({removed[table]} invalid rows removed before the migration)"
        lines.append(line)
        if lost:
            losses.append(line)
    return Survival(lines, losses)


def _follow(
    table: str, count: int, after: dict[str, int], changes: list[SchemaChange]
) -> tuple[str, bool]:
    if table in REGENERATED:
        return f"{table}: {count} rows, rebuilt from the DAG files (not compared)", False
    targets: tuple[str, ...] = (table,)
    for change in changes:
        if table in change.dropped:
            why = change.dropped[table]
            return f"{table}: {count} rows, dropped by Airflow {change.version} ({why})", False
        targets = tuple(
            part
            for name in targets
            for part in change.split.get(name, (change.renamed.get(name, name),))
        )
    missing = [t for t in targets if t not in after]
    if len(missing) == len(targets):
        return f"{table}: {count} rows before, the table is gone", count > 0
    kept = sum(after.get(t, 0) for t in targets)
    where = (
        str(kept) if targets == (table,) else " + ".join(f"{t} {after.get(t, 0)}" for t in targets)
    )
    if kept < count:
        return f"{table}: {count} -> {where}: {count - kept} rows lost", True
    return f"{table}: {count} -> {where}", False


def summary(result: Survival, tables: int | None = None) -> str:
    if tables is None:
        tables = len(result.lines)
    if result.ok:
        return f"rows of all {tables} tables survived"
    return "rows lost in the migration: " + "; ".join(result.losses)
