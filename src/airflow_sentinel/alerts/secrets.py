"""Secrets of the alert channels, taken as Airflow takes its own: a value, a `_cmd`
command's output, or a `_secret` key in Airflow's secrets backend (asked through the
scheduler's own Airflow, as the API token is). Values never reach a log or an error."""

from __future__ import annotations

from collections.abc import Callable

from airflow_sentinel.api.token import from_secrets_backend
from airflow_sentinel.config.airflow_cfg import AirflowConfig, run_command
from airflow_sentinel.config.settings import Settings

Secret = Callable[[], str]  # asked when needed; UserError (one line) when it cannot be had


def airflow_secret(
    cfg: AirflowConfig, settings: Settings, section: str, key: str
) -> tuple[Secret, str] | None:
    """Where Airflow would take ``[section] key`` from, in its order (environment, then
    airflow.cfg; the value, then `_cmd`, then `_secret`), without asking yet; and where
    that is, for messages. None when it is not set anywhere."""
    env = f"AIRFLOW__{section.upper()}__{key.upper()}"
    environ = cfg.environ
    if env in environ:
        value = environ[env]
        return (lambda: value), env
    if f"{env}_CMD" in environ:
        command = environ[f"{env}_CMD"]
        return (lambda: run_command(f"{env}_CMD", command)), f"{env}_CMD"
    if f"{env}_SECRET" in environ:
        name = environ[f"{env}_SECRET"]
        origin = f"{env}_SECRET"
        return (lambda: from_secrets_backend(settings, name, origin)), origin
    parser = cfg.parser
    if parser.has_option(section, key):
        value = parser.get(section, key)
        return (lambda: value), f"[{section}] {key}"
    if parser.has_option(section, f"{key}_cmd"):
        command = parser.get(section, f"{key}_cmd")
        origin = f"[{section}] {key}_cmd"
        return (lambda: run_command(origin, command)), origin
    if parser.has_option(section, f"{key}_secret"):
        name = parser.get(section, f"{key}_secret")
        origin = f"[{section}] {key}_secret"
        return (lambda: from_secrets_backend(settings, name, origin)), origin
    return None
