"""The fence in Airflow's database, for real on PostgreSQL and MariaDB: what install,
remove and raise leave behind, which writes get through, and how a raise waits for (or
ends) the transactions of an older scheduler. Every outcome is read back from the tables."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.pool import NullPool

from airflow_sentinel.deadline import Call
from airflow_sentinel.fence import REJECTION, DbFence, FenceError, FenceState, open_fence
from airflow_sentinel.fence.base import CONNECT_SLACK, RaiseResult
from airflow_sentinel.fence.postgres import Postgres
from tests.support.fence_db import (
    FENCE_BACKENDS,
    FENCED,
    airflow_like_database,
    backend_of,
    error_text,
    read_tables,
    scheduler_engine,
    seed,
    wait_for_lock_waiters,
)
from tests.support.proxy import Proxy

TIMEOUT = 3.0  # the fence's timeout for one operation (renew_interval, in the controller)
WAIT = 5.0  # db_fence_wait: no raise in these tests waits longer
TABLES = tuple(FENCED)


@pytest.fixture(params=FENCE_BACKENDS)
def airflow_db(request: pytest.FixtureRequest) -> Iterator[str]:
    with airflow_like_database(str(request.param)) as url:
        seed(url)
        yield url


@pytest.fixture
def fence(airflow_db: str) -> Iterator[DbFence]:
    opened = open_fence("on", airflow_db, TIMEOUT, WAIT)
    assert opened is not None
    yield opened
    opened.close()


@pytest.fixture
def installed(fence: DbFence) -> DbFence:
    assert fence.install().complete
    return fence


@contextmanager
def connection(url: str, epoch: int | None) -> Iterator[Connection]:
    """A connection as a scheduler of ``epoch`` has them (None: as anybody else)."""
    engine = scheduler_engine(url, epoch)
    conn = engine.connect()
    try:
        yield conn
    finally:
        with contextlib.suppress(sa.exc.DBAPIError):
            conn.close()
        engine.dispose()


def writes(table: str) -> dict[str, str]:
    column = FENCED[table]
    return {
        "INSERT": f"INSERT INTO {table} VALUES (10, 'new', 'y')",
        "UPDATE": f"UPDATE {table} SET {column} = 'changed' WHERE id = 1",
        "DELETE": f"DELETE FROM {table} WHERE id = 2",
    }


def try_write(url: str, epoch: int | None, statement: str) -> str | None:
    """None when the statement committed; otherwise the server's message."""
    with connection(url, epoch) as conn:
        try:
            with conn.begin():
                conn.exec_driver_sql(statement)
        except sa.exc.DBAPIError as exc:
            return error_text(exc)
    return None


def assert_rejected(error: str | None, operation: str, table: str) -> None:
    assert error is not None, f"{operation} on {table} got through"
    assert error.startswith(REJECTION), error
    assert f"{operation} on {table} refused" in error, error


def raised(fence: DbFence, epoch: int) -> RaiseResult:
    result = fence.raise_to(epoch, "node-a", 1.0, end_blockers=False)
    assert result.raised, result
    return result


def ours_in_catalog(url: str) -> list[str]:
    """Every trigger, routine and table of the fence left in the database."""
    engine = sa.create_engine(url, poolclass=NullPool)
    if backend_of(url) == "postgresql":
        query = (
            "SELECT tgname FROM pg_trigger WHERE tgname LIKE 'sentinel%' "
            "UNION ALL SELECT proname FROM pg_proc WHERE proname LIKE 'sentinel%' "
            "UNION ALL SELECT relname FROM pg_class WHERE relname LIKE 'sentinel%'"
        )
    else:
        query = (
            "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS "
            "WHERE TRIGGER_SCHEMA = DATABASE() AND TRIGGER_NAME LIKE 'sentinel%' "
            "UNION ALL SELECT ROUTINE_NAME FROM information_schema.ROUTINES "
            "WHERE ROUTINE_SCHEMA = DATABASE() AND ROUTINE_NAME LIKE 'sentinel%' "
            "UNION ALL SELECT TABLE_NAME FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME LIKE 'sentinel%'"
        )
    with engine.connect() as conn:
        names = sorted(str(n) for n in conn.execute(sa.text(query)).scalars())
    engine.dispose()
    return names


def run_sql(url: str, statement: str) -> None:
    engine = sa.create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql(statement)
    engine.dispose()


