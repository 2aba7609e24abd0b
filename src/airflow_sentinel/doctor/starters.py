"""Other ways this host starts a scheduler: a systemd unit or a cron entry of its own.

Either would start a second scheduler beside the one the controllers run. Only where it is
is shown (a unit name, a file and line), never the command line: it may carry a password.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from airflow_sentinel.doctor.findings import FINDING, INFO, OK, Line

Run = Callable[[list[str]], str | None]  # a command's stdout; None when it fails
SYSTEMD_DIRS = (
    Path("/etc/systemd/system"),
    Path("/run/systemd/system"),
    Path("/lib/systemd/system"),
    Path("/usr/lib/systemd/system"),
    Path("/etc/systemd/user"),
    Path("~/.config/systemd/user").expanduser(),
)
CRON_FILES = (Path("/etc/crontab"),)
CRON_DIRS = (Path("/etc/cron.d"), Path("/var/spool/cron/crontabs"))
GENERIC = r"airflow\s+scheduler\b"
# A line of our own controller mentions a scheduler command without starting one itself.
OURS = re.compile(r"airflow[-_]sentinel")
EXEC_LINE = re.compile(r"^\s*Exec\w*\s*=")
OFF_STATES = frozenset({"disabled", "masked", "static", "indirect", "generated"})
RUN_TIMEOUT = 5.0


def run_quietly(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


@dataclass(frozen=True)
class Host:
    """Where this host keeps units and cron tables, and how to run a command (tests pass
    folders of their own and a recorded ``run``)."""

    systemd_dirs: tuple[Path, ...] = SYSTEMD_DIRS
    cron_files: tuple[Path, ...] = CRON_FILES
    cron_dirs: tuple[Path, ...] = CRON_DIRS
    run: Run = run_quietly


def starter_pattern(argv: list[str]) -> re.Pattern[str]:
    """``airflow scheduler``, and the configured command as its program's name and args."""
    patterns = [GENERIC]
    if argv:
        words = [re.escape(Path(argv[0]).name), *(re.escape(a) for a in argv[1:])]
        patterns.append(r"\s+".join(words) + r"(?:\s|$|['\"])")
    return re.compile(r"(?:^|[\s/'\"=;&|(])(?:" + "|".join(patterns) + ")")


def starts_scheduler(line: str, pattern: re.Pattern[str]) -> bool:
    return not OURS.search(line) and pattern.search(line) is not None


# -- systemd ----------------------------------------------------------------------------
def systemd_lines(argv: list[str], host: Host) -> list[Line]:
    pattern = starter_pattern(argv)
    units = dict(_units_in_files(host.systemd_dirs, pattern))
    states = _unit_states(host.run)
    if states is not None:
        units.update(_units_only_systemctl_knows(states, units, pattern, host.run))
    return [_unit_line(name, where, states) for name, where in sorted(units.items())]


def _units_in_files(dirs: tuple[Path, ...], pattern: re.Pattern[str]) -> Iterator[tuple[str, str]]:
    """(unit, file) for every unit file or drop-in whose Exec lines start a scheduler; the
    first folder wins, as systemd's own precedence goes."""
    seen: set[str] = set()
    for folder in dirs:
        for path in [*sorted(folder.glob("*.service")), *sorted(folder.glob("*.service.d/*.conf"))]:
            unit = path.parent.name[: -len(".d")] if path.suffix == ".conf" else path.name
            if unit not in seen and _file_matches(path, pattern, EXEC_LINE):
                seen.add(unit)
                yield unit, str(path)


def _file_matches(path: Path, pattern: re.Pattern[str], only: re.Pattern[str] | None) -> bool:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return False
    return any(
        (only is None or only.match(line)) and starts_scheduler(line, pattern)
        for line in text.splitlines()
    )


@dataclass(frozen=True)
class UnitState:
    enabled: str = "unknown"
    active: str = "inactive"


