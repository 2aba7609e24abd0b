"""What is installed: AIRFLOW_HOME, the Airflow environment in use, its packages and database.

Everything is read from files and from the `airflow` executable of an environment; Airflow
is never imported into this process.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from sqlalchemy.engine import make_url

from airflow_sentinel.airflow_schema import installed_version, site_packages
from airflow_sentinel.config.airflow_cfg import AirflowConfig
from airflow_sentinel.errors import SentinelError, UserError
from airflow_sentinel.metastore.urls import mask, scrub

# Not carried into a new environment: installers, and Airflow's own parts (the target's
# apache-airflow brings the matching ones).
NOT_CARRIED = re.compile(r"^(pip|setuptools|wheel|uv|apache-airflow(-core|-task-sdk)?)$")
PROVIDER = re.compile(r"^apache-airflow-providers-")


# Runs `airflow` without its CLI audit trail: every Airflow command writes a row to the
# `log` table, and the inspection before the hold must leave the database as it found it.
QUIET_BOOTSTRAP = """
import sys
from airflow.utils import cli_action_loggers
cli_action_loggers.on_pre_execution = lambda **kwargs: None
cli_action_loggers.on_post_execution = lambda **kwargs: None
from airflow.__main__ import main
sys.argv = ["airflow", *sys.argv[1:]]
sys.exit(main())
"""


class UpgradeError(SentinelError):
    """A step of an upgrade failed; the message says which and why, in one line."""


@dataclass(frozen=True)
class AirflowEnv:
    """A virtual environment with Airflow in it."""

    path: Path

    @property
    def airflow(self) -> Path:
        return self.path / "bin" / "airflow"

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def version(self) -> str:
        found = installed_version(self.path)
        if found is None:
            raise UserError(f"{self.path}: no apache-airflow installed in this environment")
        return found

    def distributions(self) -> list[metadata.Distribution]:
        packages = site_packages(self.path)
        return list(metadata.distributions(path=[str(packages)])) if packages else []

    def freeze(self) -> list[str]:
        """The exact package list, as `pip freeze` would print it."""
        pins = {f"{_name(d)}=={d.version}" for d in self.distributions() if _name(d)}
        return sorted(pins, key=str.lower)

    def carried_requirements(self) -> list[str]:
        """What the target must have too: every package the operator installed on top
        (nothing here requires it), and every provider, also those the old Airflow pulled in
        itself (2.10 brings the HTTP provider, 3.x does not, and DAGs may use it).

        They come unpinned, so the resolver picks versions that fit the target; the target's
        own constraints file, when given, pins them.
        """
        dists = {(_name(d) or "").lower(): d for d in self.distributions()}
        required: set[str] = set()
        for dist in dists.values():
            for raw in dist.requires or []:
                try:
                    req = Requirement(raw)
                except InvalidRequirement:
                    continue
                if req.marker is None or req.marker.evaluate({"extra": ""}):
                    required.add(_canonical(req.name))
        return sorted(
            _name(d) or ""
            for key, d in dists.items()
            if key
            and (_canonical(key) not in required or PROVIDER.match(_canonical(key)))
            and not NOT_CARRIED.match(_canonical(key))
        )

    def run(
        self,
        args: list[str],
        home: Path,
        timeout: float = 600,
        secret_url: str = "",
        extra_env: dict[str, str] | None = None,
        accept: tuple[int, ...] = (0,),
        bootstrap: str | None = None,
        log_to: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run this environment's `airflow` for AIRFLOW_HOME ``home``; an error is one line.

        ``bootstrap``: Python source that this environment's interpreter runs instead of
        the `airflow` script, with ``args`` as its arguments (it ends by calling Airflow).
        ``log_to``: where a failure's whole output is kept (owner-only), for diagnosis.
        """
        program = [str(self.airflow)] if bootstrap is None else [str(self.python), "-c", bootstrap]
        what = f"airflow {' '.join(args[:3])}"
        try:
            done = subprocess.run(
                [*program, *args],
                env={**airflow_environ(home), **(extra_env or {})},
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise UpgradeError(f"{what} did not finish within {timeout:g}s") from None
        except OSError as exc:
            raise UpgradeError(f"{what}: cannot run {program[0]}: {exc.strerror}") from None
        if done.returncode not in accept:
            if log_to is not None:
                _keep_output(log_to, done, secret_url)
            where = f" (all of its output in {log_to})" if log_to is not None else ""
            raise UpgradeError(
                scrub(
                    f"{what} failed: {last_line(done.stderr)}{where}",
                    secret_url,
                )
            )
        return done

    def run_json(
        self,
        args: list[str],
        home: Path,
        secret_url: str = "",
        extra_env: dict[str, str] | None = None,
    ) -> object:
        """A listing command's JSON; it writes nothing, not even its audit row."""
        # `dags list-import-errors` exits 1 when it lists errors: the JSON is still there.
        done = self.run(
            [*args, "-o", "json"],
            home,
            secret_url=secret_url,
            extra_env=extra_env,
            accept=(0, 1),
            bootstrap=QUIET_BOOTSTRAP,
        )
        what = f"airflow {' '.join(args)}"
        if done.returncode != 0 and not done.stdout.strip():
            raise UpgradeError(scrub(f"{what} failed: {last_line(done.stderr)}", secret_url))
        return parse_json_tail(done.stdout, what)


def _keep_output(path: Path, done: subprocess.CompletedProcess[str], secret_url: str) -> None:
    try:
        path.touch(mode=0o600)
        path.write_text(scrub(f"{done.stdout}\n----- stderr\n{done.stderr}", secret_url))
    except OSError:
        pass  # a full disk: the one line above is what there is


def parse_json_tail(out: str, what: str) -> object:
    """The JSON document that ends Airflow's output (log lines may come before it)."""
    lines = out.splitlines()
    for index, line in enumerate(lines):
        if line.startswith(("[", "{")):
            try:
                return json.loads("\n".join(lines[index:]))
            except json.JSONDecodeError:
                continue
    if "No data found" in out:
        return []
    raise UpgradeError(f"{what}: output is not JSON")


def _name(dist: metadata.Distribution) -> str | None:
    name = dist.metadata["Name"] if dist.metadata else None
    return str(name) if name else None


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# SQLAlchemy ends an error with its SQL, parameters and a link; the error itself is above.
_NOT_THE_ERROR = re.compile(r"^(\(Background on this error at:|\[SQL:|\[parameters:)")
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Violation)\b")


