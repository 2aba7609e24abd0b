"""Which processes count as a scheduler, whose each one is, and stopping trees without waiting.

The titles and /proc facts below were recorded from real Airflow 2.10.5 and 3.3.2
schedulers (SQLite and PostgreSQL, Sequential and LocalExecutor).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from airflow_sentinel.clock import FakeClock
from airflow_sentinel.process.guard import RunOwner, is_guard, owner_of
from airflow_sentinel.process.handle import guard_command
from airflow_sentinel.process.strays import (
    Facts,
    GuardMark,
    Identity,
    Installation,
    Kind,
    classify,
    installation,
    matches,
    same_database,
    served_by_environment,
)
from airflow_sentinel.process.tree import GONE_POLL_S, GRACE_POLL_S, TreeStopper, is_alive
from tests.support.cluster import wait_until

AIRFLOW = ["airflow", "scheduler"]
VENV_AIRFLOW = ["/opt/airflow/venv/bin/airflow", "scheduler", "--skip-serve-logs"]
PAD = [""] * 40  # setproctitle pads the old argv and environment area with NULs


@pytest.mark.parametrize(
    "cmdline",
    [
        ["/venv/bin/python", "/venv/bin/airflow", "scheduler"],
        ["airflow", "scheduler"],
        ["/usr/bin/airflow", "scheduler", "--skip-serve-logs"],
        ["airflow scheduler -- DagFileProcessorManager"],  # a setproctitle title
        ["airflow scheduler -- DagFileProcessorManager", *PAD],  # 2.10, as /proc shows it
        ["airflow scheduler - DagFileProcessor /srv/airflow/dags/etl.py", *PAD],  # 2.10
    ],
)
def test_scheduler_processes_match(cmdline: list[str]) -> None:
    assert matches(cmdline, AIRFLOW)


@pytest.mark.parametrize(
    "cmdline",
    [
        ["/venv/bin/python", "/venv/bin/airflow", "webserver"],
        ["/venv/bin/python", "/venv/bin/airflow", "worker", "--", "LocalExecutor"],
        [
            "/venv/bin/python",
            "/venv/bin/airflow-sentinel",
            "start",
            "--scheduler-command",
            "airflow scheduler",
        ],
        ["grep", "airflow scheduler"],
        ["bash", "-c", "airflow scheduler"],
        [],
        # The children of real schedulers: 2.10's executor and workers, 3.3.2's workers.
        ["airflow executor -- LocalExecutor", *PAD],
        ["airflow worker -- LocalExecutor", *PAD],
        ["airflow worker -- LocalExecutor: <idle>", *PAD],
        ["airflow supervisor: dag_id=etl run_id=manual try=1", *PAD],
    ],
)
def test_other_processes_do_not_match(cmdline: list[str]) -> None:
    assert not matches(cmdline, AIRFLOW)


def test_a_real_schedulers_own_title_matches_the_configured_command() -> None:
    # 2.10 restores the title it changed while starting its executor; 3.3.2 keeps argv.
    main = ["/opt/airflow/venv/bin/python", *VENV_AIRFLOW]
    assert matches(main, VENV_AIRFLOW)
    assert matches([" ".join(main), *PAD], VENV_AIRFLOW)
    # Its DAG processor manager shows `airflow scheduler` without the configured arguments:
    # part of the scheduler's tree, not a scheduler of its own.
    assert not matches(["airflow scheduler -- DagFileProcessorManager", *PAD], VENV_AIRFLOW)


def test_arguments_are_compared_whole_not_by_file_name() -> None:
    command = ["python", "/srv/a/run.py", "--lock", "/tmp/one/scheduler.lock"]
    assert matches(
        ["/usr/bin/python", "/srv/a/run.py", "--lock", "/tmp/one/scheduler.lock"], command
    )
    assert not matches(["python", "/srv/a/run.py", "--lock", "/tmp/two/scheduler.lock"], command)
    assert not matches(["python", "/srv/b/run.py", "--lock", "/tmp/one/scheduler.lock"], command)


def test_an_empty_command_matches_nothing() -> None:
    assert not matches(["airflow", "scheduler"], [])


# -- the guard's command line ------------------------------------------------------------
OURS = Installation(
    homes=frozenset({"/srv/airflow"}),
    configs=frozenset({"/srv/airflow/airflow.cfg"}),
    database="postgresql+psycopg2://airflow:secret@db1:5432/airflow",
    log_folders=frozenset({"/srv/airflow/logs"}),
)
ME = Identity("master-1", "master-1/boot/ns/4242/99", OURS)


def owner(
    node: str = "master-1", instance: str = ME.instance, home: str = "/srv/airflow"
) -> RunOwner:
    return RunOwner(node, instance, home, f"{home}/airflow.cfg")


def test_the_guard_command_line_names_its_owner_before_the_schedulers_own_arguments() -> None:
    mine = owner()
    command = guard_command([*VENV_AIRFLOW, "--owner", "mallory"], 123.5, 3.0, mine)
    assert is_guard(command)
    assert owner_of(command) == mine  # the scheduler's "--owner" after "--" is not read


def test_an_owner_whose_names_look_like_options_reads_back_unchanged() -> None:
    odd = RunOwner("-n", "--", "/srv/a=b", "/srv/a=b/airflow.cfg")
    assert owner_of(guard_command(VENV_AIRFLOW, 1.0, 1.0, odd)) == odd


def test_a_guard_without_owner_options_names_no_owner() -> None:
    command = guard_command(VENV_AIRFLOW, 123.5, 3.0)
    assert is_guard(command)
    assert owner_of(command) is None
    assert not is_guard(VENV_AIRFLOW)


# -- whose scheduler ---------------------------------------------------------------------
ERASED = None  # /proc/PID/environ of a 2.10 scheduler a few seconds after it started


def under_guard(
    run_owner: RunOwner | None, may_signal: bool = True, owner_gone: bool = False
) -> Facts:
    mark = GuardMark(run_owner, owner_gone=owner_gone)
    return Facts(environ=ERASED, guard=mark, may_signal=may_signal)


def test_a_scheduler_under_another_nodes_guard_is_left_alone_though_its_environment_is_gone() -> (
    None
):
    # Three controllers on one host, a real 2.10 scheduler: nothing in its own /proc says
    # whose it is any more, its guard still does.
    verdict = classify(under_guard(owner(node="master-2")), ME)
    assert verdict.kind is Kind.OTHER_NODE
    assert "master-2" in verdict.why


def test_our_current_run_is_recognised_by_its_guard() -> None:
    assert classify(under_guard(owner()), ME).kind is Kind.CURRENT


def test_a_run_of_an_earlier_controller_of_this_node_is_a_stray_of_ours() -> None:
    gone = under_guard(owner(instance="master-1/boot/ns/1000/7"), owner_gone=True)
    verdict = classify(gone, ME)
    assert verdict.kind is Kind.STRAY
    assert "earlier controller" in verdict.why


def test_a_run_of_a_live_twin_with_our_node_id_is_left_alone() -> None:
    # A clone with the same host name: its own guard fences its run.
    verdict = classify(under_guard(owner(instance="master-1/boot/ns/1001/8")), ME)
    assert verdict.kind is Kind.OTHER_NODE
    assert "live controller" in verdict.why


def test_our_node_id_serving_another_installation_is_foreign() -> None:
    # node_id defaults to the host name: staging and production controllers on one host
    # share it.
    verdict = classify(under_guard(owner(instance="other", home="/srv/staging")), ME)
    assert verdict.kind is Kind.FOREIGN
    assert "/srv/staging" in verdict.why


def test_a_guard_that_names_no_owner_is_foreign() -> None:
    assert classify(under_guard(None), ME).kind is Kind.FOREIGN


def environment(**variables: str) -> Facts:
    return Facts(environ={"HOME": "/home/airflow", "PATH": "/usr/bin", **variables})


def test_an_intact_environment_of_this_installation_makes_a_stray() -> None:
    verdict = classify(environment(AIRFLOW_HOME="/srv/airflow/"), ME)
    assert verdict.kind is Kind.STRAY


def test_an_intact_environment_of_another_installation_is_foreign() -> None:
    verdict = classify(environment(AIRFLOW_HOME="/srv/staging"), ME)
    assert verdict.kind is Kind.FOREIGN
    assert "/srv/staging" in verdict.why


def test_airflow_home_defaults_to_the_processes_own_home() -> None:
    assert served_by_environment({"HOME": "/srv"}) == ("/srv/airflow", "/srv/airflow/airflow.cfg")
    assert classify(Facts(environ={"HOME": "/srv"}), ME).kind is Kind.STRAY
    assert classify(Facts(environ={"HOME": "/home/bob"}), ME).kind is Kind.FOREIGN


def test_another_config_file_is_another_installation() -> None:
    facts = environment(AIRFLOW_HOME="/srv/airflow", AIRFLOW_CONFIG="/etc/staging.cfg")
    assert classify(facts, ME).kind is Kind.FOREIGN


def test_a_database_named_in_the_environment_must_be_ours() -> None:
    other = environment(
        AIRFLOW_HOME="/srv/airflow",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="postgresql://airflow@db2/airflow",
    )
    same = environment(
        AIRFLOW_HOME="/srv/airflow",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="postgresql+psycopg://airflow:other@db1/airflow",
    )
    verdict = classify(other, ME)
    assert verdict.kind is Kind.FOREIGN
    assert "secret" not in verdict.why and "db2" not in verdict.why  # never a URL
    assert classify(same, ME).kind is Kind.STRAY


def test_an_environment_that_cannot_be_read_as_airflow_would_falls_back_to_open_files() -> None:
    unclear = Facts(environ={"AIRFLOW_HOME": "$BASE/airflow"}, open_files=frozenset())
    assert classify(unclear, ME).kind is Kind.FOREIGN
    held = Facts(
        environ={"AIRFLOW_HOME": "relative/home"},
        open_files=frozenset({"/srv/airflow/logs/scheduler/latest/etl.py.log"}),
    )
    assert classify(held, ME).kind is Kind.STRAY


def test_an_erased_environment_with_our_log_open_is_a_stray() -> None:
    # 2.10: the DAG processor manager, a child of the scheduler, keeps its log open.
    facts = Facts(
        environ=ERASED,
        open_files=frozenset(
            {"/dev/null", "/srv/airflow/logs/dag_processor_manager/dag_processor_manager.log"}
        ),
    )
    verdict = classify(facts, ME)
    assert verdict.kind is Kind.STRAY
    assert "dag_processor_manager.log" in verdict.why


def test_an_erased_environment_with_our_sqlite_database_open_is_a_stray() -> None:
    ours = Installation(
        homes=OURS.homes,
        configs=OURS.configs,
        database_files=frozenset({"/srv/airflow/airflow.db", "/srv/airflow/airflow.db-wal"}),
    )
    facts = Facts(environ=ERASED, open_files=frozenset({"/srv/airflow/airflow.db-wal"}))
    assert classify(facts, Identity("master-1", "t", ours)).kind is Kind.STRAY


@pytest.mark.parametrize(
    "open_files",
    [
        frozenset(),  # 2.10 on PostgreSQL before its DAG processor manager opened its log
        frozenset({"/srv/staging/logs/dag_processor_manager/dag_processor_manager.log"}),
        frozenset({"/srv/airflow-logs-elsewhere/x.log", "/srv/airflowlogs/y.log"}),
        frozenset({"/srv/airflow/dags/etl.py"}),  # under our home, not one of our logs
    ],
)
def test_an_erased_environment_without_a_file_of_ours_is_foreign(
    open_files: frozenset[str],
) -> None:
    verdict = classify(Facts(environ=ERASED, open_files=open_files), ME)
    assert verdict.kind is Kind.FOREIGN
    assert "not established" in verdict.why


def test_a_stray_we_may_not_signal_is_denied_and_a_foreign_one_stays_foreign() -> None:
    stray = Facts(environ={"AIRFLOW_HOME": "/srv/airflow"}, may_signal=False)
    assert classify(stray, ME).kind is Kind.DENIED
    earlier = under_guard(owner(instance="earlier"), may_signal=False, owner_gone=True)
    assert classify(earlier, ME).kind is Kind.DENIED
    # Another user's process seen by an unprivileged controller: nothing readable.
    unreadable = Facts(environ=None, open_files=frozenset(), may_signal=False)
    assert classify(unreadable, ME).kind is Kind.FOREIGN


@pytest.mark.parametrize(
    ("one", "other", "same"),
    [
        ("postgresql+psycopg2://a:x@db1/airflow", "postgres://a:y@db1:5432/airflow", True),
        ("postgresql://a@db1/airflow", "postgresql://a@db1/staging", False),
        ("postgresql://a@db1/airflow", "postgresql://b@db1/airflow", False),
        ("mysql+mysqldb://a@db1/airflow", "mariadb+pymysql://a@db1:3306/airflow", True),
        ("sqlite:////srv/airflow/airflow.db", "sqlite:////srv/airflow/./airflow.db", True),
        ("sqlite:////srv/airflow/airflow.db", "sqlite:////srv/staging/airflow.db", False),
        ("not a url", "sqlite:////srv/airflow/airflow.db", False),
    ],
)
def test_databases_are_compared_by_what_they_name(one: str, other: str, same: bool) -> None:
    assert same_database(one, other) is same


def test_this_installation_is_read_from_its_configuration(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "link").symlink_to(home)
    (home / "airflow.cfg").write_text(
        f"[database]\nsql_alchemy_conn = sqlite:///{home / 'airflow.db'}\n"
        f"[logging]\nbase_log_folder = /var/log/airflow\n"
        f"dag_processor_manager_log_location = /var/log/dpm/manager.log\n"
    )
    found = installation(str(tmp_path / "link"), str(tmp_path / "link" / "airflow.cfg"))
    assert found.serves(str(home), str(home / "airflow.cfg"))
    assert found.serves(str(tmp_path / "link"), str(tmp_path / "link" / "airflow.cfg"))
    assert found.owns_file(f"{home}/airflow.db-wal")
    assert found.owns_file(f"{home}/logs/scheduler/x.log")
    assert found.owns_file("/var/log/airflow/dag_id=etl/attempt=1.log")
    assert found.owns_file("/var/log/dpm/manager.log")
    assert not found.owns_file("/var/log/other.log")


# -- stopping trees without waiting -----------------------------------------------------
# A process with one child; ``ready`` is printed once the child runs.
TREE = """
import os, signal, sys, time
child = os.fork()
if child == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL ends the child
    os.setsid()  # a session of its own, as Airflow's task runners do
    while True:
        time.sleep(1)