def _unit_states(run: Run) -> dict[str, UnitState] | None:
    """Every service unit's enablement and activity; None when systemctl cannot tell
    (no systemd as init, as in many containers)."""
    files = run(["systemctl", "list-unit-files", "--type=service", "--no-legend", "--plain"])
    units = run(["systemctl", "list-units", "--type=service", "--all", "--no-legend", "--plain"])
    if files is None or units is None:
        return None
    states: dict[str, UnitState] = {}
    for line in files.splitlines():
        words = line.split()
        if len(words) >= 2:
            states[words[0]] = UnitState(enabled=words[1])
    for line in units.splitlines():
        words = line.split()
        if len(words) >= 3:
            known = states.get(words[0], UnitState())
            states[words[0]] = UnitState(known.enabled, words[2])
    return states


def _units_only_systemctl_knows(
    states: dict[str, UnitState], found: dict[str, str], pattern: re.Pattern[str], run: Run
) -> Iterator[tuple[str, str]]:
    """Units outside the usual folders (transient ones, other unit paths) named like
    Airflow's: their Exec lines, as systemctl shows them."""
    for name in sorted(states):
        if name in found or not re.search(r"airflow|scheduler", name, re.IGNORECASE):
            continue
        shown = run(["systemctl", "show", "--property=ExecStart", "--value", name]) or ""
        if any(starts_scheduler(line, pattern) for line in shown.splitlines()):
            yield name, "systemctl"


def _unit_line(name: str, where: str, states: dict[str, UnitState] | None) -> Line:
    state = None if states is None else states.get(name, UnitState())
    detail = {"unit": name, "file": where}
    if state is None:
        return Line(
            FINDING,
            "systemd",
            f"systemd unit {name} ({where}) starts an Airflow scheduler (its state is unknown: "
            "systemctl does not answer); disable and mask it, the controllers start the "
            "scheduler",
            detail,
        )
    detail.update(enabled=state.enabled, active=state.active)
    if state.enabled in OFF_STATES and state.active in ("inactive", "failed"):
        return Line(
            INFO,
            "systemd",
            f"systemd unit {name} ({where}) would start an Airflow scheduler; it is "
            f"{state.enabled} and {state.active}: `systemctl mask {name}` keeps it so",
            detail,
        )
    return Line(
        FINDING,
        "systemd",
        f"systemd unit {name} ({where}) starts an Airflow scheduler and is {state.enabled}, "
        f"{state.active}: `systemctl disable --now {name}` and `systemctl mask {name}`",
        detail,
    )


# -- cron -------------------------------------------------------------------------------
def cron_lines(argv: list[str], host: Host) -> list[Line]:
    pattern = starter_pattern(argv)
    lines: list[Line] = []
    own = host.run(["crontab", "-l"])
    if own is not None:
        lines += [_cron_line("this user's crontab", n) for n in _matching(own, pattern)]
    for path in _cron_tables(host):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        lines += [_cron_line(str(path), n) for n in _matching(text, pattern)]
    return lines


def _cron_tables(host: Host) -> list[Path]:
    tables = [p for p in host.cron_files if p.is_file()]
    for folder in host.cron_dirs:
        # cron itself skips names with a dot or a tilde (editor backups, package leftovers)
        tables += sorted(
            p for p in folder.glob("*") if p.is_file() and not re.search(r"[.~]", p.name)
        )
    return tables


def _matching(text: str, pattern: re.Pattern[str]) -> list[int]:
    return [
        number
        for number, line in enumerate(text.splitlines(), start=1)
        if not line.lstrip().startswith("#") and starts_scheduler(line, pattern)
    ]


def _cron_line(where: str, number: int) -> Line:
    return Line(
        FINDING,
        "cron",
        f"cron: {where}, line {number}, starts an Airflow scheduler; remove that entry, the "
        "controllers start the scheduler",
        {"file": where, "line": number},
    )


def starter_lines(argv: list[str], host: Host) -> list[Line]:
    """Every other starter of a scheduler on this host, or one line saying there is none."""
    found = [*systemd_lines(argv, host), *cron_lines(argv, host)]
    if found:
        return found
    return [Line(OK, "starters", "no systemd unit or cron entry on this host starts a scheduler")]
