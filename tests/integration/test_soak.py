"""The fault-injection soak, for real: network-namespace hosts, private metastore servers,
real controllers and probes. The short form runs on every backend; the others check that
the witness is not blind and that nothing is left behind however a soak ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from airflow_sentinel.soak import freezer, hosts
from airflow_sentinel.soak.checker import check
from airflow_sentinel.soak.freezer import NodeFreezer
from airflow_sentinel.soak.nemesis import (
    FREEZE_METASTORE,
    FREEZE_NODE,
    KINDS,
    PARTITION,
    RESTART_METASTORE,
)
from airflow_sentinel.soak.recorder import Recorder
from airflow_sentinel.soak.servers import Postgres
from tests.support.backends import selected_backends
from tests.support.cluster import wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the soak creates network namespaces"),
]


def soak(out: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "airflow_sentinel", "soak", "run", "--out", str(out), "-v", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def what_is_left(owner: int, out: Path) -> list[str]:
    """Namespaces, links and processes of the soak with pid ``owner``."""
    left = [
        line.split()[0]
        for line in hosts.ip("netns", "list").splitlines()
        if line.startswith(f"{hosts.PREFIX}{owner}-")
    ]
    left += [name for name in hosts._links() if name.startswith(f"{hosts.PREFIX}{owner}")]
    if freezer.soak_dir(owner).exists():
        left.append(str(freezer.soak_dir(owner)))
    for proc in psutil.process_iter(["cmdline", "pid"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            home = proc.environ().get("AIRFLOW_HOME", "")
        except psutil.Error:
            continue
        if str(out) in cmdline or home.startswith(str(out)):
            left.append(f"pid {proc.pid}: {cmdline[:120]}")
    return left


@pytest.mark.parametrize("backend", selected_backends())
def test_short_soak_finds_no_overlap(backend: str, tmp_path: Path) -> None:
    out = tmp_path / "soak"
    run = soak(out, "--backend", backend, "--short", "--seed", "11")
    output, _ = run.communicate(timeout=900)
    assert run.returncode == 0, output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["passed"] and summary["overlaps"] == 0 and summary["orphaned_children"] == 0
    serverless = {PARTITION, RESTART_METASTORE, FREEZE_METASTORE}
    # A whole-node freeze needs Airflow's database: see the tests with --airflow-db.
    expected = set(KINDS) - {FREEZE_NODE} - (serverless if backend == "sqlite" else set())
    counts = {row["kind"]: row["faults"] + row["not_injected"] for row in summary["by_kind"]}
    assert counts == dict.fromkeys(expected, 2)
    assert summary["all"]["unrecovered"] == 0
    assert (out / "timeline.svg").read_text().startswith("<svg")
    assert what_is_left(run.pid, out) == []


def freeze_node_soak(out: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    """Whole-node freezes only, with Airflow's database (whose writes are checked); the
    metastore on SQLite, the cheapest (the freeze is of the node, not of the metastore)."""
    run = soak(
        out, "--backend", "sqlite", "--kinds", FREEZE_NODE, "--airflow-db", "postgresql", *args
    )
    output, _ = run.communicate(timeout=900)
    return run, output


def freezes(summary: dict[str, Any]) -> dict[str, Any]:
    rows = summary["by_kind"]
    assert isinstance(rows, list)
    [row] = [r for r in rows if r["kind"] == FREEZE_NODE]
    assert isinstance(row, dict)
    return row


def test_whole_node_freezes_with_the_fence_leave_no_overlapping_write(tmp_path: Path) -> None:
    """The active node frozen whole, its guard too, past the lease: another takes over and
    writes; the thawed scheduler runs on a moment before its guard kills it, and whatever
    it writes then, the fence rejects."""
    out = tmp_path / "soak"
    run, output = freeze_node_soak(out, "--each", "3", "--seed", "5")
    assert run.returncode == 0, output
    summary = json.loads((out / "summary.json").read_text())
    print(output)  # the figures, for the record (-s)
    row = freezes(summary)
    assert row["faults"] >= 1 and row["unrecovered"] == 0  # injected and healed
    assert summary["overlaps"] == 0 and summary["orphaned_children"] == 0
    assert summary["writes"] > 0 and summary["overlapping_writes"] == 0
    history = json.loads((out / "history.json").read_text())
    # Every connection carried the epoch its scheduler was started with, and the fence
    # ended at the last one.
    assert all(str(w["epoch"]) == w["session_epoch"] for w in history["writes"])
    assert summary["fence_epoch"] == max(int(w["epoch"]) for w in history["writes"])
    assert what_is_left(run.pid, out) == []


def test_without_the_fence_a_thawed_node_writes_over_its_successor(tmp_path: Path) -> None:
    """The control: the same faults with db_fence = off. The thawed scheduler's write after
    its successor's first one is committed, and the checker fails the run for it (the
    guard, thawed with it, kills it within milliseconds, but not before it writes)."""
    out = tmp_path / "soak"
    run, output = freeze_node_soak(out, "--each", "4", "--seed", "5", "--db-fence", "off")
    summary = json.loads((out / "summary.json").read_text())
    print(output)
    assert run.returncode == 1, output
    assert freezes(summary)["faults"] >= 1
    assert summary["overlaps"] == 0  # what ran beside its successor ran only after a thaw
    assert summary["overlapping_writes"] >= 1 and summary["rejected_writes"] == 0
    assert not summary["passed"]
    assert what_is_left(run.pid, out) == []


def _tree(cgroup: NodeFreezer | None = None) -> subprocess.Popen[bytes]:
    """A shell with a child: a node's process tree in small."""
    procs = cgroup.procs_file() if cgroup is not None else None
    return subprocess.Popen(
        ["sh", "-c", "sleep 60 & wait"],
        preexec_fn=lambda: NodeFreezer.join(procs),  # noqa: PLW1509 - os calls only
    )


