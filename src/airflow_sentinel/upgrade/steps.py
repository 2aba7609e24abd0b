"""The steps of an upgrade and of its rollback. Each is idempotent: a run resumed after a
kill -9 repeats the step that was under way, and that must be safe."""

from __future__ import annotations

import configparser
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from airflow_sentinel.airflow_env import COMPLETE, build_venv, requirement_key
from airflow_sentinel.airflow_schema import database_revision, expected_head, installed_version
from airflow_sentinel.errors import UserError
from airflow_sentinel.fence import DbFence
from airflow_sentinel.upgrade import (
    canary,
    configure,
    db_fence,
    files,
    repairs,
    sqlite_migration,
    survival,
    verify,
)
from airflow_sentinel.upgrade.databases import Database, SqliteDatabase
from airflow_sentinel.upgrade.installation import AirflowEnv, Installation, UpgradeError
from airflow_sentinel.upgrade.journal import DONE, Journal, Run
from airflow_sentinel.upgrade.services import Controllers, LocalServices

log = logging.getLogger("airflow_sentinel.upgrade")

BACKUP = "backup"
CONFIG_FILES = ("airflow.cfg", "webserver_config.py")


@dataclass
class Context:
    run: Run
    journal: Journal
    installation: Installation
    database: Database
    controllers: Controllers | None
    services: LocalServices
    hold_timeout: float
    verify_timeout: float
    stale_after: float
    journal_error: str = ""  # the last failure to write the journal, if any
    canary: bool = True  # verify runs a task of ours through the executor
    api_url: str = ""  # verify asks the api-server (webserver on 2.x) for its health
    fence_mode: str = "off"  # the settings' db_fence: auto, on or off
    fence_wait: float = 10.0  # the settings' db_fence_wait

    def open_fence(self) -> DbFence | None:
        """The fence of Airflow's database, where the settings give one (see db_fence)."""
        try:
            return db_fence.open_airflow_fence(
                self.fence_mode, self.installation.db_url, self.fence_wait
            )
        except UserError as exc:
            # db_fence = on where there can be none: the controller refuses to start, and
            # says why; the upgrade has no fence to look after.
            log.warning("%s", exc)
            return None

    @property
    def dags_folder(self) -> Path:
        return Path(self.installation.option("core", "dags_folder") or self.home / "dags")

    @property
    def logs_folder(self) -> Path:
        return Path(self.installation.option("logging", "base_log_folder") or self.home / "logs")

    @property
    def runs_canary(self) -> bool:
        """Only a scheduler runs it: none ran before the upgrade, none runs after it."""
        return self.canary and bool(self.run.facts.get("scheduler_was_running"))

    @property
    def folder(self) -> Path:
        return self.journal.folder(self.run.id)

    @property
    def backup(self) -> Path:
        path = self.folder / BACKUP
        path.mkdir(mode=0o700, exist_ok=True)
        return path

    @property
    def leader(self) -> bool:
        return self.run.cluster_role == "leader"

    @property
    def home(self) -> Path:
        return Path(self.run.home)

    @property
    def old_env(self) -> AirflowEnv:
        return AirflowEnv(Path(self.run.old_env))

    @property
    def new_env(self) -> AirflowEnv:
        return AirflowEnv(Path(self.run.new_env))

    @property
    def staged_config(self) -> Path:
        return self.folder / "airflow.cfg.new"

    @property
    def db_backup(self) -> Path:
        return self.backup / f"database.{self.database.suffix}"


Step = Callable[[Context], str]


# -- forward ----------------------------------------------------------------------------
def inspect(ctx: Context) -> str:
    """What works before: DAGs, import errors, plugins. Before the hold (it writes nothing);
    the backup inspects again if the DAG or plugin files changed since."""
    facts = verify.gather(ctx.old_env, ctx.home, ctx.installation.db_url)
    ctx.run.facts["before"] = facts.as_dict()
    ctx.run.facts["inspected_files"] = {
        key: files.folder_sums(path) for key, path in _code_folders(ctx).items()
    }
    return (
        f"{len(facts.dags)} DAGs, {len(facts.import_errors)} import errors, "
        f"{len(facts.plugins)} plugins"
    )


