"""The real `airflow-sentinel` command, run as a subprocess.

Every user mistake must end as exit code 2 and exactly one line on stderr that starts with
``airflow-sentinel: error:`` and names what to fix; never a traceback, never a password.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_sentinel import __version__
from airflow_sentinel.clock import SystemClock
from airflow_sentinel.config.airflow_cfg import sentinel_section_text
from airflow_sentinel.metastore import open_metastore
from airflow_sentinel.metastore.base import PAUSED, Event, NodeReport
from airflow_sentinel.metastore.urls import normalize_metastore_url
from tests.support.backends import fresh_metastore_url, selected_backends
from tests.support.cluster import Cluster, running_cluster, wait_until
from tests.support.privileges import drop_capabilities
from tests.support.zookeeper import Ensemble, free_port_block

SECRET = "s3cretpw"
ERROR_PREFIX = "airflow-sentinel: error:"
SETTINGS_COMMANDS: tuple[tuple[str, ...], ...] = (
    # test-connection and status are covered by the mistake and unreachable tests.
    ("start",),
    ("is-scheduler-running",),
    ("metadata", "--json"),
    ("clear-metadata", "--yes"),
    ("pause",),
    ("resume",),
    ("switchover",),
)


@dataclass
class Cli:
    home: Path
    env: dict[str, str] = field(default_factory=dict)

    def run(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        full_env = {**self.env, **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "airflow_sentinel", *args],
            env=full_env,
            cwd=self.home,
            input=stdin,
            stdin=subprocess.DEVNULL if stdin is None else None,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


def base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("AIRFLOW")}
    env["AIRFLOW_HOME"] = str(home)
    return env


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path, base_env(tmp_path))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'm.db'}"


@pytest.fixture
def sqlite_cli(cli: Cli, sqlite_url: str) -> Cli:
    cli.env["AIRFLOW__SENTINEL__METASTORE"] = sqlite_url
    return cli


def assert_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout
    assert "Traceback" not in result.stderr


def assert_user_error(
    result: subprocess.CompletedProcess[str],
    *needles: str,
    secret: str | None = None,
    code: int = 2,
) -> str:
    """Exit ``code`` (2: a mistake; 1: the environment, such as an unreachable metastore)
    and one error line naming every needle (case-insensitively); returns the line."""
    assert_no_traceback(result)
    lines = result.stderr.splitlines()
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith(ERROR_PREFIX), line
    for needle in needles:
        assert needle.lower() in line.lower(), (needle, line)
    if secret is not None:
        assert secret not in result.stdout + result.stderr
    return line


def status_json(cli: Cli) -> dict[str, Any]:
    result = cli.run("status", "--json")
    assert result.returncode == 0, result.stderr
    assert_no_traceback(result)
    payload: dict[str, Any] = json.loads(result.stdout)
    return payload


@pytest.fixture
def seeded(sqlite_url: str) -> Iterator[str]:
    """A SQLite metastore with one node running a scheduler, one event and the paused flag."""
    store = open_metastore(normalize_metastore_url(sqlite_url), SystemClock())
    try:
        store.heartbeat(
            NodeReport(
                node_id="master-1",
                host="host-1/abcd",
                role="standby",
                scheduler_running=True,
                scheduler_pid=4242,
                fit=True,
                version=__version__,
                epoch=None,
            ),
            stale_after=15.0,
        )
        store.record_event(
            Event(node_id="master-1", service="scheduler", kind="test-event", detail="seeded"),
            retention=1000,
        )
        store.set_flag(PAUSED, "2024-01-01T00:00:00Z")
    finally:
        store.close()
    yield sqlite_url


# -- configuration mistakes -----------------------------------------------------------------


@dataclass(frozen=True)
class Mistake:
    """A bad configuration; ``{home}`` in any of its strings stands for AIRFLOW_HOME."""

    id: str
    needles: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cfg: str | None = None
    args: tuple[str, ...] = ()
    secret: str | None = None  # must not appear anywhere in the output

    def at(self, home: Path) -> Mistake:
        def put(text: str) -> str:
            return text.replace("{home}", str(home))

        return Mistake(
            self.id,
            tuple(put(n) for n in self.needles),
            {k: put(v) for k, v in self.env.items()},
            None if self.cfg is None else put(self.cfg),
            tuple(put(a) for a in self.args),
            self.secret,
        )


MISTAKES = (
    Mistake("unknown-cfg-key", ("lease_tll", "airflow.cfg"), cfg="[sentinel]\nlease_tll = 20\n"),
    Mistake(
        "unknown-env-var",
        ("AIRFLOW__SENTINEL__LEASE_TLL",),
        env={"AIRFLOW__SENTINEL__LEASE_TLL": "20"},
    ),
    Mistake(
        "non-numeric",
        ("AIRFLOW__SENTINEL__LEASE_TTL", "'abc'"),
        env={"AIRFLOW__SENTINEL__LEASE_TTL": "abc"},
    ),
    Mistake("negative", ("lease_ttl", "-1"), env={"AIRFLOW__SENTINEL__LEASE_TTL": "-1"}),
    Mistake(
        "broken-invariant",
        ("renew_interval", "lease_ttl"),
        env={"AIRFLOW__SENTINEL__RENEW_INTERVAL": "10"},
    ),
    Mistake("bad-choice-cfg", ("health_check", "ping"), cfg="[sentinel]\nhealth_check = ping\n"),
    Mistake("bad-choice-flag", ("--stray-action", "ignore"), args=("--stray-action", "ignore")),
    Mistake(
        "malformed-url",
        ("AIRFLOW__SENTINEL__METASTORE", "malformed"),
        env={"AIRFLOW__SENTINEL__METASTORE": "notaurl"},
    ),
    Mistake(
        "unsupported-scheme",
        ("AIRFLOW__SENTINEL__METASTORE", "redis://"),
        env={"AIRFLOW__SENTINEL__METASTORE": "redis://x"},
    ),
    Mistake("unreadable-cfg", ("airflow.cfg",), cfg="lease_ttl = 20\n"),
    Mistake(
        "failing-sql-alchemy-conn-cmd",
        ("sql_alchemy_conn_cmd",),
        cfg="[database]\nsql_alchemy_conn_cmd = false\n",
    ),
    Mistake(
        "value-with-a-line-break",
        ("AIRFLOW__SENTINEL__LEASE_TTL", "is not a number"),
        env={"AIRFLOW__SENTINEL__LEASE_TTL": "1\n2"},
    ),
    # AIRFLOW_HOME and AIRFLOW_CONFIG: only `init` may create what is missing.
    Mistake(
        "missing-airflow-home",
        ("AIRFLOW_HOME", "{home}/missing", "does not exist"),
        env={"AIRFLOW_HOME": "{home}/missing"},
    ),
    Mistake(
        "airflow-home-is-a-file",
        ("AIRFLOW_HOME", "{home}/airflow.cfg", "not a directory"),
        env={"AIRFLOW_HOME": "{home}/airflow.cfg"},
        cfg="",
    ),
    Mistake(
        "airflow-config-is-a-directory",
        ("AIRFLOW_CONFIG", "{home}", "directory"),
        env={"AIRFLOW_CONFIG": "{home}"},
    ),
    Mistake(
        "missing-airflow-config",
        ("AIRFLOW_CONFIG", "{home}/etc/airflow.cfg", "does not exist"),
        env={"AIRFLOW_CONFIG": "{home}/etc/airflow.cfg"},
    ),
    Mistake(
        "invalid-ini-names-the-file-and-line-not-its-text",
        ("{home}/airflow.cfg", "line 2"),
        cfg=f"[database]\npassword {SECRET}\n",
        secret=SECRET,
    ),
    Mistake(
        "unbalanced-quote-in-scheduler-command",
        ("AIRFLOW__SENTINEL__SCHEDULER_COMMAND", "closing quotation"),
        env={"AIRFLOW__SENTINEL__SCHEDULER_COMMAND": 'airflow "scheduler'},
    ),
    Mistake("node-id-with-a-slash", ("--node-id", "'a/b'", "'/'"), args=("--node-id", "a/b")),
    Mistake(
        "relative-sqlite-metastore",
        ("AIRFLOW__SENTINEL__METASTORE", "relative.db", "absolute", "sqlite:////"),
        env={"AIRFLOW__SENTINEL__METASTORE": "sqlite:///relative.db"},
    ),
    Mistake(
        "relative-sqlite-in-airflows-connection",
        ("[database] sql_alchemy_conn in {home}/airflow.cfg", "airflow.db", "sqlite:////"),
        cfg="[database]\nsql_alchemy_conn = sqlite:///airflow.db\n",
    ),
    Mistake(
        "scheme-typo-shown-as-typed",
        ("'postgressql://'", "did you mean 'postgresql://'", "mysql+pymysql://"),
        env={"AIRFLOW__SENTINEL__METASTORE": f"postgressql://u:{SECRET}@db1/airflow"},
        secret=SECRET,
    ),
    Mistake(
        "scheme-typo-in-airflows-connection",
        ("[database] sql_alchemy_conn", "'postgressql://'"),
        cfg=f"[database]\nsql_alchemy_conn = postgressql://u:{SECRET}@db1/airflow\n",
        secret=SECRET,
    ),
    # Several problems: every one of them, in one line.
    Mistake(
        "bad-url-and-bad-number",
        ("AIRFLOW__SENTINEL__METASTORE", "'redis://'", "AIRFLOW__SENTINEL__LEASE_TTL", "'abc'"),
        env={
            "AIRFLOW__SENTINEL__METASTORE": f"redis://u:{SECRET}@cache/0",
            "AIRFLOW__SENTINEL__LEASE_TTL": "abc",
        },
        secret=SECRET,
    ),
    Mistake(
        "missing-airflow-home-and-bad-key",
        ("{home}/missing", "AIRFLOW__SENTINEL__LEASE_TLL"),
        env={"AIRFLOW_HOME": "{home}/missing", "AIRFLOW__SENTINEL__LEASE_TLL": "20"},
    ),
    Mistake(
        "invalid-ini-and-bad-number",
        ("{home}/airflow.cfg", "AIRFLOW__SENTINEL__STOP_TIMEOUT"),
        env={"AIRFLOW__SENTINEL__STOP_TIMEOUT": "x"},
        cfg="lease_ttl = 20\n",
    ),
    Mistake(
        "failing-cmd-and-bad-quote",
        ("sql_alchemy_conn_cmd", "AIRFLOW__SENTINEL__SCHEDULER_COMMAND"),
        env={"AIRFLOW__SENTINEL__SCHEDULER_COMMAND": "airflow 'scheduler"},
        cfg="[database]\nsql_alchemy_conn_cmd = false\n",
    ),
    Mistake(
        "password-flag-and-bad-number",
        ("--metastore", "password", "--lease-ttl"),
        args=("--metastore", f"postgresql://u:{SECRET}@db1/airflow", "--lease-ttl", "x"),
        secret=SECRET,
    ),
    Mistake(
        "airflows-connection-with-password-and-typo-and-bad-choice",
        ("'mysq://'", "[sentinel] health_check", "ping"),
        cfg=(
            f"[database]\nsql_alchemy_conn = mysq://u:{SECRET}@db1/airflow\n"
            "[sentinel]\nhealth_check = ping\n"
        ),
        secret=SECRET,
    ),
)


@pytest.mark.parametrize("mistake", MISTAKES, ids=lambda m: m.id)
def test_configuration_mistake_is_one_line_and_exit_2(cli: Cli, mistake: Mistake) -> None:
    mistake = mistake.at(cli.home)
    if mistake.cfg is not None:
        (cli.home / "airflow.cfg").write_text(mistake.cfg, encoding="utf-8")
    before = sorted(cli.home.iterdir())
    result = cli.run("test-connection", *mistake.args, env=mistake.env)
    assert_user_error(result, *mistake.needles, secret=mistake.secret)
    assert result.stdout == ""
    assert sorted(cli.home.iterdir()) == before  # nothing created: no folder, no database


@pytest.mark.parametrize("command", SETTINGS_COMMANDS, ids=" ".join)
def test_every_command_validates_configuration_before_touching_anything(
    sqlite_cli: Cli, sqlite_url: str, command: Sequence[str]
) -> None:
    result = sqlite_cli.run(*command, env={"AIRFLOW__SENTINEL__LEASE_TTL": "abc"})
    assert_user_error(result, "AIRFLOW__SENTINEL__LEASE_TTL")
    assert not Path(sa.make_url(sqlite_url).database or "").exists()


LOAD_MISTAKES = (
    Mistake(
        "unbalanced-quote",
        ("AIRFLOW__SENTINEL__SCHEDULER_COMMAND", "quot"),
        env={"AIRFLOW__SENTINEL__SCHEDULER_COMMAND": 'airflow "scheduler'},
    ),
    Mistake("missing-airflow-home", ("{home}/missing",), env={"AIRFLOW_HOME": "{home}/missing"}),
)


@pytest.mark.parametrize("command", [("status",), *SETTINGS_COMMANDS], ids=" ".join)
@pytest.mark.parametrize("mistake", LOAD_MISTAKES, ids=lambda m: m.id)
def test_every_command_reports_a_load_problem_before_touching_anything(
    sqlite_cli: Cli, sqlite_url: str, command: Sequence[str], mistake: Mistake
) -> None:
    mistake = mistake.at(sqlite_cli.home)
    result = sqlite_cli.run(*command, env=mistake.env)
    assert_user_error(result, *mistake.needles)
    assert not Path(sa.make_url(sqlite_url).database or "").exists()
    assert not (sqlite_cli.home / "missing").exists()


def test_several_problems_still_make_one_line(cli: Cli) -> None:
    (cli.home / "airflow.cfg").write_text("[sentinel]\nbogus = 1\n", encoding="utf-8")
    result = cli.run("status", env={"AIRFLOW__SENTINEL__STOP_TIMEOUT": "x"})
    assert_user_error(result, "bogus", "AIRFLOW__SENTINEL__STOP_TIMEOUT")


def test_flag_value_wins_over_environment(cli: Cli, tmp_path: Path) -> None:
    # The broken environment value is overridden by a valid flag, so the command works;
    # a --metastore without a password is accepted.
    result = cli.run(
        "status",
        "--json",
        "--lease-ttl",
        "30",
        "--metastore",
        f"sqlite:///{tmp_path / 'flag.db'}",
        env={"AIRFLOW__SENTINEL__LEASE_TTL": "abc"},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["metastore"] == f"sqlite:///{tmp_path / 'flag.db'}"


def test_click_usage_error_exits_2_without_traceback(cli: Cli) -> None:
    result = cli.run("status", "--no-such-option")
    assert result.returncode == 2
    assert_no_traceback(result)
    assert "--no-such-option" in result.stderr


# -- mistakes that need file permissions, ZooKeeper or init ----------------------------------


def run_unprivileged(
    cli: Cli, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "airflow_sentinel", *args],
        env={**cli.env, **(env or {})},
        cwd=cli.home,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        # Root without capabilities meets file permissions as any user does.
        preexec_fn=drop_capabilities if os.geteuid() == 0 else None,
    )


@pytest.mark.parametrize("command", ["test-connection", "init"])
def test_airflow_cfg_without_read_permission_is_named_with_the_reason(
    cli: Cli, command: str
) -> None:
    cfg = cli.home / "airflow.cfg"
    cfg.write_text("[sentinel]\nlease_ttl = 20\n", encoding="utf-8")
    cfg.chmod(0)
    result = run_unprivileged(cli, command)
    assert_user_error(result, str(cfg), "Permission denied")
    assert cfg.stat().st_size > 0 and stat.S_IMODE(cfg.stat().st_mode) == 0


def test_start_in_an_unwritable_airflow_home_names_the_lock_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    cli = Cli(home, base_env(home))
    env = {
        "AIRFLOW__SENTINEL__METASTORE": f"sqlite:///{tmp_path / 'm.db'}",
        "AIRFLOW__SENTINEL__SCHEDULER_COMMAND": f"{sys.executable} -c pass",
    }
    home.chmod(0o555)
    try:
        result = run_unprivileged(cli, "start", "--node-id", "n1", env=env)
    finally:
        home.chmod(0o755)
    assert_user_error(result, str(home / ".airflow-sentinel-n1.lock"), "Permission denied")
    assert list(home.iterdir()) == []


def free_loopback_port() -> int:
    """A port nothing listens on (the kernel just handed it out and it was closed again)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
