"""systemd: the notify protocol (READY, STATUS, WATCHDOG, STOPPING, RELOADING) and a unit."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from airflow_sentinel.controller.loop import Controller


def start_notify(controller: Controller) -> Callable[[], None] | None:
    """Tell systemd about the controller when it runs under Type=notify; None otherwise."""
    return None


@click.command("systemd-unit")
def systemd_unit() -> None:
    """Print a systemd unit for this node's controller."""
    raise click.ClickException("not available yet")
