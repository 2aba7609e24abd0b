"""The bounded metastore: every call ends by its deadline, even on a backend that hangs.

A hanging backend is a real SQLite metastore behind a call that waits on a
threading.Event, as a client waits on a server that stopped answering.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from airflow_sentinel.clock import FakeClock
from airflow_sentinel.config import Settings, load_settings
from airflow_sentinel.controller.loop import Controller, Role
from airflow_sentinel.deadline import DeadlinePassed, call_with_deadline
from airflow_sentinel.errors import MetastoreError
from airflow_sentinel.identity import Instance
from airflow_sentinel.metastore import Metastore, open_metastore
from airflow_sentinel.metastore.base import Lease
from airflow_sentinel.metastore.bounded import BoundedMetastore, open_bounded
from airflow_sentinel.metastore.urls import parse_zookeeper_url
from airflow_sentinel.metastore.zookeeper import CALL_BUDGET, ZooKeeperMetastore
from tests.support.cluster import wait_until
from tests.support.fakes import RecordingLauncher

TIMEOUT = 0.2
TTL = 15.0
SERVICE = "scheduler"
# Generous: how long a test waits for something that happens in the background.
EVENTUALLY = 10.0
# A hanging call ends after this anyway, so that a wrapper that does not bound its calls
# fails these tests instead of hanging them.
HANG_LIMIT = 30.0


class HangingBackend:
    """Delegates to a real metastore; while ``hanging``, calls wait until ``released``."""

    def __init__(self, inner: Metastore, hanging: bool) -> None:
        self._inner = inner
        self.hanging = hanging
        self.refusing = False  # calls fail at once, as on a server that refuses
        self.released = threading.Event()
        self.calls: list[str] = []
        self.ended: list[str] = []
        self.closed = threading.Event()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            if self.refusing:
                raise MetastoreError("metastore test: connection refused")
            if self.hanging:
                self.released.wait(HANG_LIMIT)
            try:
                return attribute(*args, **kwargs)
            finally:
                self.ended.append(name)

        return call

    def close(self) -> None:
        self.closed.set()


class Backends:
    """Opens HangingBackends over one shared SQLite metastore (the "server")."""

    def __init__(self, inner: Metastore) -> None:
        self.inner = inner
        self.opened: list[HangingBackend] = []
        self.hang_new = False  # backends opened from now on hang too (the server hangs)
        self.opening_held: threading.Event | None = None  # set: opening waits on it

    def connect(self) -> Metastore:
        if self.opening_held is not None:
            self.opening_held.wait(HANG_LIMIT)
        backend = HangingBackend(self.inner, self.hang_new)
        self.opened.append(backend)
        return cast(Metastore, backend)

    def hang_all(self) -> None:
        self.hang_new = True
        for backend in self.opened:
            backend.hanging = True

    def release_all(self) -> None:
        if self.opening_held is not None:
            self.opening_held.set()
        for backend in self.opened:
            backend.released.set()


@pytest.fixture
def backends(tmp_path: Path) -> Iterator[Backends]:
    inner = open_metastore(f"sqlite:///{tmp_path / 'm.db'}", FakeClock())
    found = Backends(inner)
    yield found
    found.release_all()  # no thread stays blocked after the test
    inner.close()


@pytest.fixture
def store(backends: Backends) -> BoundedMetastore:
    return open_bounded(backends.connect, TIMEOUT, "sqlite:///m.db")


def me(node_id: str = "a") -> Instance:
    return Instance.of_this_process(node_id)


def held_lease(store: Metastore) -> Lease:
    lease = store.try_acquire(SERVICE, me(), TTL)
    assert lease is not None
    return lease


def test_a_call_that_hangs_fails_with_a_metastore_error_at_the_deadline(
    store: BoundedMetastore, backends: Backends
) -> None:
    lease = held_lease(store)
    backends.hang_all()
    with pytest.raises(MetastoreError, match=r"no answer within 0.2s") as caught:
        store.renew(lease, TTL)
    assert str(caught.value).startswith(f"metastore {store.description}:")


def test_the_next_call_discards_a_backend_that_still_hangs_and_uses_a_fresh_one(
    store: BoundedMetastore, backends: Backends
) -> None:
    lease = held_lease(store)
    [first] = backends.opened
    first.hanging = True
    with pytest.raises(MetastoreError):
        store.renew(lease, TTL)
    renewed = store.renew(lease, TTL)  # the first backend's call still hangs
    assert renewed is not None
    [_, fresh] = backends.opened
    assert fresh.calls == ["renew"]
    assert first.closed.wait(EVENTUALLY)  # closed in the background


def test_a_backend_whose_late_call_ended_before_the_next_one_is_kept(
    store: BoundedMetastore, backends: Backends
) -> None:
    lease = held_lease(store)
    [first] = backends.opened
    first.hanging = True
    with pytest.raises(MetastoreError):
        store.renew(lease, TTL)
    first.released.set()  # the late call ends (and lands)
    wait_until(lambda: "renew" in first.ended, EVENTUALLY, "the late call to end")
    first.hanging = False
    assert store.renew(lease, TTL) is not None
    assert len(backends.opened) == 1
    assert not first.closed.is_set()


def test_opening_a_fresh_backend_is_bounded_and_a_late_one_serves_the_next_call(
    store: BoundedMetastore, backends: Backends
) -> None:
    lease = held_lease(store)
    backends.opened[0].hanging = True
    with pytest.raises(MetastoreError):
        store.renew(lease, TTL)
    backends.opening_held = threading.Event()
    with pytest.raises(MetastoreError, match="no answer within"):
        store.renew(lease, TTL)  # discards the stuck backend; the fresh one is slow to open
    backends.opening_held.set()
    wait_until(lambda: len(backends.opened) == 2, EVENTUALLY, "the slow backend to open")
    assert store.renew(lease, TTL) is not None
    assert len(backends.opened) == 2  # the one that opened late, not yet another
    assert backends.opened[1].calls == ["renew"]


def test_a_transfer_that_did_not_answer_ends_the_lease_for_this_node(
    store: BoundedMetastore, backends: Backends
) -> None:
    lease = held_lease(store)
    backends.opened[0].hanging = True
    with pytest.raises(MetastoreError):
        store.transfer(lease, "b")  # it may still land, and b would claim it at once
    assert store.renew(lease, TTL) is None
    assert backends.opened[0].calls == ["try_acquire", "transfer"]  # renew asked nobody
    backends.opened[0].released.set()
    wait_until(lambda: "transfer" in backends.opened[0].ended, EVENTUALLY, "the late transfer")
    record = store.read_lease(SERVICE)
    assert record is not None
    assert record.holder == "b"


def test_errors_of_the_backend_pass_through_and_the_backend_is_kept(
    store: BoundedMetastore, backends: Backends
) -> None:
    lease = held_lease(store)
    [backend] = backends.opened
    backend.refusing = True
    with pytest.raises(MetastoreError, match="metastore test: connection refused"):
        store.renew(lease, TTL)
    backend.refusing = False
    assert store.renew(lease, TTL) is not None
    assert backends.opened == [backend]


def test_close_does_not_wait_for_a_backend_whose_call_hangs(
    store: BoundedMetastore, backends: Backends
) -> None:
    backends.hang_all()
    with pytest.raises(MetastoreError):
        store.flags()
    store.close()
    assert backends.opened[0].closed.wait(EVENTUALLY)


def test_call_with_deadline_returns_raises_or_gives_up() -> None:
    assert call_with_deadline(lambda: 42, TIMEOUT) == 42
    with pytest.raises(ZeroDivisionError):
        call_with_deadline(lambda: 1 // 0, TIMEOUT)
    never = threading.Event()
    with pytest.raises(DeadlinePassed) as late:
        call_with_deadline(lambda: never.wait(HANG_LIMIT), TIMEOUT)
    assert not late.value.call.done()
    never.set()
    assert late.value.call.wait(EVENTUALLY)


class SlowZooKeeper:
    """A kazoo client whose every answer comes at the last moment its caller waits for."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def ensure_path_async(self, path: str) -> SlowZooKeeper:
        return self

    def get(self, timeout: float) -> bool:
        self.waits.append(timeout)
        threading.Event().wait(timeout)
        return True