def _code_folders(ctx: Context) -> dict[str, Path]:
    """The DAG and plugin folders, by their option name, where they exist."""
    found = {}
    for key in ("dags_folder", "plugins_folder"):
        path = Path(ctx.installation.option("core", key) or ctx.home / key.split("_")[0])
        if path.is_dir():
            found[key] = path
    return found


def check_dags(ctx: Context) -> str:
    """Parse the DAGs with the target, before the hold: a DAG that loads today and would not
    load on the target stops the run while the old scheduler still runs.

    The target cannot use the old database before the migration, so it parses against a
    scratch database of its own, with the staged airflow.cfg.
    """
    scratch = ctx.folder / "check-dags"
    scratch.mkdir(mode=0o700, exist_ok=True)
    env = {
        "AIRFLOW_CONFIG": str(ctx.staged_config),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{scratch / 'airflow.db'}",
    }
    if int(ctx.run.to_version.split(".")[0]) < 3:
        env["AIRFLOW__CORE__EXECUTOR"] = "SequentialExecutor"  # 2.x refuses others on SQLite
    if ctx.canary and ctx.leader:
        unusable = canary.writable_folder(ctx.dags_folder)
        if unusable is not None:
            raise UpgradeError(
                f"verify's canary task needs the DAGs folder: {unusable}; "
                "fix it, or pass --no-canary"
            )
    secret = ctx.installation.db_url
    ctx.new_env.run(["db", "migrate"], ctx.home, timeout=900, secret_url=secret, extra_env=env)
    target = verify.gather(ctx.new_env, ctx.home, secret, extra_env=env)
    before = verify.Facts.from_dict(ctx.run.facts["before"])
    found = verify.problems(before, target)
    if found:
        raise UpgradeError(
            f"before the hold, with Airflow {ctx.run.to_version}: {'; '.join(found)}"
        )
    return f"{len(target.dags)} DAGs load with Airflow {ctx.run.to_version}, no new import errors"


def stop(ctx: Context) -> str:
    notes = []
    if ctx.controllers is not None and ctx.leader:
        running = ctx.controllers.still_running(ctx.stale_after)
        ctx.run.facts.setdefault("scheduler_was_running", bool(running))
        ctx.controllers.hold(ctx.run.id)
        notes.append("controllers held")
    notes.append(ctx.services.stop())
    if ctx.controllers is not None and ctx.leader:
        ctx.controllers.wait_until_none_runs(ctx.hold_timeout, ctx.stale_after)
        ctx.run.facts.setdefault("scheduler_stopped_wall", time.time())  # the first stop
        notes.append("no scheduler runs")
    return "; ".join(notes)


def backup(ctx: Context) -> str:
    folder, config_dir = ctx.backup, ctx.installation.config.path.parent
    saved = []
    modes = {}
    for name in CONFIG_FILES:
        source = ctx.installation.config.path if name == "airflow.cfg" else config_dir / name
        if source.is_file():
            files.private_copy(source, folder / name)
            modes[name] = [str(source), files.sha256(source), source.stat().st_mode & 0o7777]
            saved.append(name)
    ctx.run.facts["config_files"] = modes
    check_configured_from(ctx.run.facts)
    archives = {}
    for key, path in _code_folders(ctx).items():
        target = folder / f"{key.split('_')[0]}.tar.gz"
        sums = files.archive_folder(path, target)
        files.verify_archive(target, sums)
        archives[key] = {"path": str(path), "archive": str(target), "files": sums}
        saved.append(f"{target.name} ({len(sums)} files)")
    ctx.run.facts["archives"] = archives
    inspected = ctx.run.facts.get("inspected_files")
    if inspected != {key: a["files"] for key, a in archives.items()}:
        inspect(ctx)  # files changed since the inspection: what works is what is backed up
        saved.append("DAG or plugin files changed since the inspection: inspected again")
    (folder / "packages.txt").write_text("\n".join(ctx.old_env.freeze()) + "\n")
    (folder / "packages.txt").chmod(0o600)
    saved.append("packages.txt")
    if ctx.leader:
        try:
            ctx.database.backup(ctx.db_backup)
        except BaseException:
            ctx.db_backup.unlink(missing_ok=True)  # a half dump: its room goes to the rollback
            raise
        ctx.run.facts["row_counts"] = ctx.database.row_counts()  # every table
        ctx.run.facts["db_revision"] = database_revision(ctx.installation.db_url)
        saved.append(f"{ctx.db_backup.name} ({ctx.db_backup.stat().st_size} bytes)")
    return ", ".join(saved)


