"""What a ZooKeeper session's life changes for a lease, on a real server.

Sessions are expired the way kazoo's own test harness does it: a second client connects
with the same session id and password and closes the session.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError

from airflow_sentinel.clock import FakeClock
from airflow_sentinel.errors import MetastoreError
from airflow_sentinel.metastore import open_metastore
from airflow_sentinel.metastore.zookeeper import ZooKeeperMetastore
from tests.support.cluster import wait_until
from tests.support.instances import live
from tests.support.zookeeper import expire_session

SERVICE = "scheduler"
TTL = 10.0
pytestmark = pytest.mark.parametrize("backend", ["zookeeper"])


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def stores(
    metastore_url: str, clock: FakeClock
) -> Iterator[tuple[ZooKeeperMetastore, ZooKeeperMetastore]]:
    a, b = open_backend(metastore_url, clock), open_backend(metastore_url, clock)
    yield a, b
    a.close()
    b.close()


def open_backend(url: str, clock: FakeClock) -> ZooKeeperMetastore:
    """The backend itself, not open_metastore's bounded wrapper: these tests reach into
    its session."""
    store = ZooKeeperMetastore(url, clock, 5, session_timeout=TTL)
    store.ensure_schema()
    return store


def expire(store: ZooKeeperMetastore, metastore_url: str) -> None:
    hosts = metastore_url.split("://", 1)[1].split("/", 1)[0]
    old_session = store._client.client_id[0]
    expire_session(store._client, hosts)

    def new_session() -> bool:
        try:
            store.read_lease(SERVICE)
        except MetastoreError:
            return False  # kazoo is still opening a new session
        return store._client.client_id is not None and store._client.client_id[0] != old_session

    wait_until(new_session, 30, "kazoo to open a new session")


def test_an_expired_session_does_not_let_a_standby_in_before_a_ttl(
    stores: tuple[ZooKeeperMetastore, ZooKeeperMetastore], clock: FakeClock, metastore_url: str
) -> None:
    a, b = stores
    assert a.try_acquire(SERVICE, live("a"), TTL) is not None
    assert b.try_acquire(SERVICE, live("b"), TTL) is None
    expire(a, metastore_url)
    # The old holder's scheduler may run until its fence: an early expiry changes nothing.
    clock.advance(TTL - 0.01)
    assert b.try_acquire(SERVICE, live("b"), TTL) is None
    clock.advance(0.01)
    assert b.try_acquire(SERVICE, live("b"), TTL) is not None


def test_a_lease_is_lost_with_the_session_that_took_it(
    stores: tuple[ZooKeeperMetastore, ZooKeeperMetastore], metastore_url: str
) -> None:
    a, _ = stores
    lease = a.try_acquire(SERVICE, live("a"), TTL)
    assert lease is not None
    expire(a, metastore_url)
    assert a.renew(lease, TTL) is None  # LOST: a standby now
    again = a.try_acquire(SERVICE, live("a"), TTL)  # and it may take the lease again, as anyone
    assert again is not None
    assert again.epoch == lease.epoch + 1


def test_the_holder_znode_shows_who_leads_while_its_session_lives(
    stores: tuple[ZooKeeperMetastore, ZooKeeperMetastore], metastore_url: str
) -> None:
    a, b = stores
    assert a.try_acquire(SERVICE, live("a"), TTL) is not None
    holder_path = f"{a._root}/leases/{SERVICE}/holder"
    assert b._client.exists(holder_path) is not None
    expire(a, metastore_url)
    assert b._client.exists(holder_path) is None


def test_digest_auth_protects_what_it_creates_and_never_shows_the_password(
    metastore_url: str, clock: FakeClock
) -> None:
    hosts, path = metastore_url.split("://", 1)[1].split("/", 1)
    secured = f"zookeeper://sentinel:s3cretpw@{hosts}/{path}-auth"
    store = cast(ZooKeeperMetastore, open_metastore(secured, clock, 5, TTL))
    try:
        assert store.try_acquire(SERVICE, live("a"), TTL) is not None
        assert "s3cretpw" not in store.description
        assert store.description.startswith("zookeeper://sentinel:***@")
        anonymous = KazooClient(hosts=hosts)
        anonymous.start(timeout=10)
        try:
            with pytest.raises(NoAuthError):
                anonymous.get(f"/{path}-auth/leases/{SERVICE}/lease")
        finally:
            anonymous.stop()
            anonymous.close()
    finally:
        store.close()
