"""The schema gate finds the scheduler's Airflow as the shell finds the program."""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path

from airflow_sentinel.airflow_schema import SchemaGate, locate_airflow, resolve_program

HEADS = "_REVISION_HEADS_MAP = {'2.10.0': 'aaa', '2.10.3': 'bbb', '3.0.0': 'ccc'}\n"


def fake_airflow_venv(root: Path, version: str = "2.10.5") -> Path:
    """A virtual environment's layout with an airflow package and its heads map."""
    packages = root / "lib" / "python3.11" / "site-packages"
    (packages / "airflow" / "utils").mkdir(parents=True)
    (packages / "airflow" / "utils" / "db.py").write_text(HEADS)
    (packages / f"apache_airflow-{version}.dist-info").mkdir()
    (root / "pyvenv.cfg").write_text("home = /usr/bin\n")
    program = root / "bin" / "airflow"
    program.parent.mkdir()
    program.write_text(f"#!{root / 'bin' / 'python'}\n")
    program.chmod(0o755)
    return packages


def database_at(path: Path, revision: str) -> str:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("create table alembic_version (version_num varchar(32))")
        conn.execute("insert into alembic_version values (?)", (revision,))
        conn.commit()
    return f"sqlite:///{path}"


def test_a_bare_name_is_found_through_the_path_the_scheduler_gets(tmp_path: Path) -> None:
    packages = fake_airflow_venv(tmp_path / "venv")
    path = f"/nonexistent:{tmp_path / 'venv' / 'bin'}"
    program = resolve_program(["airflow", "scheduler"], path)
    assert program == str(tmp_path / "venv" / "bin" / "airflow")
    assert locate_airflow(program) == packages
    assert resolve_program(["airflow", "scheduler"], "/nonexistent") is None


def test_the_default_command_is_gated(tmp_path: Path) -> None:
    fake_airflow_venv(tmp_path / "venv")
    path = str(tmp_path / "venv" / "bin")
    on_new_schema = database_at(tmp_path / "airflow.db", "ccc")
    gate = SchemaGate(("airflow", "scheduler"), on_new_schema, path)
    assert gate.installation_problem() is None
    refusal = gate.refusal()
    assert refusal is not None
    assert "expects schema bbb" in refusal and "database is at ccc" in refusal
    matching = database_at(tmp_path / "ok.db", "bbb")
    assert SchemaGate(("airflow", "scheduler"), matching, path).refusal() is None


def test_a_symlink_switched_after_start_is_followed(tmp_path: Path) -> None:
    fake_airflow_venv(tmp_path / "old", "2.10.5")
    fake_airflow_venv(tmp_path / "new", "3.0.1")
    current = tmp_path / "current"
    current.symlink_to(tmp_path / "old")
    gate = SchemaGate(
        (str(current / "bin" / "airflow"), "scheduler"),
        database_at(tmp_path / "airflow.db", "ccc"),
        os.defpath,
    )
    assert gate.refusal() is not None
    current.unlink()
    current.symlink_to(tmp_path / "new")
    assert gate.refusal() is None


def test_an_installation_that_cannot_be_found_is_named(tmp_path: Path) -> None:
    script = tmp_path / "bin" / "airflow"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\nexec true\n")
    script.chmod(0o755)
    gate = SchemaGate(("airflow", "scheduler"), "sqlite:////nonexistent.db", str(script.parent))
    problem = gate.installation_problem()
    assert problem is not None
    assert str(script) in problem and "schema_gate = off" in problem
    missing = SchemaGate(("no-such-airflow-7f3a",), "sqlite:////x.db", str(script.parent))
    assert "not found" in (missing.installation_problem() or "")