def _states(root: int) -> set[str]:
    proc = psutil.Process(root)
    return {p.status() for p in [proc, *proc.children(recursive=True)]}


@pytest.mark.parametrize("use_cgroup", [True, False], ids=["cgroup", "sigstop"])
def test_the_freezer_stops_a_whole_tree_and_thaws_it(use_cgroup: bool) -> None:
    owner = 9_200_000 + os.getpid() % 1_000_000  # above pid_max: no live soak
    if use_cgroup:
        if not freezer.available():
            pytest.skip("no cgroup v1 freezer")
        node = NodeFreezer.create(owner, "n1")
    else:
        node = NodeFreezer("n1")
    process = _tree(node)
    try:
        wait_until(lambda: len(psutil.Process(process.pid).children()) == 1, 10, "the child")
        assert node.freeze(process.pid) == 2
        assert node.frozen
        frozen = {psutil.STATUS_STOPPED, psutil.STATUS_DISK_SLEEP}  # SIGSTOP / v1 freezer
        assert _states(process.pid) <= frozen
        node.thaw()
        assert not node.frozen
        wait_until(lambda: not (_states(process.pid) & frozen), 10, "the thaw")
        if use_cgroup:
            node.freeze(process.pid)
            freezer.remove_owned_by(owner)  # a leftover: thawed, killed and removed
            assert process.wait(10) is not None
            assert not freezer.soak_dir(owner).exists()
    finally:
        process.kill()
        process.wait()
        freezer.remove_owned_by(owner)


def _wait_for_first_fault(run: subprocess.Popen[str]) -> list[str]:
    assert run.stdout is not None
    seen = []
    give_up = time.monotonic() + 120
    while time.monotonic() < give_up:
        line = run.stdout.readline()
        seen.append(line)
        if " fault 1: " in line:
            return seen
        if not line and run.poll() is not None:
            break
    raise AssertionError("the soak injected no fault:\n" + "".join(seen))


def test_soaks_started_together_get_subnets_of_their_own() -> None:
    """Two soaks that look for a free subnet at the same moment must not both take it:
    their bridges would carry one address and route each other's metastore."""
    # Owners above pid_max: never a live process, so nothing else is named after them.
    owners = [9_000_000 + os.getpid() % 1_000_000, 9_100_000 + os.getpid() % 1_000_000]
    networks = [hosts.Network(count=1, owner=owner) for owner in owners]
    start = threading.Barrier(len(networks))
    failures: list[BaseException] = []

    def create(network: hosts.Network) -> None:
        start.wait()
        try:
            network.create()
        except BaseException as error:  # reported below, in the test's own thread
            failures.append(error)

    threads = [threading.Thread(target=create, args=(n,)) for n in networks]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not failures, failures
        assert networks[0].subnet != networks[1].subnet
    finally:
        for network in networks:
            network.destroy()


