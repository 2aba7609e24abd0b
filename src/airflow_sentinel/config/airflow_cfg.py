"""Reading `airflow.cfg` the way Airflow does, without importing Airflow."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import stat
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from airflow_sentinel.config.settings import KEYS
from airflow_sentinel.errors import ConfigError, UserError

SECTION = "sentinel"


ENV_REFERENCE = re.compile(r"\$(\w+)|\$\{(\w+)\}")


def expand_option(text: str, environ: Mapping[str, str]) -> str:
    """As Airflow expands option values: ``~`` and ``$VAR`` (unknown ones stay)."""
    expanded = ENV_REFERENCE.sub(
        lambda m: environ.get(m.group(1) or m.group(2), m.group(0)), text.strip()
    )
    if expanded.startswith("~"):
        expanded = str(Path(expanded).expanduser())
    return expanded


@dataclass(frozen=True)
class AirflowConfig:
    home: Path
    path: Path
    parser: configparser.ConfigParser
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)

    @property
    def exists(self) -> bool:
        return self.path.is_file()

    def from_env(self, section: str, key: str) -> str | None:
        """A value from AIRFLOW__SECTION__KEY, or the output of AIRFLOW__SECTION__KEY_CMD."""
        env_name = f"AIRFLOW__{section.upper()}__{key.upper()}"
        if env_name in self.environ:
            return self.environ[env_name]
        if f"{env_name}_CMD" in self.environ:
            return run_command(f"{env_name}_CMD", self.environ[f"{env_name}_CMD"])
        return None

    def from_file(self, section: str, key: str) -> str | None:
        """A value from airflow.cfg, or the output of its `<key>_cmd` option."""
        if self.parser.has_option(section, key):
            return self.parser.get(section, key)
        if self.parser.has_option(section, f"{key}_cmd"):
            return run_command(f"[{section}] {key}_cmd", self.parser.get(section, f"{key}_cmd"))
        return None

    def base_log_folder(self) -> Path:
        """Airflow's [logging] base_log_folder, as Airflow finds it (default: logs in
        AIRFLOW_HOME); the {AIRFLOW_HOME} placeholder of newer defaults is filled in."""
        value = self.from_env("logging", "base_log_folder") or self.from_file(
            "logging", "base_log_folder"
        )
        if not value:
            return self.home / "logs"
        home = str(self.home)  # $AIRFLOW_HOME/logs is the usual value
        environ = {**self.environ, "AIRFLOW_HOME": home}
        # $VARS first: the bare {AIRFLOW_HOME} placeholder is also inside ${AIRFLOW_HOME}.
        return Path(expand_option(value, environ).replace("{AIRFLOW_HOME}", home))

    def sentinel_items(self) -> dict[str, str]:
        if not self.parser.has_section(SECTION):
            return {}
        return dict(self.parser.items(SECTION))

    def sql_alchemy_conn(self) -> str:
        """Airflow's metadata database URL, looked up in Airflow's order: environment first
        ([database], then the deprecated [core]), then airflow.cfg likewise."""
        return self.sql_alchemy_conn_and_origin()[0]

    def sql_alchemy_conn_and_origin(self) -> tuple[str, str]:
        """Airflow's metadata database URL and where it was found, for error messages."""
        for section in ("database", "core"):
            value = self.from_env(section, "sql_alchemy_conn")
            if value:
                return value.strip(), f"AIRFLOW__{section.upper()}__SQL_ALCHEMY_CONN"
        for section in ("database", "core"):
            value = self.from_file(section, "sql_alchemy_conn")
            if value:
                return value.strip(), f"[{section}] sql_alchemy_conn in {self.path}"
        return f"sqlite:///{self.home / 'airflow.db'}", "Airflow's default"


def run_command(origin: str, command: str) -> str:
    """The stdout of a `_cmd` setting's command (split as a shell would, not run by one)."""
    try:
        done = subprocess.run(
            shlex.split(command), capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"{origin}: the command could not be run ({type(exc).__name__})") from None
    if done.returncode != 0:
        raise UserError(f"{origin}: the command exited with code {done.returncode}")
    return done.stdout.strip()


def airflow_home(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    return Path(environ.get("AIRFLOW_HOME") or "~/airflow").expanduser().absolute()


@dataclass
class Findings:
    """What is wrong with AIRFLOW_HOME, AIRFLOW_CONFIG and the file, one line each.

    ``missing`` is what `init` creates (as Airflow does); ``broken`` needs the operator.
    """

    missing: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)

    @property
    def all(self) -> list[str]:
        return [*self.missing, *self.broken]


def read_airflow_config(
    home: Path | None = None, environ: Mapping[str, str] | None = None
) -> tuple[AirflowConfig, Findings]:
    """Airflow's configuration and every problem found on the way, none of them raised.

    A file that cannot be read counts as empty, so that the other problems can still be
    found and reported together with it.
    """
    environ = os.environ if environ is None else environ
    home_by_default = home is None and not environ.get("AIRFLOW_HOME")
    home = (home or airflow_home(environ)).absolute()
    given = environ.get("AIRFLOW_CONFIG")
    path = Path(given).expanduser().absolute() if given else home / "airflow.cfg"
    findings = Findings()
    _check_home(home, home_by_default, findings)
    if given or not findings.all:  # the default file lives in AIRFLOW_HOME: said already
        parser = _read_cfg(path, given is not None, findings)
    else:
        parser = _empty_parser()
    return AirflowConfig(home=home, path=path, parser=parser, environ=environ), findings


