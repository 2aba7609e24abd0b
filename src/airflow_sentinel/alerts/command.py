"""`airflow-sentinel alert ...`."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from airflow_sentinel.alerts.channels import sources
from airflow_sentinel.alerts.delivery import Channel, SendError
from airflow_sentinel.alerts.model import INFO, TEST, Alert
from airflow_sentinel.cli import setting_options, settings_from  # cli loads this lazily
from airflow_sentinel.errors import UserError


@click.group()
def alert() -> None:
    """Alerts: email and webhooks."""


def test_alert(node_id: str) -> Alert:
    return Alert(
        TEST,
        INFO,
        f"test alert from {node_id}: this channel works",
        node_id,
        None,
        time.time(),
        (("sent by", "airflow-sentinel alert test, to every configured channel"),),
    )


@alert.command("test")
@setting_options
def alert_test(**flags: Any) -> None:
    """Send a test alert through every configured channel: one line per channel; exit 0
    when every one sent it, 1 when any failed."""
    settings = settings_from(flags)
    found = sources(settings)
    if not found:
        raise UserError(
            "no alert channel is configured; set alert_email_to or alert_webhook_urls "
            "(or alert_webhook_urls_cmd) in airflow.cfg [sentinel]"
        )
    alert = test_alert(settings.node_id)
    failed = 0
    for source in found:
        try:
            channels = source.build()
        except UserError as exc:
            click.echo(f"{source.name}: failed: {exc}")
            failed += 1
            continue
        failed += sum(not _send(channel, alert, settings.node_id) for channel in channels)
    if failed:
        sys.exit(1)


def _send(channel: Channel, alert: Alert, sender: str) -> bool:
    try:
        channel.send(alert, sender)
    except SendError as exc:
        click.echo(f"{channel.name}: failed: {exc}")
        return False
    click.echo(f"{channel.name}: sent")
    return True
