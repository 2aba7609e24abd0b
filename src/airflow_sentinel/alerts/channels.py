"""The configured channels, built from the settings. Building may run commands (`_cmd`
options); each source of channels that fails says why in one line, and the others work."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from airflow_sentinel.alerts.delivery import Channel
from airflow_sentinel.alerts.mail import SmtpChannel, smtp_settings
from airflow_sentinel.alerts.webhook import WebhookChannel
from airflow_sentinel.config.airflow_cfg import load_airflow_config, run_command
from airflow_sentinel.config.settings import Settings, split_list, webhook_problem
from airflow_sentinel.errors import UserError


@dataclass(frozen=True)
class Source:
    """Where channels come from, and how to build them (UserError when it cannot)."""

    name: str
    build: Callable[[], list[Channel]]


def configured(settings: Settings) -> bool:
    return bool(
        settings.alert_email_to or settings.alert_webhook_urls or settings.alert_webhook_urls_cmd
    )


def sources(settings: Settings) -> list[Source]:
    found = []
    if settings.alert_email_to:
        found.append(Source("email", lambda: [_email(settings)]))
    if settings.alert_webhook_urls:
        found.append(Source("alert_webhook_urls", lambda: _webhooks(settings.alert_webhook_urls)))
    if settings.alert_webhook_urls_cmd:
        found.append(Source("alert_webhook_urls_cmd", lambda: _webhooks_of_command(settings)))
    return found


def _email(settings: Settings) -> Channel:
    cfg = load_airflow_config(Path(settings.airflow_home))
    return SmtpChannel(smtp_settings(settings, cfg))


def _webhooks(urls: str, origin: str = "alert_webhook_urls") -> list[Channel]:
    channels: list[Channel] = []
    for number, url in enumerate(split_list(urls), 1):
        problem = webhook_problem(url)
        if problem:
            raise UserError(f"{origin}: webhook {number}: {problem}")
        channels.append(WebhookChannel(url))
    return channels


def _webhooks_of_command(settings: Settings) -> list[Channel]:
    origin = "alert_webhook_urls_cmd"
    channels = _webhooks(run_command(origin, settings.alert_webhook_urls_cmd), origin)
    if not channels:
        raise UserError(f"{origin}: the command printed no URL")
    return channels
