"""One contract, every metastore: real SQLite, MariaDB, PostgreSQL and ZooKeeper.

Time is a FakeClock shared by all the nodes of a test. Every backend judges expiry on
locally observed time, so expiry is tested by moving the clock, without sleeping.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest

from airflow_sentinel.clock import FakeClock
from airflow_sentinel.errors import MetastoreError, MetastoreUnavailable
from airflow_sentinel.metastore import Metastore, open_metastore
from airflow_sentinel.metastore.base import Event, NodeReport
from tests.support.instances import dead, live, twin

SERVICE = "scheduler"
TTL = 10.0

StoreFactory = Callable[[], Metastore]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def new_store(metastore_url: str, clock: FakeClock) -> Iterator[StoreFactory]:
    """Each call is another node's connection to the same metastore."""
    opened: list[Metastore] = []

    def make() -> Metastore:
        store = open_metastore(metastore_url, clock, op_timeout=5, lease_ttl=TTL)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def test_first_acquire_takes_the_free_lease(new_store: StoreFactory, clock: FakeClock) -> None:
    lease = new_store().try_acquire(SERVICE, live("a"), TTL)
    assert lease is not None
    assert (lease.holder, lease.epoch, lease.valid_until) == ("a", 1, clock.now() + TTL)


def test_held_lease_is_not_taken_before_a_full_ttl_is_observed(
    new_store: StoreFactory, clock: FakeClock
) -> None:
    a, b = new_store(), new_store()
    assert a.try_acquire(SERVICE, live("a"), TTL) is not None
    assert b.try_acquire(SERVICE, live("b"), TTL) is None  # first sight starts b's own timer
    clock.advance(TTL - 0.01)
    assert b.try_acquire(SERVICE, live("b"), TTL) is None
    clock.advance(0.01)
    taken = b.try_acquire(SERVICE, live("b"), TTL)
    assert taken is not None
    assert (taken.holder, taken.epoch) == ("b", 2)


def test_the_store_says_when_the_observed_wait_ends_and_a_renewal_moves_it(
    new_store: StoreFactory, clock: FakeClock
) -> None:
    a, b = new_store(), new_store()
    assert b.takeover_due(SERVICE) is None  # nothing judged yet
    held = a.try_acquire(SERVICE, live("a"), TTL)
    assert held is not None
    seen_at = clock.now()
    assert b.try_acquire(SERVICE, live("b"), TTL) is None
    assert b.takeover_due(SERVICE) == seen_at + TTL
    clock.advance(3)
    assert a.renew(held, TTL) is not None  # a new version: b's wait starts again
    assert b.try_acquire(SERVICE, live("b"), TTL) is None
    due = b.takeover_due(SERVICE)
    assert due == clock.now() + TTL
    clock.advance(due - clock.now() - 0.001)
    assert b.try_acquire(SERVICE, live("b"), TTL) is None  # a millisecond early: refused
    clock.advance(0.001)
    taken = b.try_acquire(SERVICE, live("b"), TTL)
    assert taken is not None and taken.holder == "b"
    assert b.takeover_due(SERVICE) is None  # its own lease: nothing to wait for


def test_another_connection_may_give_a_lease_back_only_while_it_is_that_holders_epoch(
    new_store: StoreFactory, clock: FakeClock
) -> None:
    """What the guard of a dead controller does (crash_release.py), from a connection (and
    on ZooKeeper a session) of its own."""
    holder, helper, standby = new_store(), new_store(), new_store()
    held = holder.try_acquire(SERVICE, live("a"), TTL)
    assert held is not None
    assert not helper.release(replace(held, instance="another-instance"))
    assert not helper.release(replace(held, epoch=held.epoch + 1))
    assert helper.release(held)
    taken = standby.try_acquire(SERVICE, live("b"), TTL)  # free: no wait at all
    assert taken is not None and (taken.holder, taken.epoch) == ("b", held.epoch + 1)
    assert not new_store().release(held)  # a newer epoch is never given back
    record = standby.read_lease(SERVICE)
    assert record is not None and record.holder == "b"


