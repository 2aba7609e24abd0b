"""The notify protocol against a real unix datagram socket, read synchronously: a datagram
is in the receiver's queue when sendto returns, so nothing here waits."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest

from airflow_sentinel.clock import FakeClock
from airflow_sentinel.config import Settings
from airflow_sentinel.controller.loop import Controller
from airflow_sentinel.controller.published import READY, RELOADING, STOPPING, NodeView
from airflow_sentinel.metastore import Metastore
from airflow_sentinel.systemd import start_notify
from airflow_sentinel.systemd.notify import Notifier, Watchdog, socket_address, watchdog_from
from airflow_sentinel.systemd.service import ServiceNotifier
from airflow_sentinel.systemd.status import status_text
from airflow_sentinel.systemd.timing import (
    longest_silence_s,
    silence_of,
    stop_timeout_sec,
    watchdog_sec,
)
from tests.support import views
from tests.support.fakes import FlakyStore, RecordingLauncher
from tests.support.notify_socket import NotifySocket, notify_socket


def node_view(**changes: Any) -> NodeView:
    defaults: dict[str, Any] = {"host": "h/1", "version": "0", "epoch": 12, "lease_left_s": 14.0}
    defaults |= {"demote_in_s": 8.0, "scheduler_pid": 4242, "heartbeat_age_s": None}
    return views.node_view(**{**defaults, "cycle_bound_s": 27.0, **changes})


STANDBY = {"role": "standby", "epoch": None, "scheduler_state": None, "scheduler_pid": None}


@pytest.fixture
def systemd() -> Iterator[NotifySocket]:
    with notify_socket() as sock:
        yield sock


def service_for(sock: NotifySocket, watchdog_s: float | None = 60.0) -> ServiceNotifier:
    watchdog = None if watchdog_s is None else Watchdog(watchdog_s)
    return ServiceNotifier(Notifier(sock.bound_to), watchdog, lambda: 777)


def sent(sock: NotifySocket) -> list[str]:
    return [message.raw for message in sock.drain()]


# -- the socket ------------------------------------------------------------------------
def test_an_abstract_name_is_a_leading_nul_and_only_unix_paths_are_taken() -> None:
    assert socket_address("@systemd/notify") == "\0systemd/notify"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("run/notify") is None
    assert socket_address("vsock:2:1234") is None
    assert socket_address("@") is None


def test_no_notify_socket_means_no_notifier(caplog: pytest.LogCaptureFixture) -> None:
    assert Notifier.from_environ({}) is None
    assert Notifier.from_environ({"NOTIFY_SOCKET": ""}) is None
    assert Notifier.from_environ({"NOTIFY_SOCKET": "notify.sock"}) is None
    assert "not a unix socket path" in caplog.text


def test_a_message_reaches_a_socket_named_by_path(tmp_path: Path) -> None:
    path = f"/tmp/n-{os.getpid()}-{tmp_path.name[-20:]}.sock"  # short: AF_UNIX takes 108 bytes
    with notify_socket(path) as sock:
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
        assert notifier is not None
        assert notifier.send("READY=1", "STATUS=standby")
        assert sent(sock) == ["READY=1\nSTATUS=standby"]
    Path(path).unlink()


def test_a_message_to_an_abstract_name_comes_from_this_process(systemd: NotifySocket) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": systemd.address})
    assert notifier is not None
    notifier.send("WATCHDOG=1")
    [message] = systemd.drain()
    assert message.has("WATCHDOG=1")
    assert message.pid == os.getpid()  # what systemd checks for NotifyAccess=main


def test_a_socket_nobody_listens_on_is_one_warning_never_an_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    notifier = Notifier("\0airflow-sentinel-test-nobody-listens")
    assert not notifier.send("READY=1")
    assert not notifier.send("WATCHDOG=1")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "cannot notify systemd at @airflow-sentinel-test-nobody-listens" in caplog.text


def test_a_full_queue_drops_the_message_without_blocking(systemd: NotifySocket) -> None:
    notifier = Notifier(systemd.bound_to)
    # Nobody reads: a blocking sendto would hang here once the receiver's queue is full.
    delivered = [notifier.send("WATCHDOG=1") for _ in range(5000)]
    assert not delivered[-1]
    assert delivered.count(True) == len(systemd.drain())


def test_a_closed_notifier_sends_nothing(systemd: NotifySocket) -> None:
    notifier = Notifier(systemd.bound_to)
    notifier.close()
    assert not notifier.send("READY=1")


# -- the watchdog systemd asks for --------------------------------------------------------
def test_the_watchdog_is_ours_when_no_pid_or_our_pid_is_named() -> None:
    assert watchdog_from({"WATCHDOG_USEC": "30000000"}, pid=10) == Watchdog(30.0)
    assert watchdog_from({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "10"}, pid=10)
    assert watchdog_from({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "11"}, pid=10) is None


def test_no_or_a_broken_watchdog_interval_is_no_watchdog() -> None:
    assert watchdog_from({}, pid=10) is None
    assert watchdog_from({"WATCHDOG_USEC": "0"}, pid=10) is None
    assert watchdog_from({"WATCHDOG_USEC": "soon"}, pid=10) is None


# -- what the loop's views and lifecycle become -------------------------------------------
def test_the_first_view_sends_status_and_a_watchdog_ping_in_one_message(
    systemd: NotifySocket,
) -> None:
    service_for(systemd).on_view(node_view())
    assert sent(systemd) == ["STATUS=active, epoch 12, scheduler pid 4242\nWATCHDOG=1"]


def test_status_is_sent_only_when_it_changes_and_every_view_pings(
    systemd: NotifySocket,
) -> None:
    service = service_for(systemd)
    service.on_view(node_view())
    service.on_view(node_view(cycle_at=103.0))
    service.on_view(node_view(**STANDBY))
    assert sent(systemd)[1:] == ["WATCHDOG=1", "STATUS=standby\nWATCHDOG=1"]


def test_without_a_watchdog_an_unchanged_view_sends_nothing(systemd: NotifySocket) -> None:
    service = service_for(systemd, watchdog_s=None)
    service.on_view(node_view())
    service.on_view(node_view(cycle_at=103.0))
    assert sent(systemd) == ["STATUS=active, epoch 12, scheduler pid 4242"]


def test_lifecycle_ready_reloading_with_its_monotonic_time_and_stopping(
    systemd: NotifySocket,
) -> None:
    service = service_for(systemd)
    for state in (READY, RELOADING, READY, STOPPING):
        service.on_lifecycle(state)
    assert sent(systemd) == [
        "READY=1",
        "RELOADING=1\nMONOTONIC_USEC=777",
        "READY=1",
        "STOPPING=1\nSTATUS=stopping: stopping the scheduler and releasing the lease",
    ]


def test_while_stopping_the_status_says_so_until_the_controller_has_stopped(
    systemd: NotifySocket,
) -> None:
    service = service_for(systemd, watchdog_s=None)
    service.on_lifecycle(STOPPING)
    service.on_view(node_view(leaving=True))
    service.on_view(node_view(role="stopped"))
    assert sent(systemd)[1:] == [
        "STATUS=stopping; active, epoch 12, stopping scheduler pid 4242",
        "STATUS=stopped",
    ]


def test_the_reload_time_is_on_the_monotonic_clock_systemd_compares_it_with(
    systemd: NotifySocket,
) -> None:
    before = time_usec()
    ServiceNotifier(Notifier(systemd.bound_to), None).on_lifecycle(RELOADING)
    after = time_usec()
    [message] = systemd.drain()
    assert before <= int(message.fields["MONOTONIC_USEC"]) <= after


def time_usec() -> int:
    return time.monotonic_ns() // 1000  # CLOCK_MONOTONIC, as systemd's own


def test_a_watchdog_shorter_than_a_cycle_may_take_is_one_warning_per_timing(
    systemd: NotifySocket, caplog: pytest.LogCaptureFixture
) -> None:
    service = service_for(systemd, watchdog_s=20.0)  # a cycle may take 3 + 27 s
    service.on_view(node_view())
    service.on_view(node_view(cycle_at=103.0))
    service.on_view(node_view(cycle_every_s=1.0, cycle_bound_s=15.0))  # reloaded: 16 s fits
    service.on_view(node_view(cycle_every_s=2.0, cycle_bound_s=21.0))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "WatchdogSec=20s is shorter" in warnings[0]
    assert "set WatchdogSec=45" in warnings[0]
    assert "(23s:" in warnings[1]


def test_a_long_enough_watchdog_is_not_warned_about(
    systemd: NotifySocket, caplog: pytest.LogCaptureFixture
) -> None:
    service_for(systemd, watchdog_s=45.0).on_view(node_view())
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


# -- the status line ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "text"),
    [
        ({}, "active, epoch 12, scheduler pid 4242"),
        ({"scheduler_state": "starting"}, "active, epoch 12, starting scheduler pid 4242"),
        ({"leaving": True}, "active, epoch 12, stopping scheduler pid 4242"),
        ({"scheduler_state": None, "scheduler_pid": None}, "active, epoch 12, no scheduler"),
        (
            {"scheduler_pid": None, "scheduler_state": "starting"},
            "active, epoch 12, scheduler starting",
        ),
        (STANDBY, "standby"),
        ({**STANDBY, "fit": False, "cooldown_left_s": 61.0}, "standby, cooling down (2 min left)"),
        ({"paused": True}, "paused; active, epoch 12, scheduler pid 4242"),
        (
            {**STANDBY, "held": "upgrade 20261201-0800 on master-1"},
            "held by upgrade 20261201-0800 on master-1; standby",
        ),
        (
            {**STANDBY, "conflict": "h/2 (h pid 7)"},
            "standby; node_id also in use by a live controller on h/2 (h pid 7)",
        ),
        (
            {"metastore_reachable": False},
            "active, epoch 12, scheduler pid 4242; metastore unreachable",
        ),
        ({"role": "stopped"}, "stopped"),
    ],
)
def test_status_text(changes: dict[str, Any], text: str) -> None:
    assert status_text(node_view(**changes)) == text


def test_a_line_break_in_a_held_reason_cannot_add_an_assignment() -> None:
    text = status_text(node_view(**STANDBY, held="upgrade x\nREADY=1"))
    assert "\n" not in text
    assert text == "held by upgrade x READY=1; standby"


# -- wired to a controller ------------------------------------------------------------------
def make_controller(settings: Settings, store: FlakyStore, clock: FakeClock) -> Controller:
    return Controller(settings, cast(Metastore, store), clock, RecordingLauncher(), host="h/1")


def test_without_notify_socket_nothing_is_wired_and_systemds_variables_are_dropped(
    settings: Settings, store: FlakyStore, clock: FakeClock
) -> None:
    controller = make_controller(settings, store, clock)
    environ = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1", "PATH": "/bin"}
    assert start_notify(controller, environ) is None
    assert environ == {"PATH": "/bin"}


def test_the_loops_cycles_reach_systemd_and_the_scheduler_does_not_inherit_the_socket(
    settings: Settings, store: FlakyStore, clock: FakeClock, systemd: NotifySocket
) -> None:
    controller = make_controller(settings, store, clock)
    environ = {"NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": "60000000", "PATH": "/bin"}
    stop = start_notify(controller, environ)
    assert stop is not None
    assert environ == {"PATH": "/bin"}  # the scheduler gets our environment: not these
    controller.tick()
    controller.published.lifecycle(READY)
    epoch = controller.epoch
    assert sent(systemd) == [
        f"STATUS=active, epoch {epoch}, starting scheduler pid 4242\nWATCHDOG=1",
        "READY=1",
    ]
    stop()
    controller.tick()
    assert sent(systemd) == []


def test_a_short_watchdog_is_warned_about_when_the_notifier_starts(
    settings: Settings,
    store: FlakyStore,
    clock: FakeClock,
    systemd: NotifySocket,
    caplog: pytest.LogCaptureFixture,
) -> None:
    controller = make_controller(settings, store, clock)
    start_notify(controller, {"NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": "10000000"})
    assert "WatchdogSec=10s is shorter" in caplog.text


# -- sizing ---------------------------------------------------------------------------------
def test_the_units_silence_bound_is_the_one_the_loop_publishes(
    settings: Settings, store: FlakyStore, clock: FakeClock
) -> None:
    fast = replace(settings, renew_interval=1.0, stop_timeout=1.0, lease_ttl=4.0)
    for tuned in (settings, fast):
        assert longest_silence_s(tuned) == silence_of(make_controller(tuned, store, clock).view())


def test_the_default_profile_gets_a_watchdog_with_margin_and_a_stop_that_fits() -> None:
    assert watchdog_sec(30.0) == 45
    assert watchdog_sec(16.0) == 24


def test_the_stop_timeout_covers_a_cycle_under_way_and_the_whole_shutdown(
    settings: Settings,
) -> None:
    # 37 s of a cycle (10 of them the fence's raise), 5 + 10 s to stop and kill the
    # scheduler, 3 x 3 s of store calls, 10 s.
    assert stop_timeout_sec(settings) == 71
