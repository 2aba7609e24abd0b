"""Three ZooKeeper servers on this machine, three controllers, the stand-in scheduler.

The overlap detector (an flock every stand-in takes) proves "never two at once" exactly.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from tests.support.cluster import Cluster, running_cluster, wait_until
from tests.support.proxy import Proxy
from tests.support.zookeeper import Ensemble, free_port_block

pytestmark = [pytest.mark.slow]
NODES = ("a", "b", "c")
PROFILE = {"lease_ttl": "6", "renew_interval": "1.5", "stop_timeout": "1"}


@pytest.fixture(scope="module")
def ensemble() -> Iterator[Ensemble]:
    servers = Ensemble(Path(tempfile.mkdtemp(prefix="sentinel-ensemble-")), 3, free_port_block())
    servers.start_all()
    yield servers
    servers.close()


@pytest.fixture
def cluster(tmp_path: Path, ensemble: Ensemble) -> Iterator[Cluster]:
    ensemble.start_all()  # a previous test may have stopped some
    url = f"zookeeper://{ensemble.hosts}/sentinel-ensemble/{tmp_path.name}"
    with running_cluster(tmp_path, url) as c:
        c.settings.update(PROFILE)
        yield c


def heartbeats_since(cluster: Cluster, since: float) -> bool:
    """Every controller has written a heartbeat after ``since`` (wall clock, same host)."""
    try:
        nodes = cluster.nodes()
    except Exception:  # the metastore may be out of reach mid-fault
        return False
    now = time.time()
    return all(n in nodes and now - nodes[n].last_heartbeat_age_s > since for n in NODES)


def start_three(cluster: Cluster) -> str:
    for node in NODES:
        cluster.start(node)
    active = cluster.wait_for_one_scheduler(timeout=60)
    wait_until(cluster.probe_lines, 20, "the scheduler to run")
    return active


def test_one_server_down_at_a_time_keeps_exactly_one_scheduler(
    cluster: Cluster, ensemble: Ensemble
) -> None:
    start_three(cluster)
    stopped_leader = False
    for index in range(ensemble.size):
        was_leader = ensemble.mode(index) == "leader"
        stopped_leader |= was_leader
        active = cluster.running_on()
        ensemble.stop(index)
        wait_until(partial(heartbeats_since, cluster, time.time() + 2), 60, "heartbeats without it")
        if was_leader:
            # The other two elect a new leader first; no write succeeds meanwhile. On a loaded
            # machine that can outlast the active node's demote margin: it then stops its
            # scheduler and one node takes over, never two.
            cluster.wait_for_one_scheduler(timeout=60)
        else:
            # A follower's clients move to another server within the session: nothing stops.
            assert cluster.running_on() == active
        ensemble.start(index)
        ensemble.wait_serving([index])
    assert stopped_leader
    cluster.wait_for_one_scheduler(timeout=60)
    assert cluster.overlaps() == []


def test_without_quorum_the_scheduler_stops_and_none_starts_until_it_returns(
    cluster: Cluster, ensemble: Ensemble
) -> None:
    first = start_three(cluster)
    lost_at = time.time()
    ensemble.stop(0)
    ensemble.stop(1)
    # The active node cannot prove its lease any more: it stops before its fence falls.
    wait_until(lambda: cluster.running_on() == [], 30, "the scheduler to stop")
    ensemble.start(0)
    ensemble.start(1)
    ensemble.wait_serving([0, 1])
    back_at = time.time()
    cluster.wait_for_one_scheduler(timeout=60)
    lines = cluster.probe_lines()
    assert [line for line in lines if line.what == "start" and lost_at < line.at < back_at] == []
    assert [line.what for line in lines if line.node == first][:2] == ["start", "stop"]
    assert cluster.overlaps() == []


def test_a_leader_cut_off_past_its_session_is_gone_before_a_new_scheduler_starts(
    cluster: Cluster, ensemble: Ensemble
) -> None:
    ports = [ensemble.client_port(i) for i in range(ensemble.size)]
    proxies = {node: [Proxy(("127.0.0.1", port)) for port in ports] for node in NODES}
    try:
        for node in NODES:
            hosts = ",".join(p.address for p in proxies[node])
            cluster.metastore_url = f"zookeeper://{hosts}/sentinel-ensemble/{cluster.root.name}"
            cluster.start(node)
        first = cluster.wait_for_one_scheduler(timeout=60)
        wait_until(cluster.probe_lines, 20, "the scheduler to run")
        for proxy in proxies[first]:
            proxy.sever()
        second = cluster.wait_for_one_scheduler(timeout=60, not_on=first)
        starts = wait_until(
            lambda: [x.at for x in cluster.probe_lines() if x.what == "start" and x.node == second],
            20,
            "the new scheduler to run",
        )
        # The cut-off leader stopped its scheduler itself (a graceful "stop" line), before
        # the new one started; the overlap detector saw nothing.
        lines = cluster.probe_lines()
        new_start = min(starts)
        old_stop = max(line.at for line in lines if line.what == "stop" and line.node == first)
        assert old_stop < new_start
        for proxy in proxies[first]:
            proxy.heal()
        wait_until(
            lambda: cluster.nodes()[first].role == "standby", 60, f"{first} to rejoin as a standby"
        )
        assert cluster.running_on() == [second]
        assert cluster.overlaps() == []
    finally:
        for node_proxies in proxies.values():
            for proxy in node_proxies:
                proxy.close()
