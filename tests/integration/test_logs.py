"""The logs of real controllers: JSON lines with stable keys, the takeover after a silence,
the scheduler's pid, the periodic status line, and the scheduler's own output in a file of
its own."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_sentinel.logging_setup import JSON_KEYS
from tests.support.backends import fresh_metastore_url
from tests.support.cluster import Cluster, running_cluster, wait_until

MARKER = "output-of-the-scheduler-itself"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with fresh_metastore_url("sqlite", tmp_path) as url, running_cluster(tmp_path, url) as c:
        c.settings |= {"log_format": "json", "status_log_interval": "1"}
        yield c


def talking_scheduler(cluster: Cluster) -> str:
    """The stand-in, after a line on its standard output as a real scheduler writes many
    (split by quotes, so that the command line itself, which is logged, does not hold it)."""
    head, tail = MARKER[:10], MARKER[10:]
    script = f"echo {head}''{tail}; exec {cluster.scheduler_command()}"
    return f"sh -c {shlex.quote(script)}"


def lines(cluster: Cluster, node: str) -> list[dict[str, Any]]:
    text = (cluster.root / f"{node}.log").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def find(cluster: Cluster, node: str, needle: str) -> dict[str, Any] | None:
    return next((ln for ln in lines(cluster, node) if needle in (ln["detail"] or "")), None)


def test_json_lines_the_takeover_the_pid_and_the_status_of_both_roles(cluster: Cluster) -> None:
    command = talking_scheduler(cluster)
    cluster.start("a", command)
    cluster.wait_for_one_scheduler(on="a")
    cluster.start("b", command)
    [pid] = [p.pid for p in cluster.schedulers()]
    healthy = f"status: active with epoch 1, healthy scheduler pid {pid}, lease "
    wait_until(lambda: find(cluster, "a", healthy), 30, "a's status line")
    assert find(cluster, "a", f"scheduler runs as pid {pid} (guard pid ")
    standby = wait_until(lambda: find(cluster, "b", "status: standby"), 30, "b's status line")
    assert standby["detail"] == "status: standby behind a (epoch 1)"

    cluster.kill_node("a")  # a silent death: b takes over after a TTL
    cluster.wait_for_one_scheduler(on="b", timeout=30)
    took = wait_until(lambda: find(cluster, "b", "took the scheduler lease"), 10, "the takeover")
    assert took["event"] == "became_active" and took["level"] == "WARNING"
    assert took["detail"].startswith("took the scheduler lease from a (its epoch 1) after ")
    assert took["detail"].endswith("s of silence, epoch 2") and took["epoch"] == 2

    for node in ("a", "b"):
        for line in lines(cluster, node):  # every line is JSON with the same keys
            assert tuple(line)[: len(JSON_KEYS)] == JSON_KEYS, line
            assert line["node"] == node and line["instance"].split(" pid ")[1].isdigit()
        assert MARKER not in (cluster.root / f"{node}.log").read_text()
    output = (cluster.root / "home" / "logs" / "sentinel-scheduler.log").read_text()
    assert output.count(MARKER) == 2  # one line per run: a's, then b's


def test_scheduler_log_dash_keeps_the_output_on_standard_error(cluster: Cluster) -> None:
    cluster.settings |= {"log_format": "text", "scheduler_log": "-"}
    cluster.start("a", talking_scheduler(cluster))
    cluster.wait_for_one_scheduler(on="a")
    log = cluster.root / "a.log"
    wait_until(lambda: MARKER in log.read_text(), 30, "the scheduler's line in a's log")
    assert not (cluster.root / "home" / "logs" / "sentinel-scheduler.log").exists()


def test_a_scheduler_log_that_cannot_be_opened_is_one_line_and_exit_2(cluster: Cluster) -> None:
    blocker = cluster.root / "not-a-folder"
    blocker.write_text("")
    cluster.settings |= {"scheduler_log": str(blocker / "scheduler.log")}
    process = cluster.start("a")
    assert process.wait(timeout=60) == 2
    text = (cluster.root / "a.log").read_text()
    assert f"scheduler_log: cannot open {blocker / 'scheduler.log'} for appending" in text
    assert "Traceback" not in text
