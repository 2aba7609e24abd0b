"""Which database schema an Airflow installation expects, and which one the database has.

Read from the installation's files, never by importing Airflow: the controller and the
upgrade manager run in their own environment, beside Airflow's.
"""

from __future__ import annotations

import ast
import logging
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from packaging.version import InvalidVersion, Version
from sqlalchemy.exc import SQLAlchemyError

from airflow_sentinel.metastore.sql import create_sql_engine
from airflow_sentinel.metastore.urls import normalize_metastore_url

log = logging.getLogger(__name__)

AIRFLOW_DISTS = ("apache_airflow", "apache_airflow_core")


def env_of_executable(executable: str) -> Path | None:
    """The virtual environment an ``airflow`` executable belongs to (symlinks followed)."""
    path = Path(executable)
    if not path.is_absolute():
        return None
    env = path.resolve().parent.parent
    return env if (env / "pyvenv.cfg").is_file() else None


def site_packages(env: Path) -> Path | None:
    found = sorted(env.glob("lib/python3*/site-packages"))
    return found[0] if found else None


def installed_version(env: Path) -> str | None:
    """The version of apache-airflow installed in ``env``, from its dist-info."""
    packages = site_packages(env)
    if packages is None:
        return None
    for dist in AIRFLOW_DISTS:
        for info in packages.glob(f"{dist}-*.dist-info"):
            return info.name[len(dist) + 1 : -len(".dist-info")]
    return None


def _heads_map(env: Path) -> dict[str, str]:
    packages = site_packages(env)
    source = packages / "airflow" / "utils" / "db.py" if packages else None
    if source is None or not source.is_file():
        return {}
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id == "_REVISION_HEADS_MAP":
            return {str(k): str(v) for k, v in ast.literal_eval(value).items()}
    return {}


def expected_head(env: Path, version: str | None = None) -> str | None:
    """The alembic revision Airflow in ``env`` migrates to: the head of the newest release
    at or below its version that changed the schema."""
    version = version or installed_version(env)
    heads = _heads_map(env)
    if version is None or not heads:
        return None
    try:
        mine = Version(version)
        eligible = [(Version(v), head) for v, head in heads.items() if Version(v) <= mine]
    except InvalidVersion:
        return None
    return max(eligible)[1] if eligible else None


def database_revision(airflow_db_url: str, timeout: float = 10.0) -> str | None:
    """The alembic revision of Airflow's database; None when it has none (never migrated)."""
    engine = create_sql_engine(normalize_metastore_url(airflow_db_url), timeout)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return None
            row = conn.execute(sa.text("SELECT version_num FROM alembic_version")).first()
            return str(row[0]) if row else None
    finally:
        engine.dispose()


@dataclass(frozen=True)
class SchemaGate:
    """Refuses a scheduler whose Airflow expects another schema than the database has.

    What cannot be determined (no virtual environment, an unreadable database) is let
    through: this gate adds safety where it can see, and a scheduler that cannot reach its
    database does not run anyway.
    """

    executable: str
    airflow_db_url: str

    def refusal(self) -> str | None:
        env = env_of_executable(self.executable)
        if env is None:
            return None
        version = installed_version(env)
        wanted = expected_head(env, version)
        if wanted is None:
            return None
        try:
            actual = database_revision(self.airflow_db_url)
        except (SQLAlchemyError, ValueError, OSError) as exc:
            log.debug("schema check skipped: %s", type(exc).__name__)
            return None
        if actual is None or actual == wanted:
            return None
        return (
            f"Airflow {version} in {env} expects schema {wanted}, the database is at {actual}; "
            "upgrade or roll back this node first"
        )


def scheduler_executable(argv: list[str]) -> str:
    """The file a scheduler command runs (``env``-style prefixes are not unwrapped)."""
    first = argv[0] if argv else ""
    return first if Path(first).is_absolute() else ""
