"""Configuration loading: defaults < airflow.cfg [sentinel] < AIRFLOW__SENTINEL__* < flags."""

from __future__ import annotations

import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from airflow_sentinel.config import KEYS, load_settings
from airflow_sentinel.config.airflow_cfg import load_airflow_config, read_airflow_config
from airflow_sentinel.config.settings import (
    PARSERS,
    Key,
    Settings,
    fence_margin,
    timing_problems,
)
from airflow_sentinel.errors import ConfigError, UserError

TIMING_KEYS = ("lease_ttl", "renew_interval", "stop_timeout", "start_timeout", "heartbeat_grace")
FLOAT_KEYS = tuple(k.name for k in KEYS if k.kind == "float")
INT_KEYS = tuple(k.name for k in KEYS if k.kind == "int")


def write_cfg(home: Path, text: str) -> Path:
    path = home / "airflow.cfg"
    path.write_text(text, encoding="utf-8")
    return path


def load(
    home: Path,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    return load_settings(flags, {} if environ is None else environ, home)


def problems_of(
    home: Path,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(home, flags, environ)
    assert info.value.problems, "a ConfigError must carry at least one problem"
    return info.value.problems


def sentinel_env(**values: str) -> dict[str, str]:
    return {f"AIRFLOW__SENTINEL__{name.upper()}": value for name, value in values.items()}


# -- defaults -------------------------------------------------------------------------------


def test_defaults_without_any_configuration(tmp_path: Path) -> None:
    settings = load(tmp_path)

    assert settings.scheduler_command == "airflow scheduler"
    assert settings.scheduler_argv == ["airflow", "scheduler"]
    assert settings.lease_ttl == 10.0
    assert settings.renew_interval == 2.0
    assert settings.stop_timeout == 5.0
    assert settings.start_timeout == 60.0
    assert settings.max_restarts == 3
    assert isinstance(settings.max_restarts, int)
    assert settings.cooldown == 300.0
    assert settings.health_check == "process"
    assert settings.heartbeat_grace == 60.0
    assert settings.stray_action == "kill"
    assert settings.event_retention == 10000
    assert isinstance(settings.event_retention, int)
    assert settings.log_level == "INFO"
    assert settings.airflow_home == str(tmp_path)
    assert settings.airflow_cfg == str(tmp_path / "airflow.cfg")


@pytest.mark.parametrize("key", [k for k in KEYS if k.default], ids=lambda k: k.name)
def test_documented_default_is_the_loaded_value(tmp_path: Path, key: Key) -> None:
    settings = load(tmp_path)
    expected = key.default if key.kind == "choice" else PARSERS[key.kind](key.default)
    assert getattr(settings, key.name) == expected


def test_default_settings_satisfy_the_timing_invariants() -> None:
    values = {k.name: PARSERS.get(k.kind, str)(k.default) for k in KEYS if k.default}
    assert timing_problems(values) == []


def test_airflow_home_comes_from_the_environment_when_not_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "elsewhere"
    home.mkdir()
    write_cfg(home, "[sentinel]\nlease_ttl = 21\n")
    monkeypatch.setenv("AIRFLOW_HOME", str(home))

    settings = load_settings(None, None, None)
    assert settings.airflow_home == str(home)
    # An explicit environment replaces the process's one, AIRFLOW_HOME included.
    settings = load_settings(None, {"AIRFLOW_HOME": str(home)}, None)

    assert settings.airflow_home == str(home)
    assert settings.lease_ttl == 21.0


def test_airflow_config_variable_points_at_another_file(
    tmp_path: Path,
) -> None:
    write_cfg(tmp_path, "[sentinel]\nlease_ttl = 20\n")
    other = tmp_path / "conf" / "other.cfg"
    other.parent.mkdir()
    other.write_text("[sentinel]\nlease_ttl = 30\n", encoding="utf-8")

    settings = load(tmp_path, environ={"AIRFLOW_CONFIG": str(other)})

    assert settings.lease_ttl == 30.0
    assert settings.airflow_cfg == str(other)


# -- node_id --------------------------------------------------------------------------------


def test_node_id_defaults_to_the_host_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "master-under-test")
    assert load(tmp_path).node_id == "master-under-test"


def test_node_id_defaults_to_the_real_host_name(tmp_path: Path) -> None:
    assert load(tmp_path).node_id == socket.gethostname()


def test_blank_node_id_falls_back_to_the_host_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "master-under-test")
    assert load(tmp_path, environ=sentinel_env(node_id="   ")).node_id == "master-under-test"


