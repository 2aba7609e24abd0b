"""The `airflow-sentinel` command. User mistakes end as one line on stderr and exit code 2."""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import logging
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import click
from rich.console import Console

from airflow_sentinel import __version__
from airflow_sentinel.airflow_schema import SchemaGate, resolve_program
from airflow_sentinel.api import tls
from airflow_sentinel.api.actions import MAX_WAIT as MAX_SWITCHOVER_WAIT
from airflow_sentinel.api.actions import api_on_host
from airflow_sentinel.api.token import load_api_token
from airflow_sentinel.clock import Clock, SystemClock
from airflow_sentinel.config import KEYS, Settings, load_settings
from airflow_sentinel.config.airflow_cfg import (
    AirflowConfig,
    add_sentinel_section,
    create_airflow_home,
    load_airflow_config,
)
from airflow_sentinel.config.settings import parse_api_address, parse_api_allow
from airflow_sentinel.errors import (
    ConfigError,
    MetastoreError,
    NodeIdConflict,
    SentinelError,
    UserError,
)
from airflow_sentinel.identity import Instance, describe_token
from airflow_sentinel.metastore import Metastore, open_metastore
from airflow_sentinel.metastore.base import HOLD, PAUSED, UPGRADE_LOCK, NodeRecord, switchover_flag
from airflow_sentinel.metastore.urls import mask, password_of
from airflow_sentinel.status import (
    ClusterState,
    choose_target,
    read_cluster,
    render_events,
    render_status,
)

if TYPE_CHECKING:
    from airflow_sentinel.controller.loop import Controller

F = TypeVar("F", bound=Callable[..., Any])
SERVICE = "scheduler"
EXIT_USAGE = 2


def setting_options(func: F) -> F:
    """One flag per [sentinel] key; a flag given on the command line wins over everything."""
    for key in reversed(KEYS):
        option = click.option(
            f"--{key.name.replace('_', '-')}",
            key.name,
            default=None,
            help=f"{key.help} [airflow.cfg: {key.name}]",
            metavar=key.kind.upper() if not key.choices else "|".join(key.choices),
        )
        func = option(func)
    return func


def settings_from(flags: dict[str, Any]) -> Settings:
    """The layered settings; every problem, the flags' own included, is reported at once."""
    given = {k.name: flags.pop(k.name, None) for k in KEYS}
    problems: list[str] = []
    if given.get("metastore") and password_of(str(given["metastore"])):
        problems.append(
            "--metastore: a password on the command line is visible to every user in the "
            "process list; set it in airflow.cfg [sentinel] metastore or "
            "AIRFLOW__SENTINEL__METASTORE"
        )
        given["metastore"] = mask(str(given["metastore"]))  # its other parts are still checked
    try:
        settings = load_settings(given)
    except ConfigError as exc:
        raise ConfigError([*problems, *exc.problems]) from None
    if problems:
        raise ConfigError(problems)
    return settings


@contextmanager
def metastore_for(settings: Settings, op_timeout: float = 10.0) -> Iterator[Metastore]:
    store = open_metastore(settings.metastore, SystemClock(), op_timeout, settings.lease_ttl)
    try:
        yield store
    finally:
        store.close()


