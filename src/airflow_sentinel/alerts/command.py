"""`airflow-sentinel alert ...`."""

from __future__ import annotations

import click


@click.group()
def alert() -> None:
    """Alerts: email and webhooks."""


@alert.command("test")
def alert_test() -> None:
    """Send a test alert through every configured channel."""
    raise click.ClickException("not available yet")