@pytest.mark.parametrize("command", ["test-connection", "status"])
def test_unreachable_zookeeper_is_one_line_naming_the_hosts(cli: Cli, command: str) -> None:
    port = free_loopback_port()
    url = f"zookeeper://sentinel:{SECRET}@127.0.0.1:{port}/airflow-sentinel/test"
    started = time.monotonic()
    result = cli.run(command, env={"AIRFLOW__SENTINEL__METASTORE": url})
    print(f"{command} gave up after {time.monotonic() - started:.1f}s")
    assert_user_error(result, f"127.0.0.1:{port}", "sentinel:***@", secret=SECRET, code=1)
    assert result.stdout == ""


def wait_for_log(cluster: Cluster, node: str, needle: str, count: int = 1) -> str:
    """Wait until ``needle`` is ``count`` times in the node's log; fail at once if it exits."""
    log = cluster.root / f"{node}.log"

    def seen() -> str | None:
        text = log.read_text(errors="replace") if log.exists() else ""
        if text.count(needle) >= count:
            return text
        returncode = cluster.processes[node].poll()
        if returncode is not None:
            raise AssertionError(f"{node} exited with {returncode}:\n{text[-3000:]}")
        return None

    return wait_until(seen, 60, f"{count} x {needle!r} in the log of {node}")


