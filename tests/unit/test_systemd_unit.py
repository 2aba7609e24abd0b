"""The unit `airflow-sentinel systemd-unit` prints: its paths, its timings, its quoting, and
what systemd itself makes of it (systemd-analyze verify)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from airflow_sentinel.config import Settings
from airflow_sentinel.errors import UserError
from airflow_sentinel.systemd.unit import (
    UnitPlan,
    environment_line,
    exec_word,
    plan_unit,
    render_unit,
    sentinel_command,
    unit_path,
)

VENV_PYTHON = sys.executable  # the project's venv: its bin holds airflow-sentinel


def make_plan(settings: Settings, **environ: str) -> UnitPlan:
    environ.setdefault("PATH", "/usr/bin:/bin")
    return plan_unit(settings, {}, "airflow", environ, VENV_PYTHON)


def lines_of(plan: UnitPlan) -> list[str]:
    return render_unit(plan).splitlines()


def test_the_unit_runs_this_venvs_command_as_a_notify_service_with_a_watchdog(
    settings: Settings,
) -> None:
    lines = lines_of(make_plan(settings))
    script = Path(VENV_PYTHON).absolute().parent / "airflow-sentinel"
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={script} start",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=airflow",
        f"WorkingDirectory={settings.airflow_home}",
        f"Environment=AIRFLOW_HOME={settings.airflow_home}",
        # renew_interval 3, stop_timeout 5, the fence's raise: silent for up to 40 s
        "WatchdogSec=60",
        "KillMode=mixed",
        "TimeoutStopSec=71",
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
        "WantedBy=multi-user.target",
    ):
        assert line in lines


def test_every_non_obvious_line_has_a_comment_above_it(settings: Settings) -> None:
    lines = lines_of(make_plan(settings))
    for key in ("Type=", "NotifyAccess=", "WatchdogSec=", "KillMode=", "TimeoutStopSec="):
        at = next(i for i, line in enumerate(lines) if line.startswith(key))
        assert lines[at - 1].startswith("#"), key


def test_the_watchdog_and_stop_timeout_follow_the_nodes_timing(settings: Settings) -> None:
    fast = replace(settings, renew_interval=1.0, stop_timeout=1.0, lease_ttl=4.0)
    lines = lines_of(make_plan(fast))
    # 1 + (4 + 1 + 10 + 2 + 4) = 22 s (the last two: the fence's raise), with half again
    assert "WatchdogSec=33" in lines
    assert "TimeoutStopSec=45" in lines  # 21 + 1 + 10 + 3 + 10
    without_fence = lines_of(make_plan(replace(fast, db_fence="off")))
    assert "WatchdogSec=24" in without_fence  # 1 + (4 + 1 + 10) = 16 s
    assert any("for renew_interval 1s and stop_timeout 1s" in line for line in lines)


def test_the_path_is_this_shells_with_the_venvs_bin_and_no_relative_entries(
    settings: Settings,
) -> None:
    bin_dir = str(Path(VENV_PYTHON).absolute().parent)
    assert unit_path("/opt/af/bin:.:bin:/usr/bin", VENV_PYTHON) == f"/opt/af/bin:/usr/bin:{bin_dir}"
    assert unit_path(f"{bin_dir}:/usr/bin", VENV_PYTHON) == f"{bin_dir}:/usr/bin"


def test_the_unit_says_where_the_scheduler_command_resolves(
    settings: Settings, tmp_path: Path
) -> None:
    program = tmp_path / "bin" / "airflow"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    found = make_plan(
        replace(settings, scheduler_command="airflow scheduler"), PATH=str(program.parent)
    )
    assert f"# scheduler_command's 'airflow' is {program} here." in lines_of(found)
    assert found.path.startswith(f"{program.parent}:")
    missing = make_plan(settings)
    assert any("is NOT found on this PATH" in line for line in lines_of(missing))


def test_given_flags_go_to_start_and_airflow_variables_are_named_not_copied(
    settings: Settings,
) -> None:
    environ = {
        "PATH": "/bin",
        "AIRFLOW__SENTINEL__METASTORE": "mysql://u:pa55word@db/x",
        "AIRFLOW__CORE__DAGS_FOLDER": "/d",
        "AIRFLOW_CONFIG": settings.airflow_cfg,
    }
    flags = {"lease_ttl": "20", "node_id": "master 1"}
    plan = plan_unit(settings, flags, "airflow", environ, VENV_PYTHON)
    text = render_unit(plan)
    assert plan.exec_start[-5:] == ("start", "--node-id", "master 1", "--lease-ttl", "20")
    assert 'start --node-id "master 1" --lease-ttl 20\n' in text
    assert "pa55word" not in text
    assert "#   AIRFLOW__CORE__DAGS_FOLDER\n#   AIRFLOW__SENTINEL__METASTORE\n" in text
    assert f"Environment=AIRFLOW_CONFIG={settings.airflow_cfg}\n" in text


def test_without_its_script_the_venv_runs_the_module() -> None:
    assert sentinel_command("/nowhere/bin/python3") == (
        "/nowhere/bin/python3",
        "-m",
        "airflow_sentinel",
    )


def test_exec_words_are_quoted_and_specifiers_and_variables_escaped() -> None:
    assert exec_word("/opt/airflow-sentinel/bin/airflow-sentinel") == (
        "/opt/airflow-sentinel/bin/airflow-sentinel"
    )
    assert exec_word("/srv/my venv/bin/x") == '"/srv/my venv/bin/x"'
    assert exec_word("50%") == "50%%"
    assert exec_word("$HOME") == "$$HOME"
    assert exec_word('say "hi"') == '"say \\"hi\\""'
    assert exec_word("") == '""'


def test_environment_lines_quote_spaces_and_escape_specifiers() -> None:
    assert environment_line("PATH", "/usr/bin:/bin") == "Environment=PATH=/usr/bin:/bin"
    assert environment_line("AIRFLOW_HOME", "/srv/a b") == 'Environment="AIRFLOW_HOME=/srv/a b"'
    assert environment_line("X", "100%") == "Environment=X=100%%"


def test_a_value_with_a_line_break_is_refused(settings: Settings) -> None:
    plan = replace(make_plan(settings), airflow_home="/srv/a\nExecStartPre=/bin/evil")
    with pytest.raises(UserError, match="line break"):
        render_unit(plan)


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    return subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )


def test_systemd_analyze_verify_finds_nothing_wrong(settings: Settings, tmp_path: Path) -> None:
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    plan = plan_unit(settings, {"lease_ttl": "15"}, user, {"PATH": "/usr/bin:/bin"}, VENV_PYTHON)
    unit = tmp_path / "airflow-sentinel.service"
    unit.write_text(render_unit(plan))
    done = verify(unit)
    about_it = [line for line in done.stderr.splitlines() if unit.name in line]
    assert done.returncode == 0, done.stderr
    assert about_it == [], done.stderr


def test_systemd_analyze_verify_would_notice_a_broken_line(tmp_path: Path) -> None:
    """The check above is worth something: a mistake in a unit is reported."""
    unit = tmp_path / "airflow-sentinel.service"
    unit.write_text("[Service]\nType=notify\nExecStart=/bin/true\nWatchdogSecs=45\n")
    done = verify(unit)
    assert "Unknown key 'WatchdogSecs'" in done.stderr
