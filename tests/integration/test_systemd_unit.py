"""`airflow-sentinel systemd-unit` as an operator runs it: the unit on stdout, notes on
stderr, and mistakes as one line with exit code 2."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def run_command(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "NOTIFY_"))}
    env["AIRFLOW_HOME"] = str(home)
    env["AIRFLOW__SENTINEL__METASTORE"] = f"sqlite:///{home / 'metastore.db'}"
    return subprocess.run(
        [sys.executable, "-m", "airflow_sentinel", "systemd-unit", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_printed_unit_is_one_systemd_accepts(tmp_path: Path) -> None:
    done = run_command(tmp_path, "--node-id", "master-1", "--renew-interval", "2")
    assert done.returncode == 0, done.stderr
    assert "ExecStart=" in done.stdout
    assert "start --node-id master-1 --renew-interval 2\n" in done.stdout
    assert "WatchdogSec=" in done.stdout
    assert "note: not carried into the unit: AIRFLOW__SENTINEL__METASTORE" in done.stderr
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "airflow-sentinel.service"
    unit.write_text(done.stdout)
    verified = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert verified.returncode == 0, verified.stderr
    assert [line for line in verified.stderr.splitlines() if unit.name in line] == []


def test_an_unknown_user_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    done = run_command(tmp_path, "--user", "no-such-user-3f9a")
    assert done.returncode == 2
    assert done.stdout == ""
    assert (
        done.stderr == "airflow-sentinel: error: --user: no user 'no-such-user-3f9a' on this host\n"
    )


def test_a_broken_setting_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    done = run_command(tmp_path, "--renew-interval", "soon")
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1
    assert "--renew-interval: 'soon' is not a number" in done.stderr
