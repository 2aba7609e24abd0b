"""The DAG compatibility check, with the ruff this tool installs."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_sentinel.upgrade import dag_lint
from airflow_sentinel.upgrade.installation import UpgradeError

OLD_STYLE = """
from datetime import datetime
from airflow import DAG
from airflow.operators.dummy import DummyOperator
from airflow.operators.bash import BashOperator

with DAG("old", schedule_interval="@daily", start_date=datetime(2024, 1, 1)):
    DummyOperator(task_id="d") >> BashOperator(task_id="b", bash_command="true")
"""


def _ruff() -> Path:
    ruff = dag_lint.find_ruff()
    assert ruff is not None, "ruff is a dependency of airflow-sentinel"
    return ruff


def test_each_finding_is_reported_with_its_file_line_and_rule(tmp_path: Path) -> None:
    (tmp_path / "old.py").write_text(OLD_STYLE)
    (tmp_path / "fine.py").write_text("x = 1\n")
    findings = dag_lint.lint(tmp_path, _ruff())
    codes = {(f.code, f.line) for f in findings}
    assert ("AIR302", 8) in codes  # DummyOperator: moved, it will not import on Airflow 3
    assert ("AIR301", 7) in codes  # schedule_interval: removed
    assert ("AIR312", 8) in codes  # BashOperator: moved, still works (deprecated)
    moved = next(f for f in findings if f.code == "AIR302")
    assert moved.breaks and moved.describe(tmp_path).startswith("old.py:8 AIR302 ")
    assert not next(f for f in findings if f.code == "AIR312").breaks


def test_a_clean_folder_has_no_findings(tmp_path: Path) -> None:
    (tmp_path / "fine.py").write_text("from airflow.sdk import DAG\n")
    assert dag_lint.lint(tmp_path, _ruff()) == []


def test_a_ruff_too_old_for_the_rules_is_refused_not_trusted(tmp_path: Path) -> None:
    old = tmp_path / "ruff"
    old.write_text("#!/bin/sh\necho 'ruff 0.5.7'\n")
    old.chmod(0o755)
    with pytest.raises(UpgradeError, match=r"ruff 0\.5\.7; the DAG check needs 0\.12\.0"):
        dag_lint.lint(tmp_path, old)
