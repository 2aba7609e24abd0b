"""The Airflow services a test site runs beside the scheduler (which its controller keeps),
as an operator's start and stop commands would: `start NAME...` launches each service of
the installation the site's environment link points at, detached, and records its pid;
`stop` ends them all (each with its children) and waits until they are gone.

    python tests/support/site_services.py start BASE api-server dag-processor
    python tests/support/site_services.py stop BASE
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

COMMANDS = {
    "api-server": ["api-server", "--workers", "1"],
    "dag-processor": ["dag-processor"],
    "celery-worker": ["celery", "worker", "--concurrency", "1"],
}
STOP_TIMEOUT = 30.0


def start(base: Path, names: list[str]) -> None:
    airflow = base / "env" / "bin" / "airflow"
    pids = base / "services.pids"
    for name in names:
        log = (base / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [str(airflow), *COMMANDS[name]],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives this command, as a daemon would
        )
        with pids.open("a") as out:  # with its start time: a reused pid is not ours
            out.write(f"{proc.pid} {psutil.Process(proc.pid).create_time()}\n")


def stop(base: Path) -> None:
    pids = base / "services.pids"
    if not pids.exists():
        return
    procs = []
    for line in pids.read_text().splitlines():
        pid, started = line.split()
        with contextlib.suppress(psutil.NoSuchProcess):
            leader = psutil.Process(int(pid))
            if leader.create_time() != float(started):
                continue
            procs.extend([leader, *leader.children(recursive=True)])
            with contextlib.suppress(ProcessLookupError):
                os.killpg(leader.pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=STOP_TIMEOUT)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=10)
    pids.unlink()


if __name__ == "__main__":
    action, folder, *services = sys.argv[1:]
    if action == "start":
        start(Path(folder), services)
    else:
        stop(Path(folder))
