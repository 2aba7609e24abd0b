"""The guard process, for real: it enforces the fence without any help from the controller."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from airflow_sentinel.clock import SystemClock, boottime
from airflow_sentinel.crash_release import MetastoreAccess
from airflow_sentinel.metastore import Metastore, open_metastore
from airflow_sentinel.metastore.base import Lease
from airflow_sentinel.process.guard import RunOwner
from airflow_sentinel.process.handle import EPOCH_ENV, GuardedRun, GuardLauncher, RunEnded
from tests.support.cluster import wait_until
from tests.support.instances import live

# A scheduler stand-in: writes its pid and its child's pid, optionally ignores SIGTERM,
# optionally double-forks a daemon into a new session (like a task that escapes its group).
SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    out, mode = sys.argv[1], sys.argv[2]
    if mode == "deaf":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if mode == "exit3":
        sys.exit(3)
    pids = [os.getpid()]
    child = os.fork()
    if child == 0:
        if mode == "daemon":
            os.setsid()
            if os.fork():
                os._exit(0)
        while True:
            time.sleep(1)
    pids.append(child)
    if mode == "daemon":
        time.sleep(0.3)
    with open(out, "w") as f:
        f.write(" ".join(map(str, pids)))
    while True:
        time.sleep(0.1)
    """
)

pytestmark = pytest.mark.slow


def launch(tmp_path: Path, mode: str, fence_in: float = 30.0, grace: float = 2.0) -> GuardedRun:
    script = tmp_path / "sched.py"
    script.write_text(SCRIPT)
    argv = [sys.executable, str(script), str(tmp_path / "pids"), mode]
    return GuardLauncher().launch(argv, dict(os.environ), boottime() + fence_in, grace)


def started(tmp_path: Path) -> list[psutil.Process]:
    pids_file = tmp_path / "pids"
    wait_until(lambda: pids_file.exists() and pids_file.read_text(), 10, "the stand-in to start")
    return [psutil.Process(int(p)) for p in pids_file.read_text().split()]


def all_dead(procs: list[psutil.Process], timeout: float = 10) -> bool:
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return alive == []


def test_the_fence_falls_at_the_deadline_even_if_nobody_asks(tmp_path: Path) -> None:
    run = launch(tmp_path, "deaf", fence_in=2.0)
    procs = started(tmp_path)
    began = boottime()
    assert run.wait(timeout=10) == RunEnded("fenced")
    assert boottime() - began < 5
    assert all_dead(procs, timeout=1)


def test_extending_the_deadline_keeps_the_scheduler_running(tmp_path: Path) -> None:
    run = launch(tmp_path, "plain", fence_in=1.5)
    procs = started(tmp_path)
    for _ in range(6):
        run.extend(boottime() + 1.5)
        assert run.wait(timeout=0.5) is None
    assert all(p.is_running() for p in procs)
    run.stop(1.0)
    assert run.wait(timeout=10) is not None
    assert all_dead(procs, timeout=1)


def test_stop_gives_sigterm_then_sigkill_after_the_grace(tmp_path: Path) -> None:
    run = launch(tmp_path, "deaf")
    procs = started(tmp_path)
    began = boottime()
    run.stop(1.0)
    ended = run.wait(timeout=10)
    assert ended is not None and ended.outcome == "exited"
    assert ended.code == -signal.SIGKILL
    assert 0.9 <= boottime() - began < 5
    assert all_dead(procs, timeout=1)


def test_a_scheduler_that_exits_has_its_children_killed(tmp_path: Path) -> None:
    run = launch(tmp_path, "exit3")
    assert run.wait(timeout=10) == RunEnded("exited", 3)


def test_descendants_that_left_the_session_are_still_killed(tmp_path: Path) -> None:
    run = launch(tmp_path, "daemon")
    main_pid = started(tmp_path)[0]
    # The daemon re-parented to the guard (a subreaper), not to init.
    guard = psutil.Process(run.guard_pid)
    daemon = wait_until(
        lambda: [p for p in guard.children() if p.pid != main_pid.pid], 10, "the daemon"
    )
    run.stop(1.0)
    assert run.wait(timeout=10) is not None
    assert all_dead([main_pid, *daemon], timeout=1)


def test_the_controller_dying_stops_the_scheduler(tmp_path: Path) -> None:
    run = launch(tmp_path, "plain", grace=1.0)
    procs = started(tmp_path)
    run._in.close()  # what the kernel does when the controller is killed with -9
    assert all_dead(procs, timeout=10)


