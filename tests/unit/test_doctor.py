"""doctor's parts: fingerprints, their comparison, the local checks, the report."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import pytest

from airflow_sentinel.config import Settings, load_settings
from airflow_sentinel.config.airflow_cfg import AirflowConfig, load_airflow_config
from airflow_sentinel.controller.published import READY, Publisher
from airflow_sentinel.doctor.compare import compare_fingerprints, describe
from airflow_sentinel.doctor.findings import FINDING, INFO, OK, Line, Report
from airflow_sentinel.doctor.fingerprint import (
    FingerprintKeeper,
    node_fingerprint,
    take_fingerprint,
)
from airflow_sentinel.doctor.folders import Budget, folder_digest
from airflow_sentinel.doctor.local import fence_line, multi_scheduler_text, scheduler_command_line
from airflow_sentinel.doctor.options import (
    raw_option,
    secretless_option,
    secretless_url,
    sql_identity,
)
from airflow_sentinel.doctor.skew import Skew, measure, skew_line
from airflow_sentinel.doctor.starters import Host, starter_lines
from airflow_sentinel.fence import FenceError, FenceState
from airflow_sentinel.metastore.base import NodeRecord
from tests.support.cluster import wait_until

if TYPE_CHECKING:
    from airflow_sentinel.controller.loop import Controller


def node(node_id: str, fingerprint: Mapping[str, Any] | None, version: str = "0.1.0") -> NodeRecord:
    return NodeRecord(
        node_id=node_id,
        host=f"{node_id}/1",
        role="standby",
        scheduler_running=False,
        scheduler_pid=None,
        fit=True,
        version=version,
        epoch=None,
        fingerprint=None if fingerprint is None else json.dumps(fingerprint),
    )


ALIKE: dict[str, Any] = {
    "database": "postgresql://db1:5432/airflow",
    "dags_folder": {"sha256": "9f8e7d6c5b4a", "files": 12},
    "airflow_version": "2.10.5",
    "lease_ttl": "15",
}


# -- comparison ---------------------------------------------------------------------------
def test_one_drifted_node_is_named_against_the_others_one_line_per_key() -> None:
    drifted = {
        **ALIKE,
        "dags_folder": {"sha256": "1a2b3c4d9999", "files": 11},
        "airflow_version": "3.3.2",
    }
    lines = compare_fingerprints(
        [node("node-a", ALIKE), node("node-b", drifted), node("node-c", ALIKE)]
    )
    assert [line.text for line in lines] == [
        "dags_folder: node-b differs (sha256 1a2b3c4d…, 11 files) from node-a, node-c "
        "(sha256 9f8e7d6c…, 12 files)",
        "airflow_version: node-b differs (3.3.2) from node-a, node-c (2.10.5)",
    ]
    assert {line.level for line in lines} == {FINDING}
    assert lines[1].detail["differing"] == ["node-b"]


def test_a_tie_takes_the_active_nodes_value_as_the_reference() -> None:
    other = {**ALIKE, "lease_ttl": "4"}
    (line,) = compare_fingerprints([node("a", ALIKE), node("b", other)], active="b")
    assert line.text == "lease_ttl: a differs (15) from b (4)"


def test_three_values_name_each_minority() -> None:
    prints = [node("a", ALIKE), node("b", ALIKE), node("c", {**ALIKE, "lease_ttl": "4"})]
    prints.append(node("d", {**ALIKE, "lease_ttl": "8"}))
    (line,) = compare_fingerprints(prints)
    assert line.text == "lease_ttl: c differs (4); d differs (8) from a, b (15)"


def test_a_key_only_newer_nodes_record_is_a_difference() -> None:
    (line,) = compare_fingerprints([node("a", ALIKE), node("b", {**ALIKE, "new_key": "x"})])
    assert line.text == "new_key: b differs (x) from a ((not recorded))"


def test_nodes_without_a_fingerprint_are_reported_once_and_not_compared() -> None:
    lines = compare_fingerprints(
        [node("a", ALIKE), node("b", None, version="0.0.9"), node("c", ALIKE), node("d", None)]
    )
    assert [line.level for line in lines] == [FINDING, OK]
    assert lines[0].text.startswith("no fingerprint from b (airflow-sentinel 0.0.9), d (")
    assert lines[1].text == "fingerprints: a, c are alike"


def test_an_unreadable_fingerprint_counts_as_none() -> None:
    broken = NodeRecord("b", "h", "standby", False, None, True, "0.1.0", None, fingerprint="{x")
    lines = compare_fingerprints([node("a", ALIKE), broken])
    assert [line.level for line in lines] == [FINDING, INFO]
    assert lines[1].text == "only a reports a fingerprint: nothing to compare it with"


def test_a_single_live_node_has_nothing_to_compare() -> None:
    (line,) = compare_fingerprints([node("a", ALIKE)])
    assert (line.level, line.text) == (
        INFO,
        "only a reports a fingerprint: nothing to compare it with",
    )


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ({"from": "command", "sha256": "abcdef0123456789"}, "given as a command, sha256 abcdef01…"),
        ({"too_large": "more than 20000 files"}, "too large: more than 20000 files"),
        ({"missing": "no such folder"}, "missing: no such folder"),
        ("LocalExecutor", "LocalExecutor"),
    ],
)
def test_values_are_described_in_a_few_words(value: object, shown: str) -> None:
    assert describe(value) == shown


# -- folders ------------------------------------------------------------------------------
def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_a_folder_hash_follows_content_and_skips_caches_and_hidden_folders(tmp_path: Path) -> None:
    one = _tree(tmp_path / "one", {"a.py": "x = 1", "sub/b.py": "y", ".airflowignore": "tmp"})
    two = _tree(
        tmp_path / "two",
        {
            "a.py": "x = 1",
            "sub/b.py": "y",
            ".airflowignore": "tmp",
            "__pycache__/a.cpython-311.pyc": "junk",
            "sub/c.pyc": "junk",
            ".git/HEAD": "ref",
        },
    )
    first, second = folder_digest(one), folder_digest(two)
    assert first == second
    assert first["files"] == 3
    (two / "sub" / "b.py").write_text("z")
    assert folder_digest(two)["sha256"] != first["sha256"]


def test_a_renamed_file_changes_the_hash(tmp_path: Path) -> None:
    folder = _tree(tmp_path / "d", {"a.py": "x"})
    before = folder_digest(folder)
    (folder / "a.py").rename(folder / "b.py")
    assert folder_digest(folder)["sha256"] != before["sha256"]


def test_a_huge_folder_is_recorded_as_too_large(tmp_path: Path) -> None:
    folder = _tree(tmp_path / "d", {f"f{i}.py": "x" * 10 for i in range(5)})
    assert folder_digest(folder, Budget(max_files=4)) == {"too_large": "more than 4 files"}
    assert folder_digest(folder, Budget(max_bytes=20)) == {"too_large": "more than 20 bytes"}
    ticks = iter(range(100))
    slow = folder_digest(folder, Budget(max_seconds=2), now=lambda: float(next(ticks)))
    assert slow == {"too_large": "not hashed within 2s"}


def test_a_missing_folder_is_recorded_as_missing(tmp_path: Path) -> None:
    assert folder_digest(tmp_path / "nothing") == {"missing": "no such folder"}


# -- options ------------------------------------------------------------------------------
def test_options_are_found_in_airflows_order_and_commands_are_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    cfg = f"[celery]\nbroker_url = redis://file:6379/0\nresult_backend_cmd = touch {marker}\n"
    (tmp_path / "airflow.cfg").write_text(cfg)
    config = load_airflow_config(tmp_path, {"AIRFLOW__CELERY__BROKER_URL_CMD": "echo env"})
    assert raw_option(config, "celery", "broker_url").kind == "command"  # env beats the file
    backend = secretless_option(config, "celery", "result_backend")
    assert backend["from"] == "command"
    assert not marker.exists()
    plain = load_airflow_config(tmp_path, {})
    assert secretless_option(plain, "celery", "broker_url") == "redis://file:6379/0"


@pytest.mark.parametrize(
    ("url", "recorded"),
    [
        ("redis://:s3cret@redis:6379/0", "redis://redis:6379/0"),
        ("amqp://user:s3cret@rabbit:5672//", "amqp://rabbit:5672//"),
        (
            "sentinel://:s3cret@h1:26379;sentinel://:s3cret@h2:26379",
            "sentinel://h1:26379;sentinel://h2:26379",
        ),
        (
            "db+postgresql://u:s3cret@db/airflow?sslmode=require&password=s3cret",
            "db+postgresql://db/airflow?sslmode=require",
        ),
    ],
)
def test_broker_urls_lose_users_and_passwords(url: str, recorded: str) -> None:
    assert secretless_url(url) == recorded


def test_the_database_is_dialect_host_port_and_name_only() -> None:
    url = "postgresql+psycopg2://airflow:s3cret@DB1/airflow?sslmode=require&sslpassword=s3cret"
    assert sql_identity(url) == "postgresql://db1:5432/airflow?sslmode=require"
    assert sql_identity("mysql+mysqldb://a:b@db2:3307/af") == "mysql://db2:3307/af"
    assert sql_identity("sqlite:////srv/airflow/airflow.db") == "sqlite:////srv/airflow/airflow.db"


# -- the fingerprint ----------------------------------------------------------------------
def fake_airflow(root: Path, version: str, python: str = "3.11.7") -> Path:
    """A virtual environment's files as the fingerprint reads them; nothing to import."""
    packages = root / "lib" / f"python{python.rsplit('.', 1)[0]}" / "site-packages"
    (packages / "airflow").mkdir(parents=True)
    (packages / f"apache_airflow-{version}.dist-info").mkdir()
    (root / "pyvenv.cfg").write_text(f"home = /usr/bin\nversion_info = {python}\n")
    program = root / "bin" / "airflow"
    program.parent.mkdir()
    program.write_text(f"#!{root}/bin/python\n")
    program.chmod(0o755)
    return program


