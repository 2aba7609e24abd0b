"""What an operator sees and may do while the cluster is in a special state: an upgrade
hold, a node cooling down, two instances under one node_id, a stale report. The real
command against a real SQLite metastore; the state is written as controllers write it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa

from airflow_sentinel.clock import SystemClock
from airflow_sentinel.metastore import Metastore, open_metastore
from airflow_sentinel.metastore.base import HOLD, UPGRADE_LOCK, Event, NodeReport
from airflow_sentinel.metastore.sql import node_table
from tests.integration.test_cli import Cli, assert_user_error, base_env
from tests.support.instances import live

TTL = 15.0


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'm.db'}"


@pytest.fixture
def cli(tmp_path: Path, url: str) -> Cli:
    return Cli(tmp_path, {**base_env(tmp_path), "AIRFLOW__SENTINEL__METASTORE": url})


@pytest.fixture
def store(url: str) -> Iterator[Metastore]:
    opened = open_metastore(url, SystemClock())
    yield opened
    opened.close()


def report(node_id: str, **changes: object) -> NodeReport:
    base = NodeReport(
        node_id=node_id,
        host=f"{node_id}-host/abcd",
        role="standby",
        scheduler_running=False,
        scheduler_pid=None,
        fit=True,
        version="test",
        epoch=None,
        instance=live(node_id).token,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def hold_upgrade(store: Metastore) -> None:
    store.set_flag(HOLD, "upgrade r-42 on host-a since 2026-12-01T08:00:00Z")
    record = {"run": "r-42", "node": "host-a", "from": "2.10.5", "to": "3.3.2"}
    store.claim_flag(UPGRADE_LOCK, json.dumps(record))


def test_status_shows_the_upgrade_hold(cli: Cli, store: Metastore) -> None:
    hold_upgrade(store)
    payload = json.loads(cli.run("status", "--json").stdout)
    assert payload["hold"]["reason"].startswith("upgrade r-42 on host-a since ")
    assert payload["hold"]["upgrade_lock"]["run"] == "r-42"
    text = cli.run("status", env={"COLUMNS": "200"}).stdout
    assert "HELD" in text and "r-42" in text and "no scheduler starts" in text


def test_clear_metadata_refuses_mid_upgrade_unless_forced(cli: Cli, store: Metastore) -> None:
    hold_upgrade(store)
    refused = cli.run("clear-metadata", "--yes")
    assert_user_error(refused, "held", "r-42", "--force")
    assert HOLD in store.flags() and UPGRADE_LOCK in store.flags()
    forced = cli.run("clear-metadata", "--yes", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "released" in forced.stdout and "r-42" in forced.stdout
    assert store.flags() == {}


def test_status_shows_cooldown_conflict_and_the_last_takeover(cli: Cli, store: Metastore) -> None:
    store.heartbeat(report("a", fit=False, cooldown_left_s=245.0), TTL)
    store.set_flag("conflict:b", "clone-host (clone-host pid 99)")
    store.record_event(
        Event(
            "c",
            "scheduler",
            "became_active",
            "took the scheduler lease from a after 15.2s of silence, epoch 7",
            epoch=7,
        ),
        1000,
    )
    payload = json.loads(cli.run("status", "--json").stdout)
    [node] = payload["nodes"]
    assert node["cooldown_left_s"] == 245.0
    assert payload["conflicts"] == {"b": "clone-host (clone-host pid 99)"}
    assert payload["last_failover"]["node_id"] == "c"
    assert "from a after 15.2s" in payload["last_failover"]["detail"]
    text = cli.run("status", env={"COLUMNS": "200"}).stdout
    assert "cooling down (245s left)" in text
    assert "CONFLICT" in text and "clone-host" in text
    assert "last takeover: c took the scheduler lease from a" in text


def test_is_scheduler_running_ignores_a_report_older_than_the_clusters_ttl(
    cli: Cli, store: Metastore, url: str
) -> None:
    lease = store.try_acquire("scheduler", live("a"), 4.0)  # a fast cluster: TTL 4 s
    assert lease is not None
    store.heartbeat(report("a", role="active", scheduler_running=True, scheduler_pid=7), TTL)
    assert cli.run("is-scheduler-running").returncode == 0
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # the report as it stands 6 s after its controller died
        conn.execute(node_table.update().values(heartbeat_at=time.time() - 6))
    engine.dispose()
    stale = cli.run("is-scheduler-running")
    assert stale.returncode == 1, stale.stdout
    assert "no scheduler is running" in stale.stdout
