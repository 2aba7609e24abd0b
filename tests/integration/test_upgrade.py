"""Real upgrades of a real Airflow installation: 2.10 to 3.x on SQLite and PostgreSQL, a
minor upgrade on MariaDB, a failure injected after every step, kill -9 then resume then
rollback. The Airflow environments are built once and cached between runs."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from airflow_sentinel.airflow_env import build_venv, ensure_airflow_venv
from airflow_sentinel.airflow_schema import expected_head, installed_version
from airflow_sentinel.fence import FenceState
from airflow_sentinel.upgrade import canary, repairs, sqlite_migration
from airflow_sentinel.upgrade.databases import open_database
from airflow_sentinel.upgrade.installation import AirflowEnv
from airflow_sentinel.upgrade.journal import Journal
from airflow_sentinel.upgrade.survival import compare
from tests.support.airflow_site import CELERY_EXTRAS, OLD_EXTRAS, Site
from tests.support.cluster import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.airflow]

OLD = "2.10.5"
NEW = os.environ.get("SENTINEL_TEST_AIRFLOW_VERSION", "3.3.2")
STEPS = (
    "install",
    "configure",
    "inspect",
    "check-dags",
    "stop",
    "backup",
    "migrate",
    "switch",
    "start",
    "verify",
)
FAIL_AFTER = "AIRFLOW_SENTINEL_UPGRADE_FAIL_AFTER"
TIMINGS = Path(os.environ.get("SENTINEL_UPGRADE_TIMINGS", "/tmp/airflow-sentinel-upgrade-timings"))


def _site(backend: str, old: str) -> Iterator[Site]:
    site = Site(backend, Path(f"/tmp/airflow-sentinel-upgrade-{backend}"), old)
    site.build_template()
    yield site
    site.drop_databases()
    subprocess.run(["rm", "-rf", str(site.base)], check=False)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def built(request: pytest.FixtureRequest) -> Iterator[Site]:
    yield from _site(request.param, OLD)


@pytest.fixture
def site(built: Site) -> Site:
    built.restore()
    return built


def upgrade(site: Site, *args: str, fail_after: str = "") -> subprocess.CompletedProcess[str]:
    return site.sentinel("upgrade", *args, extra_env={FAIL_AFTER: fail_after} if fail_after else {})


def last_run(site: Site) -> dict[str, Any]:
    done = site.sentinel("upgrade", "status", "--json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def running_schedulers() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = proc.info["cmdline"] or []
        if proc.info["status"] == psutil.STATUS_ZOMBIE or "airflow_sentinel" in " ".join(cmd):
            continue
        if len(cmd) >= 3 and cmd[1].endswith("/bin/airflow") and cmd[2] == "scheduler":
            found.append(proc)
    return found


def scheduler_env_version() -> set[str]:
    """The Airflow version each running scheduler's interpreter belongs to."""
    versions = set()
    for proc in running_schedulers():
        with_version = Path(proc.info["cmdline"][0]).parent.parent.name  # airflow-X[-hash]
        versions.add(with_version.split("-")[1])
    return versions


def save_timings(site: Site, name: str, run: dict[str, Any]) -> None:
    TIMINGS.mkdir(parents=True, exist_ok=True)
    steps = {
        s["name"]: round(s["finished"] - s["started"], 1) for s in run["steps"] if s.get("finished")
    }
    back = {
        s["name"]: round(s["finished"] - s["started"], 1)
        for s in run["rollback"]
        if s.get("finished")
    }
    record = {
        "steps": steps,
        "rollback": back,
        "scheduler_downtime": run.get("scheduler_downtime"),
        "load_average": os.getloadavg(),
    }
    (TIMINGS / f"{site.backend}-{name}.json").write_text(json.dumps(record, indent=2))
    print(f"\n{site.backend} {name}: {json.dumps(record)}")


SERVICES = Path(__file__).parents[1] / "support" / "site_services.py"
API_URL = "http://localhost:8080"