def _settings(tmp_path: Path, command: str, **more: str) -> Settings:
    flags = {"node_id": "a", "metastore": f"sqlite:///{tmp_path / 'm.db'}"}
    flags |= {"scheduler_command": command, **more}
    return load_settings(flags, environ={"AIRFLOW_HOME": str(tmp_path)}, airflow_home=tmp_path)


def test_a_fingerprint_names_every_value_and_holds_no_secret(tmp_path: Path) -> None:
    program = fake_airflow(tmp_path / "venv", "2.10.5")
    (tmp_path / "airflow.cfg").write_text(
        "[database]\nsql_alchemy_conn = postgresql://airflow:s3cret@db1/airflow\n"
        "[core]\nexecutor = CeleryExecutor\ndags_folder = $AIRFLOW_HOME/mydags\n"
        "[celery]\nbroker_url = redis://:s3cret@redis:6379/0\n"
    )
    _tree(tmp_path / "mydags", {"a.py": "x"})
    settings = _settings(tmp_path, f"{program} scheduler", lease_ttl="20")
    values = take_fingerprint(settings, {"AIRFLOW_HOME": str(tmp_path), "PATH": "/nowhere"})
    assert values["database"] == "postgresql://db1:5432/airflow"
    assert values["executor"] == "CeleryExecutor"
    assert values["celery_broker_url"] == "redis://redis:6379/0"
    assert values["dags_folder"]["files"] == 1
    assert values["plugins_folder"] == {"missing": "no such folder"}
    assert (values["airflow_version"], values["python_version"]) == ("2.10.5", "3.11.7")
    assert (values["lease_ttl"], values["renew_interval"], values["max_restarts"]) == (
        "20",
        "2",
        "3",
    )
    assert "s3cret" not in json.dumps(values)


