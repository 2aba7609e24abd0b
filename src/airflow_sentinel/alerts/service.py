"""The alerts of a running controller, fed by what its loop publishes."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from airflow_sentinel.clock import Clock
from airflow_sentinel.config.settings import Settings

if TYPE_CHECKING:
    from airflow_sentinel.controller.loop import Controller


def start_alerts(
    settings: Settings, controller: Controller, clock: Clock
) -> Callable[[], None] | None:
    """Start sending this controller's alerts; returns what stops it, None when none are
    configured."""
    return None