def test_a_newcomer_waits_a_full_ttl_even_for_a_long_dead_holder(
    new_store: StoreFactory, clock: FakeClock
) -> None:
    assert new_store().try_acquire(SERVICE, live("a"), TTL) is not None
    clock.advance(TTL * 100)  # nobody was watching: no one knows how long it has been
    late = new_store()
    assert late.try_acquire(SERVICE, live("b"), TTL) is None
    clock.advance(TTL)
    assert late.try_acquire(SERVICE, live("b"), TTL) is not None


def test_renewal_restarts_the_standbys_wait(new_store: StoreFactory, clock: FakeClock) -> None:
    a, b = new_store(), new_store()
    lease = a.try_acquire(SERVICE, live("a"), TTL)
    assert lease is not None
    assert b.try_acquire(SERVICE, live("b"), TTL) is None
    clock.advance(TTL * 0.6)
    assert a.renew(lease, TTL) is not None
    clock.advance(TTL * 0.6)  # 1.2 TTL since b first looked, 0.6 since the renewal
    assert b.try_acquire(SERVICE, live("b"), TTL) is None
    clock.advance(TTL)
    assert b.try_acquire(SERVICE, live("b"), TTL) is not None


def test_standby_waits_the_holders_ttl_not_its_own(
    new_store: StoreFactory, clock: FakeClock
) -> None:
    a, b = new_store(), new_store()
    assert a.try_acquire(SERVICE, live("a"), 30.0) is not None
    assert b.try_acquire(SERVICE, live("b"), 5.0) is None
    clock.advance(10.0)
    assert b.try_acquire(SERVICE, live("b"), 5.0) is None
    clock.advance(20.0)
    assert b.try_acquire(SERVICE, live("b"), 5.0) is not None


def test_renew_extends_validity_from_the_time_it_was_sent(
    new_store: StoreFactory, clock: FakeClock
) -> None:
    store = new_store()
    lease = store.try_acquire(SERVICE, live("a"), TTL)
    assert lease is not None
    clock.advance(3.0)
    renewed = store.renew(lease, TTL)
    assert renewed is not None
    assert renewed.valid_until == clock.now() + TTL
    assert renewed.epoch == lease.epoch


def test_held_lease_is_not_taken_while_its_holder_lives(new_store: StoreFactory) -> None:
    a, b = new_store(), new_store()
    assert a.try_acquire(SERVICE, live("a"), TTL) is not None
    for _ in range(3):
        assert b.try_acquire(SERVICE, live("b"), TTL) is None


def test_an_expired_lease_is_taken_with_a_new_epoch_and_lost_to_its_old_holder(
    new_store: StoreFactory, clock: FakeClock
) -> None:
    a, b = new_store(), new_store()
    old = a.try_acquire(SERVICE, live("a"), TTL)
    assert old is not None
    assert b.try_acquire(SERVICE, live("b"), TTL) is None
    clock.advance(TTL)  # a stopped renewing; b has seen the same version for a whole TTL
    new = b.try_acquire(SERVICE, live("b"), TTL)
    assert new is not None
    assert (new.holder, new.epoch) == ("b", old.epoch + 1)
    assert a.renew(old, TTL) is None
    assert a.release(old) is False
    assert a.transfer(old, "a") is False
    record = b.read_lease(SERVICE)
    assert record is not None
    assert (record.holder, record.epoch) == ("b", new.epoch)


def test_release_lets_another_node_take_over_at_once(new_store: StoreFactory) -> None:
    a, b = new_store(), new_store()
    lease = a.try_acquire(SERVICE, live("a"), TTL)
    assert lease is not None
    assert b.try_acquire(SERVICE, live("b"), TTL) is None
    assert a.release(lease) is True
    taken = b.try_acquire(SERVICE, live("b"), TTL)
    assert taken is not None
    assert taken.epoch == lease.epoch + 1


