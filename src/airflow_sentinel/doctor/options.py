"""Airflow options as a fingerprint records them: found in Airflow's order, never executed,
and stripped of secrets."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from airflow_sentinel.config.airflow_cfg import AirflowConfig, expand_option
from airflow_sentinel.errors import UserError
from airflow_sentinel.metastore.urls import DRIVER_MAP

UNSET = "(not set: Airflow's default)"
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}
# Query parameters whose value may be a secret: their names contain one of these.
SECRET_WORDS = ("pass", "secret", "token", "key", "auth", "cred")
HASH_CHARS = 16


@dataclass(frozen=True)
class RawOption:
    """An option's text and how it is given: ``value``, ``command`` (``_cmd``) or
    ``secret`` (``_secret``); ``None`` text when it is not set."""

    kind: str
    text: str | None


def raw_option(config: AirflowConfig, section: str, key: str) -> RawOption:
    """Where Airflow looks, in its order: AIRFLOW__S__K, then _CMD, then _SECRET, then
    airflow.cfg's key, key_cmd, key_secret. Nothing is run."""
    env = f"AIRFLOW__{section.upper()}__{key.upper()}"
    for suffix, kind in (("", "value"), ("_CMD", "command"), ("_SECRET", "secret")):
        if env + suffix in config.environ:
            return RawOption(kind, config.environ[env + suffix])
    for suffix, kind in (("", "value"), ("_cmd", "command"), ("_secret", "secret")):
        if config.parser.has_option(section, key + suffix):
            return RawOption(kind, config.parser.get(section, key + suffix))
    return RawOption("value", None)


def plain_option(config: AirflowConfig, section: str, key: str) -> str | None:
    """A plain option's expanded value, or None when unset (no _cmd form for these)."""
    option = raw_option(config, section, key)
    if option.text is None or option.kind != "value":
        return None
    return expand_option(option.text, config.environ)


def folder_option(config: AirflowConfig, key: str, default: str) -> Path:
    """``[core] dags_folder`` or ``plugins_folder``; by default inside AIRFLOW_HOME."""
    value = plain_option(config, "core", key)
    if not value:
        return config.home / default
    # Airflow 3's generated defaults keep a placeholder for the home
    return Path(value.replace("{AIRFLOW_HOME}", str(config.home)))


def fingerprint_text(kind: str, text: str) -> dict[str, str]:
    """A value that must not be run or shown: where it comes from and a short hash."""
    return {"from": kind, "sha256": hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]}


def database_identity(config: AirflowConfig) -> Any:
    """Airflow's database as ``dialect://host:port/database`` (SQLite: its path), found as
    the controller finds it; never a user or password."""
    try:
        url = config.sql_alchemy_conn()
    except UserError as exc:
        return {"error": str(exc)}
    return sql_identity(url)


def sql_identity(url: str) -> Any:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return {"error": "not a database URL"}  # no hash: the text may hold a password
    dialect = DRIVER_MAP.get(parsed.drivername, parsed.drivername).split("+")[0]
    if dialect == "sqlite":
        return f"sqlite:///{parsed.database or ''}"
    host = (parsed.host or "").lower()
    port = parsed.port or DEFAULT_PORTS.get(dialect)
    query = {k: v for k, v in parsed.query.items() if not _secret_name(k)}
    tail = f"?{urlencode(sorted(query.items()), doseq=True)}" if query else ""
    return f"{dialect}://{host}:{port}/{parsed.database or ''}{tail}"


def secretless_option(config: AirflowConfig, section: str, key: str) -> Any:
    """A URL option (a Celery broker, a result backend) without user, password or secret
    query values; one given as a command or a secret is recorded by its text's hash."""
    option = raw_option(config, section, key)
    if option.text is None:
        return UNSET
    if option.kind != "value":
        return fingerprint_text(option.kind, option.text)
    return secretless_url(expand_option(option.text, config.environ))


def secretless_url(value: str) -> Any:
    """Each of the ``;``-separated URLs (Celery's failover form) without its credentials."""
    try:
        return ";".join(_strip_credentials(part.strip()) for part in value.split(";"))
    except ValueError:
        return fingerprint_text("value", value)


def _strip_credentials(url: str) -> str:
    parts = urlsplit(url)
    if not parts.scheme:
        raise ValueError(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    query = [(k, v) for k, v in parse_qsl(parts.query) if not _secret_name(k)]
    tail = f"?{urlencode(query)}" if query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{tail}"


def _secret_name(name: str) -> bool:
    return any(word in name.lower() for word in SECRET_WORDS)