def test_environment_variables_override_airflow_cfg_as_in_airflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "airflow.cfg").write_text("[core]\nexecutor = LocalExecutor\n")
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    fingerprint = node_fingerprint(_settings(tmp_path, "no-such-program scheduler"))
    assert fingerprint is not None
    values = json.loads(fingerprint)
    assert values["executor"] == "CeleryExecutor"
    assert values["airflow_version"] == "(not found)"


# -- starters -----------------------------------------------------------------------------
def _host(tmp_path: Path, run: Callable[[list[str]], str | None] = lambda argv: None) -> Host:
    return Host(
        systemd_dirs=(tmp_path / "etc-systemd", tmp_path / "lib-systemd"),
        cron_files=(tmp_path / "crontab",),
        cron_dirs=(tmp_path / "cron.d",),
        run=run,
    )


SCHEDULER_UNIT = "[Service]\nExecStart=/srv/venv/bin/airflow scheduler\n"
OUR_UNIT = (
    "[Service]\nExecStart=/opt/airflow-sentinel/bin/airflow-sentinel start "
    '--scheduler-command "airflow scheduler"\n'
)


def test_a_scheduler_unit_is_a_finding_and_our_own_unit_is_not(tmp_path: Path) -> None:
    _tree(
        tmp_path / "etc-systemd",
        {"airflow-scheduler.service": SCHEDULER_UNIT, "airflow-sentinel.service": OUR_UNIT},
    )
    _tree(tmp_path / "lib-systemd", {"airflow-scheduler.service": "masked copy, not read"})
    (line,) = starter_lines(["airflow", "scheduler"], _host(tmp_path))
    assert line.level == FINDING
    assert line.text.startswith(
        f"systemd unit airflow-scheduler.service ({tmp_path}/etc-systemd/"
        "airflow-scheduler.service) starts an Airflow scheduler (its state is unknown"
    )


