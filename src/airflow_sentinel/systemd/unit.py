"""`airflow-sentinel systemd-unit`: a Type=notify unit for this node's controller, with the
paths, the user and the timings of this node."""

from __future__ import annotations

import os
import pwd
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from airflow_sentinel.airflow_schema import resolve_program
from airflow_sentinel.cli import setting_options, settings_from
from airflow_sentinel.config import KEYS, Settings
from airflow_sentinel.errors import UserError
from airflow_sentinel.systemd.timing import longest_silence_s, stop_timeout_sec, watchdog_sec

UNIT_NAME = "airflow-sentinel.service"
RESTART_SEC = 5
# What the unit sets itself; any other AIRFLOW* variable of this shell is named, not copied.
UNIT_VARIABLES = ("AIRFLOW_HOME", "AIRFLOW_CONFIG")


@dataclass(frozen=True)
class UnitPlan:
    """Everything the unit says, decided; ``render_unit`` only writes it out."""

    node_id: str
    user: str
    airflow_home: str
    airflow_config: str | None  # set when AIRFLOW_CONFIG names the file
    path: str
    exec_start: tuple[str, ...]
    scheduler_program: str
    scheduler_found: str | None  # where scheduler_command's program is found on ``path``
    renew_interval: float
    stop_timeout: float
    silence_s: float
    watchdog_sec: int
    stop_sec: int
    not_carried: tuple[str, ...]  # AIRFLOW* variables of this shell the unit does not set


def plan_unit(
    settings: Settings,
    flags: Mapping[str, str],
    user: str,
    environ: Mapping[str, str],
    executable: str,
) -> UnitPlan:
    """The unit for ``settings``; ``flags`` are the setting flags given on this command
    line, passed on to `start` so that the unit runs with the settings it was sized for."""
    path = unit_path(environ.get("PATH", os.defpath), executable)
    silence = longest_silence_s(settings)
    return UnitPlan(
        node_id=settings.node_id,
        user=user,
        airflow_home=settings.airflow_home,
        airflow_config=settings.airflow_cfg if environ.get("AIRFLOW_CONFIG") else None,
        path=path,
        exec_start=(*sentinel_command(executable), "start", *flag_words(flags)),
        scheduler_program=settings.scheduler_argv[0],
        scheduler_found=resolve_program(settings.scheduler_argv, path),
        renew_interval=settings.renew_interval,
        stop_timeout=settings.stop_timeout,
        silence_s=silence,
        watchdog_sec=watchdog_sec(silence),
        stop_sec=stop_timeout_sec(settings),
        not_carried=tuple(
            sorted(n for n in environ if n.startswith("AIRFLOW") and n not in UNIT_VARIABLES)
        ),
    )


def sentinel_command(executable: str) -> tuple[str, ...]:
    """This installation's command, by absolute path: the script beside the interpreter
    (its venv's bin, symlinks kept, so that the venv is the one that runs), else the
    interpreter with ``-m``."""
    python = Path(executable).absolute()
    script = python.parent / "airflow-sentinel"
    if script.is_file() and os.access(script, os.X_OK):
        return (str(script),)
    return (str(python), "-m", "airflow_sentinel")


def unit_path(current: str, executable: str) -> str:
    """This shell's PATH, so that scheduler_command resolves under systemd as it does here,
    with this venv's bin at the end if it is missing. Relative entries are left out: under
    systemd they would name folders of the WorkingDirectory instead."""
    entries = [entry for entry in current.split(os.pathsep) if entry.startswith("/")]
    bin_dir = str(Path(executable).absolute().parent)
    if bin_dir not in entries:
        entries.append(bin_dir)
    return os.pathsep.join(dict.fromkeys(entries))


def flag_words(flags: Mapping[str, str]) -> list[str]:
    words = []
    for key in KEYS:
        if key.name in flags:
            words += [f"--{key.name.replace('_', '-')}", flags[key.name]]
    return words


# -- writing it out ----------------------------------------------------------------------
def exec_word(word: str) -> str:
    """One word of an Exec*= line: systemd expands % specifiers and $VARIABLES there, and
    splits at whitespace unless quoted."""
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"' if _needs_quotes(word) else escaped


def environment_line(name: str, value: str) -> str:
    """An Environment= line: % specifiers are expanded there, $ is not."""
    assignment = f"{name}={value}".replace("%", "%%")
    if _needs_quotes(assignment):
        assignment = '"' + assignment.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"Environment={assignment}"


def _needs_quotes(text: str) -> bool:
    return not text or any(c.isspace() or c in "\"'\\;" for c in text)


def render_unit(plan: UnitPlan) -> str:
    for value in (plan.airflow_home, plan.path, plan.user, *plan.exec_start):
        if "\n" in value or "\r" in value:
            raise UserError(f"cannot write a unit line holding a line break: {value!r}")
    lines = [*_header(plan), *_unit_section(), *_service_section(plan), *_install_section()]
    return "\n".join(lines) + "\n"


def _header(plan: UnitPlan) -> list[str]:
    return [
        f"# /etc/systemd/system/{UNIT_NAME}: the airflow-sentinel controller of node "
        f"{plan.node_id},",
        f"# printed by `airflow-sentinel systemd-unit` for renew_interval {plan.renew_interval:g}s"
        f" and stop_timeout {plan.stop_timeout:g}s:",
        "# print it again after changing either. Install it with",
        "#   systemctl daemon-reload && systemctl enable --now airflow-sentinel",
    ]