def test_given_node_id_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "master-under-test")
    write_cfg(tmp_path, "[sentinel]\nnode_id = master-2\n")
    assert load(tmp_path).node_id == "master-2"


@pytest.mark.parametrize(
    "node_id", ["a/b", "../../etc/x", ".", "..", "n" * 256, "a\nWatchdogSec=1", "a\tb"]
)
def test_node_id_that_cannot_name_a_node_is_refused(tmp_path: Path, node_id: str) -> None:
    [problem] = problems_of(tmp_path, flags={"node_id": node_id})
    assert problem.startswith("--node-id:")


def test_node_id_of_the_longest_accepted_length(tmp_path: Path) -> None:
    assert load(tmp_path, flags={"node_id": "n" * 255}).node_id == "n" * 255


# -- layering -------------------------------------------------------------------------------


def test_airflow_cfg_overrides_defaults(tmp_path: Path) -> None:
    write_cfg(
        tmp_path,
        "[core]\nexecutor = LocalExecutor\n\n"
        "[sentinel]\nlease_ttl = 20\nhealth_check = heartbeat\nmax_restarts = 5\n"
        "scheduler_command = /opt/af/bin/airflow scheduler --skip-serve-logs\n",
    )
    settings = load(tmp_path)

    assert settings.lease_ttl == 20.0
    assert settings.health_check == "heartbeat"
    assert settings.max_restarts == 5
    assert settings.scheduler_argv == ["/opt/af/bin/airflow", "scheduler", "--skip-serve-logs"]
    assert settings.renew_interval == 2.0  # not given: default


def test_environment_overrides_airflow_cfg(tmp_path: Path) -> None:
    write_cfg(tmp_path, "[sentinel]\nlease_ttl = 20\nstray_action = report\n")
    settings = load(tmp_path, environ=sentinel_env(lease_ttl="25"))

    assert settings.lease_ttl == 25.0
    assert settings.stray_action == "report"  # only in airflow.cfg: still applies


def test_flags_override_environment_and_airflow_cfg(tmp_path: Path) -> None:
    write_cfg(tmp_path, "[sentinel]\nlease_ttl = 20\n")
    settings = load(tmp_path, flags={"lease_ttl": "40"}, environ=sentinel_env(lease_ttl="25"))
    assert settings.lease_ttl == 40.0


def test_flag_set_to_none_means_not_given(tmp_path: Path) -> None:
    write_cfg(tmp_path, "[sentinel]\nlease_ttl = 20\n")
    settings = load(
        tmp_path,
        flags={"lease_ttl": None, "renew_interval": None},
        environ=sentinel_env(lease_ttl="25"),
    )
    assert settings.lease_ttl == 25.0
    assert settings.renew_interval == 2.0


def test_layers_combine_key_by_key(tmp_path: Path) -> None:
    write_cfg(tmp_path, "[sentinel]\nlease_ttl = 30\nrenew_interval = 4\nstop_timeout = 6\n")
    settings = load(
        tmp_path,
        flags={"stop_timeout": 7},
        environ=sentinel_env(renew_interval="5"),
    )
    assert (settings.lease_ttl, settings.renew_interval, settings.stop_timeout) == (30, 5, 7)


def test_non_string_flag_values_are_accepted(tmp_path: Path) -> None:
    settings = load(tmp_path, flags={"lease_ttl": 18.5, "max_restarts": 7})
    assert settings.lease_ttl == 18.5
    assert settings.max_restarts == 7


def test_explicit_environ_is_used_instead_of_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__SENTINEL__LEASE_TTL", "abc")
    assert load(tmp_path, environ={}).lease_ttl == 10.0


def test_process_environment_is_used_when_environ_is_not_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__SENTINEL__LEASE_TTL", "24")
    assert load_settings(None, None, tmp_path).lease_ttl == 24.0


def test_values_are_stripped_and_choices_are_case_insensitive(tmp_path: Path) -> None:
    write_cfg(tmp_path, "[sentinel]\nhealth_check = HEARTBEAT\nlog_level = debug\n")
    settings = load(tmp_path, environ=sentinel_env(lease_ttl="  16  ", stray_action=" Report "))

    assert settings.lease_ttl == 16.0
    assert settings.health_check == "heartbeat"
    assert settings.log_level == "DEBUG"
    assert settings.stray_action == "report"


def test_key_names_in_airflow_cfg_are_case_insensitive(tmp_path: Path) -> None:
    write_cfg(tmp_path, "[sentinel]\nLease_TTL = 19\n")
    assert load(tmp_path).lease_ttl == 19.0


