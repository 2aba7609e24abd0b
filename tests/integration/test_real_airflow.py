"""A real `airflow scheduler` under two controllers, on SQLite: Airflow 3 with the
LocalExecutor, Airflow 2.10 with the SequentialExecutor (2.x refuses any other on SQLite).
What the controllers' HTTP API says of it is checked on the way.

The Airflow environments are created once by the test setup and cached between runs
(AIRFLOW_SENTINEL_VENV_CACHE, default ~/.cache/airflow-sentinel/venvs).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from airflow_sentinel.airflow_env import ensure_airflow_venv
from airflow_sentinel.api.token import load_api_token
from airflow_sentinel.config import load_settings
from airflow_sentinel.errors import UserError
from airflow_sentinel.soak.servers import free_port
from tests.support.cluster import Cluster, running_cluster, wait_until
from tests.support.notify_socket import NotifySocket, notify_socket

AIRFLOW_VERSIONS = (os.environ.get("SENTINEL_TEST_AIRFLOW_VERSION", "3.3.2"), "2.10.5")
pytestmark = [pytest.mark.slow, pytest.mark.airflow]


@pytest.fixture(scope="module", params=AIRFLOW_VERSIONS)
def airflow_venv(request: pytest.FixtureRequest) -> Path:
    return ensure_airflow_venv(request.param)


def executor_for(venv: Path) -> str:
    """Airflow 2 takes only the SequentialExecutor on SQLite; 3 takes the LocalExecutor."""
    return "SequentialExecutor" if venv.name.startswith("airflow-2.") else "LocalExecutor"


def api(cluster: Cluster, node: str, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", cluster.api_ports[node], timeout=10)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        return answer.status, answer.read()
    except OSError:
        return 0, b""
    finally:
        conn.close()


def gauges(cluster: Cluster, node: str) -> dict[str, float]:
    text = api(cluster, node, "/metrics")[1].decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if "role" not in sample.labels
    }


def active_with_heartbeat(cluster: Cluster, node: str, grace: float) -> dict[str, float] | None:
    """/active answers 200 for ``node``'s proven scheduler, and its metrics agree: the
    heartbeat the controller read from Airflow's job table is fresh."""
    status, body = api(cluster, node, "/active")
    if status != 200:
        return None
    summary = json.loads(body)
    seen = gauges(cluster, node)
    age = seen.get("airflow_sentinel_scheduler_heartbeat_age_seconds")
    if summary["scheduler"] != "running" or age is None or not 0 <= age < grace:
        return None
    return seen


