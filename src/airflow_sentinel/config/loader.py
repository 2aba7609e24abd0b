"""Layering and validation of settings. Problems are collected, not raised one at a time."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from airflow_sentinel.config.airflow_cfg import load_airflow_config
from airflow_sentinel.config.settings import (
    KEY_NAMES,
    KEYS,
    PARSERS,
    Key,
    Settings,
    timing_problems,
)
from airflow_sentinel.errors import ConfigError
from airflow_sentinel.metastore.urls import normalize_metastore_url

ENV_PREFIX = "AIRFLOW__SENTINEL__"


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    airflow_home: Path | None = None,
) -> Settings:
    """Defaults < airflow.cfg [sentinel] < AIRFLOW__SENTINEL__* < flags (None = not given)."""
    environ = os.environ if environ is None else environ
    cfg = load_airflow_config(airflow_home)
    problems: list[str] = []
    raw: dict[str, tuple[str, str]] = {}  # key -> (value, where it came from)

    for name, value in cfg.sentinel_items().items():
        if name not in KEY_NAMES:
            problems.append(_unknown(name, f"[sentinel] in {cfg.path}"))
            continue
        raw[name] = (value, f"[sentinel] {name}")
    for env_name, value in environ.items():
        if not env_name.startswith(ENV_PREFIX):
            continue
        name = env_name[len(ENV_PREFIX) :].lower()
        if name not in KEY_NAMES:
            problems.append(_unknown(name, env_name))
            continue
        raw[name] = (value, env_name)
    for name, value in (flags or {}).items():
        if value is not None:
            raw[name] = (str(value), f"--{name.replace('_', '-')}")

    values: dict[str, Any] = {}
    for key in KEYS:
        value, origin = raw.get(key.name, (key.default, key.name))
        parsed = _parse(key, value.strip(), origin, problems)
        if parsed is not None:
            values[key.name] = parsed
    if problems:
        raise ConfigError(problems)

    values["node_id"] = values["node_id"] or socket.gethostname()
    metastore_origin = raw.get("metastore", ("", "metastore"))[1]
    metastore = values["metastore"] or cfg.sql_alchemy_conn()
    if not values["metastore"]:
        metastore_origin = "metastore (from Airflow's sql_alchemy_conn)"
    try:
        values["metastore"] = normalize_metastore_url(metastore)
    except ValueError as exc:
        problems.append(f"{metastore_origin}: {exc}")
    if not values["scheduler_command"].strip():
        problems.append("scheduler_command: must not be empty")
    problems.extend(timing_problems(values))
    if problems:
        raise ConfigError(problems)
    return Settings(**values, airflow_home=str(cfg.home), airflow_cfg=str(cfg.path))


def _unknown(name: str, where: str) -> str:
    return f"{where}: unknown key '{name}'; accepted keys: {', '.join(sorted(KEY_NAMES))}"


def _parse(key: Key, value: str, origin: str, problems: list[str]) -> Any:
    if key.kind == "choice":
        match = next((c for c in key.choices if c.lower() == value.lower()), None)
        if match is None:
            problems.append(
                f"{origin}: '{value}' is not accepted; use one of {', '.join(key.choices)}"
            )
        return match
    try:
        return PARSERS[key.kind](value)
    except ValueError:
        wanted = "a whole number" if key.kind == "int" else "a number of seconds"
        problems.append(f"{origin}: '{value}' is not {wanted}")
        return None
