"""Layering and validation of settings. Problems are collected, not raised one at a time."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from airflow_sentinel.config.airflow_cfg import AirflowConfig, read_airflow_config
from airflow_sentinel.config.settings import (
    KEY_NAMES,
    KEYS,
    PARSERS,
    Key,
    Settings,
    alert_problems,
    api_address_problem,
    api_allow_problem,
    api_tls_problems,
    api_token_problems,
    scheduler_command_problem,
    timing_problems,
)
from airflow_sentinel.errors import ConfigError, UserError
from airflow_sentinel.metastore.urls import normalize_metastore_url

ENV_PREFIX = "AIRFLOW__SENTINEL__"
NODE_ID_MAX_LENGTH = 255  # the width of the metastores' node_id columns


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    airflow_home: Path | None = None,
) -> Settings:
    """Defaults < airflow.cfg [sentinel] < AIRFLOW__SENTINEL__* < flags (None = not given)."""
    environ = os.environ if environ is None else environ
    cfg, findings = read_airflow_config(airflow_home, environ)
    problems = findings.all  # only `init` may create a missing AIRFLOW_HOME or airflow.cfg
    raw = _layered_values(cfg, environ, flags or {}, problems)
    values: dict[str, Any] = {}
    for key in KEYS:
        value, origin = raw.get(key.name, (key.default, key.name))
        parsed = _parse(key, value.strip(), origin, problems)
        if parsed is not None:
            values[key.name] = parsed
    metastore = _metastore(raw.get("metastore", ("", ""))[0].strip(), raw, cfg, problems)
    problems.extend(_string_problems(values, raw))
    problems.extend(api_tls_problems(values))
    problems.extend(api_token_problems(values))
    problems.extend(alert_problems(values, {k.name: _origin(raw, k.name) for k in KEYS}))
    if len(values) == len(KEYS):  # the invariants need every timing value parsed
        problems.extend(timing_problems(values))
    if problems:
        raise ConfigError(problems)
    values["node_id"] = values["node_id"] or socket.gethostname()
    values["metastore"] = metastore
    return Settings(**values, airflow_home=str(cfg.home), airflow_cfg=str(cfg.path))


def _layered_values(
    cfg: AirflowConfig,
    environ: Mapping[str, str],
    flags: Mapping[str, Any],
    problems: list[str],
) -> dict[str, tuple[str, str]]:
    """Each given key's raw value and where it came from; later layers win."""
    raw: dict[str, tuple[str, str]] = {}
    for name, value in cfg.sentinel_items().items():
        if name in KEY_NAMES:
            raw[name] = (value, f"[sentinel] {name}")
        else:
            problems.append(_unknown(name, f"[sentinel] in {cfg.path}"))
    for env_name, value in environ.items():
        if not env_name.startswith(ENV_PREFIX):
            continue
        name = env_name[len(ENV_PREFIX) :].lower()
        if name in KEY_NAMES:
            raw[name] = (value, env_name)
        else:
            problems.append(_unknown(name, env_name))
    for name, value in flags.items():
        if value is not None:
            raw[name] = (str(value), f"--{name.replace('_', '-')}")
    return raw


def _metastore(
    given: str, raw: dict[str, tuple[str, str]], cfg: AirflowConfig, problems: list[str]
) -> str:
    if given:
        url, origin = given, raw["metastore"][1]
    else:
        try:
            url, where = cfg.sql_alchemy_conn_and_origin()
        except UserError as exc:  # its _cmd failed: one more problem among the others
            problems.append(str(exc))
            return ""
        origin = f"metastore (Airflow's sql_alchemy_conn, from {where})"
    try:
        return normalize_metastore_url(url)
    except ValueError as exc:
        problems.append(f"{origin}: {exc}")
        return url


def _string_problems(values: dict[str, Any], raw: dict[str, tuple[str, str]]) -> list[str]:
    """What is wrong with the free-text keys, each named by where its value came from."""
    found = {
        "node_id": _node_id_problem(values["node_id"]),
        "scheduler_command": scheduler_command_problem(values["scheduler_command"]),
        "api_address": api_address_problem(values["api_address"]),
        "api_allow": api_allow_problem(values["api_allow"]),
    }
    return [f"{_origin(raw, name)}: {problem}" for name, problem in found.items() if problem]


def _node_id_problem(node_id: str) -> str | None:
    """A node_id names a znode, a database row and the lock file in AIRFLOW_HOME."""
    if "/" in node_id or node_id in (".", ".."):
        return f"'{node_id}' must not contain '/' nor be '.' or '..'"
    if len(node_id) > NODE_ID_MAX_LENGTH:
        return f"must be at most {NODE_ID_MAX_LENGTH} characters, got {len(node_id)}"
    if any(not ch.isprintable() for ch in node_id):
        # It goes into log lines, a unit file, headers: a line break there would forge one.
        return f"{node_id!r} must not contain control characters (line breaks, tabs)"
    return None


def _origin(raw: dict[str, tuple[str, str]], name: str) -> str:
    """Where a key's value came from: a file, a variable, a flag, or the default."""
    return raw.get(name, ("", name))[1]


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
