"""`airflow-sentinel upgrade ...`: plan, run, rollback, resume, status, list."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from airflow_sentinel.airflow_schema import database_revision, expected_head
from airflow_sentinel.clock import SystemClock
from airflow_sentinel.config.airflow_cfg import airflow_home, load_airflow_config
from airflow_sentinel.config.loader import load_settings
from airflow_sentinel.errors import UserError
from airflow_sentinel.metastore import open_metastore
from airflow_sentinel.metastore.base import Metastore
from airflow_sentinel.upgrade import journal as jr
from airflow_sentinel.upgrade import plan as pf
from airflow_sentinel.upgrade import runner
from airflow_sentinel.upgrade.databases import WORK_TABLES, open_database
from airflow_sentinel.upgrade.installation import Installation, discover
from airflow_sentinel.upgrade.services import Controllers, LocalServices, ServiceSet
from airflow_sentinel.upgrade.steps import Context, forward_steps


def _common(func: Any) -> Any:
    for option in reversed(
        [
            click.option(
                "--to",
                "to_version",
                required=True,
                metavar="VERSION",
                help="Target Airflow version, e.g. 3.1.0.",
            ),
            click.option(
                "--airflow-env",
                metavar="PATH",
                help="The Airflow virtual environment the services use, or the "
                "symlink to it. Default: the one whose bin/airflow is on PATH.",
            ),
            click.option(
                "--in-place",
                is_flag=True,
                help="Upgrade the environment itself (rollback reinstalls the old "
                "package list) instead of installing beside it and switching.",
            ),
            click.option(
                "--constraints",
                default="",
                metavar="FILE",
                help="A constraints file for the target (Airflow publishes one per "
                "release and Python version).",
            ),
        ]
    ):
        func = option(func)
    return func


def _state_option(func: Any) -> Any:
    return click.option(
        "--state-dir",
        metavar="DIR",
        default=None,
        help="Where runs, journals and backups live. Default: $AIRFLOW_HOME/upgrades.",
    )(func)


@click.group()
def upgrade() -> None:
    """Upgrade Airflow with backups, a journal, and rollback from any step."""


def _journal(state_dir: str | None) -> jr.Journal:
    return jr.Journal(Path(state_dir) if state_dir else airflow_home() / "upgrades")


@contextmanager
def _metastore() -> Iterator[Metastore]:
    settings = load_settings({})
    store = open_metastore(settings.metastore, SystemClock(), 10.0, settings.lease_ttl)
    try:
        yield store
    finally:
        store.close()


def _checks(
    inst: Installation,
    to_version: str,
    in_place: bool,
    constraints: str,
    journal: jr.Journal,
    controllers: Controllers,
) -> list[pf.Check]:
    target = pf.parse_target(to_version, inst.env.version)
    database = open_database(inst.db_url)
    checks = [
        pf.environment_check(inst, in_place),
        pf.path_check(inst, database, target),
        pf.reach_check(database),
        pf.tools_check(database),
        pf.permissions_check(database),
        pf.disk_check(
            inst,
            database,
            journal.root,
            _target_env(inst, to_version, constraints, in_place),
            in_place,
        ),
        pf.index_check(to_version, constraints),
        pf.dag_lint_check(inst, target),
        pf.services_check(inst, target),
        pf.pins_check(inst, to_version, constraints),
        pf.fence_check(inst, load_settings({})),
    ]
    lock = controllers.lock()
    if lock is None:
        checks.append(pf.Check("cluster upgrade lock", True, "free"))
    else:
        checks.append(
            pf.Check(
                "cluster upgrade lock",
                lock.get("to") == to_version,
                f"held by run {lock.get('run')} on {lock.get('node')} (to {lock.get('to')})",
            )
        )
    busy = [r.id for r in journal.runs() if r.state in (jr.IN_PROGRESS, jr.ROLLING_BACK)]
    checks.append(
        pf.Check(
            "unfinished runs here",
            not busy,
            "none" if not busy else f"resume or roll back {', '.join(busy)}",
        )
    )
    return checks


@upgrade.command("plan")
@_common
@_state_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def plan_command(
    to_version: str,
    airflow_env: str | None,
    in_place: bool,
    constraints: str,
    state_dir: str | None,
    as_json: bool,
) -> None:
    """Gather the environment, run the preflight checks, and print the steps."""
    inst = discover(load_airflow_config(), airflow_env)
    journal = _journal(state_dir)
    with _metastore() as store:
        checks = _checks(inst, to_version, in_place, constraints, journal, Controllers(store))
    steps = list(forward_steps(in_place))
    blocking = [c for c in checks if c.blocking and not c.ok]
    if as_json:
        click.echo(
            json.dumps(
                {
                    "environment": inst.describe(),
                    "to_version": to_version,
                    "checks": [asdict(c) for c in checks],
                    "steps": steps,
                    "ready": not blocking,
                },
                indent=2,
            )
        )
    else:
        _print_plan(inst, to_version, checks, steps)
    if blocking:
        sys.exit(1)


def _print_plan(
    inst: Installation, to_version: str, checks: list[pf.Check], steps: list[str]
) -> None:
    click.echo(f"Upgrade to Airflow {to_version}")
    for key, value in inst.describe().items():
        click.echo(f"  {key:18} {value}")
    click.echo("Preflight:")
    for check in checks:
        mark = "ok  " if check.ok else ("FAIL" if check.blocking else "warn")
        click.echo(f"  [{mark}] {check.name}: {check.detail}")
        for item in check.items:
            click.echo(f"         {item}")
    click.echo("Steps: " + " -> ".join(steps))


@upgrade.command("run")
@_common
@_state_option
@click.option("--no-rollback", is_flag=True, help="On failure, stop and leave things as they are.")
@click.option(
    "--service",
    "services",
    multiple=True,
    metavar="UNIT",
    help="A systemd unit of this node that both versions run (triggerer, ...): stopped for "
    "the hold, started after it. Repeatable.",
)
@click.option(
    "--old-service",
    "old_services",
    multiple=True,
    metavar="UNIT",
    help="A unit only the old version runs (airflow-webserver): stopped, and started again "
    "only by a rollback. Repeatable.",
)
@click.option(
    "--new-service",
    "new_services",
    multiple=True,
    metavar="UNIT",
    help="A unit only the target runs (airflow-api-server, airflow-dag-processor): started "
    "after the upgrade, stopped by a rollback. Repeatable.",
)
@click.option(
    "--stop-command",
    default="",
    help="A command that stops this node's services (either version's).",
)
@click.option("--start-command", default="", help="A command that starts the target's services.")
@click.option(
    "--old-start-command",
    default=None,
    help="A command that starts the old version's services, run by a rollback. "
    "Default: --start-command.",
)
@click.option(
    "--verify-timeout",
    default=300.0,
    show_default=True,
    type=float,
    help="Seconds each check of the verify step may wait: the new scheduler's heartbeat, "
    "the canary task, a new parse of the DAGs, the api-server's health.",
)
@click.option(
    "--no-canary",
    is_flag=True,
    help="Do not run the canary task (a one-task DAG of ours, placed in the DAGs folder, run "
    "through the executor, then removed with its rows).",
)
@click.option(
    "--api-url",
    default="",
    metavar="URL",
    help="The target's api-server (webserver on 2.x), e.g. http://localhost:8080: verify "
    "waits until its health endpoint reports a healthy metadatabase.",
)
def run_command(
    to_version: str,
    airflow_env: str | None,
    in_place: bool,
    constraints: str,
    state_dir: str | None,
    no_rollback: bool,
    services: tuple[str, ...],
    old_services: tuple[str, ...],
    new_services: tuple[str, ...],
    stop_command: str,
    start_command: str,
    old_start_command: str | None,
    verify_timeout: float,
    no_canary: bool,
    api_url: str,
) -> None:
    """Upgrade this node (and, on the first node, the cluster's database)."""
    api_url = _checked_url(api_url)  # a mistake is found before the preflight's minute
    inst = discover(load_airflow_config(), airflow_env)
    journal = _journal(state_dir)
    with _metastore() as store:
        controllers = Controllers(store)
        failed = [
            c
            for c in _checks(inst, to_version, in_place, constraints, journal, controllers)
            if c.blocking and not c.ok
        ]
        if failed:
            raise UserError(
                "preflight failed: " + "; ".join(f"{c.name}: {c.detail}" for c in failed)
            )
        run = _new_run(inst, to_version, in_place, constraints, no_rollback)
        run.facts["services"] = {
            "old_units": [*services, *old_services],
            "new_units": [*services, *new_services],
            "stop": stop_command,
            "start": start_command,
            "old_start": start_command if old_start_command is None else old_start_command,
            "verify_timeout": verify_timeout,
        }
        run.facts["verify"] = {"canary": not no_canary, "api_url": api_url}
        run.cluster_role = _claim_role(controllers, run, inst)
        journal.create(run)
        click.echo(
            f"upgrade run {run.id} ({run.cluster_role}); journal in {journal.folder(run.id)}"
        )
        with _exclusive(journal, run):
            runner.forward(_context(run, journal, inst, controllers), _say)
    click.echo(f"upgraded to Airflow {to_version} in {time.time() - run.created:.0f}s")


def _target_env(inst: Installation, to_version: str, constraints: str, in_place: bool) -> Path:
    requirements = [f"apache-airflow=={to_version}", *inst.env.carried_requirements()]
    return pf.new_env_path(inst, to_version, requirements, constraints, in_place)


def _new_run(
    inst: Installation, to_version: str, in_place: bool, constraints: str, no_rollback: bool
) -> jr.Run:
    carried = inst.env.carried_requirements()
    new_env = _target_env(inst, to_version, constraints, in_place)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    run = jr.Run(
        id=f"{stamp}-{inst.env.version}-to-{to_version}",
        node=socket.gethostname(),
        home=str(inst.home),
        env_link=str(inst.env_link),
        old_env=str(inst.env.path),
        new_env=str(new_env),
        from_version=inst.env.version,
        to_version=to_version,
        cluster_role="leader",
        in_place=in_place,
        no_rollback=no_rollback,
        constraints=str(Path(constraints).absolute()) if constraints else "",
        steps=runner.new_steps(in_place),
    )
    run.facts["carried_packages"] = carried
    return run


def _claim_role(controllers: Controllers, run: jr.Run, inst: Installation) -> str:
    """leader: takes the cluster lock and does the cluster-wide steps (hold, database
    backup, migration). follower: another node already migrated the database; only this
    node's own steps remain."""
    wanted = expected_head(inst.env.path)
    actual = database_revision(inst.db_url)
    if wanted is not None and actual is not None and actual != wanted:
        return "follower"
    record = {"run": run.id, "node": run.node, "from": run.from_version, "to": run.to_version}
    holder = controllers.claim_lock(record)
    if holder is None:
        return "leader"
    raise UserError(
        f"another upgrade holds the cluster lock: run {holder.get('run')} on "
        f"{holder.get('node')} (to {holder.get('to')}); wait until it has migrated the "
        "database, then run this again"
    )


def _context(
    run: jr.Run, journal: jr.Journal, inst: Installation, controllers: Controllers | None
) -> Context:
    settings = load_settings({})
    opts = run.facts.get("services", {})
    checks = run.facts.get("verify", {})
    return Context(
        run=run,
        journal=journal,
        installation=inst,
        database=open_database(inst.db_url),
        controllers=controllers,
        services=LocalServices(
            old=ServiceSet(
                tuple(opts.get("old_units", opts.get("units", []))),
                opts.get("old_start", opts.get("start", "")),
            ),
            new=ServiceSet(
                tuple(opts.get("new_units", opts.get("units", []))), opts.get("start", "")
            ),
            stop_command=opts.get("stop", ""),
        ),
        hold_timeout=settings.lease_ttl + settings.stop_timeout + 60,
        verify_timeout=float(opts.get("verify_timeout", 300)),
        stale_after=max(settings.lease_ttl, 3 * settings.renew_interval),
        canary=bool(checks.get("canary", True)),
        api_url=str(checks.get("api_url", "")),
        fence_mode=settings.db_fence,
        fence_wait=settings.db_fence_wait,
    )


def _checked_url(url: str) -> str:
    """The health endpoint needs no login; a URL with one would put it in the journal."""
    if not url:
        return url
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UserError(f"--api-url {url}: not a URL; give http://HOST:PORT or https://HOST:PORT")
    if parsed.username or parsed.password:
        raise UserError("--api-url: drop the user and password; the health endpoint needs no login")
    return url


@contextmanager
def _exclusive(journal: jr.Journal, run: jr.Run) -> Iterator[None]:
    """One process per run: a second `resume` or `rollback` waits for nobody, it refuses."""
    path = journal.folder(run.id) / ".lock"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"run {run.id} is being worked on by another process") from None
        yield