@contextmanager
def target_services(site: Site, *names: str) -> Iterator[list[str]]:
    """The flags that have the run start the target's services beside the scheduler (and
    nothing on a rollback: the old version here runs only its scheduler); stopped at the end
    whatever happened."""
    command = f"{sys.executable} {SERVICES}"
    flags = [
        *("--start-command", f"{command} start {site.base} {' '.join(names)}"),
        *("--old-start-command", ""),
        *("--stop-command", f"{command} stop {site.base}"),
    ]
    if "api-server" in names:
        flags += ["--api-url", API_URL]
    try:
        yield flags
    finally:
        subprocess.run([sys.executable, str(SERVICES), "stop", str(site.base)], check=False)
        for name in names:  # shown by pytest only when the test fails
            log = site.base / f"{name}.log"
            if log.exists():
                sys.stderr.write(
                    f"===== {name}.log (end)\n{log.read_text(errors='replace')[-3000:]}\n"
                )


def assert_canary_gone(site: Site) -> None:
    """No file, no row in any table, no task log: the canary left nothing behind."""
    assert not (site.home / "dags" / canary.FILE_NAME).exists()
    leftovers = {
        table: len(rows)
        for table, rows in site.table_rows().items()
        if any(canary.DAG_ID in repr(row) for row in rows)
    }
    assert leftovers == {}
    assert not (site.home / "logs" / f"dag_id={canary.DAG_ID}").exists()


# -- the real upgrade -----------------------------------------------------------------------
def test_upgrade_carries_everything_over_and_runs_the_new_scheduler(site: Site) -> None:
    """The whole Airflow 3 service set: the scheduler (kept by the controller), the
    api-server and the dag-processor (started by the run); verified by the api-server's
    health, a new parse of the DAGs, and a canary task through the LocalExecutor."""
    work = site.work()
    assert len(work["task_instance"]) == 6 and len(work["xcom"]) >= 4  # there is work to lose
    fence = site.install_fence()  # None on SQLite
    with site.controller(), target_services(site, "api-server", "dag-processor") as flags:
        wait_until(site.newest_scheduler_heartbeat, 240, "the 2.10 scheduler's heartbeat", 1)
        site.leave_a_dangling_permission()  # the FAB migration refuses it: the run removes it
        done = upgrade(site, "run", "--to", NEW, "--verify-timeout", "240", *flags)
        assert done.returncode == 0, done.stdout + done.stderr
        run = last_run(site)
        save_timings(site, "upgrade", run)
        assert run["state"] == "succeeded"
        verified = next(s for s in run["steps"] if s["name"] == "verify")["detail"]
        print(f"\n{site.backend} verify: {verified}")
        assert "canary task succeeded on LocalExecutor" in verified
        assert "api-server healthy" in verified and "DAGs parsed again" in verified
        assert_canary_gone(site)
        assert site.env_link.resolve().name.startswith(f"airflow-{NEW}-")
        assert site.revision() == expected_head(site.env_link.resolve())
        assert scheduler_env_version() == {NEW}
        # The new environment and its airflow.cfg were ready before the old scheduler stopped.
        configured = next(s for s in run["steps"] if s["name"] == "configure")
        assert configured["finished"] < run["facts"]["scheduler_stopped_wall"]

        # Rows: connections, variables, pools and the finished DAG run are all there.
        conn = json.loads(
            _json_tail(site.airflow("connections", "get", "sentinel_pg", "-o", "json"))
        )
        assert conn[0]["host"] == "db.example"
        assert "42" in site.airflow("variables", "get", "sentinel_var")
        assert "sentinel_pool" in site.airflow("pools", "get", "sentinel_pool")
        # Every finished run, task instance, XCom and rendered template, compared by key
        # (on SQLite, Airflow 3's own migration deletes them with the rebuilt dag_run).
        assert site.work() == work
        migrated = next(s for s in run["steps"] if s["name"] == "migrate")
        assert "rows of all" in migrated["detail"] and "tables survived" in migrated["detail"]
        survived = "\n".join(run["facts"]["survival"])
        print(f"\n{site.backend} survival check:\n{survived}")
        assert "task_instance: 6 -> 6" in survived
        assert re.search(r"removed [1-9]\d* permission rows without an action", migrated["detail"])
        assert "invalid rows removed before the migration" in survived
        assert repairs.dangling_permissions(open_database(site.db_url)) == []
        assert_fence_carried(site, fence, run, migrated["detail"])

        assert_configuration_carried(site, run)


