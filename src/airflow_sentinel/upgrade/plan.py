"""Preflight: what must hold before an upgrade starts. Nothing here changes anything."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from packaging.version import InvalidVersion, Version
from sqlalchemy.exc import SQLAlchemyError

from airflow_sentinel.airflow_env import env_dir_name
from airflow_sentinel.config.settings import Settings
from airflow_sentinel.errors import SentinelError, UserError
from airflow_sentinel.upgrade import dag_lint, db_fence, repairs
from airflow_sentinel.upgrade.databases import Database
from airflow_sentinel.upgrade.installation import Installation, UpgradeError
from airflow_sentinel.upgrade.services import AIRFLOW_3_SERVICES

# Room for a new environment beside the old one (Airflow 3 with providers is about 600 MB).
ENV_BYTES = 1 << 30


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    blocking: bool = True
    items: tuple[str, ...] = ()  # one line per finding, when there are several


def parse_target(to_version: str, current: str) -> Version:
    try:
        target = Version(to_version)
    except InvalidVersion:
        raise UserError(
            f"--to {to_version!r}: not a version; accepted: e.g. 3.1.0 or 2.10.5"
        ) from None
    if target <= Version(current):
        raise UserError(
            f"--to {to_version}: not newer than the installed Airflow {current}; "
            "to go back, use `airflow-sentinel upgrade rollback`"
        )
    return target


def new_env_path(
    inst: Installation, to_version: str, requirements: list[str], constraints: str, in_place: bool
) -> Path:
    if in_place:
        return inst.env.path
    return inst.env.path.parent / env_dir_name(to_version, requirements, constraints)


def path_check(inst: Installation, database: Database, target: Version) -> Check:
    current = Version(inst.env.version)
    if target.major >= 3 and current < Version("2.7"):
        return Check(
            "upgrade path", False, f"Airflow 3 needs 2.7 or later first; this is {current}"
        )
    if target.major >= 3 and inst.dialect == "mysql":
        server = _server_version(database)
        if "mariadb" in server.lower():
            return Check(
                "upgrade path",
                False,
                f"Airflow 3 does not support MariaDB (server {server}); stay on 2.x or move "
                "the metadata database to PostgreSQL or MySQL 8 first",
            )
        if server and Version(re.split(r"[^0-9.]", server)[0]) < Version("8.0"):
            return Check("upgrade path", False, f"Airflow 3 needs MySQL 8.0 or later ({server})")
    if target.major > current.major + 1:
        return Check(
            "upgrade path", False, f"upgrade one major version at a time ({current} -> {target})"
        )
    return Check("upgrade path", True, f"{current} -> {target}")


def _server_version(database: Database) -> str:
    engine = database.engine()
    try:
        with engine.connect() as conn:
            return str(conn.execute(sa.text("SELECT VERSION()")).scalar() or "")
    except SQLAlchemyError:
        return ""
    finally:
        engine.dispose()


def index_check(to_version: str, constraints: str) -> Check:
    if constraints:
        found = Path(constraints).is_file()
        return Check(
            "package index",
            found,
            f"constraints file {constraints}" + ("" if found else " does not exist"),
        )
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "index", "versions", "apache-airflow"],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("package index", False, f"cannot ask the package index ({type(exc).__name__})")
    versions = re.search(r"Available versions: (.*)", done.stdout)
    if versions is None:
        return Check("package index", False, "the package index did not answer")
    if to_version not in [v.strip() for v in versions.group(1).split(",")]:
        return Check("package index", False, f"apache-airflow {to_version} is not on the index")
    return Check("package index", True, f"apache-airflow {to_version} is available")


def disk_check(
    inst: Installation, database: Database, state_dir: Path, new_env: Path, in_place: bool
) -> Check:
    """Room for each thing on the filesystem it goes to: the backup (database dump and
    archives) beside the journal, the new environment beside the old one."""
    backup = _database_bytes(database)
    for folder in (inst.home / "dags", inst.home / "plugins"):
        if folder.is_dir():
            backup += sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    needs = [(state_dir, backup, "the backup")]
    if not in_place:
        needs.append((new_env, ENV_BYTES, "the new environment"))
    by_device: dict[int, tuple[Path, int, list[str]]] = {}
    for path, need, what in needs:
        probe = _existing(path)
        device = probe.stat().st_dev
        _, total, names = by_device.get(device, (probe, 0, []))
        by_device[device] = (probe, total + need, [*names, what])
    short, notes = [], []
    for probe, need, names in by_device.values():
        free = shutil.disk_usage(probe).free
        what = " and ".join(names)
        line = f"{_size(free)} free on {probe}, about {_size(need)} needed ({what})"
        notes.append(line)
        if free <= need * 1.5:
            short.append(line)
    if short:
        return Check("free disk", False, "; ".join(short))
    return Check("free disk", True, "; ".join(notes))


def _size(count: int) -> str:
    return f"{count >> 20} MiB" if count >= 10 << 20 else f"{count >> 10} KiB"


def _existing(path: Path) -> Path:
    """The nearest existing folder at or above ``path``: where it will be made."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _database_bytes(database: Database) -> int:
    queries = {
        "postgresql": "SELECT pg_database_size(current_database())",
        "mysql": "SELECT COALESCE(SUM(data_length + index_length), 0) "
        "FROM information_schema.tables WHERE table_schema = DATABASE()",
    }
    name = database.sa_url.get_backend_name()
    if name == "sqlite":
        path = Path(database.sa_url.database or "")
        return path.stat().st_size if path.exists() else 0
    engine = database.engine()
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(queries[name])).scalar() or 0)
    except SQLAlchemyError:
        return 0
    finally:
        engine.dispose()