@pytest.fixture
def airflow_cluster(tmp_path: Path, airflow_venv: Path) -> Iterator[Cluster]:
    home = tmp_path / "home"
    home.mkdir()
    db = f"sqlite:///{home / 'airflow.db'}"
    airflow_env = {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db,
        "AIRFLOW__CORE__EXECUTOR": executor_for(airflow_venv),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "PATH": f"{airflow_venv / 'bin'}:{os.environ['PATH']}",
    }
    migrate_env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    migrate_env.update(airflow_env, AIRFLOW_HOME=str(home))
    subprocess.run(
        [str(airflow_venv / "bin" / "airflow"), "db", "migrate"],
        env=migrate_env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    with running_cluster(tmp_path, "unused") as cluster:
        # The metastore is Airflow's own database (the default), in tables of our own.
        cluster.metastore_url = db
        cluster.extra_env = airflow_env
        cluster.api_ports = {"a": free_port("127.0.0.1"), "b": free_port("127.0.0.1")}
        cluster.settings.update(
            lease_ttl="8",
            renew_interval="2",
            stop_timeout="3",
            start_timeout="90",
            health_check="heartbeat",
            heartbeat_grace="30",
            schema_gate="on",
        )
        yield cluster


def scheduler_command(venv: Path) -> str:
    return f"{venv / 'bin' / 'airflow'} scheduler --skip-serve-logs"


def airflow_schedulers() -> list[psutil.Process]:
    """Main `airflow scheduler` processes (not their workers, not guards)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = proc.info["cmdline"] or []
        if proc.info["status"] == psutil.STATUS_ZOMBIE or "airflow_sentinel.process.guard" in cmd:
            continue
        if cmd[1:3] and cmd[1].endswith("/bin/airflow") and cmd[2] == "scheduler":
            found.append(proc)
    pids = {p.pid for p in found}
    return [p for p in found if p.ppid() not in pids]


def airflow_children_of(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def fresh_heartbeat_since(home: Path, since: datetime) -> bool:
    with closing(sqlite3.connect(home / "airflow.db", timeout=10)) as conn:
        rows = conn.execute(
            "select start_date, latest_heartbeat from job where job_type = 'SchedulerJob' "
            "and state = 'running' order by id desc limit 3"
        ).fetchall()
    for start, beat in rows:
        started = datetime.fromisoformat(start).replace(tzinfo=timezone.utc)
        if started >= since and beat:
            return True
    return False


class MaxConcurrent:
    """Samples the number of running schedulers in the background; remembers the maximum."""

    def __init__(self) -> None:
        self.maximum = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> MaxConcurrent:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.maximum = max(self.maximum, len(airflow_schedulers()))


def test_a_real_scheduler_is_restarted_after_a_kill_and_moved_after_a_controller_dies(
    airflow_cluster: Cluster, airflow_venv: Path
) -> None:
    cluster = airflow_cluster
    home = cluster.root / "home"
    command = scheduler_command(airflow_venv)
    with notify_socket() as notify, MaxConcurrent() as sampler:
        notify.start()
        # As systemd runs it (Type=notify, a watchdog): only the controllers may speak.
        cluster.extra_env |= {"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "60000000"}
        began = datetime.now(timezone.utc)
        cluster.start("a", command=command)
        wait_until(lambda: cluster.active() == "a", 60, "a to become active")
        cluster.start("b", command=command)
        [first] = wait_until(airflow_schedulers, 60, "the first airflow scheduler")
        wait_until(lambda: fresh_heartbeat_since(home, began), 90, "a scheduler heartbeat")
        seen = wait_until(lambda: active_with_heartbeat(cluster, "a", 30), 90, "/active on a")
        assert seen["airflow_sentinel_scheduler_up"] == 1
        assert seen["airflow_sentinel_scheduler_starts_total"] == 1
        assert api(cluster, "b", "/active")[0] == 503
        wait_until(lambda: api(cluster, "b", "/standby")[0] == 200, 30, "/standby on b")

        # 1. Kill the scheduler: restarted at once on the same node, workers and all gone.
        workers = wait_until(lambda: airflow_children_of(first), 60, "LocalExecutor workers")
        killed_at = datetime.now(timezone.utc)
        first.send_signal(signal.SIGKILL)
        _, alive = psutil.wait_procs([first, *workers], timeout=15)
        assert alive == []
        [second] = wait_until(
            lambda: [p for p in airflow_schedulers() if p.pid != first.pid],
            60,
            "a restarted airflow scheduler",
        )
        assert second.environ()["AIRFLOW_SENTINEL_NODE_ID"] == "a"
        wait_until(lambda: fresh_heartbeat_since(home, killed_at), 90, "its heartbeat")
        seen = wait_until(lambda: active_with_heartbeat(cluster, "a", 30), 90, "/active again")
        assert seen["airflow_sentinel_scheduler_starts_total"] == 2

        # 2. Kill -9 the active controller: no scheduler or worker left behind, b takes over.
        workers = wait_until(lambda: airflow_children_of(second), 60, "its workers")
        moved_at = datetime.now(timezone.utc)
        os.kill(cluster.pid_of("a"), signal.SIGKILL)
        _, alive = psutil.wait_procs([second, *workers], timeout=15)
        assert alive == []
        [third] = wait_until(airflow_schedulers, 90, "a scheduler on b")
        assert third.environ()["AIRFLOW_SENTINEL_NODE_ID"] == "b"
        wait_until(lambda: fresh_heartbeat_since(home, moved_at), 90, "b's scheduler heartbeat")
        wait_until(lambda: active_with_heartbeat(cluster, "b", 30), 90, "/active on b")
        # a's guard gave the lease back once Airflow's processes were dead: no TTL wait.
        events = cluster.store.events(200)
        taken = [e.detail for e in events if (e.node_id, e.kind) == ("b", "became_active")]
        assert taken and "(it was free)" in taken[0]
        output = home / "logs" / "sentinel-scheduler.log"
        assert "gave the lease of epoch 1 back: its controller died" in output.read_text()

        # 3. Stop the last controller cleanly: nothing of Airflow is left running.
        workers = wait_until(lambda: airflow_children_of(third), 60, "b's workers")
        cluster.processes["b"].terminate()
        assert cluster.processes["b"].wait(timeout=60) == 0
        _, alive = psutil.wait_procs([third, *workers], timeout=5)
        assert alive == []
        assert airflow_schedulers() == []
        assert_told_apart(cluster, notify, first.pid)
    assert sampler.maximum == 1


def assert_told_apart(cluster: Cluster, notify: NotifySocket, first_pid: int) -> None:
    """The scheduler's own output in its file, our lines with its pid in ours, and the
    notify socket spoken to by the controllers only (never gunicorn or the scheduler)."""
    output = (cluster.root / "home" / "logs" / "sentinel-scheduler.log").read_text()
    assert "Starting the scheduler" in output
    a_log = (cluster.root / "a.log").read_text()
    assert "Starting the scheduler" not in a_log
    assert f"scheduler runs as pid {first_pid} (guard pid " in a_log
    assert f"scheduler pid {first_pid} healthy" in a_log
    messages = notify.snapshot()
    controllers = {cluster.pid_of("a"), cluster.pid_of("b")}
    assert {m.pid for m in messages} == controllers
    for pid in controllers:
        assert any(m.pid == pid and m.has("READY=1") for m in messages)
        assert any(m.pid == pid and m.has("WATCHDOG=1") for m in messages)
    assert any(m.has(f"STATUS=active, epoch 1, scheduler pid {first_pid}") for m in messages)


SECRETS_BACKEND = """
import json
from airflow.secrets import BaseSecretsBackend


class FileBackend(BaseSecretsBackend):
    def __init__(self, path):
        super().__init__()
        self.path = path

    def get_config(self, key):
        with open(self.path) as handle:
            return json.load(handle).get(key)
"""


def test_the_api_token_comes_from_airflows_own_secrets_backend(
    airflow_venv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`api_token_secret` asks the scheduler's Airflow, with its [secrets] backend."""
    (tmp_path / "sentinel_test_secrets.py").write_text(SECRETS_BACKEND)
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"sentinel_api_token": "from-the-backend-0123456789"}))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__SECRETS__BACKEND", "sentinel_test_secrets.FileBackend")
    monkeypatch.setenv("AIRFLOW__SECRETS__BACKEND_KWARGS", json.dumps({"path": str(secrets)}))
    settings = load_settings(
        {
            "metastore": f"sqlite:///{tmp_path / 'm.db'}",
            "scheduler_command": scheduler_command(airflow_venv),
            "api_token_secret": "sentinel_api_token",
        },
        airflow_home=tmp_path,
    )
    assert load_api_token(settings) == b"from-the-backend-0123456789"
    with pytest.raises(UserError, match="secrets backend has no config 'missing'"):
        load_api_token(replace(settings, api_token_secret="missing"))
    monkeypatch.delenv("AIRFLOW__SECRETS__BACKEND")
    with pytest.raises(UserError, match=r"Airflow has no secrets backend \(\[secrets\] backend\)"):
        load_api_token(settings)