def assert_fence_carried(
    site: Site, before: FenceState | None, run: dict[str, Any], migrated: str
) -> None:
    """Removed for the migration, installed again on the target's tables at its epoch."""
    if before is None:
        assert "fence" not in migrated and "fence" not in run["facts"]
        return
    recorded = run["facts"]["fence"]
    assert recorded["installed"] and recorded["epoch"] >= (before.epoch or 0)
    epoch = recorded["epoch"]
    assert f"fence removed before the migration, installed again at epoch {epoch} (" in migrated
    after = site.fence_state()
    assert after is not None and after.complete, after
    assert after.epoch is not None and after.epoch >= epoch  # a new scheduler may raise it
    assert {"dag_run", "task_instance", "job"} <= set(after.fenced)
    if NEW.startswith("3."):
        assert "callback_request" not in after.fenced  # Airflow 3 dropped the table


def assert_configuration_carried(site: Site, run: dict[str, Any]) -> None:
    """Carried, moved, dropped, kept; ours verbatim; still owner-only; a shared JWT secret."""
    cfg = (site.home / "airflow.cfg").read_text()
    assert "\nparallelism = 7\n" in cfg
    assert "\nmax_active_tasks_per_dag = 5\n" in cfg and "dag_concurrency" not in cfg
    # 2.10's own file sets metrics_allow_list (empty), which 2.10 reads instead of the
    # old name statsd_allow_list: the value in use is carried, and the pair reported.
    assert "\nmetrics_allow_list = scheduler,executor\n" not in cfg
    assert _section_of(cfg, "instance_name = Sentinel upgrade test") == "api"
    assert "\ncheck_slas = " not in cfg
    assert "[team]\n" in cfg and "owner = data-platform" in cfg
    assert "[sentinel]\nscheduler_command = " in cfg
    assert (site.home / "airflow.cfg").stat().st_mode & 0o777 == 0o600
    report = Path(run["facts"]["config_report"]).read_text()
    assert "[webserver] instance_name -> [api] instance_name" in report
    assert "[core] check_slas" in report
    assert "[core] dag_concurrency and [core] max_active_tasks_per_dag differ" in report
    assert "[metrics] statsd_allow_list and [metrics] metrics_allow_list differ" in report
    assert "airflow config lint:" in report
    assert "`check_slas`" not in report  # the lint read the new file, not the old one
    assert "[api_auth] jwt_secret: derived from [webserver] secret_key" in report
    parsed = configparser.ConfigParser(interpolation=None, strict=False)
    parsed.read_string(cfg)
    assert len(parsed.get("api_auth", "jwt_secret")) >= 86  # 64 bytes; else tokens fail
    installed = Path(run["facts"]["installed_packages"]).read_text().splitlines()
    assert f"apache-airflow=={NEW}" in installed  # the exact set the target got
    # Backups are the owner's alone.
    folder = site.home / "upgrades" / str(run["id"])
    assert folder.stat().st_mode & 0o777 == 0o700
    for path in (folder / "backup").iterdir():
        assert path.stat().st_mode & 0o077 == 0, path