def test_other_airflow_variables_are_not_sentinel_keys(tmp_path: Path) -> None:
    environ = {"AIRFLOW__CORE__EXECUTOR": "LocalExecutor", "AIRFLOW_HOME": str(tmp_path)}
    assert load(tmp_path, environ=environ).lease_ttl == 10.0


# -- metastore default: Airflow's own database ----------------------------------------------


def test_metastore_defaults_to_sqlite_in_airflow_home(tmp_path: Path) -> None:
    assert load(tmp_path).metastore == f"sqlite:///{tmp_path / 'airflow.db'}"


def test_metastore_defaults_to_database_sql_alchemy_conn(tmp_path: Path) -> None:
    write_cfg(tmp_path, "[database]\nsql_alchemy_conn = postgresql://af:pw@db1:5432/airflow\n")
    assert load(tmp_path).metastore == "postgresql+psycopg://af:pw@db1:5432/airflow"


def test_metastore_falls_back_to_core_sql_alchemy_conn(tmp_path: Path) -> None:
    write_cfg(tmp_path, "[core]\nsql_alchemy_conn = mysql://af:pw@db2/airflow\n")
    assert load(tmp_path).metastore == "mysql+pymysql://af:pw@db2/airflow"


def test_database_section_wins_over_core(tmp_path: Path) -> None:
    write_cfg(
        tmp_path,
        "[core]\nsql_alchemy_conn = mysql://af:pw@old/airflow\n\n"
        "[database]\nsql_alchemy_conn = postgresql://af:pw@new/airflow\n",
    )
    assert load(tmp_path).metastore == "postgresql+psycopg://af:pw@new/airflow"


def test_empty_database_value_falls_back_to_core(tmp_path: Path) -> None:
    write_cfg(
        tmp_path,
        "[core]\nsql_alchemy_conn = mysql://af:pw@old/airflow\n\n[database]\nsql_alchemy_conn =\n",
    )
    assert load(tmp_path).metastore == "mysql+pymysql://af:pw@old/airflow"


def test_airflow_database_env_var_is_used(tmp_path: Path) -> None:
    assert (
        load(
            tmp_path, environ={"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgres://af@db3/airflow"}
        ).metastore
        == "postgresql+psycopg://af@db3/airflow"
    )


def test_airflow_database_env_var_wins_over_the_file(
    tmp_path: Path,
) -> None:
    # Airflow's own precedence: an environment variable beats airflow.cfg.
    write_cfg(tmp_path, "[database]\nsql_alchemy_conn = mysql://af@file/airflow\n")
    assert (
        load(
            tmp_path, environ={"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql://af@env/airflow"}
        ).metastore
        == "postgresql+psycopg://af@env/airflow"
    )


def test_airflow_core_env_var_is_used(tmp_path: Path) -> None:
    assert (
        load(
            tmp_path, environ={"AIRFLOW__CORE__SQL_ALCHEMY_CONN": "mysql://af@db4/airflow"}
        ).metastore
        == "mysql+pymysql://af@db4/airflow"
    )


def test_explicit_environ_is_used_for_airflows_database_variable(tmp_path: Path) -> None:
    environ = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql://af@db5/airflow"}
    assert load(tmp_path, environ=environ).metastore == "postgresql+psycopg://af@db5/airflow"


def _echo_command(url: str) -> str:
    return f"{sys.executable} -c \"print('{url}')\""


def test_airflow_database_cmd_env_var_is_run(tmp_path: Path) -> None:
    environ = {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD": _echo_command("mysql://af@cmdenv/airflow")
    }
    assert load(tmp_path, environ=environ).metastore == "mysql+pymysql://af@cmdenv/airflow"


def test_sql_alchemy_conn_cmd_in_the_file_is_run(tmp_path: Path) -> None:
    write_cfg(
        tmp_path,
        f"[database]\nsql_alchemy_conn_cmd = {_echo_command('postgresql://af@cmdfile/af')}\n",
    )
    assert load(tmp_path).metastore == "postgresql+psycopg://af@cmdfile/af"


def test_plain_value_wins_over_cmd_in_the_same_section(tmp_path: Path) -> None:
    write_cfg(
        tmp_path,
        "[database]\nsql_alchemy_conn = mysql://af@plain/airflow\nsql_alchemy_conn_cmd = false\n",
    )
    assert load(tmp_path).metastore == "mysql+pymysql://af@plain/airflow"


