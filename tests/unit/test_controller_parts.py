"""The controller's parts on their own: the lease keeper's renewal rule, the registry's
node_id conflicts, the supervisor's starts and stops. (The loop that sequences them is in
test_controller.py; the strays and orphans, which need real processes, in
tests/integration/test_strays.py.)"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, cast

import pytest

from airflow_sentinel.clock import FakeClock
from airflow_sentinel.config import Settings
from airflow_sentinel.controller.exits import describe_end
from airflow_sentinel.controller.lease_keeper import LeaseKeeper
from airflow_sentinel.controller.policy import LeaseStatus, Timing
from airflow_sentinel.controller.registry import Registry
from airflow_sentinel.controller.reload import merge_reload
from airflow_sentinel.controller.scheduler import RunState, StopRequest, SupervisedScheduler
from airflow_sentinel.controller.supervisor import Supervisor
from airflow_sentinel.identity import Instance
from airflow_sentinel.metastore import Metastore
from airflow_sentinel.metastore.base import NodeReport
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