def test_airflow_3s_own_migration_loses_work_on_sqlite_and_ours_does_not(site: Site) -> None:
    """Why the SQLite migration runs with foreign keys off: with Airflow's plain
    `airflow db migrate`, the rebuild of dag_run takes the rows that reference it along,
    and the survival check names them. PostgreSQL alters in place and loses nothing."""
    database = open_database(site.db_url)
    before = database.row_counts()
    target = AirflowEnv(ensure_airflow_venv(NEW, extras=OLD_EXTRAS))  # the site's drivers
    target.run(["db", "migrate"], site.home, timeout=1800)
    plain = compare(before, database.row_counts(), OLD, NEW)
    if site.backend != "sqlite":
        assert plain.ok, plain.losses
        return
    lost = {line.split(":")[0] for line in plain.losses}
    assert {"task_instance", "xcom", "rendered_task_instance_fields"} <= lost, plain.losses

    site.restore()
    target.run(["db", "migrate"], site.home, timeout=1800, bootstrap=sqlite_migration.BOOTSTRAP)
    ours = compare(before, database.row_counts(), OLD, NEW)
    assert ours.ok, ours.losses
    assert sqlite_migration.broken_references(site.home / "airflow.db") == []
    assert site.revision() == expected_head(target.path)


MOVED_OPERATOR = """
import pendulum
from airflow import DAG
from airflow.operators.dummy import DummyOperator  # gone from Airflow 3

with DAG("sentinel_moved", schedule=None, start_date=pendulum.datetime(2024, 1, 1)):
    DummyOperator(task_id="one")
"""


def test_a_dag_the_target_cannot_load_is_found_in_plan_and_stops_the_run_before_the_hold(
    site: Site,
) -> None:
    only_on_sqlite(site)
    (site.home / "dags" / "moved.py").write_text(MOVED_OPERATOR)
    site.airflow("dags", "list")  # it loads on 2.10
    planned = site.sentinel("upgrade", "plan", "--to", NEW, "--json")
    checks = json.loads(planned.stdout)["checks"]
    check = next(c for c in checks if c["name"] == "DAG compatibility")
    assert not check["ok"] and not check["blocking"]
    assert any(item.startswith("moved.py:") and " AIR302 " in item for item in check["items"])
    fence = next(c for c in checks if c["name"] == "db fence")
    assert fence["ok"] and not fence["blocking"] and "SQLite has no fence" in fence["detail"]
    pins = next(c for c in checks if c["name"] == "package versions")
    assert "unpinned" in pins["detail"] and f"constraints-{NEW}/" in pins["detail"]
    assert f"apache-airflow=={NEW}" in pins["items"]

    rows = site.table_rows()
    done = upgrade(site, "run", "--to", NEW)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "check-dags: before the hold, with Airflow" in done.stderr
    assert "moved.py" in done.stderr
    run = last_run(site)
    assert run["state"] == "rolled back"
    assert next(s for s in run["steps"] if s["name"] == "stop")["state"] == "pending"
    assert site.table_rows() == rows  # the inspection wrote nothing, not even audit rows


def only_on_sqlite(site: Site) -> None:
    """For what the database does not change: once is enough, and CI's time is finite."""
    if site.backend != "sqlite":
        pytest.skip("independent of the database: run on SQLite only")


def _json_tail(out: str) -> str:
    lines = out.splitlines()
    return next(line for line in reversed(lines) if line.startswith("["))


def _section_of(cfg: str, line: str) -> str:
    section = ""
    for text in cfg.splitlines():
        if text.startswith("["):
            section = text.strip("[]")
        if text == line:
            return section
    return ""


# -- failures and rollback ------------------------------------------------------------------
@pytest.mark.parametrize("step", STEPS)
def test_a_failure_after_any_step_rolls_everything_back(site: Site, step: str) -> None:
    if step not in ("migrate", "verify"):
        # What the database changes in a rollback is its restore, needed from the migration
        # on: failing after the migration and after verify covers it; the other steps'
        # undoing (files, the link, the services) does not depend on the database.
        only_on_sqlite(site)
    fence = site.install_fence()  # None on SQLite
    rows = site.table_rows()
    cfg = (site.home / "airflow.cfg").read_bytes()
    old_env = site.env_link.resolve()
    done = upgrade(site, "run", "--to", NEW, fail_after=step)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{step}: failure injected after this step" in done.stderr
    assert "rolled back" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    run = last_run(site)
    assert run["state"] == "rolled back"
    if step == "migrate":
        save_timings(site, "rollback-after-migrate", run)
    assert site.table_rows() == rows
    assert (site.home / "airflow.cfg").read_bytes() == cfg
    assert site.env_link.resolve() == old_env
    assert "2.10.5" in site.airflow("version")
    assert_fence_whole_after_rollback(site, fence, run)


