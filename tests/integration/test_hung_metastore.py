"""A metastore that hangs instead of refusing: a server stopped with SIGSTOP (its kernel
still acknowledges every packet), or a proxy that keeps its connections open and forwards
nothing. Every metastore call is bounded, so the active controller notices, stops its
scheduler gracefully at its demote deadline (SIGTERM, not the guard's fence), and another
node leads with no overlap. The servers stopped here are private ones, never the machine's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa

from tests.support.cluster import Cluster, running_cluster, wait_until
from tests.support.private_servers import private_server, stopped
from tests.support.proxy import Proxy
from tests.support.zookeeper import Ensemble, free_port_block

pytestmark = pytest.mark.slow
NODES = ("a", "b", "c")
# 3R <= T and 2R + S + M <= T, with room to spare: a store that hangs in the middle of a
# cycle, after a renewal, still leaves a whole graceful stop before the fence.
PROFILE = {"lease_ttl": "6", "renew_interval": "1", "stop_timeout": "1"}
NO_ANSWER = "no answer within 1s"


def start_three(cluster: Cluster, urls: dict[str, str] | None = None) -> str:
    """Three controllers (each through its own URL if given); the active node."""
    direct = cluster.metastore_url
    for node in NODES:
        cluster.metastore_url = urls[node] if urls else direct
        cluster.start(node)
    cluster.metastore_url = direct  # the test's own observations go straight to the store
    wait_until(lambda: set(cluster.nodes()) == set(NODES), 30, "all three controllers")
    active = cluster.wait_for_one_scheduler()
    wait_until(lambda: len(cluster.all_probe_processes()) == 2, 10, "the scheduler's child")
    return active


def log_of(cluster: Cluster, node: str) -> str:
    return (cluster.root / f"{node}.log").read_text(errors="replace")


def wait_for_log(cluster: Cluster, node: str, text: str, timeout: float = 30) -> None:
    wait_until(lambda: text in log_of(cluster, node), timeout, f"{text!r} in {node}'s log")


def stopped_gracefully(cluster: Cluster, node: str, scheduler: psutil.Process) -> None:
    """The node demoted itself and its scheduler ran its SIGTERM handler: the guard's
    fence (a SIGKILL) never had to fire."""
    wait_for_log(cluster, node, "demoted lease could not be renewed in time")
    assert not scheduler.is_running()
    log = log_of(cluster, node)
    assert "scheduler_fenced" not in log, log
    stops = [p for p in cluster.probe_lines() if p.pid == scheduler.pid and p.what == "stop"]
    assert stops, cluster.probe_lines()


def assert_no_overlap(cluster: Cluster) -> None:
    assert cluster.overlaps() == [], cluster.probe_lines()


def events_of(cluster: Cluster, node: str) -> list[str]:
    return [e.kind for e in cluster.store.events(200) if e.node_id == node]


@pytest.fixture
def profile_cluster(tmp_path: Path, metastore_url: str) -> Iterator[Cluster]:
    with running_cluster(tmp_path, metastore_url) as cluster:
        cluster.settings.update(PROFILE)
        yield cluster


@pytest.fixture
def proxies(metastore_url: str) -> Iterator[dict[str, Proxy]]:
    """One proxy per node in front of the shared server (which is never stopped)."""
    url = sa.make_url(metastore_url)
    made = {node: Proxy((str(url.host), int(url.port or 0))) for node in NODES}
    try:
        yield made
    finally:
        for proxy in made.values():
            proxy.close()  # thaws first


def through(metastore_url: str, proxies: dict[str, Proxy]) -> dict[str, str]:
    url = sa.make_url(metastore_url)
    urls = {}
    for node, proxy in proxies.items():
        host, port = proxy.address.split(":")
        urls[node] = url.set(host=host, port=int(port)).render_as_string(False)
    return urls


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_a_stopped_database_server_demotes_the_active_node_gracefully(
    backend: str, tmp_path: Path
) -> None:
    with (
        private_server(backend, tmp_path / "server") as server,
        running_cluster(tmp_path / "cluster", server.url) as cluster,
    ):
        assert server.process is not None
        cluster.settings.update(PROFILE)
        first = start_three(cluster)
        [scheduler] = cluster.schedulers()
        with stopped(server.process.pid):
            wait_for_log(cluster, first, NO_ANSWER)
            stopped_gracefully(cluster, first, scheduler)
            assert cluster.running_on() == []  # nobody can take a lease from a hung store
        cluster.wait_for_one_scheduler(timeout=60)
        # Written while the store hung only to memory, the events reach it now.
        wait_until(lambda: "demoted" in events_of(cluster, first), 30, "the buffered events")
        assert "scheduler_fenced" not in events_of(cluster, first)
        assert_no_overlap(cluster)


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_a_hung_proxy_demotes_the_active_node_gracefully_and_a_standby_takes_over(
    profile_cluster: Cluster, proxies: dict[str, Proxy], metastore_url: str
) -> None:
    cluster = profile_cluster
    first = start_three(cluster, through(metastore_url, proxies))
    epoch = cluster.epoch()
    [scheduler] = cluster.schedulers()
    proxies[first].freeze()  # its connections stay open; nothing comes back
    wait_for_log(cluster, first, NO_ANSWER)
    stopped_gracefully(cluster, first, scheduler)
    second = cluster.wait_for_one_scheduler(timeout=60, not_on=first)  # after the TTL
    assert cluster.epoch() > epoch
    proxies[first].thaw()  # what it sent while frozen lands now, and changes nothing
    wait_until(
        lambda: cluster.nodes()[first].role == "standby", 30, f"{first} to rejoin as a standby"
    )
    assert cluster.running_on() == [second]
    assert "scheduler_fenced" not in events_of(cluster, first)
    assert_no_overlap(cluster)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_sigterm_stops_a_controller_whose_store_hangs(
    profile_cluster: Cluster, proxies: dict[str, Proxy], metastore_url: str
) -> None:
    cluster = profile_cluster
    first = start_three(cluster, through(metastore_url, proxies))
    [scheduler] = cluster.schedulers()
    proxies[first].freeze()
    wait_for_log(cluster, first, "cannot renew")
    cluster.processes[first].terminate()  # while it still holds the lease
    assert cluster.processes[first].wait(timeout=30) == 0
    log = log_of(cluster, first)
    assert "received SIGTERM: stopping" in log, log
    assert "cannot release the lease: metastore" in log and NO_ANSWER in log, log
    assert "heartbeat not recorded" in log, log
    assert [p for p in cluster.probe_lines() if p.pid == scheduler.pid and p.what == "stop"]
    cluster.wait_for_one_scheduler(timeout=60, not_on=first)  # the lease expired: a TTL
    assert_no_overlap(cluster)


def test_a_stopped_zookeeper_server_demotes_the_active_node_gracefully(tmp_path: Path) -> None:
    (tmp_path / "zookeeper").mkdir()
    ensemble = Ensemble(tmp_path / "zookeeper", 1, free_port_block()).start_all()
    try:
        url = f"zookeeper://{ensemble.hosts}/sentinel-hung"
        with running_cluster(tmp_path / "cluster", url) as cluster:
            cluster.settings.update(PROFILE)
            first = start_three(cluster)
            [scheduler] = cluster.schedulers()
            with stopped(ensemble.processes[0].pid):
                wait_for_log(cluster, first, "cannot renew")
                stopped_gracefully(cluster, first, scheduler)
                assert cluster.running_on() == []
            # Each call gave up by itself, within the deadline: the session was kept.
            assert "a call still hangs" not in log_of(cluster, first)
            cluster.wait_for_one_scheduler(timeout=60)
            assert_no_overlap(cluster)
    finally:
        ensemble.close()
