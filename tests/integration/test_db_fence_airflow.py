"""The fence in Airflow's database, with real Airflow schedulers under real controllers:
Airflow 3 on PostgreSQL and Airflow 2.10 on MariaDB.

A. A whole node frozen (controller, guard, scheduler and children in one freezer cgroup)
   past its lease: the other node raises the fence and runs; thawed, the old scheduler's
   writes are rejected, it dies, and no task instance runs twice.
B. A transaction of the old epoch that passed the check delays the new scheduler until it
   commits; one that never ends is ended after db_fence_wait.
C. A fence with a trigger missing: no scheduler starts until `airflow-sentinel fence install`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa

from airflow_sentinel.airflow_env import ensure_airflow_venv
from airflow_sentinel.fence import REJECTION
from airflow_sentinel.metastore.base import EventRecord
from airflow_sentinel.soak.probe import boottime, process_start
from tests.support.cluster import Cluster, running_cluster, wait_until
from tests.support.fence_db import scheduler_engine
from tests.support.fenced_airflow import (
    EXTRAS,
    NodeGroup,
    SchedulerJob,
    Site,
    airflow_site,
    attributed_to,
    fence_epoch,
    scheduler_jobs,
    scheduler_log,
    start_node,
)
from tests.support.real_airflow import guarded_schedulers

pytestmark = [pytest.mark.slow, pytest.mark.airflow]
CASES = [("3.3.2", "postgresql"), ("2.10.5", "mariadb")]
SETTINGS = {
    "lease_ttl": "6",
    "renew_interval": "1",
    "stop_timeout": "2",
    "start_timeout": "180",
    "health_check": "heartbeat",
    "heartbeat_grace": "60",
    "max_restarts": "5",
    "cooldown": "600",
    "db_fence": "on",
    "db_fence_wait": "4",
}
# Generous: two cores, a real Airflow 3 api-server, dag-processor and schedulers.
SLOW = 240.0


@dataclass
class World:
    site: Site
    cluster: Cluster
    groups: dict[str, NodeGroup]
    db: sa.Engine
    every_group: list[NodeGroup] = field(default_factory=list)

    def group(self, node: str) -> NodeGroup:
        """A fresh group for ``node`` (a node started again gets a new one)."""
        self.groups[node] = NodeGroup(node)
        self.every_group.append(self.groups[node])
        return self.groups[node]

    def start(self, node: str, **settings: str) -> None:
        start_node(self.cluster, node, self.site, self.group(node), **settings)

    def events(self, kind: str, node: str, after: int = 0, naming: str = "") -> list[Timed]:
        now = time.time()
        return [
            Timed(e, now - e.age_s)
            for e in self.cluster.store.events(1000)
            if e.kind == kind and e.node_id == node and e.id > after and naming in e.detail
        ]

    def last_event_id(self) -> int:
        return max((e.id for e in self.cluster.store.events(1000)), default=0)

    def beating_job(self, newer_than: int = 0) -> SchedulerJob | None:
        jobs = [j for j in scheduler_jobs(self.db) if j.id > newer_than and j.beat]
        return jobs[-1] if jobs else None


@dataclass(frozen=True)
class Timed:
    event: EventRecord
    wall: float


@pytest.fixture(params=CASES, ids=[f"{v}-{b}" for v, b in CASES])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    version, backend = request.param
    venv = ensure_airflow_venv(version, extras=EXTRAS)
    with (
        airflow_site(tmp_path, version, venv, backend) as site,
        running_cluster(tmp_path, site.url) as cluster,
    ):
        # The metastore is Airflow's own database, in tables of our own.
        cluster.extra_env = site.airflow_env()
        cluster.settings.update(SETTINGS)
        world = World(site, cluster, {}, site.engine())
        try:
            yield world
        finally:
            # Before the cluster's own teardown: a frozen controller cannot be killed.
            for group in world.every_group:
                group.remove()
            world.db.dispose()


def start_active(world: World, **settings: str) -> tuple[psutil.Process, SchedulerJob]:
    """Node a active, its scheduler running and heartbeating."""
    world.start("a", **settings)
    wait_until(lambda: world.cluster.active() == "a", 90, "a to become active", 0.2)
    [scheduler] = wait_until(world.groups["a"].schedulers, SLOW, "a's scheduler", 0.2)
    job = wait_until(world.beating_job, SLOW, "a's scheduler heartbeat", 0.5)
    assert fence_epoch(world.db) == world.cluster.epoch()
    return scheduler, job


def start_standby(world: World, node: str, **settings: str) -> None:
    world.start(node, **settings)
    wait_until(
        lambda: getattr(world.cluster.nodes().get(node), "role", None) == "standby",
        90,
        f"{node} to register as standby",
        0.2,
    )


def rejections(log: Path, offset: int = 0) -> int:
    """How often the rejection's words appear after ``offset`` (a traceback shows one
    rejected statement twice: the driver's error and SQLAlchemy's around it)."""
    return log_text(log, offset).count(REJECTION)


def rejected_statements(log: Path, offset: int = 0) -> int:
    """The rejected statements: SQLAlchemy's errors that carry the rejection."""
    return len(re.findall(rf"^sqlalchemy\.exc\.\w+: .*{REJECTION}", log_text(log, offset), re.M))


