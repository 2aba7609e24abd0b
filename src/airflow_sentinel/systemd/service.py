"""The controller as a Type=notify service: READY=1 once the loop runs, STATUS= when the
node's role changes, WATCHDOG=1 from every cycle, RELOADING=1 and STOPPING=1.

Everything is sent from the control loop's own thread (the Publisher's view and
lifecycle listeners), so a watchdog ping proves that the loop runs: a loop that hangs
stops pinging, whatever the process's other threads still do."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING

from airflow_sentinel.controller.published import READY, RELOADING, STOPPING, NodeView
from airflow_sentinel.systemd.notify import SYSTEMD_VARIABLES, Notifier, Watchdog, watchdog_from
from airflow_sentinel.systemd.status import status_text
from airflow_sentinel.systemd.timing import silence_of, watchdog_sec

if TYPE_CHECKING:
    from airflow_sentinel.controller.loop import Controller

log = logging.getLogger("airflow_sentinel.systemd")


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd compares MONOTONIC_USEC with."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class ServiceNotifier:
    """Turns what the loop publishes into notify messages. Quick and non-blocking: it runs
    on the loop's thread, and a failed send is the Notifier's to log."""

    def __init__(
        self,
        notifier: Notifier,
        watchdog: Watchdog | None,
        clock_usec: Callable[[], int] = monotonic_usec,
    ) -> None:
        self._notifier = notifier
        self._watchdog = watchdog
        self._clock_usec = clock_usec
        self._status: str | None = None
        self._stopping = False
        self._warned_silence: float | None = None

    def on_view(self, view: NodeView) -> None:
        fields = []
        status = self.status_of(view)
        if status != self._status:  # systemd keeps the last STATUS; repeating it is noise
            self._status = status
            fields.append(f"STATUS={status}")
        if self._watchdog is not None:
            self.check_watchdog(view)
            fields.append("WATCHDOG=1")
        if fields:
            self._notifier.send(*fields)

    def on_lifecycle(self, state: str) -> None:
        if state == READY:
            self._notifier.send("READY=1")
        elif state == RELOADING:
            # Type=notify-reload (systemd 253+) needs the time the reload began.
            self._notifier.send("RELOADING=1", f"MONOTONIC_USEC={self._clock_usec()}")
        elif state == STOPPING:
            self._stopping = True
            self._status = "stopping: stopping the scheduler and releasing the lease"
            self._notifier.send("STOPPING=1", f"STATUS={self._status}")

    def status_of(self, view: NodeView) -> str:
        text = status_text(view)
        # The views of a shutdown still say "active" while the scheduler stops.
        return f"stopping; {text}" if self._stopping and text != "stopped" else text

    def check_watchdog(self, view: NodeView) -> None:
        """Warn, once for each timing the loop runs with, when systemd's watchdog is shorter
        than a healthy loop may be silent: it would kill a controller that works."""
        silence = silence_of(view)
        if self._watchdog is None or self._watchdog.interval_s > silence:
            return
        if self._warned_silence == silence:
            return
        self._warned_silence = silence
        log.warning(
            "WatchdogSec=%gs is shorter than a healthy control loop may take between two "
            "pings (%gs: renew_interval %gs and one cycle's bound %gs); systemd would restart "
            "a working controller: set WatchdogSec=%d (`airflow-sentinel systemd-unit` does)",
            self._watchdog.interval_s,
            silence,
            view.cycle_every_s,
            view.cycle_bound_s,
            watchdog_sec(silence),
            extra={"epoch": view.epoch},
        )

    def close(self) -> None:
        self._notifier.close()


def start_notify(
    controller: Controller, environ: MutableMapping[str, str] | None = None
) -> Callable[[], None] | None:
    """Tell systemd about the controller when it runs under Type=notify (NOTIFY_SOCKET is
    set); the callable closes the socket at shutdown. None when not under systemd."""
    environ = os.environ if environ is None else environ
    # Meant for this process only, as sd_notify's unset_environment: the scheduler and
    # what it starts (Airflow 2's log server runs gunicorn, which notifies) get our
    # environment, and systemd would log every message of theirs it refuses.
    given = {name: environ.pop(name) for name in SYSTEMD_VARIABLES if name in environ}
    notifier = Notifier.from_environ(given)
    if notifier is None:
        return None
    service = ServiceNotifier(notifier, watchdog_from(given, os.getpid()))
    service.check_watchdog(controller.view())
    controller.published.on_view(service.on_view)
    controller.published.on_lifecycle(service.on_lifecycle)
    return service.close