def test_failing_sql_alchemy_conn_cmd_is_a_user_error_naming_the_key(tmp_path: Path) -> None:
    write_cfg(tmp_path, "[database]\nsql_alchemy_conn_cmd = false\n")
    with pytest.raises(UserError) as info:
        load(tmp_path)
    assert "sql_alchemy_conn_cmd" in str(info.value)
    assert "exited with code 1" in str(info.value)


def test_missing_sql_alchemy_conn_cmd_program_is_a_user_error(tmp_path: Path) -> None:
    write_cfg(tmp_path, "[database]\nsql_alchemy_conn_cmd = /nonexistent/get-db-url\n")
    with pytest.raises(UserError) as info:
        load(tmp_path)
    assert "sql_alchemy_conn_cmd" in str(info.value)


def test_sentinel_metastore_wins_and_airflows_connection_is_not_consulted(
    tmp_path: Path,
) -> None:
    # If Airflow's connection were resolved, the failing command would raise.
    write_cfg(
        tmp_path,
        "[database]\nsql_alchemy_conn_cmd = false\n\n"
        "[sentinel]\nmetastore = postgresql://s@sentinel-db/leases\n",
    )
    assert load(tmp_path).metastore == "postgresql+psycopg://s@sentinel-db/leases"


def test_metastore_from_every_layer(tmp_path: Path) -> None:
    write_cfg(tmp_path, "[sentinel]\nmetastore = mysql://a@cfg/db\n")
    assert load(tmp_path).metastore == "mysql+pymysql://a@cfg/db"
    env = sentinel_env(metastore="mysql://a@env/db")
    assert load(tmp_path, environ=env).metastore == "mysql+pymysql://a@env/db"
    flags = {"metastore": "postgres://a@flag/db"}
    assert load(tmp_path, flags, env).metastore == "postgresql+psycopg://a@flag/db"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("mysql://u:p@h:3306/db", "mysql+pymysql://u:p@h:3306/db"),
        ("mysql+mysqldb://u:p@h/db", "mysql+pymysql://u:p@h/db"),
        ("mysql+pymysql://u:p@h/db", "mysql+pymysql://u:p@h/db"),
        ("postgresql://u:p@h:5432/db", "postgresql+psycopg://u:p@h:5432/db"),
        ("postgres://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
        ("postgresql+psycopg2://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
        ("postgresql+psycopg://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
    ],
)
def test_driver_mapping(tmp_path: Path, given: str, expected: str) -> None:
    assert load(tmp_path, environ=sentinel_env(metastore=given)).metastore == expected
    write_cfg(tmp_path, f"[database]\nsql_alchemy_conn = {given}\n")
    assert load(tmp_path).metastore == expected


# -- problems -------------------------------------------------------------------------------


def test_unknown_key_in_airflow_cfg(tmp_path: Path) -> None:
    cfg = write_cfg(tmp_path, "[sentinel]\nlease_tll = 20\n")
    [problem] = problems_of(tmp_path)
    assert "lease_tll" in problem
    assert str(cfg) in problem
    assert "lease_ttl" in problem  # the accepted keys are listed


def test_unknown_sentinel_env_var(tmp_path: Path) -> None:
    [problem] = problems_of(tmp_path, environ={"AIRFLOW__SENTINEL__RENEW_INTERVALL": "2"})
    assert "AIRFLOW__SENTINEL__RENEW_INTERVALL" in problem
    assert "renew_intervall" in problem
    assert "renew_interval" in problem.replace("renew_intervall", "")


@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_non_numeric_timing(tmp_path: Path, key: str) -> None:
    [problem] = problems_of(tmp_path, environ=sentinel_env(**{key: "abc"}))
    assert f"AIRFLOW__SENTINEL__{key.upper()}" in problem
    assert "'abc'" in problem
    assert "number" in problem


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "", "1e999", "5s"])
def test_non_finite_or_empty_numbers_are_rejected(tmp_path: Path, raw: str) -> None:
    [problem] = problems_of(tmp_path, environ=sentinel_env(lease_ttl=raw))
    assert "AIRFLOW__SENTINEL__LEASE_TTL" in problem


@pytest.mark.parametrize("key", INT_KEYS)
@pytest.mark.parametrize("raw", ["x", "3.5"])
def test_non_integer_counts(tmp_path: Path, key: str, raw: str) -> None:
    [problem] = problems_of(tmp_path, flags={key: raw})
    assert f"--{key.replace('_', '-')}" in problem
    assert "whole number" in problem


@pytest.mark.parametrize("key", TIMING_KEYS)
@pytest.mark.parametrize("raw", ["-1", "0"])
def test_timing_must_be_positive(tmp_path: Path, key: str, raw: str) -> None:
    problems = problems_of(tmp_path, environ=sentinel_env(**{key: raw}))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{key}:")
    assert "greater than 0" in problems[0]


