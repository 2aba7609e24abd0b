"""The controller's wiring: real SQLite metastore, fake clock, recording launcher."""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import replace
from typing import Any, cast

import pytest

from airflow_sentinel.clock import FakeClock
from airflow_sentinel.config import Settings
from airflow_sentinel.controller.loop import Controller, Role
from airflow_sentinel.controller.scheduler import RunState
from airflow_sentinel.errors import ConfigError
from airflow_sentinel.metastore import Metastore, open_metastore
from airflow_sentinel.metastore.base import HOLD, PAUSED, NodeReport, switchover_flag
from airflow_sentinel.process.handle import RunEnded
from tests.support.fakes import FlakyStore, RecordingLauncher
from tests.support.instances import twin


def role_of(controller: Controller) -> Role:
    return controller.role  # read through a call: mypy must not narrow it across ticks


def make(
    settings: Settings, store: FlakyStore, clock: FakeClock, **changes: Any
) -> tuple[Controller, RecordingLauncher]:
    launcher = RecordingLauncher()
    controller = Controller(
        replace(settings, **changes), cast(Metastore, store), clock, launcher, host="h/1"
    )
    return controller, launcher


def test_standby_takes_a_free_lease_and_starts_the_scheduler_inside_the_fence(
    settings: Settings, store: FlakyStore, clock: FakeClock
) -> None:
    controller, launcher = make(settings, store, clock)
    controller.tick()
    assert role_of(controller) is Role.ACTIVE
    assert controller.lease is not None
    assert launcher.last.fence_at == controller.lease.valid_until - settings.fence_margin
    assert launcher.last.argv == settings.scheduler_argv


def test_each_renewal_moves_the_guards_fence(
    settings: Settings, store: FlakyStore, clock: FakeClock
) -> None:
    controller, launcher = make(settings, store, clock)
    controller.tick()
    clock.advance(3)
    controller.tick()
    clock.advance(3)
    controller.tick()
    assert launcher.last.fences == [clock.now() - 3 + 15 - 1, clock.now() + 15 - 1]


def test_an_exited_scheduler_is_restarted_on_the_next_cycle_without_waiting(
    settings: Settings, store: FlakyStore, clock: FakeClock
) -> None:
    controller, launcher = make(settings, store, clock)
    controller.tick()
    controller._on_run_ended(RunEnded("exited", 1))
    controller.tick()  # the loop runs this at once (_tick_now), not after renew_interval
    assert len(launcher.runs) == 2
    assert controller.scheduler.failed_starts == 1


def test_unreachable_store_keeps_the_scheduler_until_the_demote_deadline(
    settings: Settings, store: FlakyStore, clock: FakeClock
) -> None:
    controller, launcher = make(settings, store, clock)
    controller.tick()
    assert controller.lease is not None
    demote_at = controller.timing.demote_at(controller.lease.valid_until)
    store.broken = True
    clock.advance(demote_at - clock.now() - 0.01)
    controller.tick()
    assert role_of(controller) is Role.ACTIVE
    assert launcher.last.stops == []
    clock.advance(0.01)
    controller.tick()
    assert role_of(controller) is Role.STANDBY
    assert launcher.last.stops == [settings.stop_timeout]  # whole grace, still inside the fence
    assert controller.scheduler.state is RunState.STOPPED


def test_a_lost_lease_demotes_at_once_and_is_not_released(
    settings: Settings, store: FlakyStore, clock: FakeClock
) -> None:
    controller, launcher = make(settings, store, clock)
    controller.tick()
    lease = controller.lease
    assert lease is not None
    assert store.transfer(lease, "b")  # someone else holds it now
    controller.tick()
    assert role_of(controller) is Role.STANDBY
    assert launcher.last.stops
    record = store.read_lease("scheduler")
    assert record.holder == "b"


def test_too_many_failed_starts_step_down_and_cool_down(
    settings: Settings, store: FlakyStore, clock: FakeClock
) -> None:
    controller, launcher = make(settings, store, clock)
    controller.tick()
    for _ in range(3):
        controller._on_run_ended(RunEnded("exited", 1))
        controller.tick()
    assert role_of(controller) is Role.STANDBY
    record = store.read_lease("scheduler")
    assert record.holder is None  # released at once: a standby need not wait for the TTL
    runs = len(launcher.runs)
    clock.advance(99)
    controller.tick()
    assert role_of(controller) is Role.STANDBY
    assert len(launcher.runs) == runs
    clock.advance(1)
    controller.tick()
    assert role_of(controller) is Role.ACTIVE
    assert len(launcher.runs) == runs + 1