def _say(line: str) -> None:
    click.echo(f"  {time.strftime('%H:%M:%S')} {line}")


def _reopen(run: jr.Run) -> Installation:
    os.environ.setdefault("AIRFLOW_HOME", run.home)
    return discover(load_airflow_config(Path(run.home)), run.env_link)


@upgrade.command("resume")
@click.argument("run_id", required=False)
@_state_option
def resume_command(run_id: str | None, state_dir: str | None) -> None:
    """Continue a run whose process died, from its journal (the last run by default)."""
    journal = _journal(state_dir)
    run = journal.latest(run_id)
    if run.finished:
        raise UserError(f"run {run.id} is {run.state}; nothing to resume")
    with _metastore() as store, _exclusive(journal, run):
        ctx = _context(run, journal, _reopen(run), Controllers(store))
        click.echo(f"resuming run {run.id} ({run.state})")
        if run.state in (jr.ROLLING_BACK, jr.ROLLBACK_FAILED):
            click.echo(f"rolled back: {runner.backward(ctx, _say)}")
            return
        runner.forward(ctx, _say)
    click.echo(f"upgraded to Airflow {run.to_version}")


@upgrade.command("rollback")
@click.argument("run_id", required=False)
@_state_option
@click.option("--yes", is_flag=True, help="Accept losing what the database took since its backup.")
def rollback_command(run_id: str | None, state_dir: str | None, yes: bool) -> None:
    """Undo a run from wherever it stopped, in reverse (the last run by default)."""
    journal = _journal(state_dir)
    run = journal.latest(run_id)
    if run.state == jr.ROLLED_BACK:
        raise UserError(f"run {run.id} is already rolled back")
    with _metastore() as store, _exclusive(journal, run):
        ctx = _context(run, journal, _reopen(run), Controllers(store))
        _confirm_loss(ctx, yes)
        click.echo(f"rolling back run {run.id}")
        click.echo(f"rolled back: {runner.backward(ctx, _say)}")