def host_identity() -> str:
    """Host name plus boot id: two hosts never share it, a restarted host changes it."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        boot = "?"
    return f"{socket.gethostname()}/{boot}"


class LazyGroup(click.Group):
    """Command groups imported only when used: ``soak`` and ``upgrade`` pull in modules that
    the controller, started on every node, never needs."""

    lazy: ClassVar[dict[str, str]] = {
        "alert": "airflow_sentinel.alerts.command:alert",
        "doctor": "airflow_sentinel.doctor.command:doctor",
        "fence": "airflow_sentinel.fence.command:fence",
        "soak": "airflow_sentinel.soak.command:soak",
        "systemd-unit": "airflow_sentinel.systemd:systemd_unit",
        "upgrade": "airflow_sentinel.upgrade.command:upgrade",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        module, name = self.lazy[cmd_name].split(":")
        command = getattr(importlib.import_module(module), name)
        assert isinstance(command, click.Command)
        return command


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
def cli() -> None:
    """Keep exactly one Airflow scheduler running across a cluster of master nodes."""


@cli.command()
def version() -> None:
    """Print the version."""
    click.echo(f"airflow-sentinel {__version__}")


@cli.command()
def init() -> None:
    """Add a commented [sentinel] section with every key and its default to airflow.cfg."""
    config = load_airflow_config()
    # Airflow, too, creates what is missing; every other command refuses a missing AIRFLOW_HOME.
    created = [str(config.home)] if create_airflow_home(config) else []
    if not config.path.parent.is_dir():
        created.append(str(config.path.parent))
    if add_sentinel_section(config):
        made = f"created {', '.join(created)} and " if created else ""
        click.echo(f"{made}added a [sentinel] section to {config.path}")
    elif created:
        click.echo(f"created {', '.join(created)}; {config.path} already has a [sentinel] section")
    else:
        click.echo(f"{config.path} already has a [sentinel] section; nothing changed")


@cli.command("test-connection")
@setting_options
def test_connection(**flags: Any) -> None:
    """Connect to the metastore, create its tables if needed, and report the round trip."""
    settings = settings_from(flags)
    started = time.perf_counter()
    with metastore_for(settings) as store:
        server = store.check()
        elapsed_ms = (time.perf_counter() - started) * 1000
    click.echo(f"ok: {store.description} ({server}); connect + schema check {elapsed_ms:.0f} ms")


@cli.command()
@setting_options
def start(**flags: Any) -> None:
    """Run the controller for this node in the foreground (SIGTERM/SIGINT: stop cleanly)."""
    from airflow_sentinel.controller.health import JobTableProbe
    from airflow_sentinel.controller.loop import Controller
    from airflow_sentinel.crash_release import MetastoreAccess
    from airflow_sentinel.fence.command import install_at_start
    from airflow_sentinel.logging_setup import configure_logging
    from airflow_sentinel.process.handle import GuardLauncher

    given = dict(flags)
    settings = settings_from(flags)
    # A token that cannot be had or a bad TLS file stops the start, in one line.
    token = load_api_token(settings)
    tls.check(tls.TlsFiles.of(settings))
    instance = Instance.of_this_process(settings.node_id)
    configure_logging(
        settings.node_id, settings.log_level, settings.log_format, describe_token(instance.token)
    )
    host = host_identity()
    op = settings.renew_interval  # every metastore call ends within it
    with node_lock(settings), metastore_for(settings, op_timeout=op) as store:
        probe = None
        airflow_cfg = load_airflow_config(Path(settings.airflow_home))
        airflow_db = airflow_cfg.sql_alchemy_conn()
        output = open_scheduler_log(settings, airflow_cfg)
        if settings.health_check == "heartbeat":
            probe = JobTableProbe(airflow_db, settings.renew_interval)
        gate = schema_gate(settings, airflow_db)
        db_fence = install_at_start(settings, airflow_db)
        clock = SystemClock()
        controller = Controller(
            settings,
            store,
            clock,
            GuardLauncher(output, MetastoreAccess(settings.metastore, op, settings.lease_ttl)),
            host,
            probe,
            start_gate=gate,
            instance=instance,
            reload=lambda: settings_from(dict(given)),
            fence=db_fence,
        )
        controller.install_signal_handlers()
        sys.exit(run_with_services(controller, settings, clock, token, output))


def run_with_services(
    controller: Controller, settings: Settings, clock: Clock, token: bytes, output: int | None
) -> int:
    """The loop, with what runs beside it: the systemd notifier, the alerts and the
    fingerprint from before this node is claimed (a conflict at start is alerted too),
    the API from after; all stopped, and the scheduler's log closed, however it ends."""
    from airflow_sentinel.alerts.service import start_alerts
    from airflow_sentinel.doctor.fingerprint import keep_fingerprint
    from airflow_sentinel.systemd import start_notify

    stops = [
        start_notify(controller),
        start_alerts(settings, controller, clock),
        keep_fingerprint(controller),
    ]
    try:
        other = controller.claim_node()
        if other is not None:
            raise NodeIdConflict(
                f"node_id '{settings.node_id}' is in use by a live controller on {other}; "
                "give each node its own node_id ([sentinel] node_id)"
            )
        api = serve_api(settings, controller, clock, token)
        try:
            return controller.run()
        finally:
            if api is not None:
                api.close()
    finally:
        for stop in stops:
            if stop is not None:
                stop()
        if output is not None:
            os.close(output)