def _unit_section() -> list[str]:
    return [
        "",
        "[Unit]",
        "Description=airflow-sentinel failover controller for the Airflow scheduler",
        "Wants=network-online.target",
        "After=network-online.target",
        "# Never give up restarting: a metastore that is down at boot comes back.",
        "StartLimitIntervalSec=0",
    ]


def _service_section(plan: UnitPlan) -> list[str]:
    return [
        "",
        "[Service]",
        "# READY=1 comes after the first control cycle; STATUS= shows the role and epoch.",
        "Type=notify",
        "# Only the controller's own messages count, not those of its guards or scheduler.",
        "NotifyAccess=main",
        f"User={plan.user}",
        f"WorkingDirectory={plan.airflow_home.replace('%', '%%')}",
        environment_line("AIRFLOW_HOME", plan.airflow_home),
        *([environment_line("AIRFLOW_CONFIG", plan.airflow_config)] if plan.airflow_config else []),
        *_path_lines(plan),
        *_not_carried_lines(plan),
        "ExecStart=" + " ".join(exec_word(word) for word in plan.exec_start),
        "# SIGHUP re-reads the configuration (RELOADING=1, then READY=1); a bad file is one",
        "# logged line and the old settings stay.",
        "ExecReload=/bin/kill -HUP $MAINPID",
        *_watchdog_lines(plan),
        "# SIGTERM to the controller only: it stops its scheduler itself (SIGTERM, SIGKILL",
        "# after stop_timeout) and releases the lease; then SIGKILL to whatever is left.",
        "KillMode=mixed",
        "# The cycle under way, the scheduler's stop and kill, the release, the last reports.",
        f"TimeoutStopSec={plan.stop_sec}",
        "Restart=on-failure",
        f"RestartSec={RESTART_SEC}",
        "# Exit code 2 is a configuration or usage mistake (or a node_id another live",
        "# controller uses): restarting cannot fix it.",
        "RestartPreventExitStatus=2",
    ]


def _path_lines(plan: UnitPlan) -> list[str]:
    if plan.scheduler_found is None:
        where = (
            f"# scheduler_command's '{plan.scheduler_program}' is NOT found on this PATH: fix it."
        )
    else:
        where = f"# scheduler_command's '{plan.scheduler_program}' is {plan.scheduler_found} here."
    return [
        "# The PATH this was printed with (the scheduler gets the controller's environment).",
        where,
        environment_line("PATH", plan.path),
    ]


def _not_carried_lines(plan: UnitPlan) -> list[str]:
    if not plan.not_carried:
        return []
    return [
        "# Set in the shell this was printed from, but not here (values may be secrets):",
        *(f"#   {name}" for name in plan.not_carried),
        "# Put them in airflow.cfg, or in a file only root and the user can read:",
        "# EnvironmentFile=/etc/airflow-sentinel/environment",
    ]


def _watchdog_lines(plan: UnitPlan) -> list[str]:
    return [
        f"# A healthy loop pings at every cycle, at most {plan.silence_s:g}s apart: renew_interval"
        " and",
        "# one cycle's bound (store calls, the database fence's raise, a scheduler's stop and",
        "# kill). Silent for longer, it is hung: systemd kills and restarts it. The guards",
        "# fence the scheduler on their own.",
        f"WatchdogSec={plan.watchdog_sec}",
        "# Connecting, claiming the node_id and the first cycle come before READY=1.",
        f"TimeoutStartSec={plan.watchdog_sec + 30}",
    ]


def _install_section() -> list[str]:
    return ["", "[Install]", "WantedBy=multi-user.target"]


# -- the command -------------------------------------------------------------------------
def current_user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        raise UserError(f"uid {os.geteuid()} has no user name; give one with --user") from None


def checked_user(name: str) -> str:
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise UserError(f"--user: no user '{name}' on this host") from None
    return name


def notes(plan: UnitPlan) -> list[str]:
    """What the operator should know before installing it (on stderr, beside the unit)."""
    found = []
    if plan.scheduler_found is None:
        found.append(f"scheduler_command's '{plan.scheduler_program}' is not found on PATH")
    if plan.not_carried:
        found.append(f"not carried into the unit: {', '.join(plan.not_carried)}")
    owner = _owner(plan.airflow_home)
    if owner is not None and owner != plan.user:
        found.append(f"AIRFLOW_HOME {plan.airflow_home} belongs to {owner}, not to {plan.user}")
    return found


def _owner(path: str) -> str | None:
    try:
        return pwd.getpwuid(Path(path).stat().st_uid).pw_name
    except (OSError, KeyError):
        return None


@click.command("systemd-unit")
@click.option("--user", default=None, help="User the controller runs as (default: you).")
@setting_options
def systemd_unit(user: str | None, **flags: Any) -> None:
    """Print a systemd unit for this node's controller (Type=notify, with a watchdog)."""
    given = {name: str(value) for name, value in flags.items() if value is not None}
    settings = settings_from(flags)
    plan = plan_unit(
        settings,
        given,
        checked_user(user) if user else current_user(),
        os.environ,
        sys.executable,
    )
    click.echo(render_unit(plan), nl=False)
    for note in notes(plan):
        click.echo(f"note: {note}", err=True)