def test_negative_cooldown(tmp_path: Path) -> None:
    [problem] = problems_of(tmp_path, environ=sentinel_env(cooldown="-1"))
    assert problem.startswith("cooldown:")


def test_zero_cooldown_is_allowed(tmp_path: Path) -> None:
    assert load(tmp_path, environ=sentinel_env(cooldown="0")).cooldown == 0.0


def test_too_small_counts(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, environ=sentinel_env(max_restarts="0", event_retention="99"))
    assert len(problems) == 2
    assert any(p.startswith("max_restarts:") for p in problems)
    assert any(p.startswith("event_retention:") for p in problems)


def test_renew_interval_too_long_for_the_lease(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, environ=sentinel_env(renew_interval="10"))
    renew = [p for p in problems if p.startswith("renew_interval:")]
    assert len(renew) == 1
    assert "lease_ttl" in renew[0]
    assert "30" in renew[0]  # 3 * renew_interval


def test_lease_ttl_below_the_fencing_budget(tmp_path: Path) -> None:
    # 3 * 5 <= 15 holds, but 2 * 5 + 5 + 1 = 16 > 15.
    environ = sentinel_env(lease_ttl="15", renew_interval="5", stop_timeout="5")
    problems = problems_of(tmp_path, environ=environ)
    assert len(problems) == 1, problems
    assert problems[0].startswith("lease_ttl:")
    assert "stop_timeout" in problems[0]
    assert "16" in problems[0]


def test_invariant_uses_the_layered_values(tmp_path: Path) -> None:
    write_cfg(tmp_path, "[sentinel]\nrenew_interval = 10\n")
    assert load(tmp_path, flags={"lease_ttl": "60"}).renew_interval == 10.0


@pytest.mark.parametrize(
    ("key", "bad", "accepted"),
    [
        ("health_check", "ping", ("process", "heartbeat")),
        ("stray_action", "ignore", ("kill", "report")),
        ("log_level", "TRACE", ("DEBUG", "INFO", "WARNING", "ERROR")),
    ],
)
def test_bad_choice(tmp_path: Path, key: str, bad: str, accepted: tuple[str, ...]) -> None:
    write_cfg(tmp_path, f"[sentinel]\n{key} = {bad}\n")
    [problem] = problems_of(tmp_path)
    assert f"[sentinel] {key}" in problem
    assert f"'{bad}'" in problem
    for choice in accepted:
        assert choice in problem


@pytest.mark.parametrize("url", ["notaurl", "postgresql://u@h:notaport/db", "sqlite://"])
def test_malformed_metastore_url(tmp_path: Path, url: str) -> None:
    [problem] = problems_of(tmp_path, environ=sentinel_env(metastore=url))
    assert problem.startswith("AIRFLOW__SENTINEL__METASTORE:")


def test_malformed_metastore_url_names_its_origin(tmp_path: Path) -> None:
    write_cfg(tmp_path, "[sentinel]\nmetastore = notaurl\n")
    [from_cfg] = problems_of(tmp_path)
    assert from_cfg.startswith("[sentinel] metastore:")
    [from_flag] = problems_of(tmp_path, flags={"metastore": "notaurl"})
    assert from_flag.startswith("--metastore:")


@pytest.mark.parametrize("url", ["redis://x", "oracle://u:s3cretpw@h/db", "http://h/db"])
def test_unsupported_metastore_scheme(tmp_path: Path, url: str) -> None:
    [problem] = problems_of(tmp_path, environ=sentinel_env(metastore=url))
    assert problem.startswith("AIRFLOW__SENTINEL__METASTORE:")
    assert f"'{url.split('://', maxsplit=1)[0]}://'" in problem
    assert "postgresql+psycopg" in problem  # what is accepted
    assert "s3cretpw" not in problem


def test_bad_airflow_connection_is_reported_as_such(tmp_path: Path) -> None:
    write_cfg(tmp_path, "[database]\nsql_alchemy_conn = mssql+pyodbc://u:s3cretpw@h/db\n")
    [problem] = problems_of(tmp_path)
    assert "sql_alchemy_conn" in problem
    assert "'mssql+pyodbc://'" in problem
    assert "s3cretpw" not in problem


def test_empty_scheduler_command(tmp_path: Path) -> None:
    [problem] = problems_of(tmp_path, environ=sentinel_env(scheduler_command="   "))
    assert problem.startswith("AIRFLOW__SENTINEL__SCHEDULER_COMMAND:")
    assert "empty" in problem


