"""`airflow-sentinel doctor` against real metastores and real controllers.

Three nodes, each with its own AIRFLOW_HOME and a real Airflow installation (read from its
files, never imported). The cluster is paused before any controller starts, so none of them
starts a scheduler: doctor only needs their registry rows.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import sqlalchemy as sa

from airflow_sentinel.airflow_env import ensure_airflow_venv
from airflow_sentinel.fence import open_fence
from airflow_sentinel.metastore.base import NodeReport
from tests.support.cluster import Cluster, running_cluster, wait_until
from tests.support.fence_db import airflow_like_database

pytestmark = pytest.mark.slow

NODES = ("node-a", "node-b", "node-c")
# The report as printed, kept for people to read: SENTINEL_TEST_SAMPLES names the folder.
SAMPLES = Path(os.environ.get("SENTINEL_TEST_SAMPLES", "/tmp/airflow-sentinel-test-samples"))
REPORT = SAMPLES / "doctor-report.txt"
PASSWORD = "s3cret-pw"  # in Airflow's database URL: must never be shown
DAGS = {"etl.py": "# the nightly load\nx = 1\n", "report.py": "y = 2\n"}


def airflow_program(version: str) -> str:
    return str(ensure_airflow_venv(version) / "bin" / "airflow")


@dataclass
class Homes(Cluster):
    """A Cluster whose nodes each have an AIRFLOW_HOME and a scheduler command of their own
    (the command line's `cli` runs as node-a)."""

    commands: dict[str, str] = field(default_factory=dict)

    def home(self, node_id: str) -> Path:
        return self.root / ("node-a" if node_id == "cli" else node_id)

    def env(self, node_id: str, command: str | None = None) -> dict[str, str]:
        mine = self.commands.get("node-a" if node_id == "cli" else node_id)
        env = super().env(node_id, command or mine)
        env["AIRFLOW_HOME"] = str(self.home(node_id))
        return env

    def setup(self, node_id: str, database: sa.URL, dags: dict[str, str], version: str) -> None:
        home = self.home(node_id)
        shutil.rmtree(home / "dags", ignore_errors=True)
        (home / "dags").mkdir(parents=True)
        for name, text in dags.items():
            (home / "dags" / name).write_text(text)
        (home / "airflow.cfg").write_text(
            f"[database]\nsql_alchemy_conn = {database.render_as_string(False)}\n"
            "[core]\nexecutor = LocalExecutor\n"
        )
        self.commands[node_id] = f"{airflow_program(version)} scheduler"

    def doctor(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cli("doctor", "--node-id", "node-a", *args)

    def stop(self, node_id: str) -> None:
        process = self.processes.pop(node_id)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)

    def fingerprint_of(self, node_id: str) -> dict[str, object] | None:
        found = self.nodes().get(node_id)
        if found is None or found.fingerprint is None or found.role == "stopped":
            return None
        value = json.loads(found.fingerprint)
        return value if isinstance(value, dict) else None


@pytest.fixture
def airflow_db() -> Iterator[sa.URL]:
    """Airflow's own database: one of its own on the test server, with the tables the fence
    guards and the fence installed (as the first controller's start would)."""
    with airflow_like_database("postgresql") as url:
        fence = open_fence("on", url, 10.0, 5.0)
        assert fence is not None
        try:
            fence.install()
        finally:
            fence.close()
        yield sa.make_url(url).set(password=PASSWORD)


@pytest.fixture
def homes(tmp_path: Path, metastore_url: str, airflow_db: sa.URL) -> Iterator[Homes]:
    with running_cluster(tmp_path, metastore_url) as base:
        cluster = Homes(base.root, base.metastore_url)
        try:
            for node_id in NODES:
                cluster.setup(node_id, airflow_db, DAGS, "2.10.5")
            yield cluster
        except BaseException:
            print(cluster.logs())
            raise
        finally:
            cluster.kill_everything()


def start_paused(cluster: Homes, *nodes: str) -> None:
    """Controllers that register and start nothing: the cluster is paused first."""
    paused = cluster.cli("pause")
    assert paused.returncode == 0, paused.stderr
    for node_id in nodes:
        cluster.start(node_id)


def wait_for_fingerprints(cluster: Homes, airflow_of: dict[str, str]) -> None:
    def reported() -> bool:
        prints = {n: cluster.fingerprint_of(n) for n in airflow_of}
        return all(
            p is not None and p["airflow_version"] == airflow_of[n] for n, p in prints.items()
        )

    wait_until(reported, 60, f"fingerprints with Airflow {airflow_of}")


def test_doctor_finds_each_drift_of_one_node_and_exits_by_its_findings(
    homes: Homes, airflow_db: sa.URL
) -> None:
    drifted_db = airflow_db.set(host="127.0.0.2")
    start_paused(homes, *NODES)
    wait_for_fingerprints(homes, dict.fromkeys(NODES, "2.10.5"))
    alike = homes.doctor()
    assert alike.returncode == 0, alike.stdout + alike.stderr
    assert "ok       fingerprints: node-a, node-b, node-c are alike" in alike.stdout
    assert alike.stdout.splitlines()[-1] == "consistent: no findings"

    homes.stop("node-c")
    homes.setup("node-c", drifted_db, {**DAGS, "report.py": "y = 3\n"}, "3.3.2")
    homes.start("node-c")
    wait_for_fingerprints(homes, {"node-a": "2.10.5", "node-b": "2.10.5", "node-c": "3.3.2"})

    drifted = homes.doctor()
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(drifted.stdout + drifted.stderr)
    assert drifted.returncode == 1, drifted.stdout + drifted.stderr
    lines = drifted.stdout.splitlines()
    findings = [line for line in lines if line.startswith("FINDING")]
    db, db2 = airflow_db, drifted_db
    assert findings[0] == (
        f"FINDING  database: node-c differs (postgresql://127.0.0.2:{db2.port}/{db2.database}) "
        f"from node-a, node-b (postgresql://{db.host}:{db.port}/{db.database})"
    )
    assert findings[1].startswith("FINDING  dags_folder: node-c differs (sha256 ")
    assert findings[1].endswith(", 2 files)")
    assert ", 2 files) from node-a, node-b (sha256 " in findings[1]
    assert findings[2] == (
        "FINDING  airflow_version: node-c differs (3.3.2) from node-a, node-b (2.10.5)"
    )
    assert len(findings) == 3, drifted.stdout
    assert lines[-1] == "3 findings"
    assert "ok       scheduler_command: " in drifted.stdout
    assert "info     this node" not in drifted.stdout
    assert PASSWORD not in drifted.stdout + drifted.stderr

    as_json = json.loads(homes.doctor("--json").stdout)
    assert (as_json["schema_version"], as_json["consistent"], as_json["findings"]) == (1, False, 3)
    differences = [c for c in as_json["checks"] if c["level"] == "finding"]
    assert [(c["key"], c["differing"]) for c in differences] == [
        ("database", ["node-c"]),
        ("dags_folder", ["node-c"]),
        ("airflow_version", ["node-c"]),
    ]


def test_doctor_reports_old_nodes_once_and_a_usage_error_exits_two(homes: Homes) -> None:
    start_paused(homes, "node-a")
    wait_for_fingerprints(homes, {"node-a": "2.10.5"})
    single = homes.doctor()
    assert single.returncode == 0, single.stdout + single.stderr
    assert "info     only node-a reports a fingerprint: nothing to compare it with" in single.stdout

    old = NodeReport("node-old", "old/1", "standby", False, None, True, "0.0.9", None)
    homes.store.heartbeat(old, stale_after=4)
    homes.store.heartbeat(replace(old, node_id="node-older"), stale_after=4)
    mixed = homes.doctor()
    assert mixed.returncode == 1, mixed.stdout + mixed.stderr
    assert [line for line in mixed.stdout.splitlines() if "no fingerprint" in line] == [
        "FINDING  no fingerprint from node-old (airflow-sentinel 0.0.9), node-older "
        "(airflow-sentinel 0.0.9): not compared; upgrade airflow-sentinel there"
    ]

    wrong = homes.doctor("--no-such-flag")
    assert wrong.returncode == 2
    assert wrong.stdout == ""
    assert len(wrong.stderr.strip().splitlines()) == 1
    assert "No such option" in wrong.stderr
    bad_value = homes.doctor("--lease-ttl", "soon")
    assert bad_value.returncode == 2
    assert bad_value.stderr.startswith("airflow-sentinel: error: --lease-ttl: ")


def test_doctor_reads_the_metastore_servers_clock(homes: Homes, backend: str) -> None:
    start_paused(homes, "node-a")
    wait_for_fingerprints(homes, {"node-a": "2.10.5"})
    clock = next(
        c for c in json.loads(homes.doctor("--json").stdout)["checks"] if c["check"] == "clock"
    )
    if backend == "sqlite":
        assert clock["level"] == "ok"
        assert "offset_s" not in clock
        return
    # The servers run on this host: one clock, within the round trip and ZooKeeper's ms.
    assert clock["level"] == "ok", clock
    assert abs(clock["offset_s"]) <= clock["within_s"] + 0.01


def test_doctor_finds_a_fence_trigger_that_is_gone_and_names_the_fix(
    homes: Homes, airflow_db: sa.URL
) -> None:
    """What a migration that rebuilt a table leaves: the fence without one of its triggers.
    No controller starts a scheduler so; doctor says why and what to run."""
    start_paused(homes, "node-a")
    wait_for_fingerprints(homes, {"node-a": "2.10.5"})
    where = f"postgresql://{airflow_db.host}:{airflow_db.port}/{airflow_db.database}"
    whole = homes.doctor()
    assert whole.returncode == 0, whole.stdout + whole.stderr
    fenced = "dag_run, task_instance, job"
    assert f"ok       db_fence: whole in {where} at epoch 0 (fenced: {fenced})" in whole.stdout

    engine = sa.create_engine(airflow_db.set(password=None))
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TRIGGER sentinel_fence_task_instance ON task_instance"))
    engine.dispose()
    broken = homes.doctor()
    assert broken.returncode == 1, broken.stdout + broken.stderr
    (finding,) = [line for line in broken.stdout.splitlines() if line.startswith("FINDING")]
    assert finding.startswith(f"FINDING  db_fence: the fence in {where} is not whole: ")
    assert "task_instance" in finding
    assert finding.endswith("no scheduler starts until it is: run airflow-sentinel fence install")
    as_json = json.loads(homes.doctor("--json").stdout)
    line = next(c for c in as_json["checks"] if c["check"] == "db_fence")
    assert (line["level"], line["fenced"], line["epoch"]) == ("finding", ["dag_run", "job"], 0)

    fixed = homes.cli("fence", "install")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert homes.doctor().returncode == 0
    assert PASSWORD not in broken.stdout + broken.stderr
