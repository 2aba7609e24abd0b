"""The controller: one cycle reads the store into a snapshot, asks the policy, and acts.

Scheduler exits arrive as events from the guard's pipe and trigger a cycle at once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from enum import Enum

from airflow_sentinel import __version__
from airflow_sentinel.clock import Clock
from airflow_sentinel.config.settings import Settings
from airflow_sentinel.controller import events as ev
from airflow_sentinel.controller.db_fence import FenceKeeper
from airflow_sentinel.controller.describe import node_report, node_view
from airflow_sentinel.controller.flags import ClusterFlags
from airflow_sentinel.controller.health import HeartbeatProbe
from airflow_sentinel.controller.lease_keeper import LeaseKeeper, describe_takeover
from airflow_sentinel.controller.policy import (
    Leadership,
    LeaseStatus,
    Snapshot,
    Timing,
    decide_leadership,
)
from airflow_sentinel.controller.published import (
    READY,
    RELOADING,
    STOPPING,
    NodeView,
    Publisher,
)
from airflow_sentinel.controller.registry import Registry
from airflow_sentinel.controller.reload import merge_reload
from airflow_sentinel.controller.scheduler import SupervisedScheduler
from airflow_sentinel.controller.standby_poll import StandbyPoll
from airflow_sentinel.controller.status_line import StatusLine
from airflow_sentinel.controller.strays import StrayKeeper
from airflow_sentinel.controller.supervisor import StartGate, Supervisor
from airflow_sentinel.controller.wakeup import Wakeup, install_signal_handlers
from airflow_sentinel.errors import MetastoreError, UserError
from airflow_sentinel.fence import DbFence
from airflow_sentinel.identity import Instance
from airflow_sentinel.metastore.base import Lease, Metastore
from airflow_sentinel.process.handle import Launcher, RunEnded
from airflow_sentinel.process.linux import become_subreaper

log = logging.getLogger("airflow_sentinel.controller")

SERVICE = "scheduler"


class Role(str, Enum):
    ACTIVE = "active"
    STANDBY = "standby"
    STOPPED = "stopped"


class Controller:
    def __init__(
        self,
        settings: Settings,
        store: Metastore,
        clock: Clock,
        launcher: Launcher,
        host: str,
        heartbeat_probe: HeartbeatProbe | None = None,
        start_gate: StartGate | None = None,
        instance: Instance | None = None,
        reload: Callable[[], Settings] | None = None,
        fence: DbFence | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.host = host
        self.instance = instance or Instance.of_this_process(settings.node_id)
        self.timing = Timing.from_settings(settings)
        self.scheduler = SupervisedScheduler(launcher, settings.scheduler_argv, clock)
        self._reload = reload
        self._reload_requested = False
        self.role = Role.STANDBY
        self.unfit_until = 0.0
        self.flags = ClusterFlags(store)  # pause, hold, switchover: as last read
        # The parts, each with its own I/O; the loop decides and sequences.
        current = lambda: self.settings  # noqa: E731 - a reload replaces the object
        self.leases = LeaseKeeper(store, current, self.instance, clock)
        self.registry = Registry(store, current, host, self.instance, self._emit)
        self.strays = StrayKeeper(current, self.instance, clock, self._emit)
        self.supervisor = Supervisor(
            self.scheduler,
            current,
            lambda: self.timing,
            self.leases,
            clock,
            self.instance,
            self._emit,
            heartbeat_probe,
            start_gate,
            None if fence is None else FenceKeeper(fence, current, clock, self._emit),
        )
        # /active says 503 from the moment a stop begins.
        self.supervisor.on_leaving = lambda: self.published.publish(self.view(leaving=True))
        self._reported_pid: int | None = None
        self._stop_requested = False
        self._stop_signal: str | None = None
        self._signals_installed = False
        self._ready = False  # the first cycle has run (READY told)
        self._tick_now = True
        self._won_by_poll = False  # a poll took the lease: the cycle it triggers acts on it
        self.standby_poll = StandbyPoll(clock, min(settings.standby_poll, settings.renew_interval))
        self._wakeup = Wakeup()
        self.events = ev.EventLog(store, settings.node_id, SERVICE, settings.event_retention, clock)
        # What others may read: the last cycle's view and the events (API, metrics, page).
        self.published = Publisher()
        self.events.on_event = self.published.event
        self._reachable = False
        self.status_line = StatusLine(settings.status_log_interval, clock.now())
        self.api_url: str | None = None  # where this node's API answers, for the registry
        # What must be alike on every master (doctor compares them), for the registry.
        self.fingerprint: str | None = None

    # -- helpers -------------------------------------------------------------------------
    @property
    def lease(self) -> Lease | None:
        return self.leases.lease

    @property
    def conflict(self) -> str | None:
        """The host of another live instance that reports under our node_id, if any."""
        return self.registry.conflict

    @property
    def epoch(self) -> int | None:
        return self.leases.epoch

    @property
    def paused(self) -> bool:
        return self.flags.paused

    @property
    def held(self) -> str | None:
        """Who holds the cluster, when an upgrade does."""
        return self.flags.held

    @property
    def switchover_to(self) -> str | None:
        """The node a switchover asks this lease holder to hand over to."""
        return self.flags.switchover_to

    def _emit(self, kind: str, detail: str = "", level: int = logging.INFO) -> None:
        self.events.emit(kind, detail, epoch=self.epoch, level=level)

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    def request_stop(self) -> None:
        self._stop_requested = True
        self.wake()

    def wake(self) -> None:
        self._wakeup.wake()

    def request_cycle(self) -> None:
        """Run a cycle now, not at the next poll (a switchover, or its target told of it);
        safe from any thread."""
        self._tick_now = True
        self.wake()

    # -- main loop -----------------------------------------------------------------------
    def run(self) -> int:
        # Whatever a dead guard leaves behind re-parents to us, so we can kill it.
        become_subreaper()
        self.strays.subreaper = True
        if not self._signals_installed:
            self.install_signal_handlers()
        self._emit(ev.CONTROLLER_STARTED, f"version {__version__} on {self.host}")
        self._handle_strays()
        next_tick = self.clock.now()
        while not self._stop_requested:
            if self._reload_requested:
                self._reload_settings()
            if self._tick_now or self.clock.now() >= self._wake_time(next_tick):
                self._tick_now = False
                self.tick()
                self.standby_poll.cycle_ran()
                next_tick = self.clock.now() + self.settings.renew_interval
                if not self._ready:
                    self._ready = True
                    self.published.lifecycle(READY)
            elif self._may_take_over() and self.clock.now() >= self._poll_time():
                self.poll_lease()
            self._wait(min(self._wake_time(next_tick), self._poll_time()))
        if self._stop_signal is not None:
            log.info("received %s: stopping", self._stop_signal)
        self.published.lifecycle(STOPPING)
        self.shutdown()
        return 0

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the loop, SIGHUP reloads. Installed before this node
        registers, so that a stop sent to a controller that is still starting is a clean
        stop, not the signal's default action."""
        self._signals_installed = True
        install_signal_handlers(self._stop_by_signal, self._request_reload)

    def _stop_by_signal(self, name: str) -> None:
        self._stop_signal = name  # logged by the loop, not in the handler
        self.request_stop()

    def _request_reload(self) -> None:
        self._reload_requested = True
        self.wake()

    def _reload_settings(self) -> None:
        """Re-read the configuration; a bad one is one logged line and the old one stays."""
        self._reload_requested = False
        if self._reload is None:
            return
        self._lifecycle_if_ready(RELOADING)
        try:
            new = self._reload()
        except UserError as exc:
            log.error(  # noqa: TRY400 - a user mistake: one line, no traceback
                "reload refused, settings unchanged: %s", exc, extra={"epoch": self.epoch}
            )
            self._lifecycle_if_ready(READY)
            return
        new, changed = merge_reload(self.settings, new)
        self.settings = new
        self.timing = Timing.from_settings(new)
        self.standby_poll.every = min(new.standby_poll, new.renew_interval)
        self.scheduler.argv = new.scheduler_argv  # for the next start
        self.events.retention = new.event_retention
        self.status_line.interval = new.status_log_interval
        logging.getLogger("airflow_sentinel").setLevel(new.log_level)
        self._emit(ev.RELOADED, ", ".join(changed) or "nothing changed")
        self._tick_now = True
        self._lifecycle_if_ready(READY)

    def _lifecycle_if_ready(self, state: str) -> None:
        """A reload before the first cycle is part of the start: READY comes after it."""
        if self._ready:
            self.published.lifecycle(state)

    def _wake_time(self, next_tick: float) -> float:
        stopper_due = self.strays.next_deadline()  # a stray's SIGKILL, or a look at its end
        if stopper_due is not None:
            next_tick = min(next_tick, stopper_due)
        if self.lease is None:
            return next_tick
        return min(next_tick, self.timing.demote_at(self.lease.valid_until))

    def _poll_time(self) -> float:
        if self.standby_poll.failed or not self._may_take_over():
            return math.inf
        return self.standby_poll.due(self.store.takeover_due(SERVICE))

    def _may_take_over(self) -> bool:
        """A standby that its last cycle found free to lead (fit, not paused, held or in
        conflict); only such a one reads the lease between cycles."""
        if self.lease is not None or self.role is not Role.STANDBY:
            return False
        snapshot = self._snapshot(LeaseStatus.NONE)
        return decide_leadership(snapshot, self.timing) is Leadership.ACQUIRE

    def poll_lease(self) -> None:
        """Between a standby's cycles: one read of the lease. A lease won is acted on at
        once, by a cycle that reads the flags again before it starts anything."""
        won = self.leases.acquire(quiet=True)
        self.standby_poll.polled(failed=self.leases.acquire_failed)
        if won is not None:
            self._announce_takeover(won)
            self._won_by_poll = True
            self.request_cycle()

    def _wait(self, until: float) -> None:
        run = self.scheduler.run
        self._wakeup.sleep(
            max(0.0, until - self.clock.now()), None if run is None else run.fileno()
        )
        if run is None:
            return
        ended = run.poll()
        if ended is not None:
            self._on_run_ended(ended)
        elif run.scheduler_pid is not None and run.scheduler_pid != self._reported_pid:
            self.supervisor.pid_named(run.scheduler_pid)
            self._heartbeat()  # the guard has just named the scheduler's pid

    # -- one cycle -----------------------------------------------------------------------
    def tick(self) -> None:
        self._kill_orphans()
        # The renewal comes first, and a store that failed is not asked again this cycle:
        # each failing call costs an operation timeout, and the demote deadline is near.
        # A lease a poll has just taken needs no renewal yet.
        won, self._won_by_poll = self._won_by_poll and self.lease is not None, False
        if won:
            status = LeaseStatus.HELD
        else:
            status = self._renew_in_time() if self.lease is not None else LeaseStatus.NONE
        reachable = status is not LeaseStatus.UNREACHABLE and self._read_flags()
        decision = decide_leadership(self._snapshot(status), self.timing)
        if decision is Leadership.ACQUIRE and reachable and self._acquire():
            status, decision = LeaseStatus.HELD, Leadership.KEEP
        if decision is Leadership.DEMOTE:
            self._demote(status)
        elif decision is Leadership.STEP_DOWN:
            self._step_down()
        elif decision is Leadership.HAND_OVER:
            self._hand_over()
        elif decision is Leadership.STAND_DOWN:
            self._stand_down()
        elif decision is Leadership.KEEP:
            self.supervisor.act(self._snapshot(status, with_health=True), self._handle_strays)
        self._handle_strays()
        if reachable:
            self._heartbeat()
            # Events are written here only, once the store has answered this cycle; a long
            # backlog gets one operation timeout per cycle, so the next renewal is not late.
            self.events.flush(budget=self.settings.renew_interval)
        self._reachable = reachable
        view = self.view()
        self.published.publish(view)
        self.status_line.maybe_log(view, self.store if reachable else None)

    def view(self, leaving: bool = False) -> NodeView:
        """This controller as the last cycle left it, for readers outside the loop."""
        return node_view(
            settings=self.settings,
            host=self.host,
            role=self.role.value,
            lease=self.lease,
            timing=self.timing,
            run=self.scheduler.view(),
            heartbeat_age=self.supervisor.last_heartbeat_age,
            flags=self.flags,
            unfit_until=self.unfit_until,
            conflict=self.conflict,
            reachable=self._reachable,
            now=self.clock.now(),
            leaving=leaving,
        )

    def _read_flags(self) -> bool:
        """Refresh pause, hold and switchover; on a store error the last known values stand."""
        if self.flags.read(self.lease):
            return True
        self.leases.store_failed = True
        return False

    def _snapshot(self, status: LeaseStatus, with_health: bool = False) -> Snapshot:
        """One frozen view for the policy; the heartbeat query runs only when asked for."""
        now = self.clock.now()
        return Snapshot(
            now=now,
            lease=status,
            valid_until=self.lease.valid_until if self.lease is not None else None,
            paused=self.paused,
            held=self.held is not None,
            conflict=self.conflict is not None,
            fit=now >= self.unfit_until,
            switchover_requested=self.switchover_to is not None,
            failed_starts=self.scheduler.failed_starts,
            run=self.scheduler.view(),
            heartbeat_age=self.supervisor.heartbeat_age() if with_health else None,
        )

    # -- lease ---------------------------------------------------------------------------
    def _renew_in_time(self) -> LeaseStatus:
        status = self.leases.renew_in_time(self.timing)
        if status is LeaseStatus.HELD and self.lease is not None:
            self.scheduler.extend(self.timing.fence_at(self.lease.valid_until))
        return status

    def _acquire(self) -> bool:
        lease = self.leases.acquire()
        if lease is None:
            return False
        self._announce_takeover(lease)
        return True

    def _announce_takeover(self, lease: Lease) -> None:
        self.role = Role.ACTIVE
        # A takeover after a silence is a failover: worth a WARNING in the journal.
        level = logging.INFO if lease.silent_for is None else logging.WARNING
        self._emit(ev.BECAME_ACTIVE, describe_takeover(lease, self.settings.node_id), level)

    def _become_standby(self) -> None:
        self.leases.drop()
        self.role = Role.STANDBY
        self.scheduler.failed_starts = 0

    def _demote(self, status: LeaseStatus) -> None:
        why = (
            "lease lost to another node"
            if status is LeaseStatus.LOST
            else "lease could not be renewed in time"
        )
        dead = self.supervisor.stop()
        self._emit(ev.DEMOTED, why, level=logging.WARNING)
        if dead and status is not LeaseStatus.LOST:
            self.leases.release()
        self._become_standby()

    def _step_down(self) -> None:
        dead = self.supervisor.stop()
        self.unfit_until = self.clock.now() + self.settings.cooldown
        self._emit(
            ev.STEPPED_DOWN,
            f"{self.scheduler.failed_starts} failed starts; unfit for {self.settings.cooldown:g}s",
            level=logging.ERROR,
        )
        if dead:
            self.leases.release()
        self._become_standby()

    def _stand_down(self) -> None:
        dead = self.supervisor.stop()
        why = f"cluster held: {self.held}" if self.held else f"node_id in use on {self.conflict}"
        self._emit(ev.STOOD_DOWN, why)
        if dead:
            self.leases.release()
        self._become_standby()

    def _hand_over(self) -> None:
        target = self.switchover_to
        assert self.lease is not None and target is not None
        if target == self.settings.node_id:
            self.flags.clear_switchover(self.epoch)
            return
        if not self.supervisor.stop():
            return
        try:
            moved = self.leases.transfer(target)
        except MetastoreError as exc:
            log.warning("switchover failed: %s", exc, extra={"epoch": self.epoch})
            return
        self._emit(ev.HANDED_OVER, f"to {target}" if moved else f"to {target} failed: lease lost")
        self.flags.clear_switchover(self.epoch)
        self._become_standby()

    def _on_run_ended(self, ended: RunEnded) -> None:
        self.supervisor.ended(ended)
        if ended.outcome == "lost":
            self._kill_orphans()  # the guard died: its scheduler's children are ours now
        self._tick_now = True  # restart at once, not on the next poll

    # -- strays and orphans ----------------------------------------------------------------
    def _guard_pid(self) -> int | None:
        return getattr(self.scheduler.run, "guard_pid", None)

    def _kill_orphans(self) -> None:
        self.strays.kill_orphans(self._guard_pid())

    def _handle_strays(self) -> bool:
        """True while a scheduler of this installation that we did not start runs here."""
        return self.strays.handle(self._guard_pid(), self.paused)

    # -- registry ------------------------------------------------------------------------
    def _heartbeat(self, role: Role | None = None, at_start: bool = False) -> None:
        report = node_report(
            node_id=self.settings.node_id,
            host=self.host,
            role=(role or self.role).value,
            run=self.scheduler.view(),
            epoch=self.epoch,
            instance=self.instance.token,
            unfit_until=self.unfit_until,
            now=self.clock.now(),
            api=self.api_url,
            fingerprint=self.fingerprint,
        )
        self._reported_pid = report.scheduler_pid
        if not self.registry.report(report, self.epoch, at_start):
            self.leases.store_failed = True

    def claim_node(self) -> str | None:
        """Register this instance under its node_id; the other live instance's host if
        one already reports under it (then this controller must not run)."""
        self._heartbeat(at_start=True)
        if self.conflict is not None:
            self.events.flush()
        return self.conflict

    # -- shutdown ------------------------------------------------------------------------
    def shutdown(self) -> None:
        dead = self.supervisor.stop()
        if dead and self.lease is not None:
            released = self.leases.release()
            self._emit(ev.CONTROLLER_STOPPED, "lease released" if released else "lease expires")
        else:
            self._emit(ev.CONTROLLER_STOPPED, "")
        self.leases.drop()
        self.role = Role.STOPPED
        self._heartbeat(Role.STOPPED)
        self.published.publish(self.view())
        self.events.flush(budget=self.settings.renew_interval)  # stops at the first failure
