"""The fence in Airflow's database (see airflow_sentinel.fence) across an upgrade.

``airflow db migrate`` may rebuild the tables that carry the fence's triggers (a rebuilt
table loses them), and a trigger must never stand in a migration's way. So the migrate
step removes the fence once the backup is taken (the cluster is held: no scheduler runs)
and installs it again after a successful migration, on the tables the target has, at the
epoch it had before: removing the fence drops its table, so the epoch is set back.

A restore (the rollback) brings Airflow's tables back with the triggers they had at the
backup, and with the check (pg_dump and mysqldump dump functions and triggers), but never
the fence's table: like every ``sentinel_*`` table it is left out of the backup and kept
by the restore. So after a restore the fence is installed again (install is idempotent
and keeps the recorded epoch) and its epoch set back where the table was lost.

Nothing here applies where ``db_fence`` gives no fence for the database (SQLite, off).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from airflow_sentinel.errors import UserError
from airflow_sentinel.fence import DbFence, FenceError, FenceState, dialect_for, open_fence
from airflow_sentinel.metastore.urls import mask, normalize_metastore_url
from airflow_sentinel.upgrade.installation import UpgradeError

# Seconds for one read, install or removal: the cluster is held, nothing else waits.
TIMEOUT = 30.0
FACT = "fence"  # the run's fact: the fence as found before the migration


def why_none(mode: str, url: str) -> str:
    """Why ``db_fence = mode`` gives no fence for ``url`` (when it gives none)."""
    if mode == "off":
        return "db_fence = off"
    dialect = dialect_for(url)
    if dialect is None:
        return f"{_backend(url)} has no fence (db_fence = {mode})"
    problem = dialect.check_session(url)
    return f"db_fence = {mode}: {problem}" if problem else f"db_fence = {mode}"


def open_airflow_fence(
    mode: str, url: str, wait: float, timeout: float = TIMEOUT
) -> DbFence | None:
    """The fence of Airflow's database at ``url`` under ``db_fence = mode``, or None where
    there is none. Whether there is one is decided on Airflow's own URL (its driver is the
    scheduler's); the fence's own connections use this program's driver for that database.
    ``on`` where there can be none is a UserError, as at the controller's start."""
    if mode == "off":
        return None
    dialect = dialect_for(url)
    if dialect is None:
        return open_fence(mode, url, timeout, wait)  # None, or the UserError under on
    problem = dialect.check_session(url)
    if problem is not None:
        if mode == "on":
            raise UserError(f"db_fence = on: {problem} (or use db_fence = off)")
        return None
    try:
        ours = normalize_metastore_url(url)
    except ValueError as exc:
        raise UserError(f"Airflow's sql_alchemy_conn {mask(url)}: {exc}") from None
    return open_fence(mode, ours, timeout, wait)


def _backend(url: str) -> str:
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower() if "://" in url else ""
    return {"sqlite": "SQLite", "": "this database"}.get(scheme, scheme)


def installed(state: FenceState) -> bool:
    """Anything of the fence is there: its table or a trigger."""
    return state.table or bool(state.fenced)


def describe(state: FenceState) -> str:
    epoch = "no epoch" if state.epoch is None else f"epoch {state.epoch}"
    return f"{epoch} (fenced: {', '.join(state.fenced) or 'nothing'})"


def remove_before_migration(
    fence: DbFence, facts: dict[str, Any], save: Callable[[], None]
) -> bool:
    """Record the fence as it is, then remove it; whether there was one to remove.
    Repeated after a kill -9, the record of the first attempt stands (the fence may be
    gone by then)."""
    record = facts.get(FACT)
    try:
        if record is None:
            state = fence.state()
            record = {
                "installed": installed(state),
                "epoch": state.epoch,
                "fenced": list(state.fenced),
                "database": fence.description,
            }
            facts[FACT] = record
            save()  # before anything is removed: a resumed step must know the epoch
        if not record["installed"]:
            return False
        fence.remove()
    except FenceError as exc:
        raise UpgradeError(f"before the migration: {exc}") from None
    return True


def install_after_migration(fence: DbFence, facts: dict[str, Any]) -> str:
    """The fence installed again on the migrated tables, at the epoch it had before."""
    record = facts.get(FACT) or {}
    if not record.get("installed"):
        return "; no fence was installed before the migration (the controller installs it)"
    try:
        state = _whole_at(fence, record.get("epoch"), "after the migration")
    except FenceError as exc:
        raise UpgradeError(f"after the migration: {exc}") from None
    return f"; fence removed before the migration, installed again at {describe(state)}"


def repair_after_restore(fence: DbFence, facts: dict[str, Any]) -> str:
    """After the restore: the fence whole again where it was there before the upgrade (or
    is there now, in part), at an epoch no lower than before. Never lowered: a scheduler
    started during the run may have raised it."""
    record = facts.get(FACT)
    try:
        state = fence.state()
        if not (record or {}).get("installed") and not installed(state):
            return ""
        wanted = (record or {}).get("epoch")
        state = _whole_at(fence, wanted, "after the restore")
    except FenceError as exc:
        raise UpgradeError(f"after the restore: {exc}") from None
    return f"; fence whole at {describe(state)}"


def _whole_at(fence: DbFence, epoch: int | None, when: str) -> FenceState:
    """Install (idempotent), set the epoch back to ``epoch`` if it is lower (its table was
    dropped), and check that the fence is whole: an UpgradeError if not."""
    state = fence.install()
    if epoch is not None and (state.epoch is None or state.epoch < int(epoch)):
        fence.reset(int(epoch))
        state = fence.state()
    problem = state.problem()
    if problem is not None:
        raise UpgradeError(f"the fence in {fence.description} is not whole {when}: {problem}")
    if epoch is not None and (state.epoch is None or state.epoch < int(epoch)):
        raise UpgradeError(
            f"the fence in {fence.description} is at epoch {state.epoch} {when}, "
            f"below its epoch {epoch} before the upgrade"
        )
    return state


def plan_line(mode: str, url: str, wait: float) -> tuple[bool, str]:
    """What the fence is now and what the run does with it: (fine, words)."""
    try:
        fence = open_airflow_fence(mode, url, wait)
    except UserError as exc:
        return False, f"{exc}: no controller starts a scheduler with this setting"
    if fence is None:
        return True, f"none ({why_none(mode, url)}): the run does nothing with it"
    try:
        state = fence.state()
    except FenceError as exc:
        return False, str(exc)
    finally:
        fence.close()
    where = fence.description
    if state.complete:
        return True, (
            f"whole in {where} at {describe(state)}; the migrate step removes it after the "
            "backup and installs it again after the migration at the same epoch"
        )
    if not installed(state):
        return True, (
            f"not installed in {where}; the run leaves it so (a controller with db_fence = "
            f"{mode} installs it at its start)"
        )
    return False, (
        f"not whole in {where}: {state.problem()}; the migrate step installs it whole after "
        "the migration (or now: airflow-sentinel fence install)"
    )