def log_text(log: Path, offset: int) -> str:
    if not log.exists():
        return ""
    with log.open("rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace")


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def twice(world: World) -> dict[tuple[str, ...], int]:
    return {key: n for key, n in world.site.executions().items() if n > 1}


def heartbeat_of(world: World, job_id: int) -> object:
    return next(j.latest_heartbeat for j in scheduler_jobs(world.db) if j.id == job_id)


def thaw_node_a(
    world: World,
    thaw: str,
    old: psutil.Process,
    log_a: Path,
    offset: int,
    job_a: int,
    beat_before: object,
) -> float:
    """Thaw node a; scheduler first: its scheduler tree thaws alone, in a cgroup of its
    own, until it has had writes rejected (seconds it ran alone)."""
    if thaw != "scheduler-first":
        world.groups["a"].thaw()
        return 0.0
    frozen_rest = world.groups["a"]
    world.group("a-early").adopt(frozen_rest.scheduler_trees())
    started_early = time.monotonic()
    wait_until(lambda: rejections(log_a, offset) >= 1, 90, "a rejected write of a", 0.1)
    # A while of it: the scheduler goes on trying (or gives up and exits).
    wait_until(
        lambda: rejections(log_a, offset) >= 3 or not alive(old), 60, "more rejected writes", 0.1
    )
    early = time.monotonic() - started_early
    assert heartbeat_of(world, job_a) == beat_before, "a's job heartbeat advanced"
    frozen_rest.thaw()
    return early


# -- A ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("thaw", ["at-once", "scheduler-first"])
def test_a_whole_frozen_node_is_fenced_out_of_airflows_database(world: World, thaw: str) -> None:
    """Thawed at once, the guard (past its fence) kills the scheduler within moments, most
    often before it writes anything. Thawed scheduler first (its guard thaws only later, as
    a guard starved of CPU would), the scheduler goes on writing: every write is rejected."""
    cluster, db = world.cluster, world.db
    old, job_a = start_active(world)
    epoch_a = cluster.epoch()
    start_standby(world, "b")
    # Busy: tasks are running and being scheduled when the node freezes.
    wait_until(lambda: len(world.site.executions()) >= 6, SLOW, "tasks run under a", 0.5)
    mark = world.last_event_id()

    world.groups["a"].freeze()
    wait_until(lambda: cluster.active() == "b", 90, "b to take over", 0.2)
    epoch_b = cluster.epoch()
    assert epoch_b > epoch_a
    wait_until(
        lambda: world.events("db_fence_raised", "b", mark, f"fence at epoch {epoch_b}"),
        90,
        "b to raise the fence",
        0.2,
    )
    assert fence_epoch(db) == epoch_b
    job_b = wait_until(lambda: world.beating_job(job_a.id), SLOW, "b's scheduler heartbeat", 0.5)
    [new] = world.groups["b"].schedulers()
    assert world.groups["a"].state() in ("FROZEN", "?")
    # What a's scheduler may never add to once thawed.
    before = attributed_to(db, job_a.id)
    beat_before = heartbeat_of(world, job_a.id)
    log_a = scheduler_log(cluster, "a")
    offset = log_a.stat().st_size if log_a.exists() else 0
    executed = len(world.site.executions())

    early = thaw_node_a(world, thaw, old, log_a, offset, job_a.id, beat_before)
    thawed = time.monotonic()
    wait_until(lambda: not alive(old), 60, "a's scheduler to die", 0.01)
    died_after = time.monotonic() - thawed
    wait_until(
        lambda: cluster.nodes()["a"].role == "standby", 90, "a to stand by after the thaw", 0.2
    )
    # b goes on running tasks.
    wait_until(lambda: len(world.site.executions()) > executed, SLOW, "tasks run under b", 0.5)

    seen = rejections(log_a, offset)
    statements = rejected_statements(log_a, offset)
    after = attributed_to(db, job_a.id)
    print(
        f"\n{world.site.version}/{world.site.backend}: a's scheduler died "
        f"{died_after:.2f}s after the thaw of its guard ({thaw}, thawed alone for "
        f"{early:.1f}s); {seen} rejection(s) in its log "
        f"({statements} statement(s)); "
        f"{len(world.site.executions())} task runs; epochs {epoch_a} -> {epoch_b}; "
        f"jobs {job_a.id} -> {job_b.id}"
    )
    assert died_after < 15
    assert after["dag_run"] <= before["dag_run"], "a created DAG runs after the raise"
    assert after["task_instance"] <= before["task_instance"], "a queued tasks after the raise"
    assert heartbeat_of(world, job_a.id) == beat_before, "a's job heartbeat advanced"
    assert twice(world) == {}
    assert world.groups["a"].schedulers() == [] and world.groups["a"].scheduler_trees() == []
    if thaw == "scheduler-first":
        wait_until(lambda: not world.groups["a-early"].pids(), 30, "a's scheduler tree gone")
    assert [p.pid for p in guarded_schedulers(world.site.home)] == [new.pid]
    assert new.is_running()