def test_a_guard_killed_with_sigkill_takes_its_scheduler_along(tmp_path: Path) -> None:
    run = launch(tmp_path, "plain")
    scheduler, child = started(tmp_path)
    os.kill(run.guard_pid, signal.SIGKILL)
    assert all_dead([scheduler], timeout=10)
    assert run.wait(timeout=10) == RunEnded("lost")
    # The scheduler's own child outlives it here: in production the controller is a
    # subreaper and kills it (test_failover: kill -9 of the guard). Not left behind here.
    child.kill()


def test_a_run_whose_fence_is_too_close_is_refused(tmp_path: Path) -> None:
    run = launch(tmp_path, "plain", fence_in=0.1)
    assert run.wait(timeout=10) == RunEnded("refused")
    assert not (tmp_path / "pids").exists()


def test_the_scheduler_pid_is_reported(tmp_path: Path) -> None:
    run = launch(tmp_path, "plain")
    procs = started(tmp_path)
    wait_until(lambda: run.poll() is None and run.scheduler_pid, 10, "the started line")
    assert run.scheduler_pid == procs[0].pid
    run.stop(0.5)
    assert run.wait(timeout=10) is not None


# -- giving the lease back when the controller died -----------------------------------------
TTL = 30.0


@dataclass
class HeldRun:
    run: GuardedRun
    store: Metastore
    output: Path


@pytest.fixture
def held_run(tmp_path: Path) -> Iterator[Callable[..., HeldRun]]:
    """A run under a guard for node a, whose lease (epoch 1) lives in a SQLite metastore."""
    url = f"sqlite:///{tmp_path / 'meta.db'}"
    store = open_metastore(url, SystemClock())
    opened: list[GuardedRun] = []

    def start(mode: str = "plain", fence_in: float = 30.0) -> HeldRun:
        me = live("a")
        lease = store.try_acquire("scheduler", me, TTL)
        assert lease is not None and lease.epoch == 1
        script = tmp_path / "sched.py"
        script.write_text(SCRIPT)
        argv = [sys.executable, str(script), str(tmp_path / "pids"), mode]
        output = tmp_path / "guard.log"
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        launcher = GuardLauncher(fd, MetastoreAccess(url, 5.0, TTL))
        owner = RunOwner("a", me.token, str(tmp_path), str(tmp_path / "airflow.cfg"))
        env = {**os.environ, EPOCH_ENV: "1"}
        run = launcher.launch(argv, env, boottime() + fence_in, 1.0, owner)
        os.close(fd)
        opened.append(run)
        return HeldRun(run, store, output)

    yield start
    for run in opened:
        with suppress(ProcessLookupError):
            os.kill(run.guard_pid, signal.SIGKILL)
    store.close()


def lease_holder(store: Metastore) -> str | None:
    record = store.read_lease("scheduler")
    return record.holder if record is not None else None


def test_a_dead_controllers_guard_gives_the_lease_back_once_the_run_is_dead(
    tmp_path: Path, held_run: Callable[..., HeldRun]
) -> None:
    held = held_run()
    procs = started(tmp_path)
    held.run._in.close()  # the controller killed with -9
    assert all_dead(procs, timeout=10)
    wait_until(lambda: lease_holder(held.store) is None, 20, "the lease to be given back")
    record = held.store.read_lease("scheduler")
    assert record is not None and record.epoch == 1  # free, not taken: the epoch stays
    wait_until(lambda: "gave the lease of epoch 1 back" in held.output.read_text(), 10, "why")
    assert "giving the lease back" in held.output.read_text()
    assert "sqlite:" not in held.output.read_text()  # no URL, so no password, in the log


def test_a_frozen_controllers_guard_fences_and_leaves_the_lease_to_expire(
    tmp_path: Path, held_run: Callable[..., HeldRun]
) -> None:
    held = held_run("deaf", fence_in=2.0)
    procs = started(tmp_path)
    # The controller does not write any more, but its end of the pipe stays open.
    assert held.run.wait(timeout=10) == RunEnded("fenced")
    assert all_dead(procs, timeout=1)
    # The guard has exited (wait() reaped it); it says so before it starts the helper.
    assert "giving the lease back" not in held.output.read_text()
    assert lease_holder(held.store) == "a"


def test_a_lease_taken_meanwhile_is_left_alone(
    tmp_path: Path, held_run: Callable[..., HeldRun]
) -> None:
    held = held_run("deaf")  # its stop takes the whole grace: time to take the lease
    procs = started(tmp_path)
    record = held.store.read_lease("scheduler")
    assert record is not None
    mine = Lease("scheduler", "a", 1, 0.0, instance=live("a").token)
    assert held.store.transfer(mine, "b")  # epoch 2, for b
    held.run._in.close()
    assert all_dead(procs, timeout=10)
    wait_until(lambda: "left the lease alone" in held.output.read_text(), 20, "the helper")
    after = held.store.read_lease("scheduler")
    assert after is not None and (after.holder, after.epoch) == ("b", 2)