def open_scheduler_log(settings: Settings, airflow_cfg: AirflowConfig) -> int | None:
    """The file that gets the scheduler's own output, opened for appending (a log rotation
    with copytruncate keeps working); None: our standard error."""
    if settings.scheduler_log == "-":
        return None
    path = Path(settings.scheduler_log or airflow_cfg.base_log_folder() / "sentinel-scheduler.log")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        raise UserError(
            f"scheduler_log: cannot open {path} for appending ({exc.strerror}); give a file "
            "the controller's user may write, or - for standard error"
        ) from None
    logging.getLogger("airflow_sentinel").info("the scheduler's own output goes to %s", path)
    return fd


def serve_api(
    settings: Settings, controller: Controller, clock: Clock, token: bytes
) -> Closer | None:
    """The HTTP API beside the loop, fed by what the loop publishes, with a metastore
    connection of its own for the actions; None when off, or when its address cannot be
    bound (logged: the controller runs on without it)."""
    from airflow_sentinel.api.actions import ClusterActions, LazyStore
    from airflow_sentinel.api.metrics import Metrics
    from airflow_sentinel.api.server import Access, Routes, start_api
    from airflow_sentinel.api.wake import wake_on_hand_over

    address = parse_api_address(settings.api_address)
    if address is None:
        return None
    files = tls.TlsFiles.of(settings)
    context = None if files is None else tls.server_context(files)
    access = Access(
        token=token,
        all_need_token=settings.api_auth == "all",
        networks=parse_api_allow(settings.api_allow),
    )
    metrics = Metrics(settings.node_id, controller.published.latest, clock.now)
    controller.published.subscribe(metrics.on_event)
    controller.leases.on_renewal = metrics.on_renewal
    store = LazyStore(
        lambda: open_metastore(
            settings.metastore, clock, settings.renew_interval, settings.lease_ttl
        ),
        clock.now,
    )
    actions = ClusterActions(
        store, settings.node_id, settings.lease_ttl, controller.request_cycle, controller.host
    )
    with contextlib.suppress(MetastoreError):
        store.get()  # at once, so that a failure is in the log from the start
    routes = Routes(controller.published.latest, clock.now, metrics, actions)
    server = start_api(address, routes, access, context)
    if server is None:
        store.close()
        return None
    controller.api_url = advertised_url(address[0], server.port, files is not None)
    wake = wake_on_hand_over(actions.api_of, access.token, tls.opener(files))
    controller.published.subscribe(wake)
    return Closer(server.close, store.close)


def advertised_url(host: str, port: int, https: bool = False) -> str:
    """The URL other nodes use: a wildcard address is this host's name."""
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - recognising it, not binding to it
        host = socket.getfqdn()
    scheme = "https" if https else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


class Closer:
    def __init__(self, *closes: Callable[[], None]) -> None:
        self._closes = closes

    def close(self) -> None:
        for close in self._closes:
            close()


def schema_gate(settings: Settings, airflow_db: str) -> SchemaGate | None:
    """The gate for this node's scheduler; a command whose Airflow cannot be found is
    refused here, before anything starts, unless the gate is switched off."""
    path = os.environ.get("PATH", os.defpath)  # the scheduler gets our PATH
    argv = settings.scheduler_argv
    if resolve_program(argv, path) is None:
        raise UserError(f"scheduler_command: program '{argv[0]}' not found (searched PATH)")
    gate = SchemaGate(tuple(argv), airflow_db, path, timeout=settings.renew_interval)
    problem = gate.installation_problem()
    if settings.schema_gate == "off":
        logging.getLogger("airflow_sentinel").warning(
            "schema_gate = off: schedulers start without checking the database schema"
        )
        return None
    if problem is not None:
        raise UserError(problem)
    return gate


@contextmanager
def node_lock(settings: Settings) -> Iterator[None]:
    """One controller per node_id on this host."""
    path = Path(settings.airflow_home) / f".airflow-sentinel-{settings.node_id}.lock"
    try:
        handle = path.open("a")
    except OSError as exc:
        raise UserError(
            f"cannot create the lock file {path} ({exc.strerror}); the controller needs to "
            "write to AIRFLOW_HOME: run it as the user that owns it"
        ) from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise NodeIdConflict(
                f"node_id '{settings.node_id}': another controller on this host already runs it "
                f"(lock {path})"
            ) from None
        yield


def _cluster(settings: Settings, with_history: bool = False) -> ClusterState:
    with metastore_for(settings) as store:
        return read_cluster(store, SERVICE, settings.lease_ttl, with_history)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (stable schema).")