# -- install, state, remove ----------------------------------------------------------------
def test_install_makes_the_fence_whole_at_epoch_0(fence: DbFence, airflow_db: str) -> None:
    before = fence.state()
    assert not before.complete
    assert before.problem() == "the table sentinel_fence is missing"
    state = fence.install()
    assert state == FenceState(table=True, epoch=0, fenced=TABLES, unfenced=())
    assert state.complete and state.problem() is None
    assert fence.state() == state  # read back on a connection of its own


def test_a_second_install_keeps_a_raised_epoch(installed: DbFence) -> None:
    raised(installed, 7)
    again = installed.install()
    assert again.complete and again.epoch == 7


def test_remove_leaves_nothing_and_a_stale_epoch_writes_again(
    installed: DbFence, airflow_db: str
) -> None:
    raised(installed, 5)
    assert_rejected(try_write(airflow_db, 4, writes("job")["INSERT"]), "INSERT", "job")
    assert ours_in_catalog(airflow_db) != []
    installed.remove()
    assert ours_in_catalog(airflow_db) == []
    state = installed.state()
    assert state == FenceState(table=False, epoch=None, fenced=(), unfenced=TABLES)
    assert not state.complete
    assert try_write(airflow_db, 4, writes("job")["INSERT"]) is None
    assert (10, "new", "y") in read_tables(airflow_db)["job"]
    installed.remove()  # nothing there: still fine
    assert ours_in_catalog(airflow_db) == []


def test_install_without_an_airflow_table_names_it(fence: DbFence, airflow_db: str) -> None:
    run_sql(airflow_db, "DROP TABLE job")
    with pytest.raises(FenceError) as caught:
        fence.install()
    message = str(caught.value)
    assert "\n" not in message
    assert "job" in message and "airflow db migrate" in message
    assert ours_in_catalog(airflow_db) == []  # nothing half-installed
    problem = fence.state().problem()
    assert problem is not None and "job" in problem and "airflow db migrate" in problem


def test_a_dropped_trigger_is_a_problem_naming_its_table(
    installed: DbFence, airflow_db: str
) -> None:
    if backend_of(airflow_db) == "postgresql":
        run_sql(airflow_db, "DROP TRIGGER sentinel_fence_task_instance ON task_instance")
    else:  # one trigger per operation: losing any one of them unfences the table
        run_sql(airflow_db, "DROP TRIGGER sentinel_fence_task_instance_upd")
    state = installed.state()
    assert not state.complete
    assert state.unfenced == ("task_instance",)
    assert state.problem() == "the table task_instance has no fence trigger"
    assert installed.install().complete  # repaired


def test_a_disabled_trigger_is_a_problem_on_postgresql(installed: DbFence, airflow_db: str) -> None:
    if backend_of(airflow_db) != "postgresql":
        pytest.skip("MySQL and MariaDB cannot disable a trigger")
    run_sql(airflow_db, "ALTER TABLE job DISABLE TRIGGER sentinel_fence_job")
    state = installed.state()
    assert state.unfenced == ("job",) and state.problem() is not None
    assert installed.install().complete
    raised(installed, 5)
    assert_rejected(try_write(airflow_db, 4, writes("job")["DELETE"]), "DELETE", "job")


# -- who may write -------------------------------------------------------------------------
def test_an_older_epoch_cannot_write_and_the_rows_stay_as_they_were(
    installed: DbFence, airflow_db: str
) -> None:
    raised(installed, 5)
    before = read_tables(airflow_db)
    for table in TABLES:
        for operation, statement in writes(table).items():
            assert_rejected(try_write(airflow_db, 4, statement), operation, table)
    assert read_tables(airflow_db) == before


@pytest.mark.parametrize("epoch", [5, 6, None], ids=["current", "newer", "no-epoch"])
def test_the_current_a_newer_or_no_epoch_writes(
    installed: DbFence, airflow_db: str, epoch: int | None
) -> None:
    raised(installed, 5)
    for table in TABLES:
        for statement in writes(table).values():
            assert try_write(airflow_db, epoch, statement) is None, statement
    after = read_tables(airflow_db)
    for table in TABLES:
        assert after[table] == [(1, "r1", "changed"), (10, "new", "y")]


def test_a_raise_never_lowers_the_fence(installed: DbFence, airflow_db: str) -> None:
    raised(installed, 5)
    lower = installed.raise_to(3, "node-b", 1.0, end_blockers=False)
    assert not lower.raised
    assert lower.epoch == 5 and "epoch 5" in lower.why
    assert installed.state().epoch == 5
    assert_rejected(try_write(airflow_db, 4, writes("dag_run")["INSERT"]), "INSERT", "dag_run")