def test_a_launch_that_raises_counts_as_a_failed_start(
    settings: Settings, store: FlakyStore, clock: FakeClock
) -> None:
    controller, launcher = make(settings, store, clock)
    launcher.fail_with = FileNotFoundError(2, "No such file or directory")
    for _ in range(3):
        controller.tick()
    controller.tick()
    assert role_of(controller) is Role.STANDBY
    assert controller.unfit_until > clock.now()


def test_a_scheduler_that_stays_up_resets_the_failure_count(
    settings: Settings, store: FlakyStore, clock: FakeClock
) -> None:
    controller, _ = make(settings, store, clock)
    controller.tick()
    controller._on_run_ended(RunEnded("exited", 1))
    controller.tick()
    assert controller.scheduler.failed_starts == 1
    for _ in range(7):
        clock.advance(3)
        controller.tick()
    assert controller.scheduler.state is RunState.RUNNING
    assert controller.scheduler.failed_starts == 0


def test_paused_cluster_starts_and_stops_nothing(
    settings: Settings, store: FlakyStore, clock: FakeClock
) -> None:
    controller, launcher = make(settings, store, clock)
    controller.tick()
    store.set_flag(PAUSED, "now")
    controller._on_run_ended(RunEnded("exited", 1))
    controller.tick()
    assert role_of(controller) is Role.ACTIVE
    assert len(launcher.runs) == 1
    store.set_flag(PAUSED, None)
    controller.tick()
    assert len(launcher.runs) == 2


def test_a_paused_standby_does_not_take_the_lease(
    settings: Settings, store: FlakyStore, clock: FakeClock
) -> None:
    store.set_flag(PAUSED, "now")
    controller, launcher = make(settings, store, clock)
    controller.tick()
    assert role_of(controller) is Role.STANDBY
    assert launcher.runs == []


def test_switchover_stops_first_then_hands_the_lease_to_the_target(
    settings: Settings, store: FlakyStore, clock: FakeClock
) -> None:
    controller, launcher = make(settings, store, clock)
    controller.tick()
    assert controller.lease is not None
    store.set_flag(switchover_flag("scheduler"), f"{controller.lease.epoch} b")
    controller.tick()
    assert launcher.last.stops
    assert role_of(controller) is Role.STANDBY
    record = store.read_lease("scheduler")
    assert record.holder == "b"
    assert switchover_flag("scheduler") not in store.flags()


def test_a_switchover_request_for_an_earlier_epoch_is_ignored(
    settings: Settings, store: FlakyStore, clock: FakeClock
) -> None:
    controller, _ = make(settings, store, clock)
    controller.tick()
    assert controller.lease is not None
    store.set_flag(switchover_flag("scheduler"), f"{controller.lease.epoch - 1} b")
    controller.tick()
    assert role_of(controller) is Role.ACTIVE


def test_shutdown_stops_the_scheduler_then_releases_the_lease(
    settings: Settings, store: FlakyStore, clock: FakeClock
) -> None:
    controller, launcher = make(settings, store, clock)
    controller.tick()
    controller.shutdown()
    assert launcher.last.stops
    assert store.read_lease("scheduler").holder is None
    node = store.nodes()[0]
    assert (node.role, node.scheduler_running) == ("stopped", False)


class FakeProbe:
    def __init__(self) -> None:
        self.age_s: float | None = None

    def age(self, started_wall: float, now_wall: float) -> float | None:
        return self.age_s


def test_heartbeat_mode_restarts_a_hung_scheduler(
    settings: Settings, store: FlakyStore, clock: FakeClock
) -> None:
    probe = FakeProbe()
    launcher = RecordingLauncher()
    controller = Controller(
        replace(settings, health_check="heartbeat"),
        cast(Metastore, store),
        clock,
        launcher,
        host="h/1",
        heartbeat_probe=probe,
    )
    controller.tick()
    probe.age_s = 1.0
    controller.tick()
    assert controller.scheduler.state is RunState.RUNNING
    probe.age_s = settings.heartbeat_grace + 1
    controller.tick()
    assert launcher.last.stops == [settings.stop_timeout]
    controller._on_run_ended(RunEnded("exited", -15))
    controller.tick()
    assert len(launcher.runs) == 2
    assert controller.scheduler.failed_starts == 0  # a hang after a healthy run is no failed start