def test_a_disabled_inactive_unit_is_only_worth_knowing(tmp_path: Path) -> None:
    _tree(
        tmp_path / "lib-systemd",
        {
            "af.service": SCHEDULER_UNIT,
            "web.service.d/x.conf": "[Service]\nExecStartPre=airflow scheduler -D\n",
        },
    )
    answers = {
        "list-unit-files": "af.service disabled enabled\nweb.service enabled enabled\n",
        "list-units": "web.service loaded active running Web\n",
    }
    host = _host(tmp_path, lambda argv: answers.get(argv[1]))
    af, web = starter_lines(["airflow", "scheduler"], host)
    assert (af.level, af.detail["enabled"], af.detail["active"]) == (INFO, "disabled", "inactive")
    assert (web.level, web.detail["unit"]) == (FINDING, "web.service")
    assert "is enabled, active" in web.text


def test_cron_entries_are_findings_that_show_no_command_text(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "crontab": "# airflow scheduler\n@reboot root "
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=pg://u:s3cret@h/db /srv/bin/my-airflow run\n"
        },
    )
    _tree(
        tmp_path / "cron.d",
        {
            "airflow": "SHELL=/bin/sh\n@reboot airflow airflow scheduler -D\n",
            "airflow.dpkg-old": "@reboot airflow scheduler",
        },
    )
    host = _host(
        tmp_path,
        lambda argv: "* * * * * /srv/bin/my-airflow run --x\n" if argv[0] == "crontab" else None,
    )
    lines = starter_lines(["/srv/bin/my-airflow", "run"], host)
    tail = ", starts an Airflow scheduler; remove that entry, the controllers start the scheduler"
    assert [line.text for line in lines] == [
        f"cron: this user's crontab, line 1{tail}",
        f"cron: {tmp_path}/crontab, line 2{tail}",
        f"cron: {tmp_path}/cron.d/airflow, line 2{tail}",
    ]
    assert all("s3cret" not in json.dumps(line.to_json()) for line in lines)


def test_a_host_without_other_starters_says_so(tmp_path: Path) -> None:
    (line,) = starter_lines(["airflow", "scheduler"], _host(tmp_path))
    assert line.level == OK


# -- the scheduler command, the database, the clock ------------------------------------------
def test_a_scheduler_command_that_does_not_resolve_is_a_finding(tmp_path: Path) -> None:
    line = scheduler_command_line(_settings(tmp_path, "airflow scheduler"), path=str(tmp_path))
    assert line.level == FINDING
    assert line.text.startswith("scheduler_command: program 'airflow' not found on PATH")
    program = fake_airflow(tmp_path / "venv", "3.3.2")
    found = scheduler_command_line(
        _settings(tmp_path, "airflow scheduler"), path=str(program.parent)
    )
    assert (found.level, found.text) == (
        OK,
        f"scheduler_command: airflow resolves to {program} (Airflow 3.3.2)",
    )