@setting_options
def status(as_json: bool, **flags: Any) -> None:
    """Show the active node, the epoch, and every node's role and heartbeat."""
    state = _cluster(settings_from(flags), with_history=True)
    if as_json:
        click.echo(json.dumps(state.to_json(), indent=2))
    else:
        render_status(state, Console())


@cli.command("is-scheduler-running")
@setting_options
def is_scheduler_running(**flags: Any) -> None:
    """Exit 0 if a live node reports a running scheduler (and name it), 1 if none does."""
    state = _cluster(settings_from(flags))
    running = state.running_nodes()
    if not running:
        click.echo("no scheduler is running")
        sys.exit(1)
    for node in running:
        click.echo(f"scheduler running on {node.node_id} (pid {node.scheduler_pid})")
    if len(running) > 1:
        sys.exit(3)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--limit", default=20, show_default=True, type=click.IntRange(1, 10000), help="Events to show."
)
@setting_options
def metadata(as_json: bool, limit: int, **flags: Any) -> None:
    """Show everything the controllers keep in the metastore: lease, flags, nodes, events."""
    settings = settings_from(flags)
    with metastore_for(settings) as store:
        state = read_cluster(store, SERVICE, settings.lease_ttl)
        events = store.events(limit)
    if as_json:
        payload = {**state.to_json(), "flags": state.flags, "events": [e.__dict__ for e in events]}
        click.echo(json.dumps(payload, indent=2))
        return
    console = Console()
    render_status(state, console)
    console.print(f"flags: {state.flags or 'none'}")
    render_events(events, console)


@cli.command("clear-metadata")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--force",
    is_flag=True,
    help="Clear even while an upgrade holds the cluster or holds the upgrade lock.",
)
@setting_options
def clear_metadata(yes: bool, force: bool, **flags: Any) -> None:
    """Forget nodes, events and flags. The lease and its epoch are kept, so it stays safe."""
    settings = settings_from(flags)
    with metastore_for(settings) as store:
        upgrade = upgrade_in_progress(store.flags())
        if upgrade and not force:
            raise UserError(
                f"{upgrade}: clearing would lift it and let a scheduler start mid-upgrade; "
                "finish or roll back the upgrade (airflow-sentinel upgrade status), or add "
                "--force to clear anyway"
            )
        what = "the node registry, events and flags" + (f", releasing {upgrade}" if upgrade else "")
        if not yes and not click.confirm(f"clear {what} in {store.description}?"):
            raise UserError("not confirmed; nothing was cleared (use --yes to skip the question)")
        store.clear()
    released = f"; released {upgrade}" if upgrade else ""
    click.echo(f"cleared nodes, events and flags{released}; the lease (and its epoch) is kept")


def upgrade_in_progress(flags: dict[str, str]) -> str | None:
    """What an upgrade holds in the metastore, as an operator reads it, or None."""
    held = []
    if HOLD in flags:
        held.append(f"the cluster is held ({flags[HOLD]})")
    if UPGRADE_LOCK in flags:
        try:
            lock = json.loads(flags[UPGRADE_LOCK])
        except ValueError:
            lock = {}
        held.append(f"the upgrade lock is held by run {lock.get('run')} on {lock.get('node')}")
    return " and ".join(held) or None