def test_events_from_an_outage_are_recorded_when_the_store_answers_again(
    settings: Settings, store: FlakyStore, clock: FakeClock
) -> None:
    controller, _ = make(settings, store, clock)
    controller.tick()
    store.broken = True
    controller.events.emit("scheduler_fenced", "during the outage", epoch=1)
    controller.events.emit("demoted", "still down", epoch=1)
    store.broken = False
    controller.tick()
    kinds = [e.kind for e in store.events(10)]
    assert kinds[:2] == ["demoted", "scheduler_fenced"]


def test_after_a_failed_renewal_no_call_starts_that_could_outlast_the_demote_deadline(
    settings: Settings, store: FlakyStore, clock: FakeClock
) -> None:
    controller, launcher = make(settings, store, clock)
    controller.tick()
    assert controller.lease is not None
    demote_at = controller.timing.demote_at(controller.lease.valid_until)
    store.broken = True
    clock.advance(settings.renew_interval)
    controller.tick()  # fails: the store may be slow to say so, a whole operation timeout
    store.calls.clear()
    clock.advance(demote_at - clock.now() - settings.renew_interval + 0.01)
    controller.tick()
    assert "renew" not in store.calls  # it could still be blocked at the deadline
    assert role_of(controller) is Role.ACTIVE
    clock.advance(settings.renew_interval)
    controller.tick()
    assert role_of(controller) is Role.STANDBY
    [grace] = launcher.last.stops  # nearly the whole grace, and all of it before the fence
    assert grace == pytest.approx(settings.stop_timeout, abs=0.02)


def test_a_store_that_fails_right_after_a_renewal_counts_like_a_failed_renewal(
    settings: Settings, store: FlakyStore, clock: FakeClock
) -> None:
    controller, launcher = make(settings, store, clock)
    controller.tick()
    assert controller.lease is not None
    store.failing = {"flags", "heartbeat"}  # the renewal answers, the store hangs after it
    clock.advance(settings.renew_interval)
    controller.tick()
    assert controller.lease is not None
    demote_at = controller.timing.demote_at(controller.lease.valid_until)
    store.broken = True
    store.calls.clear()
    clock.advance(demote_at - clock.now() - settings.renew_interval + 0.01)
    controller.tick()
    assert "renew" not in store.calls  # a renewal now could still be blocked at the deadline
    clock.advance(settings.renew_interval)
    controller.tick()
    assert role_of(controller) is Role.STANDBY
    [grace] = launcher.last.stops
    assert grace == pytest.approx(settings.stop_timeout, abs=0.02)


def test_while_renewals_succeed_a_slow_cycle_never_skips_one(
    settings: Settings, store: FlakyStore, clock: FakeClock
) -> None:
    controller, _ = make(settings, store, clock)
    controller.tick()
    assert controller.lease is not None
    store.calls.clear()
    late = controller.timing.demote_at(controller.lease.valid_until) - clock.now() - 0.5
    clock.advance(late)  # a cycle far later than renew_interval, but the store is healthy
    controller.tick()
    assert "renew" in store.calls
    assert role_of(controller) is Role.ACTIVE


