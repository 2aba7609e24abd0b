"""Three real controllers on one machine, a stand-in scheduler, real faults.

"Never two at once" is checked exactly: every stand-in scheduler takes an exclusive flock
on one shared file, and its forked child keeps the descriptor, so a scheduler (or an
orphaned child of one) that is still alive when another starts produces an OVERLAP line.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa

from tests.support.cluster import Cluster, running_cluster, wait_until
from tests.support.proxy import Proxy

pytestmark = pytest.mark.slow
NODES = ("a", "b", "c")


@pytest.fixture
def cluster(tmp_path: Path, metastore_url: str) -> Iterator[Cluster]:
    with running_cluster(tmp_path, metastore_url) as c:
        yield c


def start_three(cluster: Cluster) -> str:
    for node in NODES:
        cluster.start(node)
    # Every controller is up (registered), not only the first: a stop sent to one still
    # importing Python would end it by the signal's default action.
    wait_until(lambda: set(cluster.nodes()) == set(NODES), 30, "all three controllers")
    active = cluster.wait_for_one_scheduler()
    assert cluster.active() == active
    wait_until(lambda: len(cluster.all_probe_processes()) == 2, 10, "the scheduler's child")
    return active


def assert_no_overlap(cluster: Cluster) -> None:
    assert cluster.overlaps() == [], cluster.probe_lines()


def takeover_of(cluster: Cluster, node: str) -> str:
    """How ``node`` says it took the lease (the became_active event's detail)."""
    found = [
        e.detail
        for e in cluster.store.events(200)
        if (e.node_id, e.kind) == (node, "became_active")
    ]
    assert found, f"{node} never became active"
    return found[0]


def test_kill_9_of_the_active_controller_leaves_nothing_behind_and_fails_over_at_once(
    cluster: Cluster,
) -> None:
    # A lease far longer than the test waits: only the lease given back lets b in.
    cluster.settings |= {"lease_ttl": "60", "renew_interval": "2"}
    first = start_three(cluster)
    old_probes = cluster.all_probe_processes()  # the scheduler and its child
    os.kill(cluster.pid_of(first), signal.SIGKILL)
    # Its guard sees the controller's pipe close and kills the scheduler and the child,
    # then gives the lease back: a standby takes it without waiting out the TTL.
    _gone, alive = psutil.wait_procs(old_probes, timeout=10)
    assert alive == []
    second = cluster.wait_for_one_scheduler(timeout=30, not_on=first)
    assert cluster.epoch() == 2
    assert "(it was free)" in takeover_of(cluster, second)
    assert_no_overlap(cluster)


def test_a_node_that_dies_whole_leaves_its_lease_to_expire(cluster: Cluster) -> None:
    first = start_three(cluster)
    controller = psutil.Process(cluster.pid_of(first))
    everything = [controller, *controller.children(recursive=True)]
    for proc in everything:  # controller, guard and scheduler in one instant: a dead host
        proc.kill()
    second = cluster.wait_for_one_scheduler(timeout=30, not_on=first)
    assert "of silence" in takeover_of(cluster, second)
    assert_no_overlap(cluster)


def test_a_frozen_active_controller_is_fenced_before_another_node_takes_over(
    cluster: Cluster,
) -> None:
    first = start_three(cluster)
    os.kill(cluster.pid_of(first), signal.SIGSTOP)
    second = cluster.wait_for_one_scheduler(timeout=30, not_on=first)
    os.kill(cluster.pid_of(first), signal.SIGCONT)
    # Thawed, the old active finds its lease gone and stays a standby.
    wait_until(
        lambda: cluster.nodes()[first].role == "standby",
        timeout=20,
        what=f"{first} to report itself standby after SIGCONT",
    )
    assert cluster.running_on() == [second]
    assert_no_overlap(cluster)
    kinds = [e.kind for e in cluster.store.events(200) if e.node_id == first]
    assert "scheduler_fenced" in kinds or "demoted" in kinds
    # A frozen controller's guard never gives the lease back: it was waited out.
    assert "of silence" in takeover_of(cluster, second)


def test_a_killed_scheduler_is_restarted_on_the_same_node(cluster: Cluster) -> None:
    first = start_three(cluster)
    [scheduler] = cluster.schedulers()
    epoch = cluster.epoch()
    scheduler.kill()

    def restarted() -> bool:
        return [p.pid for p in cluster.schedulers()] not in ([], [scheduler.pid])

    wait_until(restarted, timeout=20, what="a new scheduler process")
    assert cluster.wait_for_one_scheduler(on=first) == first
    assert cluster.epoch() == epoch  # same holder, no failover needed
    assert_no_overlap(cluster)


def test_sigterm_stops_the_scheduler_and_releases_the_lease(cluster: Cluster) -> None:
    first = start_three(cluster)
    process = cluster.processes[first]
    process.terminate()
    assert process.wait(timeout=30) == 0
    cluster.wait_for_one_scheduler(timeout=30, not_on=first)
    events = [(e.node_id, e.kind, e.detail) for e in cluster.store.events(200)]
    assert (first, "controller_stopped", "lease released") in events
    assert cluster.nodes()[first].role == "stopped"
    assert_no_overlap(cluster)


def test_switchover_to_a_named_node(cluster: Cluster) -> None:
    first = start_three(cluster)
    target = next(n for n in NODES if n != first)
    wait_until(
        lambda: all(cluster.nodes().get(n) for n in NODES), timeout=20, what="all nodes registered"
    )
    done = cluster.cli("switchover", "--to", target, "--timeout", "60")
    assert done.returncode == 0, done.stderr
    assert cluster.wait_for_one_scheduler(on=target) == target
    assert cluster.active() == target
    assert_no_overlap(cluster)


def test_a_node_whose_scheduler_will_not_start_steps_down(cluster: Cluster) -> None:
    cluster.start("a", command=cluster.scheduler_command("--fail"))
    wait_until(lambda: cluster.active() == "a", 20, "a to become active")
    cluster.start("b")
    cluster.wait_for_one_scheduler(timeout=40, on="b")
    fails = [line for line in cluster.probe_lines() if line.what == "fail"]
    assert len(fails) == 3  # max_restarts failed starts, then a stepped down
    a = cluster.nodes()["a"]
    assert (a.role, a.fit) == ("standby", False)
    assert_no_overlap(cluster)


def test_all_controllers_stopping_leave_no_scheduler_behind(cluster: Cluster) -> None:
    start_three(cluster)
    cluster.stop_all()
    assert [p.returncode for p in cluster.processes.values()] == [0, 0, 0]
    assert cluster.all_probe_processes() == []
    assert_no_overlap(cluster)


def test_kill_9_of_the_guard_takes_the_scheduler_and_its_children_with_it(
    cluster: Cluster,
) -> None:
    first = start_three(cluster)
    old = cluster.all_probe_processes()
    [guard] = [
        p
        for p in psutil.Process(cluster.pid_of(first)).children()
        if "airflow_sentinel.process.guard" in " ".join(p.cmdline())
    ]
    guard.kill()
    _, alive = psutil.wait_procs(old, timeout=10)
    assert alive == []
    cluster.wait_for_one_scheduler(timeout=20, on=first)
    assert_no_overlap(cluster)


@pytest.mark.parametrize("backend", ["mariadb", "postgresql"])
def test_a_leader_cut_off_from_the_metastore_is_fenced_before_another_takes_over(
    cluster: Cluster,
) -> None:
    url = sa.make_url(cluster.metastore_url)
    upstream = (str(url.host), int(url.port or 0))
    proxies = {node: Proxy(upstream) for node in NODES}
    try:
        for node in NODES:
            host, port = proxies[node].address.split(":")
            cluster.metastore_url = url.set(host=host, port=int(port)).render_as_string(False)
            cluster.start(node)
        first = cluster.wait_for_one_scheduler()
        wait_until(cluster.probe_lines, 20, "the scheduler to run")
        proxies[first].sever()  # its packets vanish; the metastore itself is fine
        cluster.wait_for_one_scheduler(timeout=60, not_on=first)
        proxies[first].heal()
        wait_until(
            lambda: cluster.nodes()[first].role == "standby", 60, f"{first} to rejoin as a standby"
        )
        assert len(cluster.running_on()) == 1
        assert_no_overlap(cluster)
    finally:
        for proxy in proxies.values():
            proxy.close()