def test_a_raise_of_a_fence_not_installed_says_so(fence: DbFence) -> None:
    result = fence.raise_to(1, "node-a", 1.0, end_blockers=False)
    assert not result.raised and result.why != ""


# -- a raise and the transactions that passed the check ------------------------------------
def test_a_raise_waits_for_a_stalled_transaction_that_passed_the_check(
    installed: DbFence, airflow_db: str
) -> None:
    raised(installed, 4)
    wait = 4.0
    with connection(airflow_db, 4) as stale:
        stale.begin()
        stale.exec_driver_sql("INSERT INTO job VALUES (10, 'stalled', 'y')")  # passes at 4
        raising = Call(lambda: installed.raise_to(5, "node-b", wait, end_blockers=False))
        wait_for_lock_waiters(airflow_db, 1, 5, "the raise waits for the lock")
        seen_waiting = time.monotonic()
        time.sleep(0.5)  # the stale transaction stays open a while
        assert not raising.done()
        committed_at = time.monotonic()
        stale.commit()
    assert raising.wait(wait + 2 * CONNECT_SLACK)
    result = raising.result()
    assert result.raised and result.epoch == 5 and result.ended == ()
    assert result.waited_s >= committed_at - seen_waiting
    assert result.waited_s < wait
    assert installed.state().epoch == 5
    assert (10, "stalled", "y") in read_tables(airflow_db)["job"]  # it passed the old check
    assert_rejected(try_write(airflow_db, 4, writes("job")["UPDATE"]), "UPDATE", "job")


def test_a_stall_that_does_not_end_is_ended_and_its_write_rolled_back(
    installed: DbFence, airflow_db: str
) -> None:
    raised(installed, 4)
    with connection(airflow_db, 4) as stale:
        stale.begin()
        stale.exec_driver_sql("INSERT INTO dag_run VALUES (10, 'stalled', 'y')")
        stale_id = installed.dialect.backend_id(stale)
        started = time.monotonic()
        result = installed.raise_to(5, "node-b", 1.0, end_blockers=True)
        assert time.monotonic() - started < 1.0 + 2 * CONNECT_SLACK + TIMEOUT
        assert result.raised and result.epoch == 5, result
        assert result.ended == (stale_id,)
        assert result.waited_s >= 1.0
        with pytest.raises(sa.exc.DBAPIError):
            stale.commit()
    assert [r[0] for r in read_tables(airflow_db)["dag_run"]] == [1, 2]
    assert installed.state().epoch == 5


def test_a_stall_that_does_not_end_leaves_the_fence_where_it_was(
    installed: DbFence, airflow_db: str
) -> None:
    raised(installed, 4)
    with connection(airflow_db, 4) as stale:
        stale.begin()
        stale.exec_driver_sql("INSERT INTO dag_run VALUES (10, 'stalled', 'y')")
        started = time.monotonic()
        result = installed.raise_to(5, "node-b", 1.0, end_blockers=False)
        assert time.monotonic() - started < 1.0 + 3 * CONNECT_SLACK + 5.0
        assert not result.raised and result.why != "" and result.ended == ()
        # The raise gave up in the database too: nothing waits for the lock any more.
        wait_for_lock_waiters(airflow_db, 0, 5, "the raise was cancelled")
        assert installed.state().epoch == 4
        stale.commit()  # still connected, and its write passed the check
    assert (10, "stalled", "y") in read_tables(airflow_db)["dag_run"]
    assert installed.state().epoch == 4


def test_a_write_blocked_in_the_check_during_a_raise_is_rejected_after_it(
    installed: DbFence, airflow_db: str
) -> None:
    raised(installed, 4)
    with connection(airflow_db, 4) as holder, connection(airflow_db, 4) as late:
        holder.begin()
        holder.exec_driver_sql("INSERT INTO job VALUES (10, 'held', 'y')")
        raising = Call(lambda: installed.raise_to(5, "node-b", 5.0, end_blockers=False))
        wait_for_lock_waiters(airflow_db, 1, 5, "the raise waits for the lock")

        def late_write() -> None:
            with late.begin():
                late.exec_driver_sql("INSERT INTO dag_run VALUES (11, 'late', 'y')")

        writing = Call(late_write)
        wait_for_lock_waiters(airflow_db, 2, 5, "the late write waits in the check")
        assert not raising.done() and not writing.done()
        holder.commit()
        assert raising.wait(5.0 + 2 * CONNECT_SLACK)
        assert raising.result().raised
        assert writing.wait(10)
        with pytest.raises(sa.exc.DBAPIError) as caught:
            writing.result()
    assert_rejected(error_text(caught.value), "INSERT", "dag_run")
    tables = read_tables(airflow_db)
    assert (10, "held", "y") in tables["job"]
    assert [r[0] for r in tables["dag_run"]] == [1, 2]