@pytest.mark.slow
def test_start_logs_each_zookeeper_state_change_once_and_kazoo_at_debug(tmp_path: Path) -> None:
    (tmp_path / "zk").mkdir()
    servers = Ensemble(tmp_path / "zk", 1, free_port_block()).start_all()
    try:
        url = f"zookeeper://{servers.hosts}/airflow-sentinel/log-test"
        with running_cluster(tmp_path / "cluster", url) as cluster:
            cluster.settings["log_level"] = "DEBUG"
            cluster.start("n1")
            cluster.wait_for_one_scheduler(on="n1")  # past start-up: the loop runs
            wait_for_log(cluster, "n1", "ZooKeeper connection CONNECTED")
            servers.stop(0)
            wait_for_log(cluster, "n1", "Connection dropped", count=2)  # kazoo retries
            servers.start(0)
            servers.wait_serving()
            text = wait_for_log(cluster, "n1", "ZooKeeper connection CONNECTED", count=2)
    finally:
        servers.close()
    lines = text.splitlines()
    states = [
        line.split("ZooKeeper connection ")[1] for line in lines if "ZooKeeper connection " in line
    ]
    assert "SUSPENDED" in states, states
    assert all(a != b for a, b in itertools.pairwise(states)), states  # one line per change
    kazoo = [line for line in lines if "Connection dropped" in line or "Connecting to" in line]
    assert kazoo
    assert all(" DEBUG " in line for line in kazoo), kazoo


