"""Two hosts, one node_id: a cloned VM that kept its host name.

Each controller runs in a UTS namespace of its own whose host name is "clone" (so the
default node_id is the same) with its own AIRFLOW_HOME, as two machines would, against one
metastore. The stand-in scheduler's shared flock detects any overlap exactly.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.cluster import Cluster, running_cluster, wait_until

pytestmark = pytest.mark.slow
CLONE = "clone"


@pytest.fixture
def cluster(tmp_path: Path, metastore_url: str) -> Iterator[Cluster]:
    with running_cluster(tmp_path, metastore_url) as c:
        yield c


def start_clone(cluster: Cluster, machine: str) -> subprocess.Popen[bytes]:
    """`airflow-sentinel start` without --node-id on a "machine" whose host name is clone."""
    env = cluster.env(CLONE)
    home = cluster.root / machine
    home.mkdir(exist_ok=True)
    env["AIRFLOW_HOME"] = str(home)
    command = ["unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', CLONE]
    with (cluster.root / f"{machine}.log").open("ab") as log:
        process = subprocess.Popen(
            [*command, sys.executable, "-m", "airflow_sentinel", "start"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    cluster.processes[machine] = process
    return process


def log_of(cluster: Cluster, machine: str) -> str:
    return (cluster.root / f"{machine}.log").read_text(errors="replace")


def renewals_pass_with_one_scheduler(cluster: Cluster, count: int) -> None:
    """Wait for ``count`` renewals of the lease, checking one scheduler all along."""
    lease = cluster.lease()
    assert lease is not None
    target = lease.version + count

    def renewed() -> bool:
        assert len(cluster.schedulers()) == 1
        now = cluster.lease()
        return now is not None and now.version >= target

    wait_until(renewed, 30, f"{count} renewals")


def kinds(cluster: Cluster) -> list[str]:
    return [e.kind for e in cluster.store.events(1000)]


def test_two_clones_started_together_run_one_scheduler_and_one_is_refused(
    cluster: Cluster,
) -> None:
    first, second = start_clone(cluster, "host-1"), start_clone(cluster, "host-2")
    refused = wait_until(
        lambda: next((p for p in (first, second) if p.poll() is not None), None),
        60,
        "one clone to be refused",
    )
    assert refused.returncode == 2
    machine = "host-1" if refused is first else "host-2"
    assert "is in use by a live controller" in log_of(cluster, machine)
    assert "Traceback" not in log_of(cluster, machine)
    survivor = second if refused is first else first
    cluster.wait_for_one_scheduler(timeout=30)
    renewals_pass_with_one_scheduler(cluster, 4)
    assert survivor.poll() is None
    assert "instance_conflict" in kinds(cluster)
    assert kinds(cluster).count("scheduler_started") == 1
    assert cluster.overlaps() == []


def test_a_controller_restarted_right_after_kill_9_is_not_taken_for_a_clone(
    cluster: Cluster,
) -> None:
    first = start_clone(cluster, "host-1")
    cluster.wait_for_one_scheduler(timeout=30)
    epoch = cluster.epoch()
    first.kill()  # as the OOM killer would; systemd starts it again at once
    first.wait()
    again = start_clone(cluster, "host-1")
    cluster.wait_for_one_scheduler(timeout=30)
    wait_until(lambda: cluster.epoch() > epoch, 30, "the lease taken back")
    assert again.poll() is None, log_of(cluster, "host-1")
    assert "instance_conflict" not in kinds(cluster)
    assert cluster.overlaps() == []


def test_a_clone_that_resumes_after_another_took_its_name_never_leads_again(
    cluster: Cluster,
) -> None:
    ttl = float(cluster.settings["lease_ttl"])
    frozen = start_clone(cluster, "host-1")
    cluster.wait_for_one_scheduler(timeout=30)
    first_scheduler = cluster.schedulers()[0]
    frozen.send_signal(signal.SIGSTOP)
    # Its guard fences the scheduler at the lease deadline; then its report goes stale.
    psutil.wait_procs([first_scheduler], timeout=3 * ttl)
    wait_until(lambda: cluster.nodes()[CLONE].last_heartbeat_age_s > ttl, 3 * ttl, "a stale report")
    start_clone(cluster, "host-2")
    cluster.wait_for_one_scheduler(timeout=6 * ttl)
    frozen.send_signal(signal.SIGCONT)
    wait_until(lambda: "instance_conflict" in log_of(cluster, "host-1"), 30, "the conflict")
    status = json.loads(cluster.cli("status", "--json").stdout)
    assert CLONE in status["conflicts"]
    renewals_pass_with_one_scheduler(cluster, 4)
    assert "scheduler_started" not in log_of(cluster, "host-1").split("instance_conflict")[-1]
    assert frozen.poll() is None  # it keeps running, and keeps out of the way
    assert cluster.overlaps() == []
