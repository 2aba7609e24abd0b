"""The upgrade manager's pure parts: configuration carry-over, the journal, schema heads,
file backups. (The real upgrades are in tests/integration/test_upgrade.py.)"""

from __future__ import annotations

import configparser
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from airflow_sentinel.airflow_schema import expected_head, installed_version
from airflow_sentinel.errors import UserError
from airflow_sentinel.fence import DbFence, FenceError, FenceState
from airflow_sentinel.upgrade import db_fence, files, steps
from airflow_sentinel.upgrade.command import scheduler_downtime
from airflow_sentinel.upgrade.configure import (
    Maps,
    carry_over,
    parse_defaults,
    render,
    sentinel_block,
    with_unlisted_removals,
    without_section,
)
from airflow_sentinel.upgrade.installation import AirflowEnv, UpgradeError, parse_json_tail
from airflow_sentinel.upgrade.journal import DONE, Journal, Run, StepRecord
from airflow_sentinel.upgrade.plan import parse_target
from airflow_sentinel.upgrade.services import LocalServices, ServiceSet
from airflow_sentinel.upgrade.steps import FORWARD, Context, check_configured_from, forward_steps

OLD_DEFAULTS = """[core]
# The folder
# dags_folder = /home/dags
# parallelism = 32
# executor = SequentialExecutor
# check_slas = True

[webserver]
# instance_name =
"""
NEW_DEFAULTS = """[core]
# The folder
# dags_folder = /home/dags
# parallelism = 32
# executor = LocalExecutor

[api]
# instance_name =
"""
MAPS = Maps(
    renames={("webserver", "instance_name"): ("api", "instance_name")},
    removed={("core", "check_slas"): (None, "SLAs are gone")},
    default_changes={("core", "executor"): ("SequentialExecutor", "LocalExecutor")},
)