if sys.argv[1] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
while True:
    time.sleep(1)
"""


class Trees:
    def __init__(self) -> None:
        self.started: list[tuple[subprocess.Popen[str], list[psutil.Process]]] = []

    def start(self, mode: str) -> tuple[psutil.Process, psutil.Process]:
        process = subprocess.Popen(
            [sys.executable, "-c", TREE, mode], stdout=subprocess.PIPE, text=True
        )
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        root = psutil.Process(process.pid)
        [child] = root.children()
        self.started.append((process, [root, child]))
        return root, child

    def clean_up(self) -> None:
        for process, members in self.started:
            for member in members:
                with contextlib.suppress(psutil.Error):
                    member.kill()
            process.wait()


@pytest.fixture
def trees() -> Iterator[Trees]:
    made = Trees()
    yield made
    made.clean_up()


def gone(stopper: TreeStopper) -> bool:
    return not stopper.poll()


def test_a_tree_gets_sigterm_at_once_and_sigkill_only_when_its_grace_is_over(
    trees: Trees,
) -> None:
    clock = FakeClock()
    stopper = TreeStopper(clock)
    root, child = trees.start("stubborn")
    assert stopper.stop(root, grace=5.0)
    assert stopper.stopping(root) and stopper.stopping(child)
    assert stopper.poll()  # SIGTERM is ignored, and no SIGKILL within the grace
    assert is_alive(root) and is_alive(child)
    assert stopper.next_deadline() == clock.now() + GRACE_POLL_S  # a look for an early exit
    clock.advance(GRACE_POLL_S)
    assert stopper.poll() and is_alive(root)
    clock.advance(5.0)
    stopper.poll()  # the grace is over: SIGKILL to the root and to the child in its session
    # Until the tree is seen gone, it is looked at every GONE_POLL_S (SIGKILL may already
    # have finished it by now: then there is nothing left to look at).
    deadline = stopper.next_deadline()
    assert deadline == clock.now() + GONE_POLL_S or (deadline is None and gone(stopper))
    wait_until(lambda: gone(stopper), 10, "the whole tree to die")
    assert not is_alive(child)
    assert stopper.next_deadline() is None


def test_the_rest_of_a_tree_is_killed_as_soon_as_its_root_has_exited(trees: Trees) -> None:
    clock = FakeClock()
    stopper = TreeStopper(clock)
    root, child = trees.start("polite")  # exits on SIGTERM; its child ignores SIGTERM
    assert stopper.stop(root, grace=600.0)
    wait_until(lambda: gone(stopper), 10, "the child to be killed after its parent exited")
    assert not is_alive(child)


def test_without_a_grace_the_tree_is_killed_at_once(trees: Trees) -> None:
    stopper = TreeStopper(FakeClock())
    root, child = trees.start("stubborn")
    assert stopper.stop(root, grace=0.0)
    wait_until(lambda: gone(stopper), 10, "the tree to die")
    assert not is_alive(root) and not is_alive(child)


def test_nothing_to_stop_means_no_deadline() -> None:
    stopper = TreeStopper(FakeClock())
    assert not stopper.poll()
    assert stopper.next_deadline() is None
