"""Which database schema an Airflow installation expects, and which one the database has.

Read from the installation's files, never by importing Airflow: the controller and the
upgrade manager run in their own environment, beside Airflow's.
"""

from __future__ import annotations

import ast
import functools
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from packaging.version import InvalidVersion, Version
from sqlalchemy.exc import SQLAlchemyError

from airflow_sentinel.deadline import call_with_deadline
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
    return installed_version_in(packages) if packages is not None else None


def installed_version_in(packages: Path) -> str | None:
    """The version of apache-airflow whose dist-info lies in ``packages``."""
    for dist in AIRFLOW_DISTS:
        for info in packages.glob(f"{dist}-*.dist-info"):
            return info.name[len(dist) + 1 : -len(".dist-info")]
    return None


def _heads_map(packages: Path) -> dict[str, str]:
    source = packages / "airflow" / "utils" / "db.py"
    if not source.is_file():
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
    packages = site_packages(env)
    return expected_head_in(packages, version) if packages is not None else None


def expected_head_in(packages: Path, version: str | None = None) -> str | None:
    """The same, for the Airflow whose packages lie in ``packages``."""
    version = version or installed_version_in(packages)
    heads = _heads_map(packages)
    if version is None or not heads:
        return None
    try:
        mine = Version(version)
        eligible = [(Version(v), head) for v, head in heads.items() if Version(v) <= mine]
    except InvalidVersion:
        return None
    return max(eligible)[1] if eligible else None


def database_revision(airflow_db_url: str, timeout: float = 10.0) -> str | None:
    """The alembic revision of Airflow's database; None when it has none (never migrated).

    Raises DeadlinePassed (a TimeoutError) when the database gives no answer within
    ``timeout``, even one that hangs without closing the connection.
    """
    engine = create_sql_engine(normalize_metastore_url(airflow_db_url), timeout)
    return call_with_deadline(lambda: _revision(engine), timeout, "schema-revision")


def _revision(engine: sa.Engine) -> str | None:
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

    The installation is found again before every start, through the PATH the scheduler
    gets (an upgrade may have switched a symlink or installed in place since the last one).
    ``installation_problem`` at start-up refuses a command whose installation cannot be
    found at all; an unreadable database at start time is let through (a scheduler that
    cannot reach its database does not run anyway).
    """

    argv: tuple[str, ...]
    airflow_db_url: str
    path: str
    timeout: float = 10.0  # for the database's answer; the controller gives renew_interval

    def installation_problem(self) -> str | None:
        """Why the scheduler's Airflow cannot be found, or None when it can."""
        program = resolve_program(list(self.argv), self.path)
        if program is None:
            return f"scheduler_command: program '{self.argv[0]}' not found (searched PATH)"
        if locate_airflow(program) is None:
            return (
                f"scheduler_command: cannot find the Airflow installation that {program} "
                "runs, so its schema cannot be checked before a start; point "
                "scheduler_command at the airflow of a virtual environment, or set "
                "[sentinel] schema_gate = off to start without the check"
            )
        return None

    def refusal(self) -> str | None:
        program = resolve_program(list(self.argv), self.path)
        packages = locate_airflow(program) if program is not None else None
        if packages is None:
            return f"the Airflow installation of {self.argv[0]} cannot be found"
        version = installed_version_in(packages)
        wanted = expected_head_in(packages, version)
        if wanted is None:
            return None  # a release older than the heads map: nothing to compare
        try:
            actual = database_revision(self.airflow_db_url, self.timeout)
        except (SQLAlchemyError, ValueError, OSError) as exc:  # OSError: no answer in time
            log.debug("schema check skipped: %s", type(exc).__name__)
            return None
        if actual is None or actual == wanted:
            return None
        return (
            f"Airflow {version} in {packages} expects schema {wanted}, the database is at "
            f"{actual}; upgrade or roll back this node first"
        )


def resolve_program(argv: list[str], path: str) -> str | None:
    """The file the scheduler command runs, found as the shell would: a name with a slash
    as it is, a bare name through ``path`` (the PATH the scheduler gets)."""
    if not argv:
        return None
    first = argv[0]
    if "/" in first:
        found = Path(first).absolute()
        return str(found) if found.is_file() and os.access(found, os.X_OK) else None
    return shutil.which(first, path=path)


def locate_airflow(program: str) -> Path | None:
    """The folder holding the ``airflow`` package that ``program`` runs (its site-packages):
    from its virtual environment, or by asking the Python interpreter it names."""
    env = env_of_executable(program)
    if env is not None:
        packages = site_packages(env)
        return packages if packages is not None and (packages / "airflow").is_dir() else None
    interpreter = program if Path(program).name.startswith("python") else _shebang(program)
    if interpreter is None:
        return None
    env = env_of_executable(interpreter)
    if env is not None:
        packages = site_packages(env)
        return packages if packages is not None and (packages / "airflow").is_dir() else None
    return _ask_interpreter(interpreter) if Path(interpreter).name.startswith("python") else None


def airflow_interpreter(program: str) -> str | None:
    """The Python interpreter that runs ``program`` (itself, or its script's shebang)."""
    return program if Path(program).name.startswith("python") else _shebang(program)


def _shebang(program: str) -> str | None:
    try:
        with Path(program).open("rb") as handle:
            first = handle.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    if words[:1] == ["/usr/bin/env"] and len(words) > 1:
        return shutil.which(words[1])
    return words[0] if words else None


@functools.lru_cache(maxsize=8)
def _ask_interpreter(interpreter: str) -> Path | None:
    """Where a (non-virtual-environment) Python finds ``airflow``, without importing it."""
    code = (
        "import importlib.util as u; s = u.find_spec('airflow'); "
        "print(s.submodule_search_locations[0] if s and s.submodule_search_locations else '')"
    )
    try:
        done = subprocess.run(
            [interpreter, "-I", "-c", code],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = done.stdout.strip()
    return Path(found).parent if done.returncode == 0 and found else None