# -- B ---------------------------------------------------------------------------------------
MARKERS = ("2001-02-03 04:05:06", "2002-03-04 05:06:07")


def finished_run(world: World) -> int | None:
    with world.db.connect() as conn:
        row = conn.execute(
            sa.text("SELECT min(id) FROM dag_run WHERE state = 'success'")
        ).scalar_one()
    return None if row is None else int(row)


def updated_at(world: World, run_id: int) -> str:
    with world.db.connect() as conn:
        value = conn.execute(
            sa.text("SELECT updated_at FROM dag_run WHERE id = :i"), {"i": run_id}
        ).scalar_one()
    return str(value)


def hold_write(world: World, epoch: int, run_id: int, marker: str) -> sa.Connection:
    """A transaction on a connection carrying ``epoch`` that wrote a DAG run (the check
    passed) and stays open."""
    conn = scheduler_engine(world.site.url, epoch).connect()
    conn.begin()
    conn.execute(
        sa.text("UPDATE dag_run SET updated_at = :m WHERE id = :i"), {"m": marker, "i": run_id}
    )
    return conn


def waited_ms(timed: Timed) -> float:
    found = re.search(r"in (\d+) ms", timed.event.detail)
    assert found, timed.event.detail
    return float(found.group(1))


def test_an_open_transaction_of_the_old_epoch_delays_the_next_scheduler(world: World) -> None:
    cluster = world.cluster
    wait = 6.0
    _old, job_a = start_active(world, db_fence_wait=f"{wait:g}")
    start_standby(world, "b", db_fence_wait=f"{wait:g}")
    run_id = wait_until(lambda: finished_run(world), SLOW, "a finished DAG run", 0.5)
    epoch_a = cluster.epoch()

    # 1. Committed in time: b's scheduler starts only after the commit.
    held = hold_write(world, epoch_a, run_id, MARKERS[0])
    mark = world.last_event_id()
    world.groups["a"].kill_all()  # kill -9: controller, guard, scheduler, workers
    wait_until(lambda: cluster.active() == "b", 90, "b to take over", 0.2)
    [waiting] = wait_until(
        lambda: world.events("db_fence_waiting", "b", mark), 30, "b's raise to wait", 0.05
    )
    held_until = time.monotonic() + 1.0  # keep it open a while longer, watching b
    while time.monotonic() < held_until:
        assert world.groups["b"].schedulers() == []
        time.sleep(0.05)
    assert world.events("scheduler_started", "b", mark) == []
    held.commit()
    committed = time.time()
    committed_boot = boottime()  # psutil's create_time is off by up to 1 s (btime is whole)
    held.close()
    [new] = wait_until(world.groups["b"].schedulers, 60, "b's scheduler", 0.05)
    [raised] = world.events("db_fence_raised", "b", mark)
    [started] = world.events("scheduler_started", "b", mark)
    assert process_start(new.pid) >= committed_boot - 0.05
    assert started.wall >= committed - 1.0  # the event's age has a resolution of its own
    assert "ended" not in raised.event.detail
    assert updated_at(world, run_id).startswith(MARKERS[0])
    first_wait = committed - waiting.wall
    print(
        f"\n{world.site.version}/{world.site.backend}: b's raise waited (last attempt "
        f"{waited_ms(raised):.0f} ms), commit {first_wait:.2f}s after the waiting event; "
        f"scheduler started {process_start(new.pid) - committed_boot:.2f}s after the commit"
    )
    job_b = wait_until(lambda: world.beating_job(job_a.id), SLOW, "b's scheduler heartbeat", 0.5)

    # 2. Never committed: ended after db_fence_wait, its write rolled back.
    a_stuck_transaction_is_ended(world, run_id, job_b, wait)


