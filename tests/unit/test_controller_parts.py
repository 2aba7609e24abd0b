"""The controller's parts on their own: the lease keeper's renewal rule, the registry's
node_id conflicts, the supervisor's starts and stops, the cluster flags, what the
controller says about itself, the loop's wake-ups. (The loop that sequences them is in
test_controller.py; the strays and orphans, which need real processes, in
tests/integration/test_strays.py.)"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Any, cast

import pytest

from airflow_sentinel.clock import FakeClock
from airflow_sentinel.config import Settings
from airflow_sentinel.controller.describe import node_report, node_view
from airflow_sentinel.controller.exits import describe_end
from airflow_sentinel.controller.flags import ClusterFlags, switchover_target
from airflow_sentinel.controller.lease_keeper import LeaseKeeper
from airflow_sentinel.controller.policy import LeaseStatus, Timing
from airflow_sentinel.controller.registry import Registry
from airflow_sentinel.controller.reload import merge_reload
from airflow_sentinel.controller.scheduler import (
    RunState,
    RunView,
    StopRequest,
    SupervisedScheduler,
)
from airflow_sentinel.controller.supervisor import Supervisor
from airflow_sentinel.controller.wakeup import Wakeup
from airflow_sentinel.identity import Instance
from airflow_sentinel.metastore import Metastore
from airflow_sentinel.metastore.base import HOLD, PAUSED, Lease, NodeReport, switchover_flag
from airflow_sentinel.process.handle import RunEnded
from tests.support.fakes import FlakyStore, RecordingLauncher
from tests.support.instances import twin


def keeper(store: FlakyStore, settings: Settings, clock: FakeClock) -> LeaseKeeper:
    metastore = cast(Metastore, store)
    return LeaseKeeper(metastore, lambda: settings, Instance.of_this_process("a"), clock)


def test_a_renewal_that_could_outlast_the_demote_deadline_is_not_tried(
    store: FlakyStore, settings: Settings, clock: FakeClock
) -> None:
    leases, timing = keeper(store, settings, clock), Timing.from_settings(settings)
    assert leases.acquire() is not None and leases.epoch == 1
    store.broken = True
    assert leases.renew_in_time(timing) is LeaseStatus.UNREACHABLE and leases.store_failed
    assert leases.lease is not None
    clock.advance(timing.demote_at(leases.lease.valid_until) - clock.now() - 1.0)
    store.calls.clear()
    assert leases.renew_in_time(timing) is LeaseStatus.UNREACHABLE
    assert store.calls == []  # 1 s before the deadline, a call that may hang 3 s is not made
    store.broken = False
    leases.store_failed = False  # the store answered another call meanwhile
    assert leases.renew_in_time(timing) is LeaseStatus.HELD


def test_a_lease_given_up_reads_as_lost_and_drop_forgets_it(
    store: FlakyStore, settings: Settings, clock: FakeClock
) -> None:
    leases, timing = keeper(store, settings, clock), Timing.from_settings(settings)
    assert leases.acquire() is not None
    assert leases.release()  # no longer ours in the store
    assert leases.renew_in_time(timing) is LeaseStatus.LOST
    leases.drop()
    assert leases.lease is None and not leases.store_failed and not leases.release()


def _report(node: str, instance: Instance) -> NodeReport:
    return NodeReport(node, "h", "standby", False, None, True, "x", None, instance.token)


def test_a_second_live_instance_under_our_node_id_is_a_conflict_and_flagged(
    store: FlakyStore, settings: Settings, clock: FakeClock
) -> None:
    events: list[tuple[Any, ...]] = []
    metastore = cast(Metastore, store)
    mine = Instance.of_this_process("a")
    registry = Registry(metastore, lambda: settings, "h/1", mine, lambda *e: events.append(e))
    clone = replace(twin("a"), host="clone")
    report = NodeReport("a", "clone/1", "standby", False, None, True, "x", None, clone.token)
    assert metastore.heartbeat(report, stale_after=0.0) is None  # it wrote the row first
    assert registry.report(_report("a", mine), None)
    assert registry.conflict == "clone/1" and metastore.flags()["conflict:a"].startswith("h/1")
    assert "in use by a live controller on clone/1" in events[-1][1]
    assert registry.report(_report("a", mine), None)
    assert len(events) == 1  # reported once, not on every heartbeat


def test_a_registry_write_the_store_refuses_says_so(store: FlakyStore, settings: Settings) -> None:
    mine = Instance.of_this_process("a")
    registry = Registry(cast(Metastore, store), lambda: settings, "h", mine, lambda *_: None)
    store.broken = True
    assert not registry.report(_report("a", mine), None)


@pytest.mark.parametrize(
    ("ended", "was", "stop", "words", "level"),
    [
        (RunEnded("fenced", -9), RunState.RUNNING, None, "lease deadline passed", logging.ERROR),
        (RunEnded("exited", 1), RunState.RUNNING, None, "exited code 1", logging.WARNING),
        (
            RunEnded("exited", 0),
            RunState.STOPPING,
            StopRequest(0.0, 5.0),
            "1.5s after SIGTERM",
            logging.INFO,
        ),
        (
            RunEnded("exited", -9),
            RunState.STOPPING,
            StopRequest(0.0, 1.0),
            "raise stop_timeout",
            logging.WARNING,
        ),
    ],
)
def test_a_schedulers_end_is_told_by_how_it_came(
    ended: RunEnded, was: RunState, stop: StopRequest | None, words: str, level: int
) -> None:
    _, detail, told = describe_end(ended, was, False, stop, now=1.5)
    assert words in detail and told == level


def test_a_reload_keeps_what_only_a_restart_may_change(settings: Settings) -> None:
    new = replace(settings, node_id="b", lease_ttl=30.0)
    merged, changed = merge_reload(settings, new)
    assert merged.node_id == "a" and merged.lease_ttl == 30.0 and changed == ["lease_ttl"]


class _Refusing:
    def refusal(self) -> str | None:
        return "the schema is newer than this Airflow"


def supervisor(
    store: FlakyStore, settings: Settings, clock: FakeClock, gate: Any = None
) -> tuple[Supervisor, RecordingLauncher, list[tuple[str, str]]]:
    launcher, emitted = RecordingLauncher(), []
    leases = keeper(store, settings, clock)
    assert leases.acquire() is not None
    part = Supervisor(
        SupervisedScheduler(launcher, settings.scheduler_argv, clock),
        lambda: settings,
        lambda: Timing.from_settings(settings),
        leases,
        clock,
        Instance.of_this_process("a"),
        lambda kind, detail, _level: emitted.append((kind, detail)),
        gate=gate,
    )
    return part, launcher, emitted


def test_the_supervisor_starts_inside_the_fence_and_stops_within_it(
    store: FlakyStore, settings: Settings, clock: FakeClock
) -> None:
    part, launcher, emitted = supervisor(store, settings, clock)
    leaving: list[bool] = []
    part.on_leaving = lambda: leaving.append(True)
    part.start()
    timing = Timing.from_settings(settings)
    lease = part._leases.lease
    assert lease is not None and launcher.last.fence_at == timing.fence_at(lease.valid_until)
    assert launcher.last.owner is not None and launcher.last.owner.node_id == "a"
    clock.advance(timing.fence_at(lease.valid_until) - clock.now() - 2.0)
    assert part.stop()
    assert leaving == [True]  # told before the stop, so /active turns 503 first
    assert launcher.last.stops == [pytest.approx(2.0)]  # the fence, not stop_timeout (5 s)
    assert [kind for kind, _ in emitted] == ["scheduler_started", "scheduler_exited"]


def test_the_supervisor_counts_a_refused_start_and_launches_nothing(
    store: FlakyStore, settings: Settings, clock: FakeClock
) -> None:
    part, launcher, emitted = supervisor(store, settings, clock, gate=_Refusing())
    part.start()
    assert launcher.runs == [] and part.scheduler.failed_starts == 1
    assert emitted == [("scheduler_refused", "the schema is newer than this Airflow")]


def test_the_supervisor_reports_an_end_it_did_not_ask_for_as_a_failed_start(
    store: FlakyStore, settings: Settings, clock: FakeClock
) -> None:
    part, _, emitted = supervisor(store, settings, clock)
    part.start()
    part.ended(RunEnded("exited", 1))
    assert part.scheduler.failed_starts == 1 and part.scheduler.state is RunState.STOPPED
    assert emitted[-1][0] == "scheduler_exited" and "exited code 1" in emitted[-1][1]


def test_the_flags_read_pause_hold_and_a_switchover_for_this_epoch_only(
    store: FlakyStore, clock: FakeClock
) -> None:
    metastore, lease = cast(Metastore, store), Lease("scheduler", "a", 4, clock.now() + 15)
    flags = ClusterFlags(metastore)
    metastore.set_flag(PAUSED, "1")
    metastore.set_flag(HOLD, "upgrade on m1")
    metastore.set_flag(switchover_flag("scheduler"), "4 b")
    assert flags.read(lease)
    assert (flags.paused, flags.held, flags.switchover_to) == (True, "upgrade on m1", "b")
    assert flags.read(replace(lease, epoch=5)) and flags.switchover_to is None  # an earlier one
    assert flags.read(None) and flags.switchover_to is None  # no lease: nothing to hand over
    store.broken = True
    assert not flags.read(lease)
    assert (flags.paused, flags.held) == (True, "upgrade on m1")  # the last known values stand
    store.broken = False
    flags.read(lease)
    flags.clear_switchover(4)
    assert switchover_flag("scheduler") not in metastore.flags() and flags.switchover_to is None


@pytest.mark.parametrize(("raw", "target"), [("7 b", "b"), ("7 ", None), ("6 b", None)])
def test_a_switchover_request_names_its_lease_holders_epoch(raw: str, target: str | None) -> None:
    lease = Lease("scheduler", "a", 7, 100.0)
    assert switchover_target({switchover_flag("scheduler"): raw}, lease) == target


def test_the_view_and_the_report_agree_on_the_scheduler_and_the_cooldown(
    store: FlakyStore, settings: Settings, clock: FakeClock
) -> None:
    lease, now = Lease("scheduler", "a", 3, 115.0), 100.0
    run = RunView(RunState.STARTING, 99.0, 4242)
    flags = ClusterFlags(cast(Metastore, store))
    view = node_view(
        settings=settings,
        host="h",
        role="active",
        lease=lease,
        timing=Timing.from_settings(settings),
        run=run,
        heartbeat_age=None,
        flags=flags,
        unfit_until=now + 0.04,
        conflict=None,
        reachable=True,
        now=now,
    )
    report = node_report(
        node_id="a",
        host="h",
        role="active",
        run=run,
        epoch=lease.epoch,
        instance="token",
        unfit_until=now + 0.04,
        now=now,
        api=None,
        fingerprint=None,
    )
    assert (view.epoch, view.lease_left_s, view.scheduler_state) == (3, 15.0, "starting")
    assert report.scheduler_running and report.scheduler_pid == view.scheduler_pid == 4242
    # A cooldown that rounds to 0.0 is still a cooldown: not fit until it is over.
    assert (view.fit, view.cooldown_left_s) == (report.fit, report.cooldown_left_s) == (False, 0.0)
    stopped = node_report(
        node_id="a",
        host="h",
        role="standby",
        run=replace(run, state=RunState.STOPPED, pid=None),
        epoch=None,
        instance="token",
        unfit_until=now,
        now=now,
        api=None,
        fingerprint=None,
    )
    assert not stopped.scheduler_running and stopped.fit and stopped.cooldown_left_s is None


def test_a_wake_up_ends_the_sleep_and_is_used_up() -> None:
    wakeup = Wakeup()
    threading.Timer(0.05, wakeup.wake).start()
    began = time.monotonic()
    wakeup.sleep(10.0)
    assert time.monotonic() - began < 5.0  # woken, not timed out
    wakeup.wake()
    wakeup.wake()
    wakeup.sleep(10.0)  # returns at once: wake-ups are pending
    began = time.monotonic()
    wakeup.sleep(0.1)  # both were drained: this one runs to its timeout
    assert time.monotonic() - began >= 0.09