def assert_fence_whole_after_rollback(
    site: Site, before: FenceState | None, run: dict[str, Any]
) -> None:
    """The restore brought the backup's triggers back; the rollback made the fence whole
    at no lower an epoch (its table is never restored: it stays, or is made again)."""
    restored = next(s for s in run["rollback"] if s["name"] == "restore-database")["detail"]
    if before is None:
        assert "fence" not in restored
        return
    after = site.fence_state()
    assert after is not None and after.complete, after
    assert after.epoch is not None and after.epoch >= (before.epoch or 0)
    assert set(after.fenced) == set(before.fenced)  # the old version's tables again
    found = re.search(r"; fence whole at epoch (\d+) \(fenced: ", restored)
    assert found, restored
    assert (before.epoch or 0) <= int(found.group(1)) <= after.epoch


@contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``path``: a disk that fills up."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path, leave: int) -> Path:
    """Fill the filesystem of ``path`` up to ``leave`` free bytes."""
    free = shutil.disk_usage(path).free
    filler = path / "filler"
    with filler.open("wb") as out:
        os.posix_fallocate(out.fileno(), 0, max(free - leave, 1))
    return filler


def test_a_disk_too_small_for_the_backup_is_refused_before_anything(
    site: Site, tmp_path: Path
) -> None:
    with small_disk(tmp_path / "state", "256k") as state:
        done = upgrade(site, "run", "--to", NEW, "--state-dir", str(state))
        assert done.returncode == 2, done.stdout + done.stderr  # refused, like bad input
        assert "free disk:" in done.stderr and f"on {state}" in done.stderr
        assert "(the backup)" in done.stderr and len(done.stderr.strip().splitlines()) == 1
        assert not any(state.iterdir())  # no run was created