def check_configured_from(facts: dict[str, Any]) -> None:
    """The new airflow.cfg was staged before the hold, from the file then in use; a change
    made to that file since would be lost at the switch."""
    staged_from = facts.get("configured_from")
    saved = facts["config_files"].get("airflow.cfg")
    if staged_from is not None and saved is not None and saved[1] != staged_from:
        raise UpgradeError(
            f"{saved[0]} changed after the configure step; run the upgrade again so the "
            "change is carried over"
        )


def install(ctx: Context) -> str:
    if ctx.run.in_place:
        _old_defaults(ctx)  # the environment is about to stop being the old version
        _old_renames(ctx)
    requirements = [f"apache-airflow=={ctx.run.to_version}", *ctx.run.facts["carried_packages"]]
    target = Path(ctx.run.new_env)
    key = requirement_key(requirements, ctx.run.constraints)
    if (target / COMPLETE).is_file() and (target / COMPLETE).read_text() == key:
        installed = _record_installed(ctx)
        return f"reused {target} (built earlier for the same packages); the set in {installed}"
    if ctx.run.in_place:
        build_venv(target, requirements, ctx.run.constraints, fresh=False)
    else:
        build_venv(target, requirements, ctx.run.constraints)
    found = installed_version(target)
    if found != ctx.run.to_version:
        raise UpgradeError(f"installed Airflow is {found}, not {ctx.run.to_version}")
    installed = _record_installed(ctx)
    return f"installed {', '.join(requirements)} into {target}; the set in {installed}"


def _record_installed(ctx: Context) -> Path:
    """The exact package set the target got, beside the old one (packages.txt)."""
    path = ctx.folder / "packages-installed.txt"
    _private_write(path, "\n".join(ctx.new_env.freeze()) + "\n")
    ctx.run.facts["installed_packages"] = str(path)
    return path


def configure_step(ctx: Context) -> str:
    """Stage airflow.cfg for the target beside the journal; the switch puts it in place."""
    cfg = ctx.installation.config.path
    ctx.run.facts["configured_from"] = files.sha256(cfg)
    old_text = cfg.read_text()
    secret = ctx.installation.db_url  # Airflow's errors may echo the connection URL
    old_defaults = configure.parse_defaults(_old_defaults(ctx))
    new_defaults = configure.defaults_text(ctx.new_env, ctx.home, secret)
    maps = configure.with_unlisted_removals(
        configure.target_maps(ctx.new_env, ctx.home, secret),
        ctx.run.from_version,
        ctx.run.to_version,
    )
    text, report = configure.carry_over(
        configure.read_raw(cfg),
        old_defaults,
        new_defaults,
        maps,
        dict(os.environ),
        old_renames=_old_renames(ctx),
    )
    block = configure.sentinel_block(old_text)
    if block:
        text = text.rstrip("\n") + "\n\n" + block
    _private_write(ctx.staged_config, text)  # it holds the same secrets as airflow.cfg
    ctx.run.facts["executor"] = _target_executor(ctx, text, new_defaults)
    lint = _lint(ctx)
    report_path = ctx.folder / "config-report.txt"
    _private_write(report_path, "\n".join([*report.lines(), *lint]) + "\n")
    ctx.run.facts["config_report"] = str(report_path)
    return f"{report.summary()}; report in {report_path}"