@pytest.mark.parametrize(
    ("command", "needle"),
    [
        ('airflow "scheduler', "No closing quotation"),
        ("airflow scheduler 'x", "No closing quotation"),
        ("airflow scheduler \\", "No escaped character"),
        ('"" scheduler', "program"),
    ],
)
def test_scheduler_command_that_cannot_be_split(tmp_path: Path, command: str, needle: str) -> None:
    [problem] = problems_of(tmp_path, environ=sentinel_env(scheduler_command=command))
    assert problem.startswith("AIRFLOW__SENTINEL__SCHEDULER_COMMAND:")
    assert needle in problem


def test_scheduler_command_problem_names_its_origin_and_not_the_command(tmp_path: Path) -> None:
    write_cfg(tmp_path, '[sentinel]\nscheduler_command = run --token=s3cretpw "x\n')
    [problem] = problems_of(tmp_path)
    assert problem.startswith("[sentinel] scheduler_command:")
    assert "s3cretpw" not in problem


def test_quoted_scheduler_command_is_split_like_a_shell(tmp_path: Path) -> None:
    command = "'/opt/air flow/bin/airflow' scheduler --pid \"/run/a b.pid\""
    settings = load(tmp_path, environ=sentinel_env(scheduler_command=command))
    assert settings.scheduler_argv == [
        "/opt/air flow/bin/airflow",
        "scheduler",
        "--pid",
        "/run/a b.pid",
    ]


def test_problems_are_collected_not_raised_one_at_a_time(tmp_path: Path) -> None:
    write_cfg(tmp_path, "[sentinel]\nbogus_key = 1\nhealth_check = ping\n")
    environ = {
        "AIRFLOW__SENTINEL__LEASE_TTL": "abc",
        "AIRFLOW__SENTINEL__NOPE": "1",
        "AIRFLOW__SENTINEL__MAX_RESTARTS": "two",
    }
    problems = problems_of(tmp_path, environ=environ)

    assert len(problems) == 5, problems
    expected = (
        "unknown key 'bogus_key'",
        "[sentinel] health_check:",
        "AIRFLOW__SENTINEL__LEASE_TTL:",
        "AIRFLOW__SENTINEL__NOPE:",
        "AIRFLOW__SENTINEL__MAX_RESTARTS:",
    )
    for needle in expected:
        assert sum(needle in p for p in problems) == 1, (needle, problems)


def test_timing_and_metastore_problems_are_collected_together(tmp_path: Path) -> None:
    environ = sentinel_env(renew_interval="10", metastore="redis://x")
    problems = problems_of(tmp_path, environ=environ)
    assert any(p.startswith("AIRFLOW__SENTINEL__METASTORE:") for p in problems)
    assert any(p.startswith("renew_interval:") for p in problems)


def test_parse_and_metastore_problems_are_collected_together(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, environ=sentinel_env(lease_ttl="abc", metastore="redis://x"))
    assert any("LEASE_TTL" in p for p in problems)
    assert any("METASTORE" in p for p in problems)


def test_config_error_is_a_user_error_with_one_line_message(tmp_path: Path) -> None:
    environ = sentinel_env(lease_ttl="abc", stop_timeout="x")
    with pytest.raises(UserError) as info:
        load(tmp_path, environ=environ)
    assert isinstance(info.value, ConfigError)
    assert str(info.value) == "; ".join(info.value.problems)
    assert "\n" not in str(info.value)


def test_unreadable_airflow_cfg(tmp_path: Path) -> None:
    cfg = write_cfg(tmp_path, "lease_ttl = 20\n[sentinel]\n")
    [problem] = problems_of(tmp_path)
    assert str(cfg) in problem
    assert "\n" not in problem


def test_airflow_cfg_that_is_not_utf8(tmp_path: Path) -> None:
    cfg = tmp_path / "airflow.cfg"
    cfg.write_bytes(b"[sentinel]\nnode_id = \xff\xfe\n")
    [problem] = problems_of(tmp_path)
    assert str(cfg) in problem


def test_invalid_airflow_cfg_names_the_line_but_not_its_text(tmp_path: Path) -> None:
    cfg = write_cfg(tmp_path, "[database]\nsql_alchemy_password s3cretpw\n")
    [problem] = problems_of(tmp_path)
    assert str(cfg) in problem
    assert "line 2" in problem
    assert "s3cretpw" not in problem


