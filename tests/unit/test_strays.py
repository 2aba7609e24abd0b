"""Which processes count as a scheduler: the program by file name, the arguments exactly."""

from __future__ import annotations

import pytest

from airflow_sentinel.process.strays import matches

AIRFLOW = ["airflow", "scheduler"]


@pytest.mark.parametrize(
    "cmdline",
    [
        ["/venv/bin/python", "/venv/bin/airflow", "scheduler"],
        ["airflow", "scheduler"],
        ["/usr/bin/airflow", "scheduler", "--skip-serve-logs"],
        ["airflow scheduler -- DagFileProcessorManager"],  # a setproctitle title
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
    ],
)
def test_other_processes_do_not_match(cmdline: list[str]) -> None:
    assert not matches(cmdline, AIRFLOW)


def test_arguments_are_compared_whole_not_by_file_name() -> None:
    command = ["python", "/srv/a/run.py", "--lock", "/tmp/one/scheduler.lock"]
    assert matches(
        ["/usr/bin/python", "/srv/a/run.py", "--lock", "/tmp/one/scheduler.lock"], command
    )
    assert not matches(["python", "/srv/a/run.py", "--lock", "/tmp/two/scheduler.lock"], command)
    assert not matches(["python", "/srv/b/run.py", "--lock", "/tmp/one/scheduler.lock"], command)


def test_an_empty_command_matches_nothing() -> None:
    assert not matches(["airflow", "scheduler"], [])