def _confirm_loss(ctx: Context, yes: bool) -> None:
    run = ctx.run
    restored = any(r.name == "restore-database" and r.state == jr.DONE for r in run.rollback)
    if not (ctx.leader and run.reached("migrate")) or restored:
        return
    before = run.facts.get("row_counts", {})
    now = ctx.database.row_counts(WORK_TABLES)
    newer = [
        f"{t}: {now[t]} now, {before[t]} in the backup"
        for t in now
        if t in before and now[t] > before[t]
    ]
    if not newer:
        return
    loss = "restoring the database loses what it took since the backup (" + "; ".join(newer) + ")"
    if yes:
        click.echo(f"accepted (--yes): {loss}")
        return
    if not sys.stdin.isatty():
        raise UserError(f"{loss}; run again with --yes to accept")
    if not click.confirm(f"{loss}. Continue?", default=False):
        raise UserError("rollback cancelled; nothing changed")


@upgrade.command("status")
@click.argument("run_id", required=False)
@_state_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def status_command(run_id: str | None, state_dir: str | None, as_json: bool) -> None:
    """A run's steps, times and outcome (the last run by default)."""
    journal = _journal(state_dir)
    run = journal.latest(run_id)
    state = run.state
    if not run.finished and state != jr.FAILED_RUN and not _worked_on(journal, run):
        state = f"{run.state}, interrupted: no process works on it"
    downtime = scheduler_downtime(run)
    if as_json:
        record = asdict(run)
        record["worked_on"] = run.finished or _worked_on(journal, run)
        if downtime is not None:
            record["scheduler_downtime"] = {"total_s": downtime[0], "phases_s": downtime[1]}
        click.echo(json.dumps(record, indent=2, sort_keys=True))
        return
    click.echo(f"run {run.id}: {state} ({run.cluster_role} on {run.node})")
    click.echo(f"  Airflow {run.from_version} -> {run.to_version}; {run.old_env} -> {run.new_env}")
    if run.error:
        click.echo(f"  error: {run.error}")
    if "interrupted" in state:
        click.echo(
            f"  next: `airflow-sentinel upgrade resume {run.id}` to go on, or "
            f"`airflow-sentinel upgrade rollback {run.id}` to undo it"
        )
    for title, records in (("steps", run.steps), ("rollback", run.rollback)):
        if records:
            click.echo(f"  {title}:")
        for r in records:
            took = f"{r.seconds:6.1f}s" if r.seconds is not None else "       "
            click.echo(f"    {r.name:17} {r.state:8} {took}  {r.detail[:140]}")
    if downtime is not None:
        total, phases = downtime
        split = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in phases.items())
        click.echo(f"  scheduler downtime: {total:.1f}s ({split})")