def last_line(text: str) -> str:
    """The line of a tool's output that says what went wrong: the last exception line if
    there is one, else the last line that is not SQLAlchemy's trailer."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    useful = [line for line in lines if not _NOT_THE_ERROR.match(line)] or lines
    errors = [line for line in useful if _EXCEPTION.match(line)]
    chosen = (errors or useful or ["no output"])[-1]
    return chosen[:300]


def airflow_environ(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__SENTINEL__")}
    env["AIRFLOW_HOME"] = str(home)
    return env


@dataclass(frozen=True)
class Installation:
    """One node's Airflow: its home, the environment in use, and its metadata database."""

    home: Path
    config: AirflowConfig
    env_link: Path  # what the services run through: a symlink (side by side) or the env
    env: AirflowEnv
    db_url: str

    @property
    def side_by_side(self) -> bool:
        return self.env_link.is_symlink()

    @property
    def dialect(self) -> str:
        name = make_url(self.db_url).get_backend_name()
        return {"postgres": "postgresql", "mariadb": "mysql"}.get(name, name)

    def option(self, section: str, key: str) -> str | None:
        return self.config.from_env(section, key) or self.config.from_file(section, key)

    def describe(self) -> dict[str, str]:
        url = make_url(self.db_url)
        return {
            "airflow_home": str(self.home),
            "airflow_cfg": str(self.config.path),
            "environment": str(self.env_link)
            + (f" -> {self.env.path}" if self.side_by_side else ""),
            "airflow_version": self.env.version,
            "python": platform.python_version(),
            "metastore": mask(self.db_url),
            "metastore_type": self.dialect,
            "metastore_host": url.host or "-",
            "metastore_schema": url.database or "-",
            "metastore_user": url.username or "-",
            "executor": self.option("core", "executor") or "default",
            "broker": mask_url_password(self.option("celery", "broker_url") or "-"),
        }


def mask_url_password(url: str) -> str:
    """Any URL with its password replaced (brokers are not metastores)."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def discover(config: AirflowConfig, env_option: str | None) -> Installation:
    link = Path(env_option) if env_option else _env_on_path()
    if link is None:
        raise UserError(
            "cannot find the Airflow environment: pass --airflow-env PATH (a virtual "
            "environment, or a symlink to one) or put its bin/ on PATH"
        )
    link = link.absolute()
    target = link.resolve()
    if not (target / "pyvenv.cfg").is_file() or not (target / "bin" / "airflow").exists():
        raise UserError(f"--airflow-env {link}: not a virtual environment with Airflow in it")
    return Installation(
        home=config.home,
        config=config,
        env_link=link,
        env=AirflowEnv(target),
        db_url=config.sql_alchemy_conn(),
    )


def _env_on_path() -> Path | None:
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder) / "airflow"
        if folder and candidate.exists() and (Path(folder).parent / "pyvenv.cfg").exists():
            return Path(folder).parent
    return None