def test_the_scheduler_gets_its_marker_and_epoch_but_none_of_our_settings(
    settings: Settings, store: FlakyStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__SENTINEL__METASTORE", "postgresql://u:s3cretpw@db/airflow")
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
    controller, _ = make(settings, store, clock)
    controller.tick()
    env = controller.supervisor.env(settings)
    assert (env["AIRFLOW_SENTINEL_NODE_ID"], env["AIRFLOW_SENTINEL_EPOCH"]) == ("a", "1")
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert not [k for k in env if k.startswith("AIRFLOW__SENTINEL__")]


class _Gate:
    def __init__(self, reason: str | None) -> None:
        self.reason = reason

    def refusal(self) -> str | None:
        return self.reason


def test_a_hold_stops_the_scheduler_releases_the_lease_and_takes_none(
    settings: Settings, store: FlakyStore, clock: FakeClock
) -> None:
    controller, launcher = make(settings, store, clock)
    controller.tick()
    assert role_of(controller) is Role.ACTIVE
    store.set_flag(HOLD, "upgrade r1")
    clock.advance(3)
    controller.tick()
    assert role_of(controller) is Role.STANDBY
    assert launcher.last.stops
    lease = store.read_lease("scheduler")
    assert lease is not None and lease.holder is None
    clock.advance(30)
    controller.tick()
    assert role_of(controller) is Role.STANDBY and len(launcher.runs) == 1
    store.set_flag(HOLD, None)
    controller.tick()
    assert role_of(controller) is Role.ACTIVE and len(launcher.runs) == 2


def test_a_scheduler_for_another_schema_is_refused_and_the_node_steps_down(
    settings: Settings, store: FlakyStore, clock: FakeClock
) -> None:
    launcher = RecordingLauncher()
    gate = _Gate("Airflow 2.10.5 expects schema a, the database is at b")
    controller = Controller(
        settings, cast(Metastore, store), clock, launcher, host="h/1", start_gate=gate
    )
    for _ in range(settings.max_restarts + 1):
        controller.tick()
        clock.advance(settings.renew_interval)
    assert launcher.runs == []
    assert role_of(controller) is Role.STANDBY  # stepped down: a node that fits may lead
    kinds = [e.kind for e in store.events(20)]
    assert "scheduler_refused" in kinds and "stepped_down" in kinds


def test_a_second_instance_of_our_node_id_stands_down_and_never_leads(
    settings: Settings, store: FlakyStore, clock: FakeClock
) -> None:
    first, _ = make(settings, store, clock)
    assert first.claim_node() is None
    first.tick()
    assert role_of(first) is Role.ACTIVE
    second, second_launcher = make(settings, store, clock)
    second.instance = replace(twin("a"), host="clone")
    assert second.claim_node() == "h/1"  # refused at start: the first one owns the row
    assert "conflict:a" not in store.flags()  # a refused start leaves no flag behind
    for _ in range(3):
        clock.advance(3)
        first.tick()
        second.tick()
    assert second_launcher.runs == []
    assert role_of(second) is Role.STANDBY
    assert role_of(first) is Role.ACTIVE


def test_an_instance_that_lost_its_row_while_silent_stands_down(
    settings: Settings, store: FlakyStore, clock: FakeClock
) -> None:
    controller, launcher = make(settings, store, clock)
    controller.tick()
    assert role_of(controller) is Role.ACTIVE
    clone = replace(twin("a"), host="clone")
    conflict = store.heartbeat(
        NodeReport("a", "clone/1", "standby", False, None, True, "x", None, clone.token),
        stale_after=0.0,  # as if the controller had been silent past the TTL
    )
    assert conflict is None
    clock.advance(3)
    controller.tick()  # its heartbeat is refused: conflict
    assert controller.conflict == "clone/1"
    assert store.flags()["conflict:a"].startswith("h/1")
    clock.advance(3)
    controller.tick()
    assert role_of(controller) is Role.STANDBY
    assert launcher.last.stops  # its scheduler was stopped
    assert store.read_lease("scheduler").holder is None  # and the lease released


def test_a_reload_applies_new_timing_and_a_bad_file_keeps_the_old(
    settings: Settings, store: FlakyStore, clock: FakeClock
) -> None:
    results: list[Settings | Exception] = [
        replace(
            settings,
            lease_ttl=30.0,
            renew_interval=5.0,
            node_id="renamed",
            health_check="heartbeat",
        ),
        ConfigError(["lease_ttl: 'x' is not a number of seconds"]),
    ]

    def reload() -> Settings:
        result = results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    controller, _ = make(settings, store, clock)
    controller._reload = reload
    controller._reload_requested = True
    controller._reload_settings()
    assert controller.settings.lease_ttl == 30.0
    assert controller.timing.lease_ttl == 30.0
    assert controller.settings.node_id == "a"  # fixed until a restart
    assert controller.settings.health_check == "process"  # its probe is built at start
    assert not controller.timing.heartbeat_mode
    controller._reload_requested = True
    controller._reload_settings()
    assert controller.settings.lease_ttl == 30.0


def test_a_stop_that_needed_sigkill_is_reported_with_its_cause(
    settings: Settings, store: FlakyStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="airflow_sentinel")  # the clean stop is INFO
    controller, _ = make(settings, store, clock)
    controller.tick()
    controller.scheduler.stop(settings.stop_timeout)
    clock.advance(settings.stop_timeout + 0.2)
    controller._on_run_ended(RunEnded("exited", -9))
    assert "did not exit within stop_timeout (5s)" in caplog.text
    controller.tick()
    controller.scheduler.stop(settings.stop_timeout)
    clock.advance(2.4)
    controller._on_run_ended(RunEnded("exited", 0))
    assert "stopped 2.4s after SIGTERM" in caplog.text


def test_a_stop_sent_before_the_loop_runs_is_a_clean_stop_not_a_kill(
    settings: Settings, store: FlakyStore, clock: FakeClock
) -> None:
    """`start` installs the handlers before the node registers: a SIGTERM in between (an
    operator's stop, systemd's) stops the controller as a SIGTERM to its loop would."""
    controller, _ = make(settings, store, clock)
    names = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {name: signal.getsignal(name) for name in names}
    try:
        controller.install_signal_handlers()
        os.kill(os.getpid(), signal.SIGTERM)  # handled at once, on this thread
        assert controller.stop_requested
    finally:
        for name, handler in previous.items():
            signal.signal(name, handler)


def test_a_standby_reads_the_lease_again_the_instant_its_wait_ends_and_starts_at_once(
    settings: Settings, store: FlakyStore, clock: FakeClock
) -> None:
    active, _ = make(settings, store, clock, node_id="a")
    active.tick()
    other = FlakyStore(open_metastore(settings.metastore, clock))
    try:
        standby, launcher = make(settings, other, clock, node_id="b")
        standby.tick()
        standby.standby_poll.cycle_ran()
        assert role_of(standby) is Role.STANDBY
        seen_at = clock.now()
        # Between cycles it reads every standby_poll (0.5 s), and at the wait's very end.
        assert standby._poll_time() == seen_at + 0.5
        clock.advance(14.9)
        standby.standby_poll.polled(failed=False)
        assert standby._poll_time() == pytest.approx(seen_at + settings.lease_ttl)
        clock.advance(0.1)
        other.calls.clear()
        standby.poll_lease()
        assert standby.lease is not None and standby.lease.holder == "b"
        standby.tick()
        assert "renew" not in other.calls  # just taken: the cycle starts, it does not renew
        assert len(launcher.runs) == 1
    finally:
        other.close()


def test_a_paused_or_unfit_standby_reads_nothing_between_cycles(
    settings: Settings, store: FlakyStore, clock: FakeClock
) -> None:
    active, _ = make(settings, store, clock, node_id="a")
    active.tick()
    store.set_flag(PAUSED, "now")
    standby, _ = make(settings, store, clock, node_id="b")
    standby.tick()
    assert standby._poll_time() == float("inf")
    store.set_flag(PAUSED, None)
    standby.tick()
    assert standby._poll_time() < float("inf")
    standby.unfit_until = clock.now() + 60
    assert standby._poll_time() == float("inf")


def test_a_poll_that_gets_no_answer_waits_for_the_next_cycle(
    settings: Settings, store: FlakyStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    active, _ = make(settings, store, clock, node_id="a")
    active.tick()
    standby, _ = make(settings, store, clock, node_id="b")
    standby.tick()
    store.broken = True
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        standby.poll_lease()
    assert caplog.records == []  # the cycle says it, once, not every half second
    assert standby._poll_time() == float("inf")
    store.broken = False
    standby.tick()
    standby.standby_poll.cycle_ran()
    assert standby._poll_time() < float("inf")


def test_a_standby_that_lost_the_store_renews_the_lease_it_takes_once_it_answers(
    settings: Settings, store: FlakyStore, clock: FakeClock
) -> None:
    # The shipped timing leaves no room for a late renewal (T - S - M = 2R): the store's
    # failures while standing by must not count against the first lease it then takes.
    controller, launcher = make(settings, store, clock, lease_ttl=10.0, renew_interval=2.0)
    store.failing = {"flags"}  # cut off: a standby's cycle fails
    controller.tick()
    assert controller.lease is None
    store.failing = set()
    clock.advance(2)
    controller.tick()  # the store answers again: it takes the free lease
    assert controller.lease is not None
    for _ in range(5):
        store.calls.clear()
        clock.advance(2.05)  # the cycle itself took 50 ms, as it does
        controller.tick()
        assert "renew" in store.calls
        assert role_of(controller) is Role.ACTIVE
    assert launcher.last.stops == []