def _old_defaults(ctx: Context) -> str:
    """The old version's default airflow.cfg, kept once read: in place, the environment
    no longer has it after the install."""
    kept = ctx.folder / "defaults-before.cfg"
    if not kept.is_file():
        text = configure.defaults_text(ctx.old_env, ctx.home, ctx.installation.db_url)
        _private_write(kept.with_suffix(".partial"), text)
        kept.with_suffix(".partial").replace(kept)  # a kill -9 leaves no half file behind
    return kept.read_text()


def _old_renames(ctx: Context) -> dict[configure.Option, configure.Option]:
    """The old version's own rename map, kept once read (see `_old_defaults`)."""
    if "old_renames" not in ctx.run.facts:
        maps = configure.target_maps(ctx.old_env, ctx.home, ctx.installation.db_url)
        ctx.run.facts["old_renames"] = [[*old, *new] for old, new in maps.renames.items()]
        ctx.journal.save(ctx.run)
    return {(o[0], o[1]): (o[2], o[3]) for o in ctx.run.facts["old_renames"]}


def _private_write(path: Path, text: str) -> None:
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(text)


def _lint(ctx: Context) -> list[str]:
    if int(ctx.run.to_version.split(".")[0]) < 3:
        return []
    try:  # the new file, staged: the one in place is still the old version's
        out = ctx.new_env.run(
            ["config", "lint"],
            ctx.home,
            secret_url=ctx.installation.db_url,
            extra_env={"AIRFLOW_CONFIG": str(ctx.staged_config)},
        ).stdout
    except UpgradeError as exc:
        return [f"airflow config lint: {exc}"]
    return ["airflow config lint:", *(f"  {line}" for line in out.strip().splitlines())]


def migrate(ctx: Context) -> str:
    if not ctx.leader:
        return "done by the node that holds the cluster upgrade lock"
    version = ctx.run.to_version
    major_minor = tuple(int(p) for p in version.split(".")[:2])
    command = ["db", "migrate"] if major_minor >= (2, 7) else ["db", "upgrade"]
    fence = ctx.open_fence()
    try:
        removed = fence is not None and db_fence.remove_before_migration(
            fence, ctx.run.facts, lambda: ctx.journal.save(ctx.run)
        )
        try:
            done = _migrate(ctx, command)
        except UpgradeError as exc:
            if not removed:
                raise
            raise UpgradeError(
                f"{exc}; the fence is removed from Airflow's database until the run is "
                "rolled back or resumed"
            ) from None
        if fence is not None:
            done += db_fence.install_after_migration(fence, ctx.run.facts)
    finally:
        if fence is not None:
            fence.close()
    return done


def _migrate(ctx: Context, command: list[str]) -> str:
    """The migration itself, its schema and the survival of every table's rows."""
    version = ctx.run.to_version
    sqlite = ctx.database if isinstance(ctx.database, SqliteDatabase) else None
    repaired = _remove_dangling_rows(ctx)
    ctx.new_env.run(
        command,
        ctx.home,
        timeout=3600,
        secret_url=ctx.installation.db_url,
        bootstrap=sqlite_migration.BOOTSTRAP if sqlite else None,
        log_to=ctx.folder / "migrate.log",
    )
    wanted = expected_head(ctx.new_env.path)
    actual = database_revision(ctx.installation.db_url)
    if wanted is not None and actual != wanted:
        raise UpgradeError(
            f"migration incomplete: database at {actual}, Airflow {version} expects {wanted}"
        )
    if sqlite is not None:
        broken = sqlite_migration.broken_references(sqlite.path)
        if broken:
            raise UpgradeError(f"rows refer to rows that are gone: {'; '.join(broken)}")
    survived = _check_survival(ctx)
    return f"{repaired}airflow {' '.join(command)}; schema at {actual}; {survived}"