@pytest.mark.parametrize(
    ("server", "locking", "says"),
    [
        ("PostgreSQL 16.2", True, "on which Airflow can run several schedulers"),
        ("MySQL 8.0.36", True, "on which Airflow can run several schedulers"),
        ("MySQL 5.7.44", True, "does not support several schedulers"),
        ("MariaDB 10.11.6", True, "does not support several schedulers"),
        ("SQLite 3.40.1", True, "does not support several schedulers"),
        ("PostgreSQL 16.2", False, "use_row_level_locking is off"),
    ],
)
def test_multi_scheduler_support_follows_the_database(
    server: str, locking: bool, says: str
) -> None:
    assert says in multi_scheduler_text(server, locking)


def test_clock_skew_is_measured_at_the_middle_of_the_round_trip() -> None:
    times = iter([100.0, 100.4])
    skew = measure(lambda: 103.2, now=lambda: next(times))
    assert skew.offset_s == pytest.approx(3.0)
    assert skew.within_s == pytest.approx(0.2)


def test_clock_skew_beyond_the_bound_is_information_never_a_finding() -> None:
    assert skew_line(Skew(0.3, 0.01)).level == OK
    far = skew_line(Skew(-5.0, 0.01), bound=2.0)
    assert far.level == INFO
    assert "5.00s (±0.01s) behind this host's, more than 2s" in far.text
    assert skew_line(Skew(2.1, 0.5), bound=2.0).level == OK  # within the round trip's doubt


# -- the report -----------------------------------------------------------------------------
def test_the_report_exits_one_with_findings_and_has_a_stable_json_schema() -> None:
    finding = Line(
        FINDING, "fingerprint", "lease_ttl: b differs (4) from a (15)", {"key": "lease_ttl"}
    )
    report = Report("sqlite:////m.db", "a", ["a", "b"], [finding, Line(OK, "clock", "clock: fine")])
    assert report.exit_code == 1
    data = report.to_json()
    assert list(data) == [
        "schema_version",
        "metastore",
        "node_id",
        "live_nodes",
        "consistent",
        "findings",
        "checks",
    ]
    assert (data["schema_version"], data["consistent"], data["findings"]) == (1, False, 1)
    assert data["checks"][0] == {
        "check": "fingerprint",
        "level": "finding",
        "text": finding.text,
        "key": "lease_ttl",
    }
    assert report.text_lines() == [
        "metastore: sqlite:////m.db",
        "live nodes: a, b   this node: a",
        "FINDING  lease_ttl: b differs (4) from a (15)",
        "ok       clock: fine",
        "1 finding",
    ]
    calm = Report("m", "a", ["a"], [Line(INFO, "clock", "x")])
    assert (calm.exit_code, calm.text_lines()[-1]) == (0, "consistent: no findings")


def test_a_running_controllers_fingerprint_is_taken_again_after_a_reload(tmp_path: Path) -> None:
    program = fake_airflow(tmp_path / "venv", "2.10.5")
    _tree(tmp_path / "dags", {"a.py": "x"})
    settings = _settings(tmp_path, f"{program} scheduler")
    controller = SimpleNamespace(
        settings=settings, published=Publisher(), fingerprint=node_fingerprint(settings)
    )
    keeper = FingerprintKeeper(cast("Controller", controller), every=3600)
    keeper.start()
    try:
        controller.published.lifecycle(READY)  # after the first cycle: already taken
        before = controller.fingerprint
        assert json.loads(before)["dags_folder"]["files"] == 1
        (tmp_path / "dags" / "b.py").write_text("y")  # a DAG deploy, then a reload
        controller.published.lifecycle(READY)
        wait_until(lambda: controller.fingerprint != before, 10, "the fingerprint taken again")
        assert json.loads(controller.fingerprint)["dags_folder"]["files"] == 2
    finally:
        keeper.stop()


# -- the fence in Airflow's database --------------------------------------------------------
class _Fence:
    description = "postgresql+psycopg://airflow@db:5432/airflow"

    def __init__(self, state: FenceState | None = None, error: str = "") -> None:
        self._state, self._error, self.closed = state, error, False

    def state(self) -> FenceState:
        if self._error:
            raise FenceError(self._error)
        assert self._state is not None
        return self._state

    def close(self) -> None:
        self.closed = True


