"""Checks of this node alone: the scheduler command, and what Airflow's database allows
(several schedulers, the fence)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from airflow_sentinel.airflow_schema import installed_version_in, locate_airflow, resolve_program
from airflow_sentinel.config.airflow_cfg import AirflowConfig
from airflow_sentinel.config.settings import Settings
from airflow_sentinel.deadline import call_with_deadline
from airflow_sentinel.doctor.findings import FINDING, INFO, OK, Line
from airflow_sentinel.doctor.options import plain_option, sql_identity
from airflow_sentinel.errors import UserError
from airflow_sentinel.fence import DbFence, FenceError, FenceState
from airflow_sentinel.metastore.urls import normalize_metastore_url
from airflow_sentinel.upgrade.db_fence import open_airflow_fence, why_none

MYSQL_WITH_SKIP_LOCKED = 8


def scheduler_command_line(settings: Settings, path: str | None = None) -> Line:
    """The program resolves on PATH (the PATH the controller hands the scheduler), and its
    Airflow installation is found when the schema gate needs it."""
    path = os.environ.get("PATH", os.defpath) if path is None else path
    argv = settings.scheduler_argv
    program = resolve_program(argv, path)
    if program is None:
        return Line(
            FINDING,
            "scheduler_command",
            f"scheduler_command: program '{argv[0] if argv else ''}' not found on PATH; "
            "`start` refuses it: give its absolute path, or the controller a PATH that has it",
            {"program": argv[0] if argv else None, "resolved": None},
        )
    packages = locate_airflow(program)
    detail = {"program": argv[0], "resolved": program}
    if packages is None:
        level = FINDING if settings.schema_gate == "on" else INFO
        consequence = (
            "`start` refuses it while schema_gate = on"
            if level == FINDING
            else "schedulers start without the schema check (schema_gate = off)"
        )
        return Line(
            level,
            "scheduler_command",
            f"scheduler_command: {program} has no Airflow installation that can be found; "
            f"{consequence}",
            detail,
        )
    version = installed_version_in(packages) or "?"
    found = program if program == argv[0] else f"{argv[0]} resolves to {program}"
    return Line(
        OK,
        "scheduler_command",
        f"scheduler_command: {found} (Airflow {version})",
        {**detail, "airflow_version": version},
    )


def multi_scheduler_line(config: AirflowConfig, timeout: float) -> Line:
    """Whether Airflow itself could run several schedulers on this database, and so why
    this cluster runs exactly one. Never a finding: one scheduler is always safe."""
    try:
        url = config.sql_alchemy_conn()
        where = sql_identity(url)
        server = database_server(url, timeout)
    except (UserError, ValueError, SQLAlchemyError, OSError) as exc:
        return Line(
            INFO,
            "multi_scheduler",
            f"multi-scheduler: Airflow's database could not be asked ({type(exc).__name__}); "
            "this cluster runs exactly one scheduler either way",
        )
    locking = (plain_option(config, "scheduler", "use_row_level_locking") or "true").lower()
    text = multi_scheduler_text(server, locking not in ("false", "0", "no", "off"))
    return Line(INFO, "multi_scheduler", text, {"database": where, "server": server})


def database_server(url: str, timeout: float) -> str:
    """``SQLite 3.45``, ``MariaDB 10.11.6``, ``MySQL 8.0.36`` or ``PostgreSQL 16.2``."""
    from airflow_sentinel.metastore.sql import create_sql_engine

    normalized = normalize_metastore_url(url)
    if normalized.startswith("sqlite"):
        return f"SQLite {_sqlite_version()}"
    engine = create_sql_engine(normalized, timeout)
    try:
        version = call_with_deadline(lambda: _version(engine), timeout, "doctor-db-version")
    finally:
        engine.dispose()
    if engine.dialect.name == "postgresql":
        return f"PostgreSQL {version.split()[1] if ' ' in version else version}"
    name = "MariaDB" if "mariadb" in version.lower() else "MySQL"
    return f"{name} {version.split('-')[0]}"


def _sqlite_version() -> str:
    import sqlite3

    return sqlite3.sqlite_version


def _version(engine: sa.Engine) -> str:
    with engine.connect() as conn:
        return str(conn.execute(sa.text("select version()")).scalar_one())


def multi_scheduler_text(server: str, row_level_locking: bool = True) -> str:
    name, _, version = server.partition(" ")
    major = int(m.group(0)) if (m := re.match(r"\d+", version)) else 0
    supports = name == "PostgreSQL" or (name == "MySQL" and major >= MYSQL_WITH_SKIP_LOCKED)
    if supports and not row_level_locking:
        return (
            f"multi-scheduler: Airflow's database is {server}, but [scheduler] "
            "use_row_level_locking is off, so Airflow itself allows only one scheduler; "
            "airflow-sentinel runs exactly one"
        )
    if supports:
        return (
            f"multi-scheduler: Airflow's database is {server}, on which Airflow can run "
            "several schedulers; airflow-sentinel still runs exactly one (simpler to reason "
            "about, and a standby takes over when it fails)"
        )
    return (
        f"multi-scheduler: Airflow's database is {server}, on which Airflow does not support "
        "several schedulers (no SELECT ... SKIP LOCKED it can rely on): this is why exactly "
        "one must run"
    )


FenceOpener = Callable[[str, str, float, float], "DbFence | None"]
FENCE_FIX = "airflow-sentinel fence install"


def fence_line(
    settings: Settings,
    config: AirflowConfig,
    timeout: float,
    opener: FenceOpener = open_airflow_fence,
) -> Line:
    """The fence in Airflow's database that rejects a stale scheduler's writes: whole, or
    what is wrong with it and the fix. The controller starts no scheduler without it."""
    mode = settings.db_fence
    if mode == "off":
        return Line(
            INFO,
            "db_fence",
            "db_fence: off: no fence in Airflow's database (a scheduler on a host that froze "
            "and came back is stopped by its own controller only)",
            {"mode": mode},
        )
    try:
        url = config.sql_alchemy_conn()
        where = sql_identity(url)
        fence = opener(mode, url, settings.db_fence_wait, timeout)
    except UserError as exc:
        return Line(
            FINDING,
            "db_fence",
            f"db_fence: {exc}; `start` refuses it",
            {"mode": mode, "problem": str(exc)},
        )
    except (ValueError, SQLAlchemyError, OSError, ImportError) as exc:
        return Line(
            FINDING,
            "db_fence",
            f"db_fence: Airflow's database could not be asked ({type(exc).__name__}); "
            "the fence is not known to be whole",
            {"mode": mode},
        )
    if fence is None:
        return Line(INFO, "db_fence", _no_fence_text(mode, url), {"mode": mode, "database": where})
    try:
        state = fence.state()
    except FenceError as exc:
        return Line(
            FINDING,
            "db_fence",
            f"db_fence: {exc}; no scheduler starts while the fence cannot be read",
            {"mode": mode, "database": where},
        )
    finally:
        fence.close()
    return fence_state_line(mode, where, state)


def _no_fence_text(mode: str, url: str) -> str:
    if url.lower().startswith("sqlite"):
        return (
            f"db_fence: {mode}, and Airflow's database is SQLite: no fence (a file on one "
            "host, so no scheduler of another host can write to it)"
        )
    return f"db_fence: no fence in Airflow's database ({why_none(mode, url)})"


def fence_state_line(mode: str, where: str, state: FenceState) -> Line:
    detail = {
        "mode": mode,
        "database": where,
        "epoch": state.epoch,
        "fenced": list(state.fenced),
    }
    problem = state.problem()
    if problem is None:
        return Line(
            OK,
            "db_fence",
            f"db_fence: whole in {where} at epoch {state.epoch} "
            f"(fenced: {', '.join(state.fenced)})",
            detail,
        )
    fix = FENCE_FIX if not state.missing_tables else f"airflow db migrate, then {FENCE_FIX}"
    return Line(
        FINDING,
        "db_fence",
        f"db_fence: the fence in {where} is not whole: {problem}; no scheduler starts "
        f"until it is: run {fix}",
        {**detail, "problem": problem},
    )