def _remove_dangling_rows(ctx: Context) -> str:
    """Rows the migration would fail on and that hold nothing; counted for the survival."""
    removed = repairs.remove_dangling_permissions(ctx.database)
    if not removed:
        return ""
    done = ctx.run.facts.setdefault("removed_rows", {})
    for table, count in removed.items():
        done[table] = done.get(table, 0) + count
    return repairs.describe(removed) + "; "


def _check_survival(ctx: Context) -> str:
    """Every table's rows in the migrated database, against the backup's counts."""
    before = ctx.run.facts["row_counts"]
    result = survival.compare(
        before,
        ctx.database.row_counts(),
        ctx.run.from_version,
        ctx.run.to_version,
        removed=ctx.run.facts.get("removed_rows", {}),
    )
    report = ctx.folder / "survival.txt"
    _private_write(report, "\n".join(result.lines) + "\n")
    ctx.run.facts["survival"] = result.lines
    line = survival.summary(result)
    if not result.ok:
        raise UpgradeError(f"{line} (all tables in {report})")
    return line


def switch(ctx: Context) -> str:
    """The staged airflow.cfg and the new environment, each put in place atomically."""
    cfg = ctx.installation.config.path
    files.restore_file(ctx.staged_config, cfg, int(ctx.run.facts["config_files"]["airflow.cfg"][2]))
    if ctx.run.in_place:
        return f"{cfg} replaced; in place: the environment already has the target"
    point_link(Path(ctx.run.env_link), Path(ctx.run.new_env))
    return f"{cfg} replaced; {ctx.run.env_link} -> {ctx.run.new_env}"


def point_link(link: Path, target: Path) -> None:
    """Repoint a symlink atomically: a new link, renamed over the old one."""
    temporary = link.with_name(f".{link.name}.switch")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target)
    temporary.replace(link)


def start(ctx: Context, version: str = "new") -> str:
    notes = []
    if version == "new" and ctx.runs_canary:  # before the first parse: it lists new files
        notes.append(_place_canary(ctx))
    ctx.run.facts["started_wall"] = time.time()
    notes.append(ctx.services.start(version))
    if ctx.controllers is not None and ctx.leader:
        ctx.controllers.release()
        notes.append("controllers released")
    return "; ".join(notes)


def verify_step(ctx: Context) -> str:
    notes = []
    if ctx.run.facts.get("scheduler_was_running"):
        waited = verify.wait_for_heartbeat(
            ctx.installation.db_url, ctx.run.facts["started_wall"], ctx.verify_timeout
        )
        ctx.run.facts["heartbeat_wall"] = time.time()
        notes.append(f"scheduler heartbeat after {waited:.1f}s")
    if ctx.api_url:
        notes.append(verify.wait_for_api(ctx.api_url, ctx.run.to_version, ctx.verify_timeout))
    if ctx.runs_canary:
        notes.append(_canary(ctx))
    before = verify.Facts.from_dict(ctx.run.facts["before"])
    if ctx.run.facts.get("scheduler_was_running") and before.dags:
        notes.append(_parsed_again(ctx))
    after = verify.gather(ctx.new_env, ctx.home, ctx.installation.db_url)
    ctx.run.facts["after"] = after.as_dict()
    found = verify.problems(before, after)
    if found:
        raise UpgradeError("; ".join(found))
    notes.append(f"{len(after.dags)} DAGs, no new import errors, plugins load")
    return "; ".join(notes)


def _place_canary(ctx: Context) -> str:
    """The file, after the rows of an earlier canary that was not cleaned up: a run of this
    `@once` DAG left in the database would read as this one's, and stop a new one."""
    if "canary_seconds" in ctx.run.facts:
        return "canary already succeeded"
    stale = canary.clean(ctx.new_env, ctx.home, ctx.installation.db_url, None, None)
    placed = canary.place(ctx.dags_folder).parent
    return f"canary DAG placed in {placed}" + (" (an earlier one's rows removed)" if stale else "")


