"""Which job row is our scheduler's, and the pin that keeps it for the run."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path

import pytest

from airflow_sentinel.controller.health import (
    START_SLACK_S,
    JobRow,
    JobTableProbe,
    SchedulerOwner,
    own_row,
)

LAUNCH = 1_700_000_000.0
ME = SchedulerOwner(frozenset({"master-1", "master-1.example.com"}), "airflow")


def row(id_: int, start: float, host: str = "master-1", user: str = "airflow") -> JobRow:
    return JobRow(id_, host, user, start, start + 30)


def test_our_row_is_the_first_of_this_host_and_user_after_the_launch() -> None:
    rows = [
        row(1, LAUNCH - 3600),  # a leftover of an earlier run here
        row(2, LAUNCH + 1, host="master-2.example.com"),  # a scheduler on another host
        row(3, LAUNCH + 2, user="staging"),  # another user's scheduler on this host
        row(4, LAUNCH + 3, host="master-1.example.com"),  # ours
        row(5, LAUNCH + 9),  # a scheduler started by hand after ours
    ]
    assert own_row(rows, ME, LAUNCH) == rows[3]


def test_a_row_just_before_the_launch_counts_only_without_one_after_it() -> None:
    early = row(7, LAUNCH - START_SLACK_S / 2)  # a clock stepped back, or a leftover
    assert own_row([early], ME, LAUNCH) == early
    assert own_row([early, row(8, LAUNCH + 4)], ME, LAUNCH) == row(8, LAUNCH + 4)
    assert own_row([row(9, LAUNCH - START_SLACK_S - 1)], ME, LAUNCH) is None


def test_no_row_of_ours_means_no_heartbeat_yet() -> None:
    assert own_row([row(2, LAUNCH + 1, host="elsewhere")], ME, LAUNCH) is None
    assert own_row([], ME, LAUNCH) is None


def stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


class JobTable:
    """Airflow's `job` table in SQLite, as Airflow writes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._run(
            "create table job (id integer primary key, dag_id text, state text, job_type text,"
            " start_date timestamp, end_date timestamp, latest_heartbeat timestamp,"
            " executor_class text, hostname text, unixname text)"
        )

    def _run(self, sql: str, *args: object) -> int:
        with closing(sqlite3.connect(self.path)) as conn, conn:
            return int(conn.execute(sql, args).lastrowid or 0)

    def add(self, host: str, user: str, start: float, beat: float) -> int:
        return self._run(
            "insert into job (state, job_type, start_date, latest_heartbeat, hostname, unixname)"
            " values ('running', 'SchedulerJob', ?, ?, ?, ?)",
            stamp(start),
            stamp(beat),
            host,
            user,
        )

    def beat(self, job_id: int, at: float) -> None:
        self._run("update job set latest_heartbeat = ? where id = ?", stamp(at), job_id)


@pytest.fixture
def table(tmp_path: Path) -> JobTable:
    return JobTable(tmp_path / "airflow.db")


def test_the_probe_keeps_to_our_row_while_other_schedulers_heartbeat(table: JobTable) -> None:
    probe = JobTableProbe(f"sqlite:///{table.path}", 5.0, owner=ME)
    assert probe.age(LAUNCH, LAUNCH + 1) is None  # nothing written yet
    table.add("master-2", "airflow", LAUNCH + 1, LAUNCH + 100)  # another host, fresh
    table.add("master-1", "airflow", LAUNCH - 600, LAUNCH + 100)  # a leftover, fresh
    ours = table.add("master-1", "airflow", LAUNCH + 3, LAUNCH + 4)
    assert probe.age(LAUNCH, LAUNCH + 10) == pytest.approx(6.0)
    # A scheduler started by hand here later beats fresh; ours hangs.
    later = table.add("master-1", "airflow", LAUNCH + 20, LAUNCH + 20)
    table.beat(later, LAUNCH + 99)
    assert probe.age(LAUNCH, LAUNCH + 100) == pytest.approx(96.0)
    # A row that claims an earlier start, written only now: our row stays pinned.
    table.add("master-1", "airflow", LAUNCH + 2, LAUNCH + 100)
    assert probe.age(LAUNCH, LAUNCH + 100) == pytest.approx(96.0)
    table.beat(ours, LAUNCH + 100)
    assert probe.age(LAUNCH, LAUNCH + 101) == pytest.approx(1.0)
    probe.close()


def test_a_new_run_looks_for_its_own_row_afresh(table: JobTable) -> None:
    probe = JobTableProbe(f"sqlite:///{table.path}", 5.0, owner=ME)
    table.add("master-1", "airflow", LAUNCH + 3, LAUNCH + 5)
    assert probe.age(LAUNCH, LAUNCH + 5) == pytest.approx(0.0)
    relaunch = LAUNCH + 60
    assert probe.age(relaunch, relaunch + 1) is None  # the old row is not the new run's
    table.add("master-1", "airflow", relaunch + 2, relaunch + 4)
    assert probe.age(relaunch, relaunch + 5) == pytest.approx(1.0)
    probe.close()


def test_any_scheduler_mode_takes_the_newest_heartbeat_wherever_it_runs(table: JobTable) -> None:
    probe = JobTableProbe(f"sqlite:///{table.path}", 5.0, any_scheduler=True)
    table.add("master-2", "airflow", LAUNCH + 3, LAUNCH + 8)
    assert probe.age(LAUNCH, LAUNCH + 10) == pytest.approx(2.0)
    probe.close()