def test_init_creates_a_missing_airflow_home_and_says_so(cli: Cli, tmp_path: Path) -> None:
    home = tmp_path / "new-home"
    env = {"AIRFLOW_HOME": str(home)}
    result = cli.run("init", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"created {home} and added a [sentinel] section to {home / 'airflow.cfg'}\n"
    )
    assert (
        cli.run(
            "status", "--json", "--metastore", f"sqlite:///{tmp_path / 'm.db'}", env=env
        ).returncode
        == 0
    )


def test_init_refuses_an_airflow_config_that_is_a_directory(cli: Cli) -> None:
    result = cli.run("init", env={"AIRFLOW_CONFIG": str(cli.home)})
    assert_user_error(result, "AIRFLOW_CONFIG", str(cli.home), "directory")


def test_init_with_airflow_config_elsewhere_still_creates_a_missing_airflow_home(
    cli: Cli, tmp_path: Path
) -> None:
    # Every other command refuses a missing AIRFLOW_HOME and says `init` creates it.
    home, cfg = tmp_path / "new-home", tmp_path / "etc" / "airflow.cfg"
    env = {"AIRFLOW_HOME": str(home), "AIRFLOW_CONFIG": str(cfg)}
    result = cli.run("init", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"created {home}, {cfg.parent} and added a [sentinel] section to {cfg}\n"
    )
    status = cli.run("status", "--json", "--metastore", f"sqlite:///{tmp_path / 'm.db'}", env=env)
    assert status.returncode == 0, status.stderr