@cli.command()
@setting_options
def pause(**flags: Any) -> None:
    """Maintenance mode: controllers keep their roles and start or stop nothing."""
    with metastore_for(settings_from(flags)) as store:
        store.set_flag(PAUSED, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    click.echo("paused: controllers keep their roles; no scheduler will be started or stopped")


@cli.command()
@setting_options
def resume(**flags: Any) -> None:
    """Leave maintenance mode."""
    with metastore_for(settings_from(flags)) as store:
        store.set_flag(PAUSED, None)
    click.echo("resumed")


@cli.command()
@click.option(
    "--to",
    "target",
    default=None,
    help="Node to hand the scheduler to (default: a healthy standby).",
)
@click.option(
    "--timeout",
    default=120.0,
    show_default=True,
    type=click.FloatRange(1),
    help="Seconds to wait for the new scheduler.",
)
@setting_options
def switchover(target: str | None, timeout: float, **flags: Any) -> None:
    """Planned handoff of the scheduler to another node, with minimal downtime."""
    settings = settings_from(flags)
    with metastore_for(settings) as store:
        state = read_cluster(store, SERVICE, settings.lease_ttl)
        if PAUSED in state.flags:
            raise UserError("the cluster is paused; resume it before a switchover")
        active = state.active_node
        if active is None or state.lease is None:
            raise UserError("no node is active; there is nothing to switch over")
        chosen = choose_target(state, active, target)
        record = next((n for n in state.nodes if n.node_id == active), None)
        done = switchover_through_api(record, settings, chosen, timeout)
        if isinstance(done, float):
            click.echo(f"done: {chosen} runs the scheduler ({done:.1f}s, through {active}'s API)")
            return
        if done is not None:
            click.echo(f"note: not through the API: {done}; using the metastore flag", err=True)
        store.set_flag(switchover_flag(SERVICE), f"{state.lease.epoch} {chosen}")
        click.echo(f"switchover requested: {active} -> {chosen}")
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            now = read_cluster(store, SERVICE, settings.lease_ttl)
            if (
                any(n.node_id == chosen and n.scheduler_running for n in now.running_nodes())
                and now.active_node == chosen
            ):
                click.echo(f"done: {chosen} runs the scheduler ({time.monotonic() - started:.1f}s)")
                return
            time.sleep(0.2)
    raise SentinelError(
        f"switchover to {chosen} not confirmed within {timeout:g}s; see `airflow-sentinel status`"
    )


def switchover_through_api(
    active: NodeRecord | None, settings: Settings, target: str, timeout: float
) -> float | str | None:
    """Ask the active node's API to hand over (it wakes both ends at once): the seconds
    it took; else why it was not asked, so that the metastore flag is used instead (None:
    nothing worth saying, no token or no API configured). A refusal the API explains is
    the operator's answer."""
    api = active.api if active is not None else None
    configured = settings.api_token_file or settings.api_token_cmd or settings.api_token_secret
    if not configured or active is None or not api:
        return None
    try:
        token = load_api_token(settings)
        files = tls.TlsFiles.of(settings)
        tls.check(files)
    except UserError as exc:
        return str(exc)  # the flag needs neither
    if not api.startswith(("http://", "https://")):
        return f"{active.node_id} advertises no usable API address"
    if not api_on_host(api, active.host, host_identity()):
        return f"{api} is not on {active.node_id}'s host {active.host}; the token stays here"
    wait = min(timeout, MAX_SWITCHOVER_WAIT)
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
        f"{api}/switchover",
        data=json.dumps({"to": target, "timeout": wait}).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token.decode()}", "Content-Type": "application/json"},
    )
    try:
        with tls.opener(files).open(request, timeout=wait + 5) as answer:
            return float(json.loads(answer.read())["seconds"])
    except urllib.error.HTTPError as exc:
        why = _api_error(exc)
        if exc.code == 504:
            raise SentinelError(f"{why}; see `airflow-sentinel status`") from None
        if exc.code in (400, 409) and "not the active node" not in why:
            raise UserError(f"switchover refused: {why}") from None
        return f"{api} answered {exc.code}: {why}"
    except (OSError, ValueError, KeyError) as exc:
        return f"{api} did not answer ({getattr(exc, 'reason', None) or exc})"


def _api_error(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read()).get("error", exc.reason))
    except ValueError:
        return str(exc.reason)


def main() -> None:
    try:
        cli.main(prog_name="airflow-sentinel", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("airflow-sentinel: error: aborted", err=True)
        sys.exit(EXIT_USAGE)
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx is not None else "airflow-sentinel"
        click.echo(
            f"airflow-sentinel: error: {exc.format_message()} (see '{command} --help')", err=True
        )
        sys.exit(EXIT_USAGE)
    except click.ClickException as exc:
        click.echo(f"airflow-sentinel: error: {exc.format_message()}", err=True)
        sys.exit(EXIT_USAGE)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except MetastoreError as exc:  # before UserError: an unreachable store is not a mistake
        click.echo(f"airflow-sentinel: error: {one_line(str(exc))}", err=True)
        sys.exit(1)
    except UserError as exc:
        click.echo(f"airflow-sentinel: error: {one_line(str(exc))}", err=True)
        sys.exit(EXIT_USAGE)
    except SentinelError as exc:
        click.echo(f"airflow-sentinel: error: {one_line(str(exc))}", err=True)
        sys.exit(1)
    except OSError as exc:  # the environment, not the user: a full disk, a missing folder
        where = f": {exc.filename}" if exc.filename else ""
        click.echo(f"airflow-sentinel: error: {exc.strerror or exc}{where}", err=True)
        sys.exit(1)


def one_line(message: str) -> str:
    """A message as one line, even when a value in it held a line break."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())