def test_transfer_hands_the_lease_to_the_target_only(new_store: StoreFactory) -> None:
    a, b, c = new_store(), new_store(), new_store()
    lease = a.try_acquire(SERVICE, live("a"), TTL)
    assert lease is not None
    assert a.transfer(lease, "b") is True
    assert c.try_acquire(SERVICE, live("c"), TTL) is None
    taken = b.try_acquire(SERVICE, live("b"), TTL)
    assert taken is not None
    assert taken.epoch == lease.epoch + 1  # one step per change of holder, not two
    assert a.renew(lease, TTL) is None
    record = c.read_lease(SERVICE)
    assert record is not None
    assert (record.holder, record.epoch, record.instance) == ("b", taken.epoch, live("b").token)


def test_a_handover_is_claimed_by_one_instance_of_the_target_only(
    new_store: StoreFactory,
) -> None:
    a, b1, b2 = new_store(), new_store(), new_store()
    lease = a.try_acquire(SERVICE, live("a"), TTL)
    assert lease is not None
    assert a.transfer(lease, "b")
    first = b1.try_acquire(SERVICE, live("b"), TTL)
    assert first is not None
    assert b2.try_acquire(SERVICE, twin("b"), TTL) is None  # the claim is the instance's now


def test_the_same_instance_takes_its_lease_back_with_a_new_epoch(
    new_store: StoreFactory,
) -> None:
    first = new_store().try_acquire(SERVICE, live("a"), TTL)
    assert first is not None
    again = new_store().try_acquire(SERVICE, live("a"), TTL)
    assert again is not None
    assert again.epoch == first.epoch + 1
    assert new_store().renew(first, TTL) is None  # the earlier epoch's lease is gone


def test_a_restart_on_the_same_boot_takes_a_dead_predecessors_lease_at_once(
    new_store: StoreFactory,
) -> None:
    predecessor = dead("a")
    first = new_store().try_acquire(SERVICE, predecessor, TTL)
    assert first is not None
    again = new_store().try_acquire(SERVICE, live("a"), TTL)  # its controller restarted
    assert again is not None
    assert again.epoch == first.epoch + 1


def test_a_live_twin_with_the_same_node_id_waits_for_expiry_and_cannot_renew(
    new_store: StoreFactory, clock: FakeClock
) -> None:
    a, twin_store = new_store(), new_store()
    lease = a.try_acquire(SERVICE, live("a"), TTL)
    assert lease is not None
    assert twin_store.try_acquire(SERVICE, twin("a"), TTL) is None
    foreign = replace(lease, instance=twin("a").token)
    assert twin_store.renew(foreign, TTL) is None
    assert twin_store.release(foreign) is False
    clock.advance(TTL - 0.5)
    assert twin_store.try_acquire(SERVICE, twin("a"), TTL) is None
    assert a.renew(lease, TTL) is not None  # the holder keeps it all along
    clock.advance(TTL)
    assert twin_store.try_acquire(SERVICE, twin("a"), TTL) is None  # renewed: wait again
    clock.advance(TTL)
    taken = twin_store.try_acquire(SERVICE, twin("a"), TTL)
    assert taken is not None
    assert taken.taken_from == "a"
    assert a.renew(lease, TTL) is None


def test_exactly_one_of_many_racing_nodes_wins(new_store: StoreFactory) -> None:
    stores = [new_store() for _ in range(8)]
    barrier = threading.Barrier(len(stores))
    winners: list[str] = []
    errors: list[BaseException] = []

    def race(index: int, store: Metastore) -> None:
        barrier.wait()
        try:
            if store.try_acquire(SERVICE, live(f"n{index}"), TTL) is not None:
                winners.append(f"n{index}")
        except MetastoreError as exc:  # a busy SQLite may refuse; it must not win twice
            errors.append(exc)

    threads = [threading.Thread(target=race, args=(i, s)) for i, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(winners) == 1, (winners, errors)
    record = stores[0].read_lease(SERVICE)
    assert record is not None
    assert (record.holder, record.epoch) == (winners[0], 1)


def test_epochs_never_go_backwards(new_store: StoreFactory, clock: FakeClock) -> None:
    a, b = new_store(), new_store()
    seen: list[int] = []
    for _ in range(3):
        lease = a.try_acquire(SERVICE, live("a"), TTL)
        assert lease is not None
        seen.append(lease.epoch)
        a.clear()  # clearing metadata keeps the lease and its epoch
        assert a.release(lease)
        lease_b = b.try_acquire(SERVICE, live("b"), TTL)
        assert lease_b is not None
        seen.append(lease_b.epoch)
        assert b.release(lease_b)
    assert seen == sorted(seen)
    assert len(set(seen)) == len(seen)


def test_services_have_independent_leases(new_store: StoreFactory) -> None:
    store = new_store()
    assert store.try_acquire("scheduler", live("a"), TTL) is not None
    other = store.try_acquire("triggerer", live("b"), TTL)
    assert other is not None
    assert other.epoch == 1


def test_schema_creation_is_safe_when_nodes_start_together(metastore_url: str) -> None:
    clock = FakeClock()
    barrier = threading.Barrier(6)
    failures: list[BaseException] = []

    def start_node() -> None:
        barrier.wait()
        try:
            open_metastore(metastore_url, clock, op_timeout=10).close()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=start_node) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []


def _report(node_id: str, role: str = "standby", running: bool = False) -> NodeReport:
    return NodeReport(
        node_id=node_id,
        host="h/1",
        role=role,
        scheduler_running=running,
        scheduler_pid=42 if running else None,
        fit=True,
        version="0.1.0",
        epoch=3 if role == "active" else None,
    )


def test_node_registry_upserts_and_lists_sorted(new_store: StoreFactory) -> None:
    store = new_store()
    store.heartbeat(_report("b"), TTL)
    store.heartbeat(_report("a"), TTL)
    store.heartbeat(_report("b", role="active", running=True), TTL)
    nodes = store.nodes()
    assert [n.node_id for n in nodes] == ["a", "b"]
    b = nodes[1]
    assert (b.role, b.scheduler_running, b.scheduler_pid, b.epoch) == ("active", True, 42, 3)
    assert 0.0 <= b.last_heartbeat_age_s < 60.0


def test_a_nodes_fingerprint_round_trips_and_follows_each_heartbeat(
    new_store: StoreFactory,
) -> None:
    store, other = new_store(), new_store()
    recorded = '{"dags_folder": {"files": 12, "sha256": "9f8e"}, "airflow_version": "2.10.5"}'
    store.heartbeat(replace(_report("a"), fingerprint=recorded), TTL)
    store.heartbeat(_report("b"), TTL)
    a, b = other.nodes()
    assert (a.fingerprint, b.fingerprint) == (recorded, None)
    changed = '{"airflow_version": "3.3.2"}'
    store.heartbeat(replace(_report("a"), fingerprint=changed), TTL)
    assert other.nodes()[0].fingerprint == changed


def test_a_second_live_instance_of_a_node_id_is_refused_the_registry_row(
    new_store: StoreFactory,
) -> None:
    first, second = new_store(), new_store()
    mine = replace(_report("a"), host="host-1", instance=live("a").token)
    other = replace(_report("a"), host="host-2", instance=twin("a").token)
    assert first.heartbeat(mine, TTL) is None
    assert second.heartbeat(other, TTL) == "host-1"
    assert first.heartbeat(mine, TTL) is None  # the owner goes on
    (row,) = second.nodes()
    assert (row.host, row.instance) == ("host-1", live("a").token)
    assert second.heartbeat(other, stale_after=0.0) is None  # the owner fell silent
    assert first.heartbeat(mine, TTL) == "host-2"
    stopped = replace(other, role="stopped")
    assert second.heartbeat(stopped, TTL) is None
    assert first.heartbeat(mine, TTL) is None  # a stopped instance's row is free


def test_a_restarted_controller_takes_its_dead_predecessors_row_at_once(
    new_store: StoreFactory,
) -> None:
    store = new_store()
    gone, me = dead("a"), live("a")
    assert store.heartbeat(replace(_report("a"), instance=gone.token), TTL) is None
    ours = replace(_report("a"), host="after-restart", instance=me.token)
    assert store.heartbeat(ours, TTL, me) is None
    (row,) = store.nodes()
    assert (row.host, row.instance) == ("after-restart", me.token)
    # A live twin proves nothing dead: it stays refused.
    other = replace(_report("a"), host="clone", instance=twin("a").token)
    assert store.heartbeat(other, TTL, twin("a")) == "after-restart"


