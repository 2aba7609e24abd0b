"""Reading `airflow.cfg` the way Airflow does, without importing Airflow."""

from __future__ import annotations

import configparser
import os
import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from airflow_sentinel.config.settings import KEYS
from airflow_sentinel.errors import ConfigError, UserError

SECTION = "sentinel"


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
            return _run_cmd(f"{env_name}_CMD", self.environ[f"{env_name}_CMD"])
        return None

    def from_file(self, section: str, key: str) -> str | None:
        """A value from airflow.cfg, or the output of its `<key>_cmd` option."""
        if self.parser.has_option(section, key):
            return self.parser.get(section, key)
        if self.parser.has_option(section, f"{key}_cmd"):
            return _run_cmd(f"[{section}] {key}_cmd", self.parser.get(section, f"{key}_cmd"))
        return None

    def sentinel_items(self) -> dict[str, str]:
        if not self.parser.has_section(SECTION):
            return {}
        return dict(self.parser.items(SECTION))

    def sql_alchemy_conn(self) -> str:
        """Airflow's metadata database URL, looked up in Airflow's order: environment first
        ([database], then the deprecated [core]), then airflow.cfg likewise."""
        for lookup in (self.from_env, self.from_file):
            for section in ("database", "core"):
                value = lookup(section, "sql_alchemy_conn")
                if value:
                    return value.strip()
        return f"sqlite:///{self.home / 'airflow.db'}"


def _run_cmd(origin: str, command: str) -> str:
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
    return Path(environ.get("AIRFLOW_HOME") or "~/airflow").expanduser()


def load_airflow_config(
    home: Path | None = None, environ: Mapping[str, str] | None = None
) -> AirflowConfig:
    environ = os.environ if environ is None else environ
    home = home or airflow_home(environ)
    path = Path(environ.get("AIRFLOW_CONFIG") or home / "airflow.cfg").expanduser()
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    if path.is_file():
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError) as exc:
            first_line = str(exc).splitlines()[0]
            raise ConfigError([f"{path}: not a readable airflow.cfg ({first_line})"]) from None
    return AirflowConfig(home=home, path=path, parser=parser, environ=environ)


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


def add_sentinel_section(config: AirflowConfig) -> bool:
    """Append the section to airflow.cfg, leaving every existing byte as it was.

    Returns False when the file already has a `[sentinel]` section (nothing is written).
    """
    if config.parser.has_section(SECTION):
        return False
    config.path.parent.mkdir(parents=True, exist_ok=True)
    existing = config.path.read_bytes() if config.path.exists() else b""
    separator = b"" if not existing or existing.endswith(b"\n") else b"\n"
    if not config.path.exists():
        # airflow.cfg usually holds database passwords: owner-only from the start.
        config.path.touch(mode=0o600)
    with config.path.open("ab") as handle:
        handle.write(separator + sentinel_section_text().encode("utf-8"))
    config.parser.add_section(SECTION)
    return True
