"""How long systemd must wait for the controller: between two watchdog pings, and for a
clean stop. Both follow from the node's timing settings."""

from __future__ import annotations

import math

from airflow_sentinel.config import Settings
from airflow_sentinel.controller.published import NodeView
from airflow_sentinel.controller.supervisor import KILL_WAIT, cycle_bound

# A healthy loop may come close to its bound (a metastore at its timeouts while the
# scheduler needs its SIGKILL); the watchdog is for a loop that stopped, not a slow one.
WATCHDOG_MARGIN = 1.5
STOP_MARGIN_S = 10


def longest_silence_s(settings: Settings) -> float:
    """The longest a running loop goes between two views: the wait for the next cycle
    (renew_interval) and the longest one cycle may take."""
    return settings.renew_interval + cycle_bound(settings)


def silence_of(view: NodeView) -> float:
    """The same bound, as the loop itself published it."""
    return view.cycle_every_s + view.cycle_bound_s


def watchdog_sec(silence_s: float) -> int:
    """WatchdogSec= for a loop that may be silent for ``silence_s``."""
    return math.ceil(silence_s * WATCHDOG_MARGIN)


def stop_timeout_sec(settings: Settings) -> int:
    """TimeoutStopSec= for a clean stop: the cycle under way when SIGTERM comes, then the
    scheduler's stop (stop_timeout, then the wait after SIGKILL), then the lease release,
    the last heartbeat and the events (one store call of renew_interval each)."""
    in_progress = longest_silence_s(settings) - settings.renew_interval
    shutdown = settings.stop_timeout + KILL_WAIT + 3 * settings.renew_interval
    return math.ceil(in_progress + shutdown + STOP_MARGIN_S)