def _canary(ctx: Context) -> str:
    """Our one-task DAG, followed to its end, then removed with its rows. A cleanup that
    fails after a success is a warning: the upgrade worked."""
    waited = ctx.run.facts.get("canary_seconds")
    if waited is None:  # a verify resumed after the canary succeeded only cleans up
        waited = _follow_canary(ctx)
    ran = f"canary task succeeded on {_executor(ctx)} in {float(waited):.1f}s"
    tries = int(ctx.run.facts.get("canary_tries") or 1)
    if tries > 1:  # worth knowing: the first task after the start failed
        ran += f" (on try {tries} of {canary.RETRIES + 1})"
    try:
        removed = canary.clean(
            ctx.new_env, ctx.home, ctx.installation.db_url, ctx.dags_folder, ctx.logs_folder
        )
    except (OSError, UpgradeError, SQLAlchemyError) as exc:
        log.warning("the canary DAG could not be removed: %s", exc)
        return (
            f"{ran}; NOT removed ({str(exc)[:160]}): delete {ctx.dags_folder / canary.FILE_NAME}"
            f" and run `airflow dags delete -y {canary.DAG_ID}`"
        )
    return f"{ran} (removed: {', '.join(removed) or 'nothing left'})"


def _follow_canary(ctx: Context) -> float:
    watch = canary.Watch(ctx.installation.db_url)
    try:
        ok, progress, waited = canary.follow(watch.progress, ctx.verify_timeout)
    finally:
        watch.close()
    if not ok:
        _after_failed_canary(ctx)
        raise UpgradeError(
            canary.failure(progress, ctx.verify_timeout, _executor(ctx), ctx.dags_folder)
        )
    ctx.run.facts["canary_seconds"] = round(waited, 1)
    ctx.run.facts["canary_tries"] = progress.tries
    ctx.journal.save(ctx.run)  # its rows go next: a resumed verify must not wait for it
    return waited


def _after_failed_canary(ctx: Context) -> None:
    """With a rollback to come, the file goes now (the old version must not find it) and
    the restore takes the rows. Without one, the rows go and the file stays, so that a
    `resume` after the operator's fix finds it parsed and run again. The task log stays."""
    try:
        if ctx.run.no_rollback:
            canary.clean(ctx.new_env, ctx.home, ctx.installation.db_url, None, None)
        else:
            canary.remove_file(ctx.dags_folder)
    except (OSError, UpgradeError, SQLAlchemyError) as exc:
        log.warning("could not remove the canary DAG: %s", exc)


def _target_executor(ctx: Context, staged: str, new_defaults: str) -> str:
    """The executor the target runs: the environment's, the staged file's, or its default."""
    parsed = configparser.ConfigParser(interpolation=None, strict=False)
    parsed.read_string(staged)
    return (
        os.environ.get("AIRFLOW__CORE__EXECUTOR")
        or parsed.get("core", "executor", fallback="").strip()
        or configure.parse_defaults(new_defaults).get(("core", "executor"), "")
    )


def _executor(ctx: Context) -> str:
    return str(ctx.run.facts.get("executor") or "the configured executor")


def _parsed_again(ctx: Context) -> str:
    """The DAG processor of the target parses the operator's DAGs: their newest parse
    time moves past the start (on Airflow 3 only `airflow dag-processor` parses)."""
    started = float(ctx.run.facts["started_wall"])
    watch = canary.Watch(ctx.installation.db_url)
    try:
        verify.wait_until(
            lambda: (watch.newest_parse() or 0.0) > started,
            ctx.verify_timeout,
            f"no DAG was parsed within {ctx.verify_timeout:g}s of the start: is a DAG processor "
            f"running (on Airflow 3: `airflow dag-processor`) and reading {ctx.dags_folder}?",
        )
        parsed = watch.newest_parse() or started
    finally:
        watch.close()
    return f"DAGs parsed again, the newest {parsed - started:.1f}s after the start"