def load_airflow_config(
    home: Path | None = None, environ: Mapping[str, str] | None = None
) -> AirflowConfig:
    """Airflow's configuration; what is missing is left for the caller to create (`init`).

    Raises ConfigError when AIRFLOW_HOME or the file is there but cannot be used.
    """
    config, findings = read_airflow_config(home, environ)
    if findings.broken:
        raise ConfigError(findings.broken)
    return config


def _check_home(home: Path, by_default: bool, findings: Findings) -> None:
    named = "AIRFLOW_HOME (not set, so ~/airflow)" if by_default else "AIRFLOW_HOME"
    try:
        mode = home.stat().st_mode
    except FileNotFoundError:
        findings.missing.append(
            f"{named} {home} does not exist; point AIRFLOW_HOME at Airflow's home folder "
            "(`airflow-sentinel init` creates it)"
        )
        return
    except OSError as exc:
        findings.broken.append(f"{named} {home} cannot be used: {exc.strerror}")
        return
    if not stat.S_ISDIR(mode):
        findings.broken.append(f"{named} {home} is not a directory")


def _read_cfg(path: Path, given: bool, findings: Findings) -> configparser.ConfigParser:
    """The parsed file; empty when it is absent or cannot be read (then ``findings`` says why)."""
    named = f"AIRFLOW_CONFIG {path}" if given else str(path)
    parser = _empty_parser()
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if os.path.lexists(path):
            findings.broken.append(f"{named} is a symbolic link to nothing")
        elif given:
            findings.missing.append(
                f"{named} does not exist; point AIRFLOW_CONFIG at Airflow's airflow.cfg "
                "(`airflow-sentinel init` creates it)"
            )
        return parser
    except OSError as exc:
        findings.broken.append(f"{named} cannot be used: {exc.strerror}")
        return parser
    if stat.S_ISDIR(mode):
        findings.broken.append(f"{named} is a directory, not an airflow.cfg file")
        return parser
    if not stat.S_ISREG(mode):
        findings.broken.append(f"{named} is not a regular file")
        return parser
    try:
        with path.open(encoding="utf-8") as handle:
            parser.read_file(handle, source=str(path))
    except OSError as exc:
        findings.broken.append(f"{named} cannot be read: {exc.strerror}")
    except (configparser.Error, UnicodeDecodeError) as exc:
        findings.broken.append(f"{named} is not a valid airflow.cfg: {_why_unparsable(exc)}")
    else:
        return parser
    return _empty_parser()  # half a file could mislead: use none of it


def _empty_parser() -> configparser.ConfigParser:
    return configparser.ConfigParser(interpolation=None, strict=False)


def _why_unparsable(exc: configparser.Error | UnicodeDecodeError) -> str:
    """Where the file breaks, never the text of the line (it may hold a password)."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte {exc.start} cannot be decoded)"
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return f"line {exc.lineno} comes before any [section] header"
    if isinstance(exc, configparser.ParsingError) and exc.errors:
        numbers = [str(lineno) for lineno, _ in exc.errors]
        lines = f"lines {', '.join(numbers)} are" if len(numbers) > 1 else f"line {numbers[0]} is"
        return f"{lines} neither a [section] header nor key = value"
    return type(exc).__name__


def sentinel_section_text() -> str:
    """A commented `[sentinel]` section with every key and its default."""
    lines = [
        "",
        f"[{SECTION}]",
        "# airflow-sentinel: failover controller for the Airflow scheduler.",
        "# Every key is shown with its default; uncomment to change it.",
        "# Environment variables AIRFLOW__SENTINEL__<KEY> override these values.",
    ]
    for key in KEYS:
        lines.append("")
        lines.extend(f"# {line}" for line in _wrap(key.help))
        if key.choices:
            lines.append(f"# Accepted: {', '.join(key.choices)}")
        lines.append(f"# {key.name} = {key.default}")
    return "\n".join(lines) + "\n"


def _wrap(text: str, width: int = 88) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return [*lines, line] if line else lines


def create_airflow_home(config: AirflowConfig) -> bool:
    """Create a missing AIRFLOW_HOME, as Airflow does; True when it was created.

    Only `init` calls this: every other command refuses a missing AIRFLOW_HOME.
    """
    if config.home.is_dir():
        return False
    try:
        config.home.mkdir(parents=True)
    except OSError as exc:
        raise UserError(f"AIRFLOW_HOME {config.home} cannot be created: {exc.strerror}") from None
    return True


def add_sentinel_section(config: AirflowConfig) -> bool:
    """Append the section to airflow.cfg, leaving every existing byte as it was.

    Returns False when the file already has a `[sentinel]` section (nothing is written).
    """
    if config.parser.has_section(SECTION):
        return False
    try:
        _append_section(config.path)
    except OSError as exc:
        raise UserError(f"{config.path} cannot be written: {exc.strerror}") from None
    config.parser.add_section(SECTION)
    return True


def _append_section(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = path.read_bytes() if path.exists() else b""
    separator = b"" if not existing or existing.endswith(b"\n") else b"\n"
    if not path.exists():
        # airflow.cfg usually holds database passwords: owner-only from the start.
        path.touch(mode=0o600)
    with path.open("ab") as handle:
        handle.write(separator + sentinel_section_text().encode("utf-8"))
