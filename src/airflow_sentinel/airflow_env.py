"""Cached virtual environments for given Airflow versions, one per version.

Used by the demo and the tests, and the base of side-by-side installs: an environment is
built in place, marked complete only at the very end, and rebuilt if a build was cut off.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

COMPLETE = ".airflow-sentinel-complete"


def venv_cache() -> Path:
    default = Path.home() / ".cache" / "airflow-sentinel" / "venvs"
    return Path(os.environ.get("AIRFLOW_SENTINEL_VENV_CACHE") or default)


def _uv() -> str | None:
    beside_python = Path(sys.executable).parent / "uv"
    return str(beside_python) if beside_python.exists() else shutil.which("uv")


def ensure_airflow_venv(version: str, cache: Path | None = None) -> Path:
    """The environment for ``apache-airflow==version``, built once and reused."""
    cache = cache or venv_cache()
    target = cache / f"airflow-{version}"
    if (target / COMPLETE).exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / f".airflow-{version}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it right now
        if not (target / COMPLETE).exists():
            _build(target, version)
    return target


def _build(target: Path, version: str) -> None:
    shutil.rmtree(target, ignore_errors=True)
    python = target / "bin" / "python"
    uv = _uv()
    requirement = f"apache-airflow=={version}"
    if uv is not None:
        _run([uv, "venv", "--quiet", "--python", sys.executable, str(target)])
        _run(
            [
                uv,
                "pip",
                "install",
                "--quiet",
                "--compile-bytecode",
                "--python",
                str(python),
                requirement,
            ]
        )
    else:
        _run([sys.executable, "-m", "venv", str(target)])
        _run([str(python), "-m", "pip", "install", "--quiet", requirement])
    (target / COMPLETE).write_text(f"{requirement}\n")


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