def _fence_config(tmp_path: Path, url: str) -> AirflowConfig:
    (tmp_path / "airflow.cfg").write_text(f"[database]\nsql_alchemy_conn = {url}\n")
    return load_airflow_config(tmp_path)


PG = "postgresql+psycopg2://airflow:s3cret@db:5432/airflow"


def test_a_whole_fence_is_ok_and_names_its_epoch_and_tables(tmp_path: Path) -> None:
    whole = _Fence(FenceState(True, 4, ("dag_run", "task_instance", "job"), ()))
    line = fence_line(
        _settings(tmp_path, "airflow scheduler"),
        _fence_config(tmp_path, PG),
        5.0,
        opener=lambda *args: cast(Any, whole),
    )
    assert (line.level, line.text) == (
        OK,
        "db_fence: whole in postgresql://db:5432/airflow at epoch 4 "
        "(fenced: dag_run, task_instance, job)",
    )
    assert line.detail["epoch"] == 4 and whole.closed


@pytest.mark.parametrize(
    ("state", "says"),
    [
        (
            FenceState(True, 4, ("dag_run", "job"), ("task_instance",)),
            "task_instance",
        ),
        (FenceState(False, None, (), ("dag_run", "task_instance", "job")), "is missing"),
        (
            FenceState(False, None, (), (), missing_tables=("dag_run", "task_instance", "job")),
            "run airflow db migrate, then airflow-sentinel fence install",
        ),
    ],
)
def test_a_fence_that_is_not_whole_is_a_finding_with_the_fix(
    tmp_path: Path, state: FenceState, says: str
) -> None:
    line = fence_line(
        _settings(tmp_path, "airflow scheduler"),
        _fence_config(tmp_path, PG),
        5.0,
        opener=lambda *args: cast(Any, _Fence(state)),
    )
    assert line.level == FINDING
    assert line.text.startswith("db_fence: the fence in postgresql://db:5432/airflow is not whole")
    assert says in line.text and line.text.endswith("install")
    assert "no scheduler starts until it is: run " in line.text


def test_an_unreachable_database_is_a_finding_not_a_traceback(tmp_path: Path) -> None:
    failing = _Fence(error="cannot read the fence in db: no answer within 5s")
    line = fence_line(
        _settings(tmp_path, "airflow scheduler"),
        _fence_config(tmp_path, PG),
        5.0,
        opener=lambda *args: cast(Any, failing),
    )
    assert line.level == FINDING and "no answer within 5s" in line.text and failing.closed
    refused = fence_line(  # a real connection, to a port where nothing listens
        _settings(tmp_path, "airflow scheduler"),
        _fence_config(tmp_path, "postgresql://nobody:s3cret@127.0.0.1:1/airflow"),
        5.0,
    )
    assert refused.level == FINDING and refused.text.startswith("db_fence: cannot read the fence")
    assert "s3cret" not in refused.text


def test_no_fence_is_worth_knowing_and_on_where_there_is_none_is_a_finding(
    tmp_path: Path,
) -> None:
    sqlite = _fence_config(tmp_path, f"sqlite:///{tmp_path / 'airflow.db'}")
    auto = fence_line(_settings(tmp_path, "airflow scheduler"), sqlite, 5.0)
    assert auto.level == INFO
    assert auto.text.startswith("db_fence: auto, and Airflow's database is SQLite: no fence")
    assert "one host" in auto.text
    off = fence_line(_settings(tmp_path, "airflow scheduler", db_fence="off"), sqlite, 5.0)
    assert off.level == INFO and off.text.startswith("db_fence: off: no fence")
    on = fence_line(_settings(tmp_path, "airflow scheduler", db_fence="on"), sqlite, 5.0)
    assert on.level == FINDING and "needs Airflow's database on PostgreSQL" in on.text
    driver = _fence_config(tmp_path, "mysql+mysqlconnector://a:b@db/airflow")
    unable = fence_line(_settings(tmp_path, "airflow scheduler"), driver, 5.0)
    assert unable.level == INFO and "cannot run an init_command" in unable.text
