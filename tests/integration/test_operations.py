"""Operator-facing behaviour with real controllers: strays, pause, node identity."""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.cluster import Cluster, running_cluster, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("backend", ["sqlite"])]


@pytest.fixture
def cluster(tmp_path: Path, metastore_url: str) -> Iterator[Cluster]:
    with running_cluster(tmp_path, metastore_url) as c:
        yield c


def start_two(cluster: Cluster) -> tuple[str, str]:
    cluster.start("a")
    cluster.start("b")
    active = cluster.wait_for_one_scheduler()
    wait_until(lambda: {"a", "b"} <= set(cluster.nodes()), 20, "both nodes registered")
    return active, ("b" if active == "a" else "a")


def test_a_scheduler_started_by_hand_is_killed_as_a_stray(cluster: Cluster) -> None:
    start_two(cluster)
    stray = subprocess.Popen(
        shlex.split(cluster.scheduler_command("--stray")),
        env=cluster.env("by-hand"),  # no AIRFLOW_SENTINEL_NODE_ID: nobody's scheduler
        start_new_session=True,
    )
    assert stray.wait(timeout=20) == -15  # SIGTERM from a controller
    wait_until(
        lambda: [e for e in cluster.store.events(100) if e.kind == "stray_killed"],
        20,
        "a stray_killed event",
    )
    assert len(cluster.running_on()) == 1
    assert cluster.overlaps() == []


def test_report_mode_leaves_a_stray_running_and_says_so(cluster: Cluster) -> None:
    cluster.settings["stray_action"] = "report"
    start_two(cluster)
    stray = subprocess.Popen(
        shlex.split(cluster.scheduler_command("--stray")),
        env=cluster.env("by-hand"),
        start_new_session=True,
    )
    try:
        event = wait_until(
            lambda: [e for e in cluster.store.events(100) if e.kind == "stray_found"],
            20,
            "a stray_found event",
        )
        assert f"pid {stray.pid}" in event[0].detail
        assert stray.poll() is None
    finally:
        stray.kill()
        stray.wait()


def test_pause_keeps_roles_and_restarts_nothing_until_resume(cluster: Cluster) -> None:
    active, _ = start_two(cluster)
    assert cluster.cli("pause").returncode == 0
    wait_until(lambda: cluster.cli("status", "--json").stdout.count('"paused": true'), 20, "paused")
    [scheduler] = cluster.schedulers()
    scheduler.kill()
    # The controller has seen the exit and decided: its registry row says nothing runs.
    wait_until(lambda: not cluster.nodes()[active].scheduler_running, 20, "the exit to be recorded")
    assert cluster.running_on() == []
    assert cluster.nodes()[active].role == "active"
    assert cluster.cli("resume").returncode == 0
    assert cluster.wait_for_one_scheduler(on=active) == active
    assert cluster.overlaps() == []


def test_a_second_controller_with_the_same_node_id_is_refused(cluster: Cluster) -> None:
    cluster.start("a")
    wait_until(lambda: "a" in cluster.nodes(), 20, "a registered")
    twin = subprocess.run(
        [sys.executable, "-m", "airflow_sentinel", "start", "--node-id", "a"],
        env=cluster.env("a"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert twin.returncode == 2
    assert "another controller on this host already runs it" in twin.stderr
    assert "Traceback" not in twin.stderr


def test_start_against_an_unreachable_metastore_is_one_line_and_exit_1(cluster: Cluster) -> None:
    """Exit 1, not 2: systemd restarts it (RestartPreventExitStatus=2), as a metastore
    that is down at boot comes back."""
    env = cluster.env("a")
    env["AIRFLOW__SENTINEL__METASTORE"] = "postgresql://sentinel:s3cretpw@127.0.0.1:1/airflow"
    done = subprocess.run(
        [sys.executable, "-m", "airflow_sentinel", "start", "--node-id", "a"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert "127.0.0.1" in done.stderr
    assert "s3cretpw" not in done.stderr
    assert not [
        p
        for p in psutil.process_iter(["cmdline"])
        if "s3cretpw" in " ".join(p.info["cmdline"] or [])
    ]
