"""`airflow-sentinel fence`: install, check, reset and remove the fence in Airflow's
database."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from airflow_sentinel.cli import metastore_for, setting_options, settings_from
from airflow_sentinel.config.airflow_cfg import load_airflow_config
from airflow_sentinel.config.settings import Settings
from airflow_sentinel.errors import UserError
from airflow_sentinel.fence import (
    DbFence,
    FenceError,
    FenceState,
    backend_name,
    dialect_for,
    open_fence,
)

log = logging.getLogger("airflow_sentinel")
SERVICE = "scheduler"
PRIVILEGES = (
    "PostgreSQL: CREATE on the schema and ownership of Airflow's tables (the user Airflow "
    "connects as has both); MySQL/MariaDB: CREATE, DROP, TRIGGER and CREATE ROUTINE on "
    "Airflow's database (with binary logging on, also log_bin_trust_function_creators = 1)"
)


@contextmanager
def required_fence(settings: Settings) -> Iterator[DbFence]:
    if settings.db_fence == "off":
        raise UserError("db_fence = off: there is no fence to manage (set db_fence = auto or on)")
    airflow_db = load_airflow_config(Path(settings.airflow_home)).sql_alchemy_conn()
    if dialect_for(airflow_db) is None:
        raise UserError(
            f"Airflow's database is {backend_name(airflow_db)}: the fence exists only on "
            "PostgreSQL and MySQL/MariaDB; there is no fence to manage"
        )
    fence = open_fence("on", airflow_db, settings.renew_interval, settings.db_fence_wait)
    assert fence is not None  # under on, open_fence returns a fence or raises
    try:
        yield fence
    except FenceError as exc:
        raise UserError(str(exc)) from None
    finally:
        fence.close()


def install_at_start(settings: Settings, airflow_db: str) -> DbFence | None:
    """At ``start``: the fence installed (or repaired) and whole, or None when it is off.
    Under auto a fence that cannot be installed is a warning; under on, a UserError."""
    fence = open_fence(
        settings.db_fence, airflow_db, settings.renew_interval, settings.db_fence_wait
    )
    if fence is None:
        if settings.db_fence == "auto":
            log.info("db_fence: off (no fence for this database)")
        return None
    try:
        state = fence.state()
        if not state.complete:
            state = fence.install()
            log.info("db_fence: installed in %s at epoch %s", fence.description, state.epoch)
        _require_whole(fence, state)
    except FenceError as exc:
        if settings.db_fence == "on":
            fence.close()
            raise UserError(f"db_fence = on: {exc}; it needs {PRIVILEGES}") from None
        log.warning("db_fence: off, the fence cannot be installed: %s", exc)
        fence.close()
        return None
    log.info("db_fence: on in %s (epoch %s)", fence.description, state.epoch)
    return fence


def _require_whole(fence: DbFence, state: FenceState) -> None:
    problem = state.problem()
    if problem is not None:
        raise FenceError(f"the fence in {fence.description} is not whole: {problem}")


@click.group()
def fence() -> None:
    """The fence in Airflow's database that rejects a stale scheduler's writes."""


@fence.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@setting_options
def status(as_json: bool, **flags: Any) -> None:
    """Show what is installed (exit 1 when the fence is not whole)."""
    settings = settings_from(flags)
    with required_fence(settings) as db:
        state = db.state()
    problem = state.problem()
    if as_json:
        payload = {
            "database": db.description,
            "epoch": state.epoch,
            "fenced": list(state.fenced),
            "unfenced": list(state.unfenced),
            "problem": problem,
        }
        click.echo(json.dumps(payload, indent=2))
    else:
        click.echo(f"database: {db.description}")
        click.echo(f"epoch:    {state.epoch if state.epoch is not None else 'none'}")
        click.echo(f"fenced:   {', '.join(state.fenced) or 'nothing'}")
        click.echo(f"state:    {problem or 'whole'}")
    if problem is not None:
        raise SystemExit(1)


@fence.command()
@setting_options
def install(**flags: Any) -> None:
    """Install or repair the fence (idempotent; the recorded epoch is kept)."""
    settings = settings_from(flags)
    with required_fence(settings) as db:
        state = db.install()
    click.echo(
        f"fence installed in {db.description}: {', '.join(state.fenced)} at epoch {state.epoch}"
    )


@fence.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@setting_options
def remove(yes: bool, **flags: Any) -> None:
    """Drop the fence's triggers, check and table."""
    settings = settings_from(flags)
    with required_fence(settings) as db:
        if not yes and not click.confirm(
            f"remove the fence from {db.description}? A frozen host's scheduler could then "
            "write beside the active one"
        ):
            raise UserError("not confirmed; nothing was removed (use --yes to skip the question)")
        db.remove()
    click.echo(
        f"fence removed from {db.description}; no controller with db_fence = auto or on "
        "starts a scheduler until it is installed again (at its next start, or fence install)"
    )


@fence.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@setting_options
def reset(yes: bool, **flags: Any) -> None:
    """Set the fence to the metastore's current epoch (after moving to a new metastore,
    whose epochs start again). Only when no scheduler of the old metastore runs."""
    settings = settings_from(flags)
    with metastore_for(settings) as store:
        lease = store.read_lease(SERVICE)
    epoch = 0 if lease is None else int(lease.epoch)
    with required_fence(settings) as db:
        current = db.state().epoch
        if current is None:
            raise UserError(
                f"the fence is not installed in {db.description} (run airflow-sentinel "
                "fence install)"
            )
        if not yes and not click.confirm(
            f"set the fence in {db.description} from epoch {current} to {epoch}? Do this only "
            "when no scheduler started under the old metastore still runs"
        ):
            raise UserError("not confirmed; nothing was changed (use --yes to skip the question)")
        db.reset(epoch)
    click.echo(f"fence in {db.description} set from epoch {current} to {epoch}")