def test_a_metastore_server_healed_twice_runs_once(tmp_path: Path) -> None:
    """Two metastore faults in one batch both heal by starting the server: the second start
    must find it running, not start another beside it (or kill the first as a leftover)."""
    server = Postgres(tmp_path, "127.0.0.1")
    server.prepare()
    try:
        server.start()
        first = server.process
        assert first is not None
        server.start()
        assert server.process is first and first.poll() is None
        server.stop()
        server.stop()  # already stopped: nothing to do
        assert first.poll() is not None
        server.start()
        assert server.process is not first and server.process.poll() is None
    finally:
        server.close()


def test_ctrl_c_stops_the_soak_cleans_up_and_still_reports(tmp_path: Path) -> None:
    out = tmp_path / "soak"
    run = soak(out, "--backend", "postgresql", "--faults", "100")
    _wait_for_first_fault(run)
    run.send_signal(signal.SIGINT)
    output, _ = run.communicate(timeout=120)
    assert run.returncode == 130, output
    assert json.loads((out / "summary.json").read_text())["interrupted"] == "SIGINT"
    assert what_is_left(run.pid, out) == []


def test_a_killed_soak_leaves_only_namespaces_which_the_next_one_removes(tmp_path: Path) -> None:
    out = tmp_path / "soak"
    run = soak(out, "--backend", "mariadb", "--faults", "100")
    _wait_for_first_fault(run)
    run.kill()
    run.communicate(timeout=30)

    # Servers, controllers, guards and probes die with it (PDEATHSIG, fences).
    def only_namespaces_left() -> list[str] | None:
        found = what_is_left(run.pid, out)
        return None if any(f.startswith("pid") for f in found) else found

    left = wait_until(only_namespaces_left, 30, "the soak's processes to die with it")
    assert any(name.startswith(f"{hosts.PREFIX}{run.pid}-") for name in left)
    assert run.pid in hosts.remove_leftovers()
    assert what_is_left(run.pid, out) == []


def probe(socket_path: Path, children: int = 1) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "airflow_sentinel.soak.probe", "--recorder", str(socket_path),
         "--children", str(children), "--interval", "0.05"],
        env={**os.environ, "AIRFLOW_SENTINEL_NODE_ID": "n1"},
    )  # fmt: skip


def test_the_witness_sees_two_probes_and_an_orphaned_child(tmp_path: Path) -> None:
    """Proof that the checker can fail: two live probes, one killed leaving its child."""
    recorder = Recorder(tmp_path / "recorder.sock").start()
    first = probe(recorder.path)
    second = probe(recorder.path)
    try:
        wait_until(lambda: len(recorder.alive("child")) == 2, 30, "both probes and children")
        killed_at = time.clock_gettime(time.CLOCK_BOOTTIME)
        first.kill()
        first.wait()
        wait_until(lambda: len(recorder.alive()) == 1, 10, "the killed probe's end")
        orphan = next(p for p in recorder.alive("child") if p.ppid == first.pid)
        parent_end = next(p.end for p in recorder.lives.values() if p.pid == first.pid)
        assert parent_end is not None
        # The orphan goes on reporting well past its parent's death, then we end it.
        wait_until(lambda: orphan.last_report > parent_end + 1, 10, "the orphan to outlive it")
        os.kill(orphan.pid, signal.SIGKILL)
        second.terminate()
        second.wait(10)
        wait_until(lambda: not recorder.alive("child"), 10, "every child's end")
        lives = recorder.history()
    finally:
        for process in (first, second):
            process.kill()
        recorder.close()
    ended = next(life for life in lives if life["pid"] == first.pid)
    assert 0 <= float(str(ended["end"])) - killed_at < 1.0
    verdict = check(
        lives,
        [],
        (min(float(str(life["start"])) for life in lives), time.clock_gettime(time.CLOCK_BOOTTIME)),
    )
    assert len(verdict.overlaps) == 1
    assert verdict.orphans == 1
    assert not verdict.passed