# -- PostgreSQL: the epoch given as a scheduler gets it --------------------------------------
SCHEDULER_SCRIPT = """
import os, sys
import sqlalchemy as sa
url = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN") or sys.argv[1]
engine = sa.create_engine(url)
try:
    with engine.begin() as conn:
        print(conn.exec_driver_sql("SHOW statement_timeout").scalar_one())
        print(conn.exec_driver_sql("SHOW search_path").scalar_one())
        conn.exec_driver_sql(sys.argv[2])
except sa.exc.DBAPIError as exc:
    print(str(exc.orig).splitlines()[0], file=sys.stderr)
    sys.exit(3)
"""


@pytest.fixture
def postgres_db() -> Iterator[str]:
    with airflow_like_database("postgresql") as url:
        seed(url)
        yield url


def as_scheduler(url: str, env: dict[str, str], statement: str) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if k != "PGOPTIONS" and not k.upper().startswith("AIRFLOW")
    }
    return subprocess.run(
        [sys.executable, "-c", SCHEDULER_SCRIPT, url, statement],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_scheduler_process_gets_its_epoch_from_pgoptions(postgres_db: str) -> None:
    fence = open_fence("on", postgres_db, TIMEOUT, WAIT)
    assert fence is not None
    try:
        fence.install()
        raised(fence, 5)
    finally:
        fence.close()
    theirs = {"PGOPTIONS": "-c statement_timeout=4321"}  # the operator's own options stay
    stale_env = Postgres().scheduler_env(4, postgres_db, theirs)
    assert set(stale_env) == {"PGOPTIONS"}
    stale = as_scheduler(postgres_db, stale_env, "INSERT INTO dag_run VALUES (10, 's', 'y')")
    assert stale.returncode == 3, stale
    assert stale.stdout.splitlines()[0] == "4321ms"
    assert stale.stderr.startswith(REJECTION)
    assert [r[0] for r in read_tables(postgres_db)["dag_run"]] == [1, 2]
    current = Postgres().scheduler_env(5, postgres_db, theirs)
    done = as_scheduler(postgres_db, current, "INSERT INTO dag_run VALUES (10, 'c', 'y')")
    assert done.returncode == 0, done.stderr
    assert (10, "c", "y") in read_tables(postgres_db)["dag_run"]


def test_a_url_with_options_gets_the_epoch_beside_them(postgres_db: str) -> None:
    url = make_url(postgres_db).update_query_dict({"options": "-csearch_path=public"})
    with_options = url.render_as_string(False)
    fence = open_fence("on", with_options, TIMEOUT, WAIT)
    assert fence is not None
    try:
        assert fence.install().complete
        raised(fence, 5)
    finally:
        fence.close()
    # With options in the URL libpq ignores PGOPTIONS: an epoch there would not count.
    environ = {"PGOPTIONS": "-c sentinel.epoch=99"}
    stale_env = Postgres().scheduler_env(4, with_options, environ)
    assert set(stale_env) == {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"}
    stale = as_scheduler(
        "unused", {**environ, **stale_env}, "UPDATE job SET latest_heartbeat = 'z'"
    )
    assert stale.returncode == 3, stale
    assert stale.stdout.splitlines()[1] == "public"
    assert stale.stderr.startswith(REJECTION)
    assert read_tables(postgres_db)["job"] == [(1, "r1", "x"), (2, "r2", "x")]
    current = {**environ, **Postgres().scheduler_env(5, with_options, environ)}
    done = as_scheduler("unused", current, "UPDATE job SET latest_heartbeat = 'z'")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1] == "public"
    assert read_tables(postgres_db)["job"] == [(1, "r1", "z"), (2, "r2", "z")]


# -- a database that stops answering -------------------------------------------------------
@pytest.fixture
def proxy(airflow_db: str) -> Iterator[Proxy]:
    parsed = make_url(airflow_db)
    default_port = 5432 if backend_of(airflow_db) == "postgresql" else 3306
    opened = Proxy((parsed.host or "127.0.0.1", parsed.port or default_port))
    yield opened
    opened.close()


def through(proxy: Proxy, url: str) -> str:
    host, port = proxy.address.rsplit(":", 1)
    return make_url(url).set(host=host, port=int(port)).render_as_string(False)


@pytest.fixture
def hung_fence(proxy: Proxy, airflow_db: str) -> Iterator[DbFence]:
    opened = open_fence("on", through(proxy, airflow_db), 2.0, 1.0)
    assert opened is not None
    assert opened.install().complete  # while the proxy still forwards
    yield opened
    proxy.thaw()
    opened.close()


def test_a_hung_database_is_a_fence_error_within_the_timeout(
    hung_fence: DbFence, proxy: Proxy
) -> None:
    proxy.freeze()
    started = time.monotonic()
    with pytest.raises(FenceError) as caught:
        hung_fence.state()
    assert time.monotonic() - started < hung_fence.timeout + 1.0
    assert "\n" not in str(caught.value)
    started = time.monotonic()
    result = hung_fence.raise_to(5, "node-b", 1.0, end_blockers=True)
    assert time.monotonic() - started < hung_fence.timeout + 1.0 + 2 * CONNECT_SLACK + 1.0
    assert not result.raised and result.why != ""


def test_a_database_that_hangs_during_a_raise_leaves_it_bounded(
    hung_fence: DbFence, proxy: Proxy, airflow_db: str
) -> None:
    direct = open_fence("on", airflow_db, TIMEOUT, WAIT)
    assert direct is not None
    try:
        raised(direct, 4)
        with connection(airflow_db, 4) as stale:
            stale.begin()
            stale.exec_driver_sql("INSERT INTO job VALUES (10, 'stalled', 'y')")
            started = time.monotonic()
            raising = Call(lambda: hung_fence.raise_to(5, "node-b", 1.0, end_blockers=True))
            wait_for_lock_waiters(airflow_db, 1, 5, "the raise waits for the lock")
            proxy.freeze()  # the raise cannot hear back, nor end the blocker, nor cancel
            # Its wait, then the blockers' and the cancel's connections (each bounded),
            # and a slack after each.
            bound = 1.0 + hung_fence.timeout + 5.0 + 2 * CONNECT_SLACK + 1.0
            assert raising.wait(bound), "the raise did not return within its bounds"
            result = raising.result()
            assert time.monotonic() - started < bound
            assert not result.raised and result.ended == () and result.why != ""
            proxy.thaw()
            wait_for_lock_waiters(airflow_db, 0, 10, "the raise ended in the database")
            assert direct.state().epoch == 4
            stale.commit()
        assert (10, "stalled", "y") in read_tables(airflow_db)["job"]
    finally:
        direct.close()


# -- the command line ----------------------------------------------------------------------
ERROR_PREFIX = "airflow-sentinel: error:"


def fence_cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("AIRFLOW")}
    return subprocess.run(
        [sys.executable, "-m", "airflow_sentinel", "fence", *args],
        env={**base, "AIRFLOW_HOME": str(home), **env},
        cwd=home,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def airflow_home(home: Path, airflow_db: str) -> Path:
    home.mkdir(exist_ok=True)
    (home / "airflow.cfg").write_text(
        f"[database]\nsql_alchemy_conn = {airflow_db}\n\n"
        f"[sentinel]\nmetastore = sqlite:///{home / 'm.db'}\n"
    )
    return home


def assert_one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stdout + result.stderr
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    return lines[0]


def test_the_fence_commands(tmp_path: Path, airflow_db: str) -> None:
    home = airflow_home(tmp_path / "home", airflow_db)
    before = fence_cli(home, "status")
    assert before.returncode == 1, before.stderr
    assert "sentinel_fence is missing" in before.stdout
    line = assert_one_line(fence_cli(home, "install"))
    assert line.startswith("fence installed in ") and line.endswith(" at epoch 0")
    assert "dag_run, task_instance, job" in line
    after = fence_cli(home, "status", "--json")
    assert after.returncode == 0, after.stderr
    assert '"problem": null' in after.stdout and '"epoch": 0' in after.stdout
    line = assert_one_line(fence_cli(home, "reset", "--yes"))  # no lease yet: epoch 0
    assert line.endswith("from epoch 0 to 0")
    line = assert_one_line(fence_cli(home, "remove", "--yes"))
    assert line.startswith("fence removed from ")
    assert ours_in_catalog(airflow_db) == []
    assert fence_cli(home, "status").returncode == 1


def test_reset_sets_the_fence_to_the_metastores_epoch(tmp_path: Path, airflow_db: str) -> None:
    home = airflow_home(tmp_path / "home", airflow_db)
    assert fence_cli(home, "install").returncode == 0
    fence = open_fence("on", airflow_db, TIMEOUT, WAIT)
    assert fence is not None
    try:
        raised(fence, 9)  # epochs of an older metastore
        line = assert_one_line(fence_cli(home, "reset", "--yes"))
        assert line.endswith("from epoch 9 to 0")
        assert fence.state().epoch == 0
    finally:
        fence.close()


def test_reset_and_remove_ask_first(tmp_path: Path, airflow_db: str) -> None:
    home = airflow_home(tmp_path / "home", airflow_db)
    assert fence_cli(home, "install").returncode == 0
    for command in ("reset", "remove"):
        refused = fence_cli(home, command)  # no answer on stdin: not confirmed
        assert refused.returncode == 2, refused
        assert ERROR_PREFIX in refused.stderr and "Traceback" not in refused.stderr
    assert ours_in_catalog(airflow_db) != []


@pytest.mark.parametrize("case", ["off", "sqlite", "not-installed-reset"])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, case: str) -> None:
    home = tmp_path / "home"
    env: dict[str, str] = {}
    command = ["status"]
    if case == "off":
        airflow_home(home, f"sqlite:///{tmp_path / 'airflow.db'}")
        env["AIRFLOW__SENTINEL__DB_FENCE"] = "off"
        expected = "db_fence = off"
    elif case == "sqlite":
        airflow_home(home, f"sqlite:///{tmp_path / 'airflow.db'}")
        expected = "sqlite"
    else:
        with airflow_like_database("postgresql") as url:
            airflow_home(home, url)
            result = fence_cli(home, "reset", "--yes")
        assert_error_line(result, "not installed")
        return
    result = fence_cli(home, *command, **env)
    assert_error_line(result, expected)