def _worked_on(journal: jr.Journal, run: jr.Run) -> bool:
    """A process holds the run's lock (see `_exclusive`)."""
    path = journal.folder(run.id) / ".lock"
    if not path.exists():
        return False
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def scheduler_downtime(run: jr.Run) -> tuple[float, dict[str, float]] | None:
    """From the old scheduler's stop to the first heartbeat of the scheduler that runs now
    (the new one, or after a rollback the old one), split by the steps between them."""
    stopped = run.facts.get("scheduler_stopped_wall")
    if run.state == jr.SUCCEEDED:
        beat = run.facts.get("heartbeat_wall")
    elif run.state == jr.ROLLED_BACK:
        beat = run.facts.get("rollback_heartbeat_wall")
    else:
        return None
    if not (stopped and beat):
        return None
    stopped, beat = float(stopped), float(beat)
    phases: dict[str, float] = {}
    last = stopped
    for prefix, records in (("", run.steps), ("rollback ", run.rollback)):
        for r in records:
            if r.started is None or r.finished is None or r.finished <= stopped:
                continue
            if r.started >= beat:
                break
            end = min(r.finished, beat)
            phases[prefix + r.name] = round(end - max(r.started, stopped), 1)
            last = max(last, end)
    if beat > last:
        phases["until the first heartbeat"] = round(beat - last, 1)
    return round(beat - stopped, 1), phases


@upgrade.command("list")
@_state_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def list_command(state_dir: str | None, as_json: bool) -> None:
    """Past runs on this node, oldest first."""
    runs = _journal(state_dir).runs()
    if as_json:
        click.echo(
            json.dumps(
                [
                    {"id": r.id, "state": r.state, "from": r.from_version, "to": r.to_version}
                    for r in runs
                ],
                indent=2,
            )
        )
        return
    if not runs:
        click.echo("no upgrade runs")
    for r in runs:
        took = max((s.finished or 0) for s in [*r.steps, *r.rollback]) - r.created
        click.echo(f"{r.id}  {r.state:15} {r.from_version} -> {r.to_version}  {max(took, 0):.0f}s")