def reach_check(database: Database) -> Check:
    try:
        database.check()
    except SentinelError as exc:
        return Check("metastore reachable", False, str(exc))
    return Check("metastore reachable", True, database.sa_url.render_as_string(hide_password=True))


def permissions_check(database: Database) -> Check:
    """Informational: rows the migrate step will remove (see ``repairs``)."""
    name = "permission rows"
    try:
        dangling = repairs.dangling_permissions(database)
    except SQLAlchemyError as exc:
        why = f"cannot read {repairs.PERMISSIONS}: {exc.__class__.__name__}"
        return Check(name, False, why, blocking=False)
    if not dangling:
        return Check(name, True, "none without an action", blocking=False)
    return Check(
        name,
        True,
        f"{len(dangling)} in {repairs.PERMISSIONS} have no action or resource (left by "
        "Flask-AppBuilder's permission race); they grant nothing and the FAB migration fails "
        "on them, so the migrate step removes them after the backup",
        blocking=False,
    )


def fence_check(inst: Installation, settings: Settings) -> Check:
    """Informational: the fence in Airflow's database, and what the run does with it."""
    fine, detail = db_fence.plan_line(settings.db_fence, inst.db_url, settings.db_fence_wait)
    return Check("db fence", fine, detail, blocking=False)


def tools_check(database: Database) -> Check:
    missing = database.missing_tools()
    if missing:
        return Check("dump tools", False, f"not on PATH: {', '.join(missing)}")
    return Check("dump tools", True, ", ".join(database.tools) or "built in (SQLite backup API)")


def environment_check(inst: Installation, in_place: bool) -> Check:
    if in_place or inst.side_by_side:
        mode = "in place" if in_place else f"side by side; {inst.env_link} is switched"
        return Check("environment", True, mode)
    return Check(
        "environment",
        False,
        f"{inst.env_link} is a directory: make the services use a symlink to it "
        "(side-by-side upgrades switch the link), or pass --in-place",
    )


