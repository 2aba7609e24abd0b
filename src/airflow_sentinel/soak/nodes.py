"""The controllers of a soak: one `airflow-sentinel start` per test host."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from airflow_sentinel.process.linux import die_with_parent
from airflow_sentinel.soak.hosts import Host


def probe_command(recorder: Path) -> str:
    argv = [sys.executable, "-m", "airflow_sentinel.soak.probe", "--recorder", str(recorder)]
    return shlex.join([*argv, "--children", "1"])


@dataclass
class Node:
    host: Host
    home: Path
    settings: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return self.host.name

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env["AIRFLOW_HOME"] = str(self.home)
        env.update({f"AIRFLOW__SENTINEL__{k.upper()}": v for k, v in self.settings.items()})
        return env

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """An `airflow-sentinel` command on this host, with this node's configuration."""
        return subprocess.run(
            self.host.command(sys.executable, "-m", "airflow_sentinel", *args),
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        parent = os.getpid()
        with (self.home / "controller.log").open("ab") as log:
            self.process = subprocess.Popen(
                self.host.command(sys.executable, "-m", "airflow_sentinel", "start"),
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=lambda: die_with_parent(parent),  # noqa: PLW1509 - prctl only, no locks
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.running:
            assert self.process is not None
            os.kill(self.process.pid, signum)

    def kill(self) -> None:
        if self.process is not None:
            self.signal(signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 60) -> bool:
        """Graceful stop; True when it exited by itself within ``timeout``."""
        if not self.running:
            return True
        assert self.process is not None
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return False
        return True
