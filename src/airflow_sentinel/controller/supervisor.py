"""The active node's scheduler: started when the policy says so (behind the strays and the
schema gate), restarted when it fails to prove itself or hangs, stopped within the fence,
and every end reported. The loop decides when; this part does it."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Protocol

from airflow_sentinel.clock import Clock
from airflow_sentinel.config.settings import Settings
from airflow_sentinel.controller import events as ev
from airflow_sentinel.controller.db_fence import FenceKeeper
from airflow_sentinel.controller.exits import describe_end
from airflow_sentinel.controller.health import HeartbeatProbe
from airflow_sentinel.controller.lease_keeper import LeaseKeeper
from airflow_sentinel.controller.policy import Snapshot, Supervision, Timing, decide_supervision
from airflow_sentinel.controller.scheduler import RunState, SupervisedScheduler
from airflow_sentinel.fence.base import CONNECT_SLACK
from airflow_sentinel.identity import Instance
from airflow_sentinel.process.guard import RunOwner
from airflow_sentinel.process.handle import EPOCH_ENV, MARKER_ENV, RunEnded

log = logging.getLogger("airflow_sentinel.controller")

Emit = Callable[[str, str, int], None]

# Extra seconds, beyond the grace, to wait for a guard to report that everything is dead.
KILL_WAIT = 10.0
# What tells a service manager about its main process; the scheduler is not that process.
SERVICE_MANAGER_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def cycle_bound(settings: Settings) -> float:
    """The longest one cycle of the loop may take: each store call is bounded by
    renew_interval (four of them), a stop by stop_timeout, a kill by KILL_WAIT, and the
    fence's check and raise in Airflow's database by two more and their connections."""
    bound = 4 * settings.renew_interval + settings.stop_timeout + KILL_WAIT
    if settings.db_fence != "off":
        bound += 2 * settings.renew_interval + 2 * CONNECT_SLACK
    return bound


class StartGate(Protocol):
    def refusal(self) -> str | None:
        """Why a scheduler must not start now, or None."""


class Supervisor:
    def __init__(
        self,
        scheduler: SupervisedScheduler,
        settings: Callable[[], Settings],
        timing: Callable[[], Timing],
        leases: LeaseKeeper,
        clock: Clock,
        instance: Instance,
        emit: Emit,
        probe: HeartbeatProbe | None = None,
        gate: StartGate | None = None,
        fence: FenceKeeper | None = None,
    ) -> None:
        self.scheduler = scheduler
        self._settings = settings
        self._timing = timing
        self._leases = leases
        self._clock = clock
        self._instance = instance
        self._emit = emit
        self.probe = probe
        self.gate = gate
        self.fence = fence
        self._started_wall = 0.0
        self.last_heartbeat_age: float | None = None
        # Told before a stop begins, so that /active says 503 from the first moment.
        self.on_leaving: Callable[[], None] = lambda: None

    def act(self, snapshot: Snapshot, strays_running: Callable[[], bool]) -> None:
        """What the policy says the running (or missing) scheduler needs now."""
        action = decide_supervision(snapshot, self._timing())
        if action is Supervision.START:
            if strays_running():
                return  # a stray still runs here; never start a second scheduler beside it
            self.start()
        elif action is Supervision.PROVEN:
            self.scheduler.proven()
            log.info("scheduler%s healthy", self._pid_text(), extra={"epoch": self._leases.epoch})
        elif action is Supervision.FAILED_START:
            self._restart(f"not healthy within {self._settings().start_timeout:g}s")
        elif action is Supervision.HUNG:
            self._restart(f"heartbeat older than {self._settings().heartbeat_grace:g}s")

    def heartbeat_age(self) -> float | None:
        """The running scheduler's heartbeat age (a query), remembered for the view."""
        if self.probe is None or not self.scheduler.active:
            self.last_heartbeat_age = None
        else:
            self.last_heartbeat_age = self.probe.age(self._started_wall, self._clock.wall())
        return self.last_heartbeat_age

    def start(self) -> None:
        lease = self._leases.lease
        assert lease is not None
        refusal = self.gate.refusal() if self.gate is not None else None
        if refusal is not None:
            self.scheduler.failed_starts += 1  # enough of them and this node steps down
            self._emit(ev.SCHEDULER_REFUSED, refusal, logging.ERROR)
            return
        if not self._fence_raised(lease.epoch):
            return
        settings = self._settings()
        try:
            self.scheduler.start(
                self.env(settings),
                self._timing().fence_at(lease.valid_until),
                settings.stop_timeout,
                self._clock.now(),
                RunOwner(
                    settings.node_id,
                    self._instance.token,
                    settings.airflow_home,
                    settings.airflow_cfg,
                ),
            )
        except OSError as exc:
            self._emit(ev.ERROR, f"cannot start the scheduler: {exc.strerror}", logging.ERROR)
            return
        self._started_wall = self._clock.wall()
        self._emit(ev.SCHEDULER_STARTED, " ".join(settings.scheduler_argv)[:200], logging.INFO)

    def _fence_raised(self, epoch: int) -> bool:
        """The fence in Airflow's database is raised to ``epoch`` (or there is none)."""
        if self.fence is None:
            return True
        verdict = self.fence.before_start(epoch)
        if verdict.refusal is not None:
            self.scheduler.failed_starts += 1
            self._emit(ev.SCHEDULER_REFUSED, verdict.refusal, logging.ERROR)
        return verdict.start

    def _restart(self, why: str) -> None:
        """Stop the scheduler; its end (an event from the guard) starts the next one."""
        self._emit(ev.SCHEDULER_RESTARTED, f"{why} (scheduler{self._pid_text()})", logging.WARNING)
        self.scheduler.stop(self._settings().stop_timeout)

    def _pid_text(self) -> str:
        pid = self.scheduler.view().pid
        return f" pid {pid}" if pid is not None else ""

    def pid_named(self, pid: int) -> None:
        """The guard has named the scheduler's pid: the line that ties the two together."""
        guard = getattr(self.scheduler.run, "guard_pid", None)
        log.info(
            "scheduler runs as pid %d (guard pid %s)",
            pid,
            guard,
            extra={"epoch": self._leases.epoch},
        )

    def env(self, settings: Settings) -> dict[str, str]:
        # Airflow needs none of our settings, and the metastore URL may carry a password.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("AIRFLOW__SENTINEL__") and k not in SERVICE_MANAGER_ENV
        }
        env[MARKER_ENV] = settings.node_id
        env[EPOCH_ENV] = str(self._leases.epoch)
        # Named outright, so that the scheduler's environment (while setproctitle leaves it
        # intact) shows the installation its guard's command line claims.
        env.setdefault("AIRFLOW_HOME", settings.airflow_home)
        if self.fence is not None and self._leases.epoch is not None:
            # Its connections carry the epoch the fence checks.
            env.update(self.fence.scheduler_env(self._leases.epoch, env))
        return env

    def stop(self) -> bool:
        """Stop gracefully within the fence; True when the scheduler is known dead."""
        if not self.scheduler.active:
            return True
        self.on_leaving()
        grace = self._settings().stop_timeout
        lease = self._leases.lease
        if lease is not None:
            fence_at = self._timing().fence_at(lease.valid_until)
            grace = min(grace, max(0.0, fence_at - self._clock.now()))
        pid = self.scheduler.view().pid
        ended = self.scheduler.stop_and_wait(grace, grace + KILL_WAIT)
        if ended is None:
            self._emit(
                ev.ERROR, f"scheduler{self._pid_text()} did not die after SIGKILL", logging.ERROR
            )
            return False
        self.report_end(ended, pid=pid)
        return True

    def ended(self, ended: RunEnded) -> None:
        """The guard reported the end of a run that was not stopped through ``stop``."""
        was = self.scheduler.state
        pid = self.scheduler.view().pid
        failed = self.scheduler.ended(ended)
        self.report_end(ended, was, failed, pid)

    def report_end(
        self,
        ended: RunEnded,
        was: RunState | None = None,
        failed: bool = False,
        pid: int | None = None,
    ) -> None:
        kind, detail, level = describe_end(
            ended, was, failed, self.scheduler.last_stop, self._clock.now(), pid
        )
        self._emit(kind, detail, level)