@pytest.mark.parametrize("existing", [None, "[core]\nexecutor = LocalExecutor\n"])
def test_init_without_write_permission_names_the_file(cli: Cli, existing: str | None) -> None:
    cfg = cli.home / "airflow.cfg"
    if existing is not None:
        cfg.write_text(existing, encoding="utf-8")
        cfg.chmod(0o444)
    cli.home.chmod(0o555)
    try:
        result = run_unprivileged(cli, "init")
    finally:
        cli.home.chmod(0o755)
    assert_user_error(result, str(cfg), "cannot be written", "Permission denied")
    if existing is None:
        assert not cfg.exists()
    else:
        assert cfg.read_text(encoding="utf-8") == existing


# -- unreachable metastore and passwords -----------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
@pytest.mark.parametrize("command", ["test-connection", "status"])
def test_unreachable_metastore_names_the_host_not_the_password(
    cli: Cli, scheme: str, command: str
) -> None:
    url = f"{scheme}://u:{SECRET}@127.0.0.1:1/db"
    result = cli.run(command, env={"AIRFLOW__SENTINEL__METASTORE": url})
    assert_user_error(result, "127.0.0.1", secret=SECRET, code=1)
    assert result.stdout == ""


@pytest.mark.parametrize("command", ["test-connection", "start"])
def test_password_in_metastore_flag_is_refused(cli: Cli, command: str) -> None:
    url = f"postgresql://u:{SECRET}@127.0.0.1:1/db"
    result = cli.run(command, "--metastore", url)
    assert_user_error(result, "--metastore", "password", secret=SECRET)


