"""The local demo: three controllers, Airflow's own SQLite database as the metastore."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from airflow_sentinel.airflow_env import ensure_airflow_venv

NODES = ("node-1", "node-2", "node-3")


def say(message: str) -> None:
    print(f"\n\033[1m== {message}\033[0m", flush=True)


def wait_for(what: str, check: Callable[[], object], timeout: float = 120) -> float:
    began = time.monotonic()
    while not check():
        if time.monotonic() - began > timeout:
            raise SystemExit(f"demo: gave up waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - began


def schedulers() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "environ"]):
        cmd = proc.info["cmdline"] or []
        node = (proc.info["environ"] or {}).get("AIRFLOW_SENTINEL_NODE_ID")
        if node and cmd[1:3] and cmd[1].endswith("/bin/airflow") and cmd[2] == "scheduler":
            found.append(proc)
    pids = {p.pid for p in found}
    return [p for p in found if p.ppid() not in pids]


def node_of(proc: psutil.Process) -> str:
    return str(proc.environ().get("AIRFLOW_SENTINEL_NODE_ID"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--airflow", default="3.3.2", help="Airflow version (default 3.3.2)")
    parser.add_argument("--keep", action="store_true", help="keep the demo folder")
    args = parser.parse_args()

    say(f"Airflow {args.airflow} in its own cached virtual environment")
    venv = ensure_airflow_venv(args.airflow)
    root = Path(tempfile.mkdtemp(prefix="airflow-sentinel-demo-"))
    home = root / "airflow-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(home),
        PATH=f"{venv / 'bin'}:{Path(sys.executable).parent}:{env['PATH']}",
        AIRFLOW__CORE__EXECUTOR="LocalExecutor",
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__PARALLELISM="2",
        AIRFLOW__SENTINEL__SCHEDULER_COMMAND="airflow scheduler --skip-serve-logs",
        AIRFLOW__SENTINEL__LEASE_TTL="8",
        AIRFLOW__SENTINEL__RENEW_INTERVAL="2",
        AIRFLOW__SENTINEL__STOP_TIMEOUT="3",
    )
    sentinel = [sys.executable, "-m", "airflow_sentinel"]
    controllers: dict[str, subprocess.Popen[bytes]] = {}
    try:
        say(f"airflow db migrate (AIRFLOW_HOME={home})")
        subprocess.run(["airflow", "db", "migrate"], env=env, check=True, capture_output=True)
        subprocess.run([*sentinel, "init"], env=env, check=True)

        say("starting three controllers; the metastore is Airflow's own SQLite database")
        for node in NODES:
            log = (root / f"{node}.log").open("wb")
            controllers[node] = subprocess.Popen(
                [*sentinel, "start", "--node-id", node],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        took = wait_for("the first scheduler", lambda: len(schedulers()) == 1)
        first = schedulers()[0]
        print(f"airflow scheduler pid {first.pid} runs on {node_of(first)} ({took:.1f}s)")
        subprocess.run([*sentinel, "status"], env=env, check=False)

        say(f"kill -9 the scheduler (pid {first.pid})")
        first.kill()
        took = wait_for("a restart", lambda: [p for p in schedulers() if p.pid != first.pid])
        second = schedulers()[0]
        print(f"restarted on {node_of(second)} as pid {second.pid} after {took:.1f}s")

        active = node_of(second)
        say(f"kill -9 the active controller ({active})")
        os.kill(controllers[active].pid, signal.SIGKILL)
        took = wait_for(
            "a takeover",
            lambda: [p for p in schedulers() if node_of(p) != active],
        )
        third = schedulers()[0]
        print(f"{node_of(third)} took over after {took:.1f}s (scheduler pid {third.pid});")
        print(f"schedulers running now: {len(schedulers())}")
        subprocess.run([*sentinel, "status"], env=env, check=False)
        subprocess.run([*sentinel, "metadata", "--limit", "12"], env=env, check=False)
    finally:
        say("stopping the controllers (SIGTERM: each stops its scheduler and releases the lease)")
        for process in controllers.values():
            if process.poll() is None:
                process.terminate()
        for process in controllers.values():
            process.wait(timeout=60)
        print(f"schedulers left running: {len(schedulers())}")
        if args.keep:
            print(f"demo files kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