def assert_error_line(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(ERROR_PREFIX) and expected in lines[0], lines[0]


def test_a_repair_while_a_scheduler_writes_never_fails_its_writes(installed: DbFence) -> None:
    """A standby that starts, or `fence install`, repairs the fence while the active
    scheduler works: the writes of the current epoch never meet a missing check."""
    url = installed.url
    assert installed.raise_to(5, "a", WAIT, end_blockers=False).raised
    with installed._engine.begin() as conn:  # one trigger lost, as by a migration
        if backend_of(url) == "postgresql":
            conn.exec_driver_sql("DROP TRIGGER sentinel_fence_job ON job")
        else:
            conn.exec_driver_sql("DROP TRIGGER sentinel_fence_job_upd")
    failures: list[str] = []
    done = 0
    stop = time.monotonic() + 4.0

    def write_all_the_time() -> None:
        nonlocal done
        with connection(url, 5) as conn:
            while time.monotonic() < stop:
                try:
                    with conn.begin():
                        conn.exec_driver_sql(f"UPDATE dag_run SET state = 'w{done % 9}'")
                        conn.exec_driver_sql(f"UPDATE task_instance SET state = 'w{done % 9}'")
                    done += 1
                except sa.exc.DBAPIError as exc:
                    failures.append(error_text(exc))

    writer = Call(write_all_the_time, name="test-writer")
    repairs = 0
    while not writer.done():
        assert installed.install().complete
        repairs += 1
    writer.result()
    assert failures == []
    assert done > 50 and repairs > 3
    assert installed.state().epoch == 5


def test_controllers_that_start_together_both_install_the_fence(fence: DbFence) -> None:
    """Each node's `start` installs a fence it finds missing; two at once must both end
    with it whole, neither with an error (under db_fence = on, that error stops a start)."""
    others = [open_fence("on", fence.url, TIMEOUT, WAIT) for _ in range(3)]
    try:
        calls = [Call(other.install, name="test-install") for other in others if other]
        for call in calls:
            assert call.wait(30)
        states = [call.result() for call in calls]
    finally:
        for other in others:
            if other is not None:
                other.close()
    assert all(state.complete for state in states)
    assert fence.state().complete and fence.state().epoch == 0
