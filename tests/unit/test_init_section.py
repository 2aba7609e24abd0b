"""`add_sentinel_section`: appends a commented [sentinel] section and touches nothing else."""

from __future__ import annotations

import configparser
import os
import re
import stat
from pathlib import Path

import pytest

from airflow_sentinel.config import KEYS, load_settings
from airflow_sentinel.config.airflow_cfg import (
    AirflowConfig,
    add_sentinel_section,
    load_airflow_config,
    sentinel_section_text,
)

EXISTING = (
    "# Airflow's own config, with odd but valid bytes that must survive untouched\r\n"
    "[core]\r\n"
    "dags_folder = /opt/airflow/dags   \r\n"
    "executor\t=\tLocalExecutor\n"
    "; a semicolon comment\n"
    "\n"
    "[database]\n"
    "sql_alchemy_conn = postgresql://af:pw@db/airflow\n"
    "# unicode: Zürich, 東京\n"
)


def config_at(home: Path) -> AirflowConfig:
    return load_airflow_config(home)


def appended(before: bytes, after: bytes) -> bytes:
    assert after[: len(before)] == before, "existing bytes were changed"
    return after[len(before) :]


def test_appends_a_commented_section_listing_every_key(tmp_path: Path) -> None:
    cfg = tmp_path / "airflow.cfg"
    cfg.write_text(EXISTING, encoding="utf-8", newline="")
    before = cfg.read_bytes()

    assert add_sentinel_section(config_at(tmp_path)) is True

    added = appended(before, cfg.read_bytes()).decode("utf-8")
    assert added == sentinel_section_text()
    assert re.search(r"^\[sentinel\]$", added, re.MULTILINE)
    for key in KEYS:
        assert f"\n# {key.name} = {key.default}\n" in added, key.name
        for choice in key.choices:
            assert choice in added
    # Every non-blank line after the header is a comment.
    body = added.split("[sentinel]\n", 1)[1]
    assert all(line.startswith("# ") for line in body.splitlines() if line)


def test_existing_bytes_are_an_identical_prefix(tmp_path: Path) -> None:
    cfg = tmp_path / "airflow.cfg"
    original = EXISTING.encode("utf-8") + b"[webserver]\nsecret_key = \xc3\xa9t\xc3\xa9\n\n\n"
    cfg.write_bytes(original)

    add_sentinel_section(config_at(tmp_path))

    after = cfg.read_bytes()
    assert after.startswith(original)
    assert len(after) > len(original)


def test_second_time_does_nothing(tmp_path: Path) -> None:
    cfg = tmp_path / "airflow.cfg"
    cfg.write_text(EXISTING, encoding="utf-8")
    assert add_sentinel_section(config_at(tmp_path)) is True
    once = cfg.read_bytes()

    assert add_sentinel_section(config_at(tmp_path)) is False
    assert cfg.read_bytes() == once
    assert once.count(b"[sentinel]") == 1


def test_second_time_with_the_same_config_object_does_nothing(tmp_path: Path) -> None:
    cfg = tmp_path / "airflow.cfg"
    cfg.write_text(EXISTING, encoding="utf-8")
    config = config_at(tmp_path)
    assert add_sentinel_section(config) is True
    once = cfg.read_bytes()

    assert add_sentinel_section(config) is False
    assert cfg.read_bytes() == once


def test_file_with_a_sentinel_section_is_left_alone(tmp_path: Path) -> None:
    cfg = tmp_path / "airflow.cfg"
    cfg.write_text("[core]\nexecutor = LocalExecutor\n\n[sentinel]\nlease_ttl = 20\n")
    before = cfg.read_bytes()

    assert add_sentinel_section(config_at(tmp_path)) is False
    assert cfg.read_bytes() == before


def test_file_without_trailing_newline(tmp_path: Path) -> None:
    cfg = tmp_path / "airflow.cfg"
    before = b"[core]\nexecutor = LocalExecutor"
    cfg.write_bytes(before)

    assert add_sentinel_section(config_at(tmp_path)) is True

    after = cfg.read_bytes()
    assert after == before + b"\n" + sentinel_section_text().encode("utf-8")
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(after.decode("utf-8"))
    assert parser.get("core", "executor") == "LocalExecutor"  # last value not swallowed
    assert parser.has_section("sentinel")


def test_empty_existing_file(tmp_path: Path) -> None:
    cfg = tmp_path / "airflow.cfg"
    cfg.write_bytes(b"")
    assert add_sentinel_section(config_at(tmp_path)) is True
    assert cfg.read_bytes() == sentinel_section_text().encode("utf-8")


def test_new_file_is_created_owner_only(tmp_path: Path) -> None:
    cfg = tmp_path / "airflow.cfg"
    assert not cfg.exists()
    old_umask = os.umask(0o022)
    try:
        assert add_sentinel_section(config_at(tmp_path)) is True
    finally:
        os.umask(old_umask)

    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    assert cfg.read_text(encoding="utf-8") == sentinel_section_text()


def test_new_file_under_airflow_config_in_a_missing_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "etc" / "airflow" / "airflow.cfg"
    monkeypatch.setenv("AIRFLOW_CONFIG", str(target))

    assert add_sentinel_section(load_airflow_config()) is True

    assert target.is_file()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert not (tmp_path / "airflow.cfg").exists()


def test_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    cfg = tmp_path / "airflow.cfg"
    cfg.write_text(EXISTING, encoding="utf-8")
    cfg.chmod(0o640)
    add_sentinel_section(config_at(tmp_path))
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o640


def test_result_is_parseable_and_the_commented_keys_are_not_real(tmp_path: Path) -> None:
    cfg = tmp_path / "airflow.cfg"
    cfg.write_text(EXISTING, encoding="utf-8")
    add_sentinel_section(config_at(tmp_path))

    parser = configparser.ConfigParser(interpolation=None)
    parser.read(cfg, encoding="utf-8")
    assert parser.sections() == ["core", "database", "sentinel"]
    assert parser.options("sentinel") == []
    assert parser.get("core", "executor") == "LocalExecutor"
    assert parser.get("database", "sql_alchemy_conn") == "postgresql://af:pw@db/airflow"
    assert config_at(tmp_path).sentinel_items() == {}


def test_loading_settings_afterwards_gives_the_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "airflow.cfg"
    cfg.write_text("[core]\nexecutor = LocalExecutor\n", encoding="utf-8")
    before = load_settings(None, {}, tmp_path)

    add_sentinel_section(config_at(tmp_path))

    assert load_settings(None, {}, tmp_path) == before
    assert before.lease_ttl == 10.0


def test_uncommenting_every_documented_default_gives_the_same_settings(tmp_path: Path) -> None:
    cfg = tmp_path / "airflow.cfg"
    cfg.write_text("[core]\nexecutor = LocalExecutor\n", encoding="utf-8")
    add_sentinel_section(config_at(tmp_path))
    defaults = load_settings(None, {}, tmp_path)

    names = {k.name for k in KEYS}
    lines = []
    for line in cfg.read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"# (\w+) = (.*)", line)
        lines.append(line[2:] if match and match.group(1) in names else line)
    cfg.write_text("\n".join(lines) + "\n", encoding="utf-8")

    assert set(config_at(tmp_path).sentinel_items()) == names
    assert load_settings(None, {}, tmp_path) == defaults