def a_stuck_transaction_is_ended(
    world: World, run_id: int, job_b: SchedulerJob, wait: float
) -> None:
    cluster = world.cluster
    epoch_b = cluster.epoch()
    stuck = hold_write(world, epoch_b, run_id, MARKERS[1])
    start_standby(world, "a", db_fence_wait=f"{wait:g}")
    mark = world.last_event_id()
    world.groups["b"].kill_all()
    wait_until(lambda: cluster.active() == "a", 90, "a to take over", 0.2)
    wait_until(lambda: world.events("db_fence_waiting", "a", mark), 30, "a's raise to wait", 0.05)
    assert world.groups["a"].schedulers() == []
    [ended] = wait_until(
        lambda: world.events("db_fence_raised", "a", mark, "ended"), 60, "a to end it", 0.1
    )
    [newest] = wait_until(world.groups["a"].schedulers, 60, "a's new scheduler", 0.05)
    held_for = re.search(r"held the fence for ([\d.]+)s", ended.event.detail)
    assert held_for, ended.event.detail
    print(
        f"{world.site.version}/{world.site.backend}: a ended the stuck connection: "
        f"{ended.event.detail!r}; its scheduler is pid {newest.pid}"
    )
    assert float(held_for.group(1)) >= wait - 1.5
    with pytest.raises(sa.exc.DBAPIError):
        stuck.commit()
    with suppress(sa.exc.DBAPIError):
        stuck.close()
    assert updated_at(world, run_id).startswith(MARKERS[0])
    wait_until(lambda: world.beating_job(job_b.id), SLOW, "a's new scheduler heartbeat", 0.5)
    assert len(guarded_schedulers(world.site.home)) == 1


# -- C ---------------------------------------------------------------------------------------
def drop_one_trigger(world: World) -> None:
    with world.db.begin() as conn:
        if world.site.backend == "postgresql":
            conn.exec_driver_sql("DROP TRIGGER sentinel_fence_job ON job")
        else:
            conn.exec_driver_sql("DROP TRIGGER sentinel_fence_job_upd")


def test_no_scheduler_starts_while_the_fence_is_not_whole(world: World) -> None:
    cluster = world.cluster
    old, _job = start_active(world, max_restarts="1000")
    drop_one_trigger(world)
    mark = world.last_event_id()
    old.kill()  # the controller starts it again: behind the check of the fence
    [refused, *_] = wait_until(
        lambda: world.events("scheduler_refused", "a", mark), 60, "the refusal", 0.1
    )
    assert "not whole" in refused.event.detail and "job" in refused.event.detail
    assert "airflow-sentinel fence install" in refused.event.detail
    assert world.groups["a"].schedulers() == []
    assert world.events("scheduler_started", "a", mark) == []
    assert cluster.cli("fence", "status").returncode == 1

    installing = boottime()  # the controller may start it before the command exits
    done = cluster.cli("fence", "install")
    assert done.returncode == 0, done.stdout + done.stderr
    [new] = wait_until(world.groups["a"].schedulers, 90, "a scheduler again", 0.1)
    assert process_start(new.pid) >= installing
    assert cluster.cli("fence", "status").returncode == 0
    assert cluster.active() == "a"
