"""The fence without a database: which URLs get one under each db_fence mode, the
environment that gives a scheduler its epoch, the operator's words for a fence that is not
whole, and the keeper's verdicts before a start (with a fake fence and a fake clock)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, cast

import pytest
from sqlalchemy.engine import make_url

from airflow_sentinel.clock import FakeClock
from airflow_sentinel.config import Settings
from airflow_sentinel.controller import events as ev
from airflow_sentinel.controller.db_fence import START, FenceKeeper
from airflow_sentinel.errors import UserError
from airflow_sentinel.fence import DbFence, FenceError, FenceState, RaiseResult, open_fence
from airflow_sentinel.fence.base import Dialect
from airflow_sentinel.fence.mysql import MySql
from airflow_sentinel.fence.postgres import Postgres

PG = "postgresql+psycopg://airflow:pw@db.example:5432/airflow"
MY = "mysql+pymysql://airflow:s3cret@db.example:3306/airflow?charset=utf8mb4"
TABLES = ("dag_run", "task_instance", "job")
WHOLE = FenceState(table=True, epoch=4, fenced=TABLES, unfenced=())


# -- open_fence ----------------------------------------------------------------------------
@pytest.mark.parametrize("url", [PG, MY, "sqlite:////tmp/airflow.db"])
def test_off_opens_nothing(url: str) -> None:
    assert open_fence("off", url, 3, 10) is None


def test_auto_on_sqlite_opens_nothing() -> None:
    assert open_fence("auto", "sqlite:////tmp/airflow.db", 3, 10) is None


def one_line_user_error(mode: str, url: str) -> str:
    with pytest.raises(UserError) as caught:
        open_fence(mode, url, 3, 10)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_on_on_sqlite_says_which_databases_have_a_fence() -> None:
    message = one_line_user_error("on", "sqlite:////tmp/airflow.db")
    assert "db_fence = on" in message and "sqlite" in message
    assert "PostgreSQL" in message and "MySQL/MariaDB" in message


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("mysql+mysqlconnector://airflow:pw@db/airflow", "mysql+pymysql"),
        ("mysql+pymysql://a:pw@db/airflow?init_command=SET+%40x+%3D+1", "init_command"),
        ("postgresql+pg8000://airflow:pw@db/airflow", "postgresql+psycopg"),
    ],
    ids=["mysqlconnector", "own-init-command", "pg8000"],
)
def test_a_session_that_cannot_carry_an_epoch(url: str, words: str) -> None:
    message = one_line_user_error("on", url)
    assert words in message and "db_fence = off" in message
    assert "pw" not in message
    assert open_fence("auto", url, 3, 10) is None


@pytest.mark.parametrize(
    ("airflows", "ours"),
    [
        ("mysql://airflow:s3cret@db/airflow", "mysql+pymysql"),  # mysqlclient's
        ("mysql+mysqldb://airflow:s3cret@db/airflow", "mysql+pymysql"),
        ("postgresql+psycopg2://airflow:s3cret@db/airflow", "postgresql+psycopg"),
        ("postgres://airflow:s3cret@db/airflow", "postgresql+psycopg"),
    ],
)
def test_our_connections_use_our_drivers_and_the_scheduler_keeps_airflows(
    airflows: str, ours: str
) -> None:
    fence = open_fence("on", airflows, 3, 10)
    assert fence is not None
    try:
        assert fence._engine.url.drivername == ours
        assert fence.url == airflows  # what the scheduler's environment is built from
        env = fence.dialect.scheduler_env(4, fence.url, {})
        if "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" in env:
            given = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
            assert given.startswith(airflows.split("://", maxsplit=1)[0] + "://")
            assert "s3cret" in given  # the scheduler must still be able to log in
    finally:
        fence.close()


@pytest.mark.parametrize(
    ("url", "dialect"),
    [
        (PG, "postgresql"),
        ("postgresql://airflow@db/airflow", "postgresql"),
        (MY, "mysql"),
        ("mariadb+pymysql://airflow@db/airflow", "mysql"),
    ],
)
def test_a_fence_opens_without_connecting(url: str, dialect: str) -> None:
    fence = open_fence("on", url, 3, 10)  # db.example does not resolve: nothing connects
    assert fence is not None
    try:
        assert fence.dialect.name == dialect and fence.url == url
        assert "pw" not in fence.description and "s3cret" not in fence.description
    finally:
        fence.close()
    auto = open_fence("auto", url, 3, 10)
    assert auto is not None
    auto.close()


# -- the scheduler's environment -----------------------------------------------------------
def test_postgres_gives_the_epoch_in_pgoptions() -> None:
    assert Postgres().scheduler_env(5, PG, {}) == {"PGOPTIONS": "-c sentinel.epoch=5"}


def test_postgres_appends_the_epoch_to_the_operators_pgoptions() -> None:
    env = Postgres().scheduler_env(5, PG, {"PGOPTIONS": " -c statement_timeout=10 "})
    assert env == {"PGOPTIONS": "-c statement_timeout=10 -c sentinel.epoch=5"}


def test_postgres_puts_the_epoch_beside_the_urls_own_options() -> None:
    url = f"{PG}?options=-csearch_path%3Dpublic&sslmode=prefer"
    env = Postgres().scheduler_env(7, url, {"PGOPTIONS": "-c sentinel.epoch=1"})
    assert set(env) == {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"}
    parsed = make_url(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    assert parsed.query["options"] == "-csearch_path=public -c sentinel.epoch=7"
    assert parsed.query["sslmode"] == "prefer"
    assert parsed.password == "pw" and parsed.database == "airflow"


def test_mysql_gives_the_epoch_in_the_urls_init_command() -> None:
    env = MySql().scheduler_env(5, MY, {})
    assert set(env) == {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"}
    parsed = make_url(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    assert parsed.query["init_command"] == "SET @sentinel_epoch = 5"
    assert parsed.query["charset"] == "utf8mb4"
    assert (parsed.username, parsed.password, parsed.host, parsed.port) == (
        "airflow",
        "s3cret",
        "db.example",
        3306,
    )
    assert parsed.drivername == "mysql+pymysql" and parsed.database == "airflow"


def test_a_password_with_url_characters_survives() -> None:
    url = make_url(MY).set(password="p@ss/w:rd%").render_as_string(False)
    parsed = make_url(MySql().scheduler_env(2, url, {})["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    assert parsed.password == "p@ss/w:rd%"


# -- FenceState.problem --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("state", "problem"),
    [
        (WHOLE, None),
        (
            FenceState(True, 0, ("dag_run",), (), missing_tables=("task_instance", "job")),
            "Airflow's tables task_instance, job do not exist yet (run airflow db migrate first)",
        ),
        (
            FenceState(False, None, (), TABLES[:2], missing_tables=("job",)),
            "Airflow's table job does not exist yet (run airflow db migrate first)",
        ),
        (FenceState(False, None, (), TABLES), "the table sentinel_fence is missing"),
        (FenceState(True, None, TABLES, ()), "sentinel_fence has no row for the scheduler"),
        (FenceState(True, 3, TABLES[:2], ("job",)), "the table job has no fence trigger"),
        (
            FenceState(True, 3, ("job",), ("dag_run", "task_instance")),
            "the tables dag_run, task_instance have no fence trigger",
        ),
    ],
)
def test_problem_texts(state: FenceState, problem: str | None) -> None:
    assert state.problem() == problem
    assert state.complete is (problem is None)


# -- the keeper ----------------------------------------------------------------------------
@dataclass
class FakeFence:
    """What the keeper uses of a DbFence; a raise takes the wait it was given."""

    clock: FakeClock
    current: FenceState | FenceError = WHOLE
    results: list[RaiseResult] = field(default_factory=list)
    calls: list[tuple[int, float, bool]] = field(default_factory=list)
    dialect: Dialect = field(default_factory=Postgres)
    url: str = PG

    def state(self) -> FenceState:
        if isinstance(self.current, FenceError):
            raise self.current
        return self.current

    def raise_to(self, epoch: int, holder: str, wait: float, end_blockers: bool) -> RaiseResult:
        self.calls.append((epoch, wait, end_blockers))
        result = self.results.pop(0) if self.results else RaiseResult(True, epoch, 0.01)
        self.clock.advance(result.waited_s)
        return result


BLOCKED_WHY = "transactions that passed the check are still open after 3s"


def blocked(wait: float) -> RaiseResult:
    return RaiseResult(False, 5, wait, why=BLOCKED_WHY)


@dataclass
class Emitted:
    events: list[tuple[str, str, int]] = field(default_factory=list)

    def __call__(self, kind: str, message: str, level: int) -> None:
        self.events.append((kind, message, level))

    def kinds(self) -> list[str]:
        return [kind for kind, _message, _level in self.events]


def keeper_for(
    fake: FakeFence, settings: Settings, clock: FakeClock, emit: Emitted, **changes: Any
) -> FenceKeeper:
    chosen = replace(settings, **changes)
    return FenceKeeper(cast(DbFence, fake), lambda: chosen, clock, emit)


def test_a_whole_fence_raised_lets_the_scheduler_start(
    settings: Settings, clock: FakeClock
) -> None:
    fake, emit = FakeFence(clock), Emitted()
    keeper = keeper_for(fake, settings, clock, emit)
    assert keeper.before_start(5) is START
    assert fake.calls == [(5, settings.renew_interval / 2, False)]
    assert keeper.raised_epoch == 5
    assert emit.kinds() == [ev.DB_FENCE_RAISED]


@pytest.mark.parametrize(
    "current",
    [
        FenceState(True, 3, TABLES[:2], ("job",)),
        FenceState(False, None, (), TABLES),
    ],
    ids=["a-trigger-missing", "not-installed"],
)
def test_a_fence_not_whole_is_a_refusal(
    settings: Settings, clock: FakeClock, current: FenceState
) -> None:
    fake = FakeFence(clock, current=current)
    verdict = keeper_for(fake, settings, clock, Emitted()).before_start(5)
    assert not verdict.start and verdict.wait is None
    assert verdict.refusal is not None
    problem = current.problem()
    assert problem is not None and problem in verdict.refusal
    assert "airflow-sentinel fence install" in verdict.refusal
    assert fake.calls == []  # not raised


def test_a_fence_that_cannot_be_read_is_a_refusal(settings: Settings, clock: FakeClock) -> None:
    fake = FakeFence(clock, current=FenceError("cannot read the fence in x: no answer within 3s"))
    verdict = keeper_for(fake, settings, clock, Emitted()).before_start(5)
    assert verdict.refusal is not None and "no answer within 3s" in verdict.refusal
    assert fake.calls == []


def test_a_blocked_raise_waits_and_ends_the_blockers_after_db_fence_wait(
    settings: Settings, clock: FakeClock
) -> None:
    fake, emit = FakeFence(clock), Emitted()
    keeper = keeper_for(fake, settings, clock, emit, renew_interval=3.0, db_fence_wait=10.0)
    fake.results = [blocked(1.5)] * 6
    for _ in range(6):
        verdict = keeper.before_start(5)
        assert not verdict.start and verdict.refusal is None  # not a failed start
        assert verdict.wait == BLOCKED_WHY
    assert emit.kinds() == [ev.DB_FENCE_WAITING]  # once, not every cycle
    fake.results = [RaiseResult(True, 5, 1.0, ended=(77,))]
    assert keeper.before_start(5) is START
    # Six cycles of half a renew_interval each, then what is left of the 10 s, ending them.
    assert fake.calls == [(5, 1.5, False)] * 6 + [(5, 1.0, True)]
    ended = [m for kind, m, level in emit.events if "ended 1 connection" in m]
    assert len(ended) == 1 and "77" in ended[0] and "10.0s" in ended[0]
    # The next block starts counting again.
    fake.results = [blocked(1.5)]
    assert keeper.before_start(6).wait == BLOCKED_WHY
    assert fake.calls[-1] == (6, 1.5, False)


def test_a_wait_shorter_than_an_attempt_ends_the_blockers_at_once(
    settings: Settings, clock: FakeClock
) -> None:
    fake = FakeFence(clock)
    keeper = keeper_for(fake, settings, clock, Emitted(), renew_interval=3.0, db_fence_wait=1.0)
    assert keeper.before_start(5) is START
    assert fake.calls == [(5, 1.0, True)]


def test_a_fence_above_the_leases_epoch_is_a_refusal_naming_reset(
    settings: Settings, clock: FakeClock
) -> None:
    fake = FakeFence(clock)
    fake.results = [RaiseResult(False, 9, 0.01, why="the fence is at epoch 9, above 5")]
    verdict = keeper_for(fake, settings, clock, Emitted()).before_start(5)
    assert not verdict.start and verdict.refusal is not None
    assert "airflow-sentinel fence reset" in verdict.refusal and "epoch 9" in verdict.refusal


def test_a_raise_that_waited_long_starts_after_the_next_renewal(
    settings: Settings, clock: FakeClock
) -> None:
    fake = FakeFence(clock)
    keeper = keeper_for(fake, settings, clock, Emitted(), renew_interval=3.0)
    fake.results = [RaiseResult(True, 5, 1.6)]  # more than half a renew_interval
    verdict = keeper.before_start(5)
    assert not verdict.start and verdict.refusal is None
    assert verdict.wait is not None and "next renewal" in verdict.wait
    assert keeper.raised_epoch == 5
    assert keeper.before_start(5) is START  # raised already: at once
    fake.results = [RaiseResult(True, 6, 1.4)]  # less than half
    assert keeper.before_start(6) is START


def test_the_keeper_hands_the_scheduler_its_epoch(settings: Settings, clock: FakeClock) -> None:
    keeper = keeper_for(FakeFence(clock), settings, clock, Emitted())
    assert keeper.scheduler_env(5, {"PGOPTIONS": "-c a=b"}) == {
        "PGOPTIONS": "-c a=b -c sentinel.epoch=5"
    }
    mysql = keeper_for(FakeFence(clock, dialect=MySql(), url=MY), settings, clock, Emitted())
    env = mysql.scheduler_env(5, {})
    assert "init_command=SET" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
