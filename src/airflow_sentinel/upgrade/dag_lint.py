"""Airflow 3 incompatibilities in the DAG files, found by ruff's AIR3 rules.

Ruff's JSON output is read, never its text: the text form changed from rule codes
(``AIR302``) to rule names (``airflow3-moved-to-provider``) between releases. The rules
themselves arrived and settled over several releases, so an older ruff is refused rather
than trusted to find nothing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

from airflow_sentinel.upgrade.installation import UpgradeError, last_line

MIN_RUFF = Version("0.12.0")  # AIR301, AIR302, AIR311 and AIR312 all present
# Rules whose findings stop a DAG from loading on Airflow 3 (the others still work there,
# deprecated): removed names and names moved into a provider package.
BREAKING = ("AIR301", "AIR302")


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    code: str
    message: str

    @property
    def breaks(self) -> bool:
        return self.code.startswith(BREAKING)

    def describe(self, root: Path) -> str:
        try:
            shown = str(Path(self.path).relative_to(root))
        except ValueError:
            shown = self.path
        return f"{shown}:{self.line} {self.code} {self.message}"


def find_ruff() -> Path | None:
    """The ruff installed with this tool (its version is pinned with it), else PATH's."""
    beside = Path(sys.executable).parent / "ruff"
    if beside.is_file():
        return beside
    found = shutil.which("ruff")
    return Path(found) if found else None


def ruff_version(ruff: Path) -> Version:
    done = _run([str(ruff), "--version"])
    match = re.search(r"(\d+\.\d+\.\d+)", done.stdout)
    try:
        return Version(match.group(1)) if match else Version("0")
    except InvalidVersion:
        return Version("0")


def lint(dags: Path, ruff: Path) -> list[Finding]:
    """Every AIR3 finding in the DAG folder, in file and line order."""
    version = ruff_version(ruff)
    if version < MIN_RUFF:
        raise UpgradeError(
            f"{ruff} is ruff {version}; the DAG check needs {MIN_RUFF} or later "
            "(pip install 'ruff>=" + str(MIN_RUFF) + "')"
        )
    argv = [str(ruff), "check", "--no-cache", "--preview", "--select", "AIR3"]
    argv += ["--exit-zero", "--output-format", "json", str(dags)]
    done = _run(argv)
    if done.returncode != 0:
        raise UpgradeError(f"ruff failed on {dags}: {last_line(done.stderr)}")
    try:
        raw = json.loads(done.stdout or "[]")
    except json.JSONDecodeError:
        raise UpgradeError(f"ruff printed no JSON for {dags}") from None
    findings = [
        Finding(
            path=str(item.get("filename", "")),
            line=int((item.get("location") or {}).get("row", 0)),
            code=str(item.get("code") or ""),
            message=str(item.get("message", "")).strip().splitlines()[0][:200],
        )
        for item in raw
        if isinstance(item, dict)
    ]
    return sorted(findings, key=lambda f: (f.path, f.line, f.code))


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UpgradeError(f"cannot run {argv[0]}: {type(exc).__name__}: {exc}") from None
