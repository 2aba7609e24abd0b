"""The controller's parts on their own: the lease keeper's renewal rule, and the registry's
node_id conflicts. (The loop that sequences them is in test_controller.py; the strays and
orphans, which need real processes, in tests/integration/test_strays.py.)"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest

from airflow_sentinel.clock import FakeClock
from airflow_sentinel.config import Settings, load_settings
from airflow_sentinel.controller.exits import describe_end
from airflow_sentinel.controller.lease_keeper import LeaseKeeper
from airflow_sentinel.controller.policy import LeaseStatus, Timing
from airflow_sentinel.controller.registry import Registry
from airflow_sentinel.controller.reload import merge_reload
from airflow_sentinel.controller.scheduler import RunState, StopRequest
from airflow_sentinel.identity import Instance
from airflow_sentinel.metastore import Metastore, open_metastore
from airflow_sentinel.metastore.base import NodeReport
from airflow_sentinel.process.handle import RunEnded
from tests.support.fakes import FlakyStore
from tests.support.instances import twin


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    values = {"node_id": "a", "metastore": f"sqlite:///{tmp_path / 'm.db'}", "lease_ttl": "15"}
    return load_settings({**values, "renew_interval": "3"}, environ={}, airflow_home=tmp_path)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(settings: Settings, clock: FakeClock) -> Iterator[FlakyStore]:
    inner = open_metastore(settings.metastore, clock)
    yield FlakyStore(inner)
    inner.close()


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