# -- version and init -----------------------------------------------------------------------


def test_version(cli: Cli) -> None:
    result = cli.run("version")
    assert result.returncode == 0
    assert result.stdout == f"airflow-sentinel {__version__}\n"
    assert result.stderr == ""


def test_init_creates_airflow_cfg(cli: Cli) -> None:
    cfg = cli.home / "airflow.cfg"
    result = cli.run("init")

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"added a [sentinel] section to {cfg}\n"
    assert cfg.read_text(encoding="utf-8") == sentinel_section_text()
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600


def test_init_extends_an_existing_file_and_is_idempotent(cli: Cli) -> None:
    cfg = cli.home / "airflow.cfg"
    original = b"[core]\r\nexecutor = LocalExecutor\r\n# caf\xc3\xa9"
    cfg.write_bytes(original)

    first = cli.run("init")
    assert first.returncode == 0, first.stderr
    extended = cfg.read_bytes()
    assert extended.startswith(original)
    assert b"[sentinel]" in extended[len(original) :]

    second = cli.run("init")
    assert second.returncode == 0, second.stderr
    assert "already has a [sentinel] section" in second.stdout
    assert cfg.read_bytes() == extended

    # The commented section changes nothing: the defaults still apply.
    assert status_json(cli)["active_node"] is None