def test_invalid_airflow_cfg_is_reported_with_the_other_problems(tmp_path: Path) -> None:
    cfg = write_cfg(tmp_path, "lease_ttl = 20\n")
    problems = problems_of(tmp_path, environ=sentinel_env(stop_timeout="x"))
    assert len(problems) == 2, problems
    assert str(cfg) in problems[0]
    assert problems[1].startswith("AIRFLOW__SENTINEL__STOP_TIMEOUT:")


def test_half_of_an_invalid_airflow_cfg_is_not_used(tmp_path: Path) -> None:
    # The valid [sentinel] section must not make its way into the settings, nor into
    # follow-on problems about it.
    write_cfg(tmp_path, "[sentinel]\nlease_tll = 1\n[core]\nbroken line\n")
    [problem] = problems_of(tmp_path)
    assert "line 4" in problem


# -- AIRFLOW_HOME and AIRFLOW_CONFIG ---------------------------------------------------------


def test_missing_airflow_home_is_a_problem_naming_it(tmp_path: Path) -> None:
    home = tmp_path / "no-such-home"
    [problem] = problems_of(home, environ={"AIRFLOW_HOME": str(home)})
    assert problem.startswith(f"AIRFLOW_HOME {home} does not exist")
    assert "init" in problem  # what creates it
    assert not home.exists()


def test_missing_default_airflow_home_says_it_is_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    [problem] = problems_of_environ({})
    assert "~/airflow" in problem
    assert str(tmp_path / "airflow") in problem


def problems_of_environ(environ: Mapping[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(None, environ, None)
    return info.value.problems


def test_airflow_home_that_is_a_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.write_text("", encoding="utf-8")
    [problem] = problems_of_environ({"AIRFLOW_HOME": str(home)})
    assert problem == f"AIRFLOW_HOME {home} is not a directory"


def test_missing_airflow_home_is_reported_with_the_other_problems(tmp_path: Path) -> None:
    home = tmp_path / "no-such-home"
    environ = {"AIRFLOW_HOME": str(home), **sentinel_env(lease_tll="1", metastore="redis://x")}
    problems = problems_of_environ(environ)
    assert len(problems) == 3, problems
    assert str(home) in problems[0]
    assert any("unknown key 'lease_tll'" in p for p in problems)
    assert any(p.startswith("AIRFLOW__SENTINEL__METASTORE:") for p in problems)


def test_relative_airflow_home_is_taken_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "af").mkdir()
    monkeypatch.chdir(tmp_path)
    settings = load_settings(None, {"AIRFLOW_HOME": "af"}, None)
    assert settings.airflow_home == str(tmp_path / "af")
    assert settings.metastore == f"sqlite:///{tmp_path / 'af' / 'airflow.db'}"


def test_airflow_config_that_is_a_directory(tmp_path: Path) -> None:
    [problem] = problems_of(tmp_path, environ={"AIRFLOW_CONFIG": str(tmp_path)})
    assert problem == f"AIRFLOW_CONFIG {tmp_path} is a directory, not an airflow.cfg file"


def test_default_airflow_cfg_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "airflow.cfg").mkdir()
    [problem] = problems_of(tmp_path)
    assert str(tmp_path / "airflow.cfg") in problem
    assert "directory" in problem


def test_missing_airflow_config_file(tmp_path: Path) -> None:
    target = tmp_path / "etc" / "airflow.cfg"
    [problem] = problems_of(tmp_path, environ={"AIRFLOW_CONFIG": str(target)})
    assert problem.startswith(f"AIRFLOW_CONFIG {target} does not exist")


def test_missing_default_airflow_cfg_means_the_defaults(tmp_path: Path) -> None:
    # As Airflow does: an AIRFLOW_HOME without airflow.cfg runs on the defaults.
    assert load(tmp_path).lease_ttl == 10.0


def test_airflow_cfg_that_is_a_dangling_symlink(tmp_path: Path) -> None:
    (tmp_path / "airflow.cfg").symlink_to(tmp_path / "gone.cfg")
    [problem] = problems_of(tmp_path)
    assert str(tmp_path / "airflow.cfg") in problem
    assert "symbolic link" in problem


def test_load_airflow_config_leaves_what_is_missing_to_init(tmp_path: Path) -> None:
    home = tmp_path / "new-home"
    config = load_airflow_config(home, {})
    assert config.path == home / "airflow.cfg"
    _, findings = read_airflow_config(home, {})
    assert findings.broken == []
    assert [str(home) in m for m in findings.missing] == [True]