def _cfg(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def test_defaults_are_read_commented_or_not() -> None:
    found = parse_defaults(OLD_DEFAULTS + "[x]\nkey = value\n")
    assert found[("core", "parallelism")] == "32"
    assert found[("webserver", "instance_name")] == ""
    assert found[("x", "key")] == "value"
    assert ("core", "The") not in found


def test_only_changed_options_are_carried_renamed_or_dropped_and_all_are_reported() -> None:
    old = _cfg(
        "[core]\ndags_folder = /home/dags\nparallelism = 7\nexecutor = SequentialExecutor\n"
        "check_slas = False\n[webserver]\ninstance_name = Ours\n[team]\nowner = me\n"
        "[sentinel]\nlease_ttl = 12\n"
    )
    text, report = carry_over(
        old,
        parse_defaults(OLD_DEFAULTS),
        NEW_DEFAULTS,
        MAPS,
        {"AIRFLOW__WEBSERVER__INSTANCE_NAME": "x"},
    )
    parsed = _cfg(text)
    assert parsed.get("core", "parallelism") == "7"
    assert not parsed.has_option("core", "executor")  # the old default: the new one applies
    assert not parsed.has_option("core", "check_slas")
    assert parsed.get("api", "instance_name") == "Ours"
    assert parsed.get("team", "owner") == "me"
    assert not parsed.has_section("sentinel")  # copied verbatim by the caller
    assert report.carried == ["[core] parallelism"]
    assert report.renamed == ["[webserver] instance_name -> [api] instance_name"]
    assert report.dropped == ["[core] check_slas: SLAs are gone"]
    assert report.unknown_kept == ["[team] owner"]
    assert report.defaults_changed == ["[core] executor: SequentialExecutor -> LocalExecutor"]
    assert report.environment == [
        "AIRFLOW__WEBSERVER__INSTANCE_NAME -> AIRFLOW__API__INSTANCE_NAME"
    ]
    assert "Ours" not in "\n".join(report.lines())  # values may be secrets: names only


CONCURRENCY = (("core", "dag_concurrency"), ("core", "max_active_tasks_per_dag"))


@pytest.mark.parametrize("order", ["old name first", "new name first"])
def test_both_names_set_carry_the_value_the_old_version_read(order: str) -> None:
    """2.10 knows both names and reads the new one: with max_active_tasks_per_dag = 16 and
    dag_concurrency = 9 it runs with 16, and so must the target."""
    lines = ["dag_concurrency = 9", "max_active_tasks_per_dag = 16"]
    if order == "new name first":
        lines.reverse()
    old = _cfg("[core]\n" + "\n".join(lines) + "\n")
    maps = Maps(renames=dict([CONCURRENCY]))
    text, report = carry_over(old, {}, "[core]\n", maps, {}, old_renames=dict([CONCURRENCY]))
    assert _cfg(text).get("core", "max_active_tasks_per_dag") == "16"
    assert not _cfg(text).has_option("core", "dag_concurrency")
    assert report.conflicts == [
        "[core] dag_concurrency and [core] max_active_tasks_per_dag differ: carried the "
        "value of [core] max_active_tasks_per_dag, the one the old version used"
    ]
    assert report.renamed == [] and "16" not in "\n".join(report.lines())
    assert "1 conflicting pair(s)" in report.summary()


def test_a_new_name_the_old_version_did_not_know_loses_to_the_old_name() -> None:
    """[api] instance_name is new in 3.0: 2.10 read [webserver] instance_name."""
    old = _cfg("[webserver]\ninstance_name = Used\n[api]\ninstance_name = Ignored\n")
    text, report = carry_over(old, {}, "[api]\n", MAPS, {}, old_renames={})
    assert _cfg(text).get("api", "instance_name") == "Used"
    assert (
        len(report.conflicts) == 1 and "value of [webserver] instance_name" in report.conflicts[0]
    )


def test_both_names_with_one_value_are_a_plain_rename() -> None:
    old = _cfg("[core]\ndag_concurrency = 9\nmax_active_tasks_per_dag = 9\n")
    maps = Maps(renames=dict([CONCURRENCY]))
    text, report = carry_over(old, {}, "[core]\n", maps, {}, old_renames=dict([CONCURRENCY]))
    assert _cfg(text).get("core", "max_active_tasks_per_dag") == "9"
    assert report.conflicts == []


def test_the_internal_api_secret_is_dropped_crossing_to_3_not_kept_as_unknown() -> None:
    old = _cfg("[core]\ninternal_api_secret_key = s3cr3t\nparallelism = 7\n")
    maps = with_unlisted_removals(Maps(), "2.10.5", "3.3.2")
    text, report = carry_over(old, {}, "[core]\n# parallelism = 32\n", maps, {})
    assert "s3cr3t" not in text and "internal_api_secret_key" not in text
    assert report.dropped == [
        "[core] internal_api_secret_key: the internal API (AIP-44) is gone in Airflow 3"
    ]
    kept = with_unlisted_removals(Maps(), "2.9.3", "2.10.5")  # still an option in 2.x
    assert "internal_api_secret_key" in carry_over(old, {}, "[core]\n", kept, {})[0]


JWT_DEFAULTS = "[api_auth]\n# jwt_secret = drawn-at-random-per-process\n"


def test_crossing_to_3_every_node_gets_the_same_jwt_secret_derived_not_copied() -> None:
    """Without one in the file, Airflow 3's scheduler and api-server each draw their own
    and every task's token is refused. Two nodes with the same old file get the same one;
    the seed itself is not what is written, and no value is in the report."""
    old = "[webserver]\nsecret_key = shared-by-the-cluster\n"
    texts = [carry_over(_cfg(old), {}, JWT_DEFAULTS, Maps(), {})[0] for _ in range(2)]
    secret = _cfg(texts[0]).get("api_auth", "jwt_secret")
    assert texts[0] == texts[1] and len(secret) >= 86 and "shared-by-the-cluster" not in secret
    _, report = carry_over(_cfg(old), {}, JWT_DEFAULTS, Maps(), {})
    assert report.added == [
        "[api_auth] jwt_secret: derived from [webserver] secret_key, so every node upgraded "
        "with the same one shares it (the scheduler and the api-server must)"
    ]
    assert secret not in "\n".join(report.lines()) and "1 added" in report.summary()
    other = carry_over(_cfg("[webserver]\nsecret_key = another\n"), {}, JWT_DEFAULTS, Maps(), {})
    assert _cfg(other[0]).get("api_auth", "jwt_secret") != secret


def test_a_secret_key_from_the_environment_seeds_the_jwt_secret_not_the_files_default() -> None:
    """In containers the file's secret_key is each host's own random default; the variable
    is what the cluster shares."""
    old = _cfg("[webserver]\nsecret_key = this-hosts-random-default\n")
    environ = {"AIRFLOW__WEBSERVER__SECRET_KEY": "shared"}
    text, report = carry_over(old, {}, JWT_DEFAULTS, Maps(), environ)
    other_host = _cfg("[webserver]\nsecret_key = another-hosts-default\n")
    theirs = carry_over(other_host, {}, JWT_DEFAULTS, Maps(), environ)[0]
    assert _cfg(text).get("api_auth", "jwt_secret") == _cfg(theirs).get("api_auth", "jwt_secret")
    assert "derived from AIRFLOW__WEBSERVER__SECRET_KEY" in report.added[0]


@pytest.mark.parametrize(
    ("old", "environ"),
    [
        ("[api_auth]\njwt_secret = the-operators-own\n", {}),
        ("[api_auth]\njwt_private_key_path = /etc/airflow/jwt.pem\n", {}),
        ("[webserver]\nsecret_key = s\n", {"AIRFLOW__API_AUTH__JWT_SECRET_CMD": "cat /x"}),
    ],
)
def test_a_jwt_secret_the_operator_set_is_left_alone(old: str, environ: dict[str, str]) -> None:
    text, report = carry_over(_cfg(old), {}, JWT_DEFAULTS, Maps(), environ)
    assert report.added == []
    if "the-operators-own" in old:
        assert _cfg(text).get("api_auth", "jwt_secret") == "the-operators-own"
    else:
        assert not _cfg(text).has_option("api_auth", "jwt_secret")


def test_no_jwt_secret_is_added_for_a_target_without_one() -> None:
    _, report = carry_over(_cfg("[webserver]\nsecret_key = s\n"), {}, "[core]\n", Maps(), {})
    assert report.added == []


def test_a_removal_that_depends_on_the_value_keeps_other_values() -> None:
    maps = Maps(removed={("core", "hostname"): (":", "")})
    old = _cfg("[core]\nhostname = myhost\n")
    text, report = carry_over(old, {}, "[core]\n", maps, {})
    assert _cfg(text).get("core", "hostname") == "myhost"
    assert report.dropped == []


def test_render_replaces_the_commented_default_in_place_and_keeps_multiline_values() -> None:
    text = render(NEW_DEFAULTS, {("core", "parallelism"): "7", ("core", "extra"): "a\nb"})
    lines = text.splitlines()
    assert "parallelism = 7" in lines and "# parallelism = 32" not in lines
    assert lines.index("parallelism = 7") < lines.index("[api]")
    assert _cfg(text).get("core", "extra") == "a\nb"


def test_sentinel_section_is_cut_out_and_copied_verbatim() -> None:
    text = "[core]\na = 1\n[sentinel]\n# comment\nlease_ttl = 12\n[z]\nb = 2\n"
    assert sentinel_block(text) == "[sentinel]\n# comment\nlease_ttl = 12\n"
    assert "[sentinel]" not in without_section(text, "sentinel")
    assert "[z]" in without_section(text, "sentinel")


def test_json_after_log_lines_is_found() -> None:
    out = '[2026-01-01] {x.py:1} WARNING - moved\n[{"dag_id": "a"}]\n'
    assert parse_json_tail(out, "x") == [{"dag_id": "a"}]
    assert parse_json_tail("No data found\n", "x") == []
    with pytest.raises(UpgradeError, match="not JSON"):
        parse_json_tail("[broken\n", "x")


def test_target_versions_are_checked() -> None:
    assert str(parse_target("3.1.0", "2.10.5")) == "3.1.0"
    with pytest.raises(UserError, match="not a version"):
        parse_target("three", "2.10.5")
    with pytest.raises(UserError, match="not newer"):
        parse_target("2.10.5", "2.10.5")


def _fake_env(tmp_path: Path, version: str, heads: str) -> Path:
    env = tmp_path / "env"
    site = env / "lib" / "python3.11" / "site-packages"
    (site / f"apache_airflow-{version}.dist-info").mkdir(parents=True)
    (site / "airflow" / "utils").mkdir(parents=True)
    (site / "airflow" / "utils" / "db.py").write_text(
        f"x = 1\n_REVISION_HEADS_MAP: dict[str, str] = {heads}\n"
    )
    return env


def test_the_expected_schema_is_the_newest_head_at_or_below_the_version(tmp_path: Path) -> None:
    env = _fake_env(tmp_path, "2.10.5", '{"2.9.0": "aaa", "2.10.3": "bbb", "3.0.0": "ccc"}')
    assert installed_version(env) == "2.10.5"
    assert expected_head(env) == "bbb"
    assert expected_head(env, "3.1.0") == "ccc"
    assert expected_head(env, "2.0.0") is None


def test_the_journal_survives_a_reload_and_lists_runs(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "upgrades")
    run = Run(
        id="r1",
        node="n",
        home="/h",
        env_link="/l",
        old_env="/o",
        new_env="/n",
        from_version="2.10.5",
        to_version="3.0.0",
        cluster_role="leader",
        steps=[StepRecord("inspect"), StepRecord("stop")],
    )
    folder = journal.create(run)
    run.steps[0].state = DONE
    journal.save(run)
    assert folder.stat().st_mode & 0o777 == 0o700
    loaded = journal.load("r1")
    assert loaded.steps[0].state == DONE and loaded.reached("inspect")
    assert not loaded.reached("stop")
    assert [r.id for r in journal.runs()] == ["r1"]
    with pytest.raises(UserError, match="known runs: r1"):
        journal.load("nope")


def test_archives_carry_checksums_and_restore_exactly(tmp_path: Path) -> None:
    dags = tmp_path / "dags"
    (dags / "sub").mkdir(parents=True)
    (dags / "a.py").write_text("a")
    (dags / "sub" / "b.py").write_text("b")
    archive = tmp_path / "dags.tar.gz"
    sums = files.archive_folder(dags, archive)
    assert set(sums) == {"a.py", "sub/b.py"}
    assert archive.stat().st_mode & 0o777 == 0o600
    files.verify_archive(archive, sums)
    bad = dict(sums, **{"a.py": "0" * 64})
    with pytest.raises(UpgradeError, match="checksum"):
        files.verify_archive(archive, bad)


def test_restored_files_are_byte_identical_with_their_mode(tmp_path: Path) -> None:
    original = tmp_path / "airflow.cfg"
    original.write_bytes(b"[core]\r\nx = %%1\n")
    original.chmod(0o640)
    copy = tmp_path / "copy"
    files.private_copy(original, copy)
    assert copy.stat().st_mode & 0o777 == 0o600
    original.write_text("new")
    files.restore_file(copy, original, 0o640)
    assert original.read_bytes() == b"[core]\r\nx = %%1\n"
    assert original.stat().st_mode & 0o777 == 0o640


def test_side_by_side_the_new_environment_is_ready_before_the_hold() -> None:
    order = forward_steps(in_place=False)
    held = order[order.index("stop") :]
    assert held == ("stop", "backup", "migrate", "switch", "start", "verify")
    assert order.index("configure") < order.index("check-dags")  # parses with the new file
    assert sorted(order) == sorted(FORWARD)


def test_in_place_the_install_waits_for_the_hold() -> None:
    order = forward_steps(in_place=True)
    assert order.index("inspect") < order.index("stop") < order.index("backup")
    assert order.index("backup") < order.index("install") < order.index("configure")
    assert order.index("configure") < order.index("check-dags") < order.index("migrate")
    assert sorted(order) == sorted(FORWARD)


def test_an_airflow_cfg_changed_after_it_was_staged_stops_the_run() -> None:
    saved: list[object] = ["/h/airflow.cfg", "aaa", 0o600]
    facts: dict[str, Any] = {"configured_from": "aaa", "config_files": {"airflow.cfg": saved}}
    check_configured_from(facts)
    saved[1] = "bbb"
    with pytest.raises(UpgradeError, match=r"/h/airflow\.cfg changed after the configure step"):
        check_configured_from(facts)


def _dist(packages: Path, name: str, requires: tuple[str, ...] = ()) -> None:
    info = packages / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    lines = [f"Name: {name}", "Version: 1.0", *(f"Requires-Dist: {r}" for r in requires)]
    (info / "METADATA").write_text("Metadata-Version: 2.1\n" + "\n".join(lines) + "\n")


def test_carried_are_what_the_operator_added_and_every_provider(tmp_path: Path) -> None:
    packages = tmp_path / "lib" / "python3.11" / "site-packages"
    _dist(packages, "apache-airflow", ("apache-airflow-providers-http", "sqlalchemy"))
    _dist(packages, "apache-airflow-providers-http", ("requests",))
    _dist(packages, "apache-airflow-providers-postgres")
    _dist(packages, "requests")
    _dist(packages, "sqlalchemy")
    _dist(packages, "my-dag-helpers", ("requests",))
    _dist(packages, "pip")
    carried = AirflowEnv(tmp_path).carried_requirements()
    # http came with Airflow 2.10 (3.x drops it) but DAGs may use it: carried too.
    assert carried == [
        "apache-airflow-providers-http",
        "apache-airflow-providers-postgres",
        "my-dag-helpers",
    ]


def _timed(name: str, started: float, finished: float) -> StepRecord:
    return StepRecord(name, state=DONE, started=started, finished=finished)


def test_scheduler_downtime_is_split_by_the_steps_inside_it() -> None:
    run = Run(
        id="r", node="n", home="/h", env_link="/e", old_env="/o", new_env="/n",
        from_version="2.10.5", to_version="3.3.2", cluster_role="leader", state="succeeded",
        steps=[
            _timed("check-dags", 80, 95), _timed("stop", 95, 100), _timed("backup", 100, 101),
            _timed("migrate", 101, 113), _timed("switch", 113, 113), _timed("start", 113, 114),
            _timed("verify", 114, 140),
        ],
        facts={"scheduler_stopped_wall": 100.0, "heartbeat_wall": 120.0},
    )  # fmt: skip
    total, phases = scheduler_downtime(run) or (0, {})
    assert total == 20.0
    assert phases == {
        "backup": 1.0, "migrate": 12.0, "switch": 0.0, "start": 1.0,
        "verify": 6.0,  # verify waits for the heartbeat that ends the downtime
    }  # fmt: skip
    run.state, run.facts["rollback_heartbeat_wall"] = "rolled back", 150.0
    run.rollback = [_timed("restore-database", 140, 145), _timed("verify", 146, 150)]
    total, phases = scheduler_downtime(run) or (0, {})
    assert total == 50.0 and phases["rollback restore-database"] == 5.0


def test_stopping_a_target_unit_that_is_not_installed_yet_is_not_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the upgrade, the target's units (airflow-api-server) may not exist: systemctl
    says "not loaded" (exit 5), and nothing of it runs. Any other failure stops the step."""
    trail = tmp_path / "calls"
    fake = tmp_path / "systemctl"
    fake.write_text(
        f'#!/bin/sh\necho "$@" >> {trail}\n'
        'case "$1 $2" in "stop airflow-api-server") exit 5;; *broken) exit 1;; esac\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    services = LocalServices(
        old=ServiceSet(("airflow-webserver",)), new=ServiceSet(("airflow-api-server",))
    )
    assert services.stop() == "stopped: airflow-webserver, airflow-api-server"
    assert trail.read_text().split("\n")[:2] == [
        "stop airflow-webserver",
        "stop airflow-api-server",
    ]
    assert services.start("new") == "started the new version's airflow-api-server"
    with pytest.raises(UpgradeError, match="systemctl stop broken failed"):
        LocalServices(old=ServiceSet(("broken",))).stop()


# -- the fence in Airflow's database across an upgrade ---------------------------------------
FENCED = ("dag_run", "task_instance", "job")


class FakeFence:
    """The fence's calls the upgrade makes, on an imaginary database: removing it drops its
    table (and so its epoch), installing creates the table at epoch 0 if it is missing."""

    description = "postgresql+psycopg://airflow@db:5432/airflow"

    def __init__(self, epoch: int | None = 7, fenced: tuple[str, ...] = FENCED) -> None:
        self.table = epoch is not None or bool(fenced)
        self.epoch = epoch
        self.fenced = fenced
        self.tables: tuple[str, ...] = FENCED  # what the migration leaves: install fences these
        self.calls: list[str] = []
        self.fail: str = ""  # the call that raises a FenceError
        self.closed = False

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.fail == name:
            raise FenceError(f"cannot {name} the fence in {self.description}: no answer")

    def state(self) -> FenceState:
        self._call("state")
        unfenced = tuple(t for t in self.tables if t not in self.fenced)
        return FenceState(self.table, self.epoch, self.fenced, unfenced)

    def remove(self) -> None:
        self._call("remove")
        self.table, self.epoch, self.fenced = False, None, ()

    def install(self) -> FenceState:
        self._call("install")
        if not self.table:
            self.table, self.epoch = True, 0
        self.fenced = self.tables
        return self.state()

    def reset(self, epoch: int) -> None:
        self._call(f"reset {epoch}")
        self.epoch = epoch

    def close(self) -> None:
        self.closed = True


def _as_fence(fake: FakeFence) -> DbFence:
    return cast(DbFence, fake)


def test_the_fence_is_recorded_before_it_is_removed_and_a_resumed_step_keeps_the_record() -> None:
    fake, saved = FakeFence(epoch=7), []
    facts: dict[str, Any] = {}
    assert db_fence.remove_before_migration(_as_fence(fake), facts, lambda: saved.append(1))
    assert facts["fence"]["installed"] and facts["fence"]["epoch"] == 7
    assert saved == [1] and fake.calls == ["state", "remove"]
    # A kill -9 after the removal, then resume: the fence is gone, the record stands.
    assert db_fence.remove_before_migration(_as_fence(fake), facts, lambda: saved.append(2))
    assert facts["fence"]["epoch"] == 7 and saved == [1]


def test_after_the_migration_the_fence_is_installed_on_its_tables_at_the_epoch_it_had() -> None:
    fake = FakeFence(epoch=7, fenced=(*FENCED, "callback_request"))
    facts: dict[str, Any] = {}
    db_fence.remove_before_migration(_as_fence(fake), facts, lambda: None)
    fake.tables = (*FENCED, "deadline")  # Airflow 3 dropped callback_request, added deadline
    note = db_fence.install_after_migration(_as_fence(fake), facts)
    assert note == (
        "; fence removed before the migration, installed again at epoch 7 "
        "(fenced: dag_run, task_instance, job, deadline)"
    )
    assert [c for c in fake.calls if c != "state"] == ["remove", "install", "reset 7"]


def test_no_fence_before_the_migration_is_left_alone() -> None:
    fake = FakeFence(epoch=None, fenced=())
    facts: dict[str, Any] = {}
    assert not db_fence.remove_before_migration(_as_fence(fake), facts, lambda: None)
    assert "remove" not in fake.calls
    assert "no fence was installed" in db_fence.install_after_migration(_as_fence(fake), facts)
    assert "install" not in fake.calls
    assert db_fence.repair_after_restore(_as_fence(fake), facts) == ""
    assert "install" not in fake.calls


def test_a_fence_that_is_not_whole_after_the_migration_fails_the_step() -> None:
    fake = FakeFence(epoch=3)
    facts: dict[str, Any] = {}
    db_fence.remove_before_migration(_as_fence(fake), facts, lambda: None)
    fake.install = lambda: FenceState(True, 3, ("dag_run",), ("task_instance", "job"))  # type: ignore[method-assign]
    with pytest.raises(UpgradeError, match="not whole after the migration: the tables "):
        db_fence.install_after_migration(_as_fence(fake), facts)


def test_a_fence_that_cannot_be_read_or_removed_is_one_line_naming_when() -> None:
    fake = FakeFence()
    fake.fail = "remove"
    with pytest.raises(UpgradeError, match=r"^before the migration: cannot remove the fence"):
        db_fence.remove_before_migration(_as_fence(fake), {}, lambda: None)
    fake.fail = "install"
    with pytest.raises(UpgradeError, match=r"^after the restore: cannot install the fence"):
        db_fence.repair_after_restore(_as_fence(fake), {"fence": {"installed": True, "epoch": 7}})


def test_after_a_restore_the_fence_is_whole_and_its_epoch_never_goes_down() -> None:
    record = {"fence": {"installed": True, "epoch": 7}}
    lost = FakeFence(epoch=None, fenced=FENCED)  # the restore brought the triggers, no table
    assert db_fence.repair_after_restore(_as_fence(lost), record) == (
        "; fence whole at epoch 7 (fenced: dag_run, task_instance, job)"
    )
    raised = FakeFence(epoch=9, fenced=())  # the new scheduler raised it during the run
    assert "at epoch 9" in db_fence.repair_after_restore(_as_fence(raised), record)
    assert not any(c.startswith("reset") for c in raised.calls)
    # No record (the step was killed before it made one) but a fence there: made whole.
    assert "at epoch 4" in db_fence.repair_after_restore(_as_fence(FakeFence(4, ())), {})


def _migrate_ctx(fake: FakeFence | None, facts: dict[str, Any]) -> Context:
    run = SimpleNamespace(to_version="3.3.2", facts=facts, cluster_role="leader")
    ctx = SimpleNamespace(
        run=run,
        leader=True,
        journal=SimpleNamespace(save=lambda _run: None),
        open_fence=lambda: None if fake is None else _as_fence(fake),
    )
    return cast(Context, ctx)


def test_the_migrate_step_removes_the_fence_around_the_migration_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake, seen = FakeFence(epoch=5), []

    def migration(ctx: Context, command: list[str]) -> str:
        seen.append(fake.table)
        return f"airflow {' '.join(command)}; schema at abc; rows of all 40 tables survived"

    monkeypatch.setattr(steps, "_migrate", migration)
    done = steps.migrate(_migrate_ctx(fake, {}))
    assert seen == [False]  # no fence during the migration
    assert done == (
        "airflow db migrate; schema at abc; rows of all 40 tables survived; fence removed "
        "before the migration, installed again at epoch 5 (fenced: dag_run, task_instance, job)"
    )
    assert fake.closed
    assert steps.migrate(_migrate_ctx(None, {})).endswith("tables survived")  # SQLite, off


def test_a_failed_migration_leaves_the_fence_removed_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def migration(ctx: Context, command: list[str]) -> str:
        raise UpgradeError("rows lost in the migration: task_instance: 6 -> 0: 6 rows lost")

    monkeypatch.setattr(steps, "_migrate", migration)
    fake = FakeFence(epoch=5)
    facts: dict[str, Any] = {}
    with pytest.raises(UpgradeError, match="6 rows lost; the fence is removed from Airflow's"):
        steps.migrate(_migrate_ctx(fake, facts))
    assert "install" not in fake.calls and fake.closed
    assert facts["fence"]["epoch"] == 5  # for the rollback's repair


def test_the_fence_is_there_only_where_the_settings_give_one() -> None:
    assert db_fence.open_airflow_fence("off", "postgresql://db/airflow", 10) is None
    assert db_fence.open_airflow_fence("auto", "sqlite:////tmp/airflow.db", 10) is None
    with pytest.raises(UserError, match="db_fence = on needs Airflow's database on PostgreSQL"):
        db_fence.open_airflow_fence("on", "sqlite:////tmp/airflow.db", 10)
    # A driver that cannot give the scheduler's connections an epoch: no fence under auto.
    assert db_fence.open_airflow_fence("auto", "mysql+mysqlconnector://db/airflow", 10) is None
    assert "cannot run an init_command" in db_fence.why_none(
        "auto", "mysql+mysqlconnector://db/airflow"
    )
    assert db_fence.why_none("auto", "sqlite:////tmp/airflow.db").startswith("SQLite has no")


@pytest.mark.parametrize(
    ("airflow_url", "ours"),
    [
        ("postgresql+psycopg2://airflow:pw@db:5432/airflow", "postgresql+psycopg"),
        ("postgresql://airflow:pw@db:5432/airflow", "postgresql+psycopg"),
        ("mysql://airflow:pw@db:3306/airflow", "mysql+pymysql"),
        ("mysql+mysqldb://airflow:pw@db:3306/airflow", "mysql+pymysql"),
    ],
)
def test_the_fence_connects_with_this_programs_driver_not_airflows(
    airflow_url: str, ours: str
) -> None:
    fence = db_fence.open_airflow_fence("auto", airflow_url, 10)
    assert fence is not None
    try:
        assert fence.url.startswith(f"{ours}://") and "pw" not in fence.description
    finally:
        fence.close()


def test_the_plan_reports_the_fence_without_blocking_the_run(tmp_path: Path) -> None:
    fine, detail = db_fence.plan_line("auto", f"sqlite:///{tmp_path}/airflow.db", 10)
    assert fine and detail.startswith("none (SQLite has no fence (db_fence = auto))")
    fine, detail = db_fence.plan_line("off", "postgresql://db/airflow", 10)
    assert fine and "db_fence = off" in detail
    fine, detail = db_fence.plan_line("on", f"sqlite:///{tmp_path}/airflow.db", 10)
    assert not fine and "no controller starts a scheduler" in detail
    fine, detail = db_fence.plan_line("auto", "postgresql://nobody:pw@127.0.0.1:1/airflow", 10)
    assert not fine and detail.startswith("cannot read the fence in ") and ":pw@" not in detail