def test_init_honours_airflow_config(cli: Cli, tmp_path: Path) -> None:
    target = tmp_path / "conf" / "custom.cfg"
    result = cli.run("init", env={"AIRFLOW_CONFIG": str(target)})
    assert result.returncode == 0, result.stderr
    assert target.is_file()
    assert not (cli.home / "airflow.cfg").exists()


# -- commands on a fresh SQLite metastore ---------------------------------------------------


def test_status_json_on_a_fresh_metastore(sqlite_cli: Cli, sqlite_url: str) -> None:
    payload = status_json(sqlite_cli)

    assert payload["schema_version"] == 1
    assert payload["active_node"] is None
    assert payload["nodes"] == []
    assert payload["epoch"] == 0
    assert payload["paused"] is False
    assert payload["metastore"] == sqlite_url
    database = Path(sa.make_url(sqlite_url).database or "")
    assert stat.S_IMODE(database.stat().st_mode) == 0o600


def test_status_text_on_a_fresh_metastore(sqlite_cli: Cli) -> None:
    result = sqlite_cli.run("status")
    assert result.returncode == 0, result.stderr
    assert "active node: none" in result.stdout
    assert_no_traceback(result)


def test_pause_and_resume(sqlite_cli: Cli) -> None:
    paused = sqlite_cli.run("pause")
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.startswith("paused")
    assert status_json(sqlite_cli)["paused"] is True

    resumed = sqlite_cli.run("resume")
    assert resumed.returncode == 0, resumed.stderr
    assert status_json(sqlite_cli)["paused"] is False


def test_is_scheduler_running_without_nodes(sqlite_cli: Cli) -> None:
    result = sqlite_cli.run("is-scheduler-running")
    assert result.returncode == 1
    assert result.stdout == "no scheduler is running\n"
    assert result.stderr == ""


def test_is_scheduler_running_names_the_node(sqlite_cli: Cli, seeded: str) -> None:
    result = sqlite_cli.run("is-scheduler-running")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "scheduler running on master-1 (pid 4242)\n"


def test_switchover_without_an_active_node(sqlite_cli: Cli) -> None:
    result = sqlite_cli.run("switchover")
    assert_user_error(result, "no node is active")


def test_switchover_while_paused(sqlite_cli: Cli) -> None:
    assert sqlite_cli.run("pause").returncode == 0
    result = sqlite_cli.run("switchover", "--to", "master-2")
    assert_user_error(result, "paused")


def test_clear_metadata_with_yes(sqlite_cli: Cli, seeded: str) -> None:
    before = status_json(sqlite_cli)
    assert before["paused"] is True
    assert [n["node_id"] for n in before["nodes"]] == ["master-1"]

    result = sqlite_cli.run("clear-metadata", "--yes")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("cleared")
    after = sqlite_cli.run("metadata", "--json")
    payload = json.loads(after.stdout)
    assert payload["nodes"] == []
    assert payload["events"] == []
    assert payload["flags"] == {}
    assert payload["paused"] is False


def test_clear_metadata_without_yes_and_no_stdin_clears_nothing(
    sqlite_cli: Cli, seeded: str
) -> None:
    result = sqlite_cli.run("clear-metadata")

    assert result.returncode == 2
    assert_no_traceback(result)
    after = status_json(sqlite_cli)
    assert after["paused"] is True
    assert [n["node_id"] for n in after["nodes"]] == ["master-1"]


def test_clear_metadata_answered_no_clears_nothing(sqlite_cli: Cli, seeded: str) -> None:
    result = sqlite_cli.run("clear-metadata", stdin="n\n")
    assert_user_error(result, "not confirmed", "--yes")
    assert status_json(sqlite_cli)["paused"] is True


def test_clear_metadata_answered_yes(sqlite_cli: Cli, seeded: str) -> None:
    result = sqlite_cli.run("clear-metadata", stdin="y\n")
    assert result.returncode == 0, result.stderr
    assert status_json(sqlite_cli)["nodes"] == []