def test_the_round_trips_of_one_zookeeper_call_share_one_deadline() -> None:
    store = object.__new__(ZooKeeperMetastore)  # no connection: only _wait is exercised
    store._url = parse_zookeeper_url("zookeeper://127.0.0.1:2181/sentinel")
    store._op_timeout = TIMEOUT
    store._root = "/sentinel"
    client = SlowZooKeeper()
    store._client = client
    with pytest.raises(MetastoreError, match="no answer within"):
        store.ensure_schema()  # five round trips; the first takes all the call's time
    [waited] = client.waits  # no second request: nothing was left of the deadline
    assert waited <= CALL_BUDGET * TIMEOUT


@pytest.mark.slow
def test_a_call_stuck_for_good_does_not_keep_the_process_from_exiting() -> None:
    script = (
        "import threading\n"
        "from airflow_sentinel.deadline import DeadlinePassed, call_with_deadline\n"
        "try:\n"
        "    call_with_deadline(threading.Event().wait, 0.1)\n"
        "except DeadlinePassed:\n"
        "    print('gave up')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout.strip()) == (0, "gave up"), done.stderr


def test_a_controller_whose_store_hangs_demotes_at_its_deadline_and_shuts_down(
    tmp_path: Path, backends: Backends, caplog: pytest.LogCaptureFixture
) -> None:
    settings = controller_settings(tmp_path)
    clock = FakeClock()
    store = open_bounded(backends.connect, TIMEOUT, "sqlite:///m.db")
    launcher = RecordingLauncher()
    controller = Controller(settings, store, clock, launcher, host="h/1")
    # The store answers within 0.2 s, but a loaded machine can miss that: the controller
    # takes the lease at a later cycle then, as it would in the field.
    for _ in range(20):
        controller.tick()
        if controller.lease is not None:
            break
        clock.advance(settings.renew_interval)
    assert controller.lease is not None
    demote_at = controller.timing.demote_at(controller.lease.valid_until)
    backends.hang_all()  # the server hangs: every backend, fresh ones too
    clock.advance(settings.renew_interval)
    with caplog.at_level(logging.WARNING):
        controller.tick()
    assert "no answer within 0.2s" in caplog.text
    assert role_of(controller) is Role.ACTIVE
    clock.advance(demote_at - clock.now())
    controller.tick()
    assert role_of(controller) is Role.STANDBY
    assert launcher.last.stops == [settings.stop_timeout]
    controller.shutdown()  # the heartbeat and the events give up too
    assert controller.events.pending > 0  # kept for when the store answers


def role_of(controller: Controller) -> Role:
    return controller.role  # read through a call: mypy must not narrow it across ticks


def controller_settings(tmp_path: Path) -> Settings:
    return load_settings(
        {
            "node_id": "a",
            "metastore": f"sqlite:///{tmp_path / 'm.db'}",
            "scheduler_command": "no-such-scheduler-binary-7f3a run",
            "lease_ttl": "15",
            "renew_interval": "3",
            "stop_timeout": "5",
        },
        environ={},
        airflow_home=tmp_path,
    )