def test_load_airflow_config_refuses_what_is_broken(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_airflow_config(tmp_path, {"AIRFLOW_CONFIG": str(tmp_path)})
    assert "is a directory" in str(info.value)


def test_failing_sql_alchemy_conn_cmd_is_reported_with_the_other_problems(tmp_path: Path) -> None:
    write_cfg(tmp_path, "[database]\nsql_alchemy_conn_cmd = false\n")
    problems = problems_of(tmp_path, environ=sentinel_env(lease_ttl="x"))
    assert len(problems) == 2, problems
    assert any("sql_alchemy_conn_cmd" in p for p in problems)
    assert any("LEASE_TTL" in p for p in problems)


def test_relative_sqlite_in_airflows_connection_names_the_file(tmp_path: Path) -> None:
    cfg = write_cfg(tmp_path, "[database]\nsql_alchemy_conn = sqlite:///airflow.db\n")
    [problem] = problems_of(tmp_path)
    assert f"[database] sql_alchemy_conn in {cfg}" in problem
    assert "sqlite:////" in problem  # how to write it


def test_scheme_typo_in_airflows_connection_hides_the_password(tmp_path: Path) -> None:
    environ = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgressql://u:s3cretpw@h/db"}
    [problem] = problems_of(tmp_path, environ=environ)
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" in problem
    assert "'postgressql://'" in problem
    assert "s3cretpw" not in problem


# -- timing_problems directly ---------------------------------------------------------------


def timing(**overrides: float) -> dict[str, Any]:
    values: dict[str, Any] = {
        "lease_ttl": 15.0,
        "renew_interval": 3.0,
        "stop_timeout": 5.0,
        "start_timeout": 60.0,
        "heartbeat_grace": 60.0,
        "cooldown": 300.0,
        "max_restarts": 3,
        "event_retention": 10000,
    }
    values.update(overrides)
    return values


def test_timing_defaults_have_no_problems() -> None:
    assert timing_problems(timing()) == []


@pytest.mark.parametrize("key", TIMING_KEYS)
@pytest.mark.parametrize("value", [0.0, -0.5])
def test_timing_problems_non_positive(key: str, value: float) -> None:
    problems = timing_problems(timing(**{key: value}))
    assert len(problems) == 1, problems  # invariants are not checked on top
    assert problems[0].startswith(f"{key}:")


def test_timing_problems_each_basic_problem_is_reported() -> None:
    problems = timing_problems(
        timing(lease_ttl=-1, stop_timeout=0, cooldown=-1, max_restarts=0, event_retention=1)
    )
    assert [p.split(":")[0] for p in problems] == [
        "lease_ttl",
        "stop_timeout",
        "cooldown",
        "max_restarts",
        "event_retention",
    ]


def test_timing_problems_lower_bounds_are_inclusive() -> None:
    assert timing_problems(timing(cooldown=0, max_restarts=1, event_retention=100)) == []


def test_three_renewals_per_ttl_boundary() -> None:
    # 3 * 5 == 15 is allowed; budget 2 * 5 + 4 + 1 == 15 is allowed too.
    assert timing_problems(timing(lease_ttl=15, renew_interval=5, stop_timeout=4)) == []
    problems = timing_problems(timing(lease_ttl=15, renew_interval=5.01, stop_timeout=3))
    assert len(problems) == 1, problems
    assert problems[0].startswith("renew_interval:")


def test_fencing_budget_boundary() -> None:
    assert timing_problems(timing(lease_ttl=12, renew_interval=3, stop_timeout=5)) == []
    problems = timing_problems(timing(lease_ttl=12, renew_interval=3, stop_timeout=5.5))
    assert len(problems) == 1, problems
    assert problems[0].startswith("lease_ttl:")
    assert "12.5" in problems[0]


def test_fence_margin_is_a_tenth_of_the_ttl_up_to_one_second() -> None:
    assert fence_margin(5) == 0.5
    assert fence_margin(10) == 1.0
    assert fence_margin(100) == 1.0
    # With ttl 5 the margin is 0.5: 2 * 1 + 2.5 + 0.5 == 5 fits exactly.
    assert timing_problems(timing(lease_ttl=5, renew_interval=1, stop_timeout=2.5)) == []
    assert timing_problems(timing(lease_ttl=5, renew_interval=1, stop_timeout=2.6)) != []


def test_both_invariants_broken() -> None:
    problems = timing_problems(timing(lease_ttl=15, renew_interval=10))
    assert [p.split(":")[0] for p in problems] == ["renew_interval", "lease_ttl"]


def test_settings_fence_margin_property(tmp_path: Path) -> None:
    settings = load(
        tmp_path, environ=sentinel_env(lease_ttl="6", renew_interval="1", stop_timeout="2")
    )
    assert settings.fence_margin == pytest.approx(0.6)