def test_metadata_json(sqlite_cli: Cli, seeded: str) -> None:
    result = sqlite_cli.run("metadata", "--json")

    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["schema_version"] == 1
    assert payload["flags"] == {PAUSED: "2024-01-01T00:00:00Z"}
    assert payload["paused"] is True
    [event] = payload["events"]
    assert (event["node_id"], event["kind"], event["detail"]) == (
        "master-1",
        "test-event",
        "seeded",
    )
    [node] = payload["nodes"]
    assert node["node_id"] == "master-1"
    assert node["scheduler_pid"] == 4242
    assert node["alive"] is True


def test_metadata_json_on_a_fresh_metastore(sqlite_cli: Cli) -> None:
    result = sqlite_cli.run("metadata", "--json", "--limit", "5")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert (payload["events"], payload["flags"], payload["nodes"]) == ([], {}, [])


def test_metadata_text(sqlite_cli: Cli, seeded: str) -> None:
    result = sqlite_cli.run("metadata")
    assert result.returncode == 0, result.stderr
    assert "test-event" in result.stdout
    assert "master-1" in result.stdout


# -- real database servers ------------------------------------------------------------------


def _table_names(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_test_connection_against_real_servers(cli: Cli, backend: str, metastore_url: str) -> None:
    result = cli.run("test-connection", env={"AIRFLOW__SENTINEL__METASTORE": metastore_url})

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok:")
    assert_no_traceback(result)
    expected = {
        "sqlite": "SQLite",
        "mariadb": "MySQL/MariaDB",
        "postgresql": "PostgreSQL",
        "zookeeper": "ZooKeeper",
    }
    assert f"({expected[backend]} " in result.stdout
    if backend != "zookeeper":
        assert any(name.startswith("sentinel_") for name in _table_names(metastore_url))


@pytest.mark.parametrize(
    ("backend_name", "airflow_scheme", "our_scheme"),
    [
        ("mariadb", "mysql://", "mysql+pymysql://"),
        ("postgresql", "postgres://", "postgresql+psycopg://"),
    ],
)
def test_test_connection_with_airflows_connection_string(
    cli: Cli, tmp_path: Path, backend_name: str, airflow_scheme: str, our_scheme: str
) -> None:
    """No metastore configured: Airflow's sql_alchemy_conn (other driver names) is used."""
    if backend_name not in selected_backends():
        pytest.skip(f"{backend_name} not selected by SENTINEL_TEST_BACKENDS")
    with fresh_metastore_url(backend_name, tmp_path) as url:
        airflow_url = airflow_scheme + url.split("://", 1)[1]
        (cli.home / "airflow.cfg").write_text(
            f"[database]\nsql_alchemy_conn = {airflow_url}\n", encoding="utf-8"
        )
        result = cli.run("test-connection")

        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"ok: {our_scheme}")
        assert any(name.startswith("sentinel_") for name in _table_names(url))


def test_successful_output_masks_the_password(cli: Cli, tmp_path: Path) -> None:
    """PostgreSQL on this machine trusts local connections, so a password is ignored."""
    if "postgresql" not in selected_backends():
        pytest.skip("postgresql not selected by SENTINEL_TEST_BACKENDS")
    with fresh_metastore_url("postgresql", tmp_path) as url:
        with_password = sa.make_url(url).set(password=SECRET).render_as_string(False)
        env = {"AIRFLOW__SENTINEL__METASTORE": with_password}

        connected = cli.run("test-connection", env=env)
        status = cli.run("status", "--json", env=env)

    assert connected.returncode == 0, connected.stderr
    assert ":***@127.0.0.1" in connected.stdout
    assert status.returncode == 0, status.stderr
    assert ":***@127.0.0.1" in json.loads(status.stdout)["metastore"]
    for result in (connected, status):
        assert SECRET not in result.stdout + result.stderr