def dag_lint_check(inst: Installation, target: Version) -> Check:
    """Airflow 3 incompatibilities in the DAGs, by ruff's AIR3 rules (advice, not a gate:
    whether a DAG loads on the target is checked by parsing it there before the hold)."""
    name = "DAG compatibility"
    if target.major < 3 or Version(inst.env.version).major >= 3:
        return Check(name, True, "not crossing to Airflow 3", blocking=False)
    dags = Path(inst.option("core", "dags_folder") or inst.home / "dags")
    ruff = dag_lint.find_ruff()
    if ruff is None or not dags.is_dir():
        missing = "ruff is not installed" if ruff is None else f"no DAG folder at {dags}"
        return Check(name, True, f"skipped: {missing}", blocking=False)
    try:
        findings = dag_lint.lint(dags, ruff)
    except UpgradeError as exc:
        return Check(name, False, str(exc), blocking=False)
    if not findings:
        return Check(name, True, f"no AIR3 findings in {dags} (ruff)", blocking=False)
    breaking = sum(f.breaks for f in findings)
    return Check(
        name,
        False,
        f"{len(findings)} AIR3 finding(s) in {dags}, {breaking} that stop a DAG from loading "
        "on Airflow 3 (AIR301 removed, AIR302 moved to a provider)",
        blocking=False,
        items=tuple(f.describe(dags) for f in findings),
    )


def services_check(inst: Installation, target: Version) -> Check:
    """The services that change with the target (advice: `run` starts what it is told)."""
    if target.major < 3 or Version(inst.env.version).major >= 3:
        return Check("service set", True, "the same services as now", blocking=False)
    return Check(
        "service set",
        False,
        "Airflow 3 runs other services: give `upgrade run` the target's (--new-service or "
        "--start-command) and the old version's for a rollback (--old-service or "
        "--old-start-command)",
        blocking=False,
        items=AIRFLOW_3_SERVICES,
    )


# A package index that does not answer must not hold the preflight up for long: the
# check is advice.
RESOLVE_TIMEOUT = 60
# Shown from a resolution: Airflow's own parts, the executors' libraries.
KEY_PACKAGES = re.compile(
    r"^(apache-airflow[a-z0-9-]*|celery|kombu|sqlalchemy|pymysql|psycopg2?(-binary)?)==", re.I
)


def pins_check(inst: Installation, to_version: str, constraints: str) -> Check:
    """Whether the install is pinned; when it is not, what the resolver would pick today."""
    name = "package versions"
    if constraints:
        return Check(name, True, f"pinned by {constraints}", blocking=False)
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    published = (
        f"https://raw.githubusercontent.com/apache/airflow/constraints-{to_version}/"
        f"constraints-{python}.txt"
    )
    requirements = [f"apache-airflow=={to_version}", *inst.env.carried_requirements()]
    picked = _resolve(requirements, python)
    advice = f"Airflow publishes the tested set for Python {python}: --constraints {published}"
    if isinstance(picked, str):
        return Check(
            name, False, f"unpinned, and the resolver failed ({picked}); {advice}", blocking=False
        )
    shown = tuple(p for p in picked if KEY_PACKAGES.match(p))
    return Check(
        name,
        False,
        f"unpinned: the resolver picks versions at install time ({len(picked)} packages "
        f"today, the key ones below); {advice}",
        blocking=False,
        items=shown,
    )


def _resolve(requirements: list[str], python: str) -> list[str] | str:
    """The pinned set uv resolves for ``requirements`` today, or why it could not."""
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    try:
        done = subprocess.run(
            [uv, "pip", "compile", "--quiet", "--no-header", "--no-annotate",
             "--python-version", python, "-"],
            input="\n".join(requirements) + "\n",
            capture_output=True, text=True, timeout=RESOLVE_TIMEOUT, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return type(exc).__name__
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        return (lines[-1] if lines else "no output")[:200]
    return [line.strip() for line in done.stdout.splitlines() if "==" in line]
