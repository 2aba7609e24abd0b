"""Cached virtual environments for given Airflow versions, one per version.

Used by the demo and the tests, and the base of side-by-side installs: an environment is
built in place, marked complete only at the very end, and rebuilt if a build was cut off.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from airflow_sentinel.errors import SentinelError

COMPLETE = ".airflow-sentinel-complete"


class BuildError(SentinelError):
    """An environment could not be built (the installer's last error line says why)."""


def venv_cache() -> Path:
    default = Path.home() / ".cache" / "airflow-sentinel" / "venvs"
    return Path(os.environ.get("AIRFLOW_SENTINEL_VENV_CACHE") or default)


def _uv() -> str | None:
    beside_python = Path(sys.executable).parent / "uv"
    return str(beside_python) if beside_python.exists() else shutil.which("uv")


def ensure_airflow_venv(
    version: str, cache: Path | None = None, extras: tuple[str, ...] = ()
) -> Path:
    """The environment for ``apache-airflow==version`` plus ``extras`` (more requirements),
    built once and reused."""
    cache = cache or venv_cache()
    requirements = [f"apache-airflow=={version}", *extras]
    name = env_dir_name(version, requirements)
    target = cache / name
    if (target / COMPLETE).exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / f".{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it right now
        if not (target / COMPLETE).exists():
            build_venv(target, requirements)
    return target


def requirement_key(requirements: list[str], constraints: str = "") -> str:
    """What an environment was built for, as written in its completion marker."""
    return "".join(f"{r}\n" for r in requirements) + (f"-c {constraints}\n" if constraints else "")


def env_dir_name(version: str, requirements: list[str], constraints: str = "") -> str:
    """The folder name of an environment: the version, plus a digest of anything more."""
    if requirements == [f"apache-airflow=={version}"] and not constraints:
        return f"airflow-{version}"
    digest = hashlib.sha256(requirement_key(requirements, constraints).encode()).hexdigest()
    return f"airflow-{version}-{digest[:8]}"


def build_venv(
    target: Path,
    requirements: list[str],
    constraints: str = "",
    fresh: bool = True,
    sync: Path | None = None,
) -> None:
    """Install ``requirements`` into ``target``, marked complete only at the very end.

    ``fresh``: a new environment (whatever was there is removed); otherwise install into
    the existing one (in-place upgrades). ``sync``: make the environment hold exactly the
    packages of that requirements file (undoing an in-place upgrade).
    """
    python = target / "bin" / "python"
    uv = _uv()
    if fresh:
        shutil.rmtree(target, ignore_errors=True)
        if uv is not None:
            _run([uv, "venv", "--quiet", "--python", sys.executable, str(target)])
        else:
            _run([sys.executable, "-m", "venv", str(target)])
    else:
        (target / COMPLETE).unlink(missing_ok=True)
    extra = ["-c", constraints] if constraints else []
    if sync is not None:
        if uv is not None:
            _run([uv, "pip", "sync", "--quiet", "--python", str(python), str(sync)])
        else:
            _run([str(python), "-m", "pip", "install", "--quiet", "-r", str(sync)])
    elif not fresh:
        if uv is None:
            raise BuildError(
                "an in-place install needs uv (pip cannot remove what the old version needed)"
            )
        _install_exactly(uv, python, requirements, extra)
    elif uv is not None:
        _run(
            [
                uv,
                "pip",
                "install",
                "--quiet",
                "--compile-bytecode",
                "--python",
                str(python),
                *extra,
                *requirements,
            ]
        )
    else:
        _run([str(python), "-m", "pip", "install", "--quiet", *extra, *requirements])
    (target / COMPLETE).write_text(requirement_key(requirements, constraints))


SEEDS = re.compile(r"^(pip|setuptools|wheel)==", re.IGNORECASE)


def _install_exactly(uv: str, python: Path, requirements: list[str], extra: list[str]) -> None:
    """Resolve ``requirements`` afresh and make the environment hold exactly that set, plus
    the installer tools it had. Installing over the old version is not enough: packages only
    it needed (a provider the target no longer supports) would stay and break the target."""
    with tempfile.TemporaryDirectory() as tmp:
        wanted, lock = Path(tmp) / "requirements.in", Path(tmp) / "requirements.txt"
        wanted.write_text("".join(f"{r}\n" for r in requirements))
        py = ["--python", str(python)]
        _run([uv, "pip", "compile", "--quiet", *py, *extra, str(wanted), "-o", str(lock)])
        freeze = _run([uv, "pip", "freeze", *py])
        seeds = [line for line in freeze.splitlines() if SEEDS.match(line)]
        lock.write_text(lock.read_text() + "".join(f"{line}\n" for line in seeds))
        _run([uv, "pip", "sync", "--quiet", "--compile-bytecode", *py, str(lock)])


def _run(argv: list[str]) -> str:
    done = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise BuildError(
            f"{Path(argv[0]).name} {' '.join(argv[1:3])} failed: "
            + (lines[-1][:300] if lines else f"exit code {done.returncode}")
        )
    return done.stdout