def forward_steps(in_place: bool) -> tuple[str, ...]:
    """The order of a run. The hold begins at stop. Side by side, everything that can run
    beside the old scheduler does: the new environment, its airflow.cfg, the inspection and
    the target's parse of the DAGs, so the hold covers only the backup, the migration and the
    switch. In place, the install changes the running environment, so it and what needs it
    wait for the hold."""
    after = ("migrate", "switch", "start", "verify")
    if in_place:
        return ("inspect", "stop", "backup", "install", "configure", "check-dags", *after)
    return ("install", "configure", "inspect", "check-dags", "stop", "backup", *after)


FORWARD: dict[str, Step] = {
    "stop": stop,
    "backup": backup,
    "inspect": inspect,
    "check-dags": check_dags,
    "install": install,
    "configure": configure_step,
    "migrate": migrate,
    "switch": switch,
    "start": start,
    "verify": verify_step,
}


# -- rollback ---------------------------------------------------------------------------
def undo_stop(ctx: Context) -> str:
    if not ctx.run.reached("stop"):
        return "nothing to stop"
    if ctx.run.reached("start"):
        canary.remove_file(ctx.dags_folder)  # the old version must not find our DAG
    return stop(ctx)


def restore_database(ctx: Context) -> str:
    # Nothing before the migration writes to the database (the inspection writes no audit
    # rows); from the migration on, Airflow has.
    if not (ctx.leader and ctx.run.step("backup").state == DONE and ctx.run.reached("migrate")):
        return "the database was not changed"
    ctx.database.restore(ctx.db_backup)
    done = f"restored from {ctx.db_backup.name}"
    fence = ctx.open_fence()
    if fence is not None:
        try:
            done += db_fence.repair_after_restore(fence, ctx.run.facts)
        finally:
            fence.close()
    return done


def restore_config(ctx: Context) -> str:
    if not ctx.run.reached("switch"):
        return "configuration was not changed"
    restored = []
    for name, (original, digest, mode) in ctx.run.facts["config_files"].items():
        files.restore_file(ctx.backup / name, Path(original), int(mode))
        if files.sha256(Path(original)) != digest:
            raise UpgradeError(f"{original}: restored copy does not match its checksum")
        restored.append(name)
    return f"restored byte for byte: {', '.join(restored)}"


def switch_back(ctx: Context) -> str:
    if not ctx.run.reached("switch") and not (ctx.run.in_place and ctx.run.reached("install")):
        return "the environment was not switched"
    if ctx.run.in_place:
        build_venv(Path(ctx.run.old_env), [], "", fresh=False, sync=ctx.backup / "packages.txt")
        return "reinstalled the old package list"
    point_link(Path(ctx.run.env_link), Path(ctx.run.old_env))
    return f"{ctx.run.env_link} -> {ctx.run.old_env}"


def undo_start(ctx: Context) -> str:
    if not ctx.run.reached("stop"):
        return "nothing was stopped"
    return start(ctx, "old")


def verify_old(ctx: Context) -> str:
    version = installed_version(Path(ctx.run.env_link).resolve())
    if version != ctx.run.from_version:
        raise UpgradeError(f"{ctx.run.env_link} has Airflow {version}, not {ctx.run.from_version}")
    if ctx.run.reached("stop") and ctx.run.facts.get("scheduler_was_running"):
        waited = verify.wait_for_heartbeat(
            ctx.installation.db_url, ctx.run.facts["started_wall"], ctx.verify_timeout
        )
        ctx.run.facts["rollback_heartbeat_wall"] = time.time()
        return f"Airflow {version}; scheduler heartbeat after {waited:.1f}s"
    return f"Airflow {version}"


BACKWARD: tuple[tuple[str, Step], ...] = (
    ("stop", undo_stop),
    ("restore-database", restore_database),
    ("restore-config", restore_config),
    ("switch-back", switch_back),
    ("start", undo_start),
    ("verify", verify_old),
)