def test_event_log_is_newest_first_and_bounded(new_store: StoreFactory) -> None:
    store = new_store()
    for i in range(260):
        store.record_event(Event("a", SERVICE, "scheduler_started", f"run {i}", epoch=i), 100)
    events = store.events(1000)
    assert events[0].detail == "run 259"
    assert events[0].epoch == 259
    assert [e.id for e in events] == sorted((e.id for e in events), reverse=True)
    assert 100 <= len(events) < 100 + 50 + 1  # pruned every 50 writes


def test_flags_set_and_clear(new_store: StoreFactory) -> None:
    store = new_store()
    store.set_flag("paused", "yes")
    store.set_flag("switchover:scheduler", "3 b")
    store.set_flag("paused", "again")
    assert store.flags() == {"paused": "again", "switchover:scheduler": "3 b"}
    store.set_flag("paused", None)
    assert store.flags() == {"switchover:scheduler": "3 b"}


def test_claiming_a_flag_is_compare_and_set(new_store: StoreFactory) -> None:
    first, second = new_store(), new_store()
    assert first.claim_flag("upgrade", '{"run": "a"}')
    assert not second.claim_flag("upgrade", '{"run": "b"}')
    assert second.flags()["upgrade"] == '{"run": "a"}'
    first.set_flag("upgrade", None)
    assert second.claim_flag("upgrade", '{"run": "b"}')


def test_clear_forgets_nodes_events_and_flags_but_keeps_the_lease(
    new_store: StoreFactory,
) -> None:
    store = new_store()
    assert store.try_acquire(SERVICE, live("a"), TTL) is not None
    store.heartbeat(_report("a"), TTL)
    store.record_event(Event("a", SERVICE, "x"), 1000)
    store.set_flag("paused", "1")
    store.clear()
    assert (store.nodes(), store.events(10), store.flags()) == ([], [], {})
    record = store.read_lease(SERVICE)
    assert record is not None
    assert (record.holder, record.epoch) == ("a", 1)


def test_unreachable_store_raises_and_hides_the_password(backend: str) -> None:
    url = {
        "sqlite": "sqlite:////proc/no-such-dir/metastore.db",
        "mariadb": "mysql+pymysql://u:s3cretpw@127.0.0.1:1/db",
        "postgresql": "postgresql+psycopg://u:s3cretpw@127.0.0.1:1/db",
        "zookeeper": "zookeeper://u:s3cretpw@127.0.0.1:1/sentinel",
    }[backend]
    with pytest.raises(MetastoreUnavailable) as caught:
        open_metastore(url, FakeClock(), op_timeout=2)
    assert "s3cretpw" not in str(caught.value)
    if backend != "sqlite":
        assert "127.0.0.1" in str(caught.value)


def test_tables_of_an_earlier_version_get_the_new_columns(
    backend: str, metastore_url: str, clock: FakeClock
) -> None:
    if backend == "zookeeper":
        pytest.skip("znodes carry JSON: nothing to migrate")
    import sqlalchemy as sa

    from airflow_sentinel.metastore.sql import ADDED_COLUMNS, create_sql_engine, metadata

    engine = create_sql_engine(metastore_url, 5)
    old = sa.MetaData()
    for table in metadata.sorted_tables:
        kept = [c._copy() for c in table.columns if c not in ADDED_COLUMNS]
        sa.Table(table.name, old, *kept)
    old.create_all(engine)
    engine.dispose()
    store = open_metastore(metastore_url, clock, op_timeout=5, lease_ttl=TTL)
    try:
        lease = store.try_acquire(SERVICE, live("a"), TTL)
        assert lease is not None
        assert store.heartbeat(replace(_report("a"), fingerprint='{"k": "v"}'), TTL) is None
        record = store.read_lease(SERVICE)
        assert record is not None
        assert record.instance == live("a").token
        assert store.nodes()[0].fingerprint == '{"k": "v"}'  # an added column
    finally:
        store.close()