def test_a_disk_that_fills_during_the_backup_rolls_back_and_releases_the_hold(
    site: Site, tmp_path: Path
) -> None:
    """The operator's other job fills the disk while the cluster is held: the dump fails,
    the run rolls back, the hold is lifted and the old scheduler runs again; one line."""
    rows = site.work()
    with site.controller(), small_disk(tmp_path / "state", "64m") as state:
        wait_until(site.newest_scheduler_heartbeat, 240, "the 2.10 scheduler's heartbeat", 1)
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "airflow-sentinel"), "upgrade", "run",
             "--to", NEW, "--state-dir", str(state), "--verify-timeout", "240"],
            env=site.environ(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        journal = Journal(state)

        def stopping() -> bool:
            runs = journal.runs()
            return bool(runs) and runs[-1].step("stop").state == "running"

        try:
            wait_until(stopping, 900, "the hold to begin", 0.05)
            filler = fill(state, leave=150_000)  # room for the journal, not for the dump
            out, err = proc.communicate(timeout=900)
        finally:
            if proc.poll() is None:  # the test failed first: no run outlives it
                proc.kill()
                proc.communicate()
        assert proc.returncode == 1, out + err
        assert "backup:" in err and "rolled back" in err, err
        assert "Traceback" not in out + err and len(err.strip().splitlines()) == 1, err
        filler.unlink()
        status = json.loads(site.sentinel("status", "--json").stdout)
        assert status["hold"] is None
        wait_until(lambda: scheduler_env_version() == {OLD}, 240, "the old scheduler again")
        run = last_run_in(site, state)
        assert run["state"] == "rolled back"
        assert next(s for s in run["steps"] if s["name"] == "backup")["state"] == "failed"
    assert site.work() == rows


def last_run_in(site: Site, state: Path) -> dict[str, Any]:
    done = site.sentinel("upgrade", "status", "--json", "--state-dir", str(state))
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_a_rollback_starts_the_old_versions_services_not_the_targets(
    site: Site, tmp_path: Path
) -> None:
    """Crossing to Airflow 3 the service set changes (webserver -> api-server, a new
    dag-processor): the start after the migration runs the target's command, the start
    after a rollback the old version's."""
    only_on_sqlite(site)
    trail = tmp_path / "services.log"

    def record(word: str) -> str:
        return f"sh -c 'echo {word} >> {trail}'"

    done = upgrade(
        site, "run", "--to", NEW,
        "--stop-command", record("stop"),
        "--start-command", record("api-server+dag-processor"),
        "--old-start-command", record("webserver"),
        fail_after="start",
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert trail.read_text().split() == ["stop", "api-server+dag-processor", "stop", "webserver"]
    planned = site.sentinel("upgrade", "plan", "--to", NEW, "--json")
    check = next(c for c in json.loads(planned.stdout)["checks"] if c["name"] == "service set")
    assert any(item.startswith("dag-processor:") for item in check["items"])
    assert any(item.startswith("webserver -> api-server") for item in check["items"])


def test_a_target_that_cannot_install_rolls_back(site: Site, tmp_path: Path) -> None:
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("apache-airflow==3.0.0\n")  # contradicts --to
    rows = site.table_rows()
    done = upgrade(site, "run", "--to", NEW, "--constraints", str(constraints))
    assert done.returncode == 1
    assert "install:" in done.stderr and "rolled back" in done.stderr
    assert site.table_rows() == rows
    assert "2.10.5" in site.airflow("version")


def test_airflow_3_without_a_dag_processor_fails_verify_and_the_old_version_comes_back(
    site: Site,
) -> None:
    """The operator upgraded to Airflow 3 and started none of its new services: the new
    scheduler heartbeats, but nothing parses a DAG and no task can run. Verify says so (the
    canary is never parsed), the rollback restores what the new scheduler wrote, and the old
    scheduler runs again; the canary's file is gone from the DAGs folder."""
    if NEW.startswith("2."):
        pytest.skip("Airflow 2's scheduler parses the DAGs itself")
    fence = site.install_fence()  # None on SQLite
    with site.controller():
        wait_until(site.newest_scheduler_heartbeat, 240, "the 2.10 scheduler's heartbeat", 1)
        work = {
            t: r
            for t, r in site.table_rows().items()
            if t in ("connection", "variable", "slot_pool", "dag_run", "task_instance")
        }
        done = upgrade(site, "run", "--to", NEW, "--verify-timeout", "45")
        assert done.returncode == 1, done.stdout + done.stderr
        assert f"canary DAG {canary.DAG_ID} was not parsed within 45s" in done.stderr
        assert "`airflow dag-processor`" in done.stderr and "rolled back" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        run = last_run(site)
        save_timings(site, "rollback-after-verify", run)
        assert run["state"] == "rolled back"
        wait_until(lambda: scheduler_env_version() == {"2.10.5"}, 240, "the old scheduler")
        after = site.table_rows()
        assert {t: after[t] for t in work} == work
        assert not (site.home / "dags" / canary.FILE_NAME).exists()
        assert_fence_whole_after_rollback(site, fence, run)


def test_in_place_upgrade_then_rollback(site: Site) -> None:
    own = site.base / "own-env"  # in place changes the environment: not the shared cache's
    build_venv(own, [f"apache-airflow=={OLD}", *OLD_EXTRAS])
    try:
        site.env_link.unlink()
        site.env_link.symlink_to(own)
        rows = site.table_rows()
        cfg = (site.home / "airflow.cfg").read_bytes()
        done = upgrade(site, "run", "--to", NEW, "--in-place")
        assert done.returncode == 0, done.stdout + done.stderr
        run = last_run(site)
        names = [s["name"] for s in run["steps"]]
        assert names.index("stop") < names.index("install")
        assert installed_version(own) == NEW and site.env_link.resolve() == own
        assert site.revision() == expected_head(own)
        # The old defaults were read before the install replaced them: an option left at
        # 2.10's default is reported as a changed default, not carried as a choice.
        report = Path(run["facts"]["config_report"]).read_text()
        assert "defaults that changed (your value was the old default): 0" not in report, report

        back = upgrade(site, "rollback", "--yes")
        assert back.returncode == 0, back.stdout + back.stderr
        assert installed_version(own) == OLD
        assert site.table_rows() == rows
        assert (site.home / "airflow.cfg").read_bytes() == cfg
    finally:
        site.env_link.unlink(missing_ok=True)
        site.env_link.symlink_to(site.old_env)
        subprocess.run(["rm", "-rf", str(own)], check=False)


def test_kill_9_mid_migration_then_resume_then_rollback(site: Site) -> None:
    rows = site.table_rows()
    cfg = (site.home / "airflow.cfg").read_bytes()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "airflow-sentinel"), "upgrade", "run", "--to", NEW],
        env=site.environ(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    journal = Journal(site.home / "upgrades")

    def migrating() -> bool:
        runs = journal.runs()
        return bool(runs) and runs[-1].step("migrate").state == "running"

    wait_until(migrating, 300, "the migration to begin", 0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # `airflow db migrate` is in its group: killed too
    proc.wait()
    assert journal.runs()[-1].state == "in progress"

    resumed = site.sentinel("upgrade", "resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert last_run(site)["state"] == "succeeded"
    assert site.env_link.resolve().name.startswith(f"airflow-{NEW}-")

    back = site.sentinel("upgrade", "rollback")  # no new work: no question asked
    assert back.returncode == 0, back.stdout + back.stderr
    assert last_run(site)["state"] == "rolled back"
    assert site.table_rows() == rows
    assert (site.home / "airflow.cfg").read_bytes() == cfg
    assert "2.10.5" in site.airflow("version")


def test_rollback_says_what_would_be_lost(site: Site) -> None:
    done = upgrade(site, "run", "--to", NEW, "--no-rollback", fail_after="switch")
    assert done.returncode == 1 and "not rolled back" in done.stderr
    site.airflow("variables", "set", "made_after_the_upgrade", "1")
    refused = site.sentinel("upgrade", "rollback")
    assert refused.returncode == 2
    assert "variable: 2 now, 1 in the backup" in refused.stderr
    assert "--yes" in refused.stderr
    accepted = site.sentinel("upgrade", "rollback", "--yes")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "2.10.5" in site.airflow("version")


def test_an_old_scheduler_is_refused_on_a_new_schema(site: Site) -> None:
    done = upgrade(site, "run", "--to", NEW, "--no-rollback", fail_after="migrate")
    assert done.returncode == 1, done.stdout + done.stderr
    # The schema is Airflow 3's; the services still use 2.10.5. Lift the hold by hand.
    refused_clear = site.sentinel("clear-metadata", "--yes")
    assert refused_clear.returncode == 2
    assert "upgrade" in refused_clear.stderr and "--force" in refused_clear.stderr
    assert site.sentinel("clear-metadata", "--yes", "--force").returncode == 0
    with site.controller():

        def refused() -> bool:
            out = site.sentinel("metadata", "--json").stdout
            return "scheduler_refused" in out and "expects schema" in out

        wait_until(refused, 120, "the controller to refuse the 2.10 scheduler", 1)
        assert running_schedulers() == []
    back = site.sentinel("upgrade", "rollback", "--yes")
    assert back.returncode == 0, back.stdout + back.stderr


# -- operator mistakes: one line, exit 2 ------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "--to", "banana"], "not a version"),
        (["run", "--to", "2.9.0"], "not newer than the installed Airflow 2.10.5"),
        (["plan", "--to", NEW, "--airflow-env", "/nonexistent"], "not a virtual environment"),
        (["rollback", "no-such-run"], "no upgrade run 'no-such-run'"),
        (["resume"], "no upgrade runs recorded"),
        (
            ["run", "--to", NEW, "--api-url", "localhost:8080"],
            "--api-url localhost:8080: not a URL; give http://HOST:PORT or https://HOST:PORT",
        ),
    ],
)
def test_operator_mistakes_get_one_line(site: Site, args: list[str], expected: str) -> None:
    done = site.sentinel("upgrade", *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert expected in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


# -- MariaDB ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def maria() -> Iterator[Site]:
    yield from _site("mariadb", "2.10.4")


def test_mariadb_minor_upgrade_and_restore_and_no_airflow_3(maria: Site) -> None:
    maria.restore()
    plan = maria.sentinel("upgrade", "plan", "--to", NEW)
    assert plan.returncode == 1
    assert "Airflow 3 does not support MariaDB" in plan.stdout
    refused = maria.sentinel("upgrade", "run", "--to", NEW)
    assert refused.returncode == 2 and "does not support MariaDB" in refused.stderr

    rows = maria.table_rows()
    failed = upgrade(maria, "run", "--to", "2.10.5", fail_after="migrate")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    run = last_run(maria)
    backup = next(s for s in run["steps"] if s["name"] == "backup")
    assert "database.sql" in backup["detail"], failed.stderr  # mariadb-dump
    assert maria.table_rows() == rows

    done = upgrade(maria, "run", "--to", "2.10.5")
    assert done.returncode == 0, done.stdout + done.stderr
    save_timings(maria, "minor-upgrade", last_run(maria))
    assert "2.10.5" in maria.airflow("version")
    assert "42" in maria.airflow("variables", "get", "sentinel_var")


# -- CeleryExecutor ---------------------------------------------------------------------------
CELERY_DB = "sentinel_upgrade_celery"


@pytest.fixture(scope="module")
def celery_site() -> Iterator[Site]:
    base = Path("/tmp/airflow-sentinel-upgrade-celery")
    result_backend = f"db+postgresql://postgres@127.0.0.1:5432/{CELERY_DB}"
    site = Site(
        "postgresql",
        base,
        OLD,
        label="celery",
        extras=CELERY_EXTRAS,
        options=(
            ("core", "executor", "CeleryExecutor"),
            ("celery", "broker_url", "amqp://guest:guest@127.0.0.1:5672//"),
            ("celery", "result_backend", result_backend),
        ),
    )
    site.build_template()
    site.restore()
    yield site
    site.drop_databases()
    subprocess.run(["rm", "-rf", str(site.base)], check=False)


# Celery 5.7 dropped what every Celery provider up to 3.26 imports (`retry` from
# celery.backends.database): resolved unpinned, the target's scheduler cannot start, and
# the upgrade rolls back. Airflow's constraints files pin it; this is the part that matters.
CELERY_CONSTRAINTS = "celery==5.6.3\nkombu==5.6.2\n"


def test_the_canary_runs_through_celery_workers_after_the_upgrade(
    celery_site: Site, tmp_path: Path
) -> None:
    """CeleryExecutor with RabbitMQ: the canary's task goes through the broker to a worker
    of the target (started by the run beside the api-server and the dag-processor) and its
    result comes back; nothing of it stays behind."""
    site = celery_site
    work = site.work()
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(CELERY_CONSTRAINTS)
    services = ("api-server", "dag-processor", "celery-worker")
    with site.controller(), target_services(site, *services) as flags:
        wait_until(site.newest_scheduler_heartbeat, 240, "the 2.10 scheduler's heartbeat", 1)
        done = upgrade(
            site,
            "run",
            "--to",
            NEW,
            "--verify-timeout",
            "240",
            "--constraints",
            str(constraints),
            *flags,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        run = last_run(site)
        save_timings(site, "upgrade-celery", run)
        verified = next(s for s in run["steps"] if s["name"] == "verify")["detail"]
        print(f"\ncelery verify: {verified}")
        assert "canary task succeeded on CeleryExecutor" in verified
        assert_canary_gone(site)
        assert site.work() == work
        installed = Path(run["facts"]["installed_packages"]).read_text().splitlines()
        print("celery packages: " + ", ".join(p for p in installed if "celery" in p))
