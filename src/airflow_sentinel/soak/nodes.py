"""The controllers of a soak: one `airflow-sentinel start` per test host."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from airflow_sentinel.process.linux import die_with_parent
from airflow_sentinel.soak.freezer import NodeFreezer
from airflow_sentinel.soak.hosts import Host


def probe_command(recorder: Path, writes: bool = False) -> str:
    argv = [sys.executable, "-m", "airflow_sentinel.soak.probe", "--recorder", str(recorder)]
    return shlex.join([*argv, "--children", "1", *(["--writes"] if writes else [])])


@dataclass
class Node:
    host: Host
    home: Path
    settings: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    # More of the controller's environment: Airflow's own settings (its database).
    airflow_env: dict[str, str] = field(default_factory=dict)
    # Where the controller (and so all it starts) is placed, to be frozen as one.
    freezer: NodeFreezer | None = None

    @property
    def name(self) -> str:
        return self.host.name

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env["AIRFLOW_HOME"] = str(self.home)
        env.update(self.airflow_env)
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
        procs = self.freezer.procs_file() if self.freezer is not None else None

        def before_exec() -> None:
            die_with_parent(parent)
            NodeFreezer.join(procs)

        with (self.home / "controller.log").open("ab") as log:
            self.process = subprocess.Popen(
                self.host.command(sys.executable, "-m", "airflow_sentinel", "start"),
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=before_exec,  # noqa: PLW1509 - prctl and os calls only, no locks
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.running:
            assert self.process is not None
            os.kill(self.process.pid, signum)

    def freeze(self) -> int:
        """Freeze the controller and everything it started; how many processes."""
        assert self.freezer is not None
        return self.freezer.freeze(self.process.pid if self.running and self.process else None)

    def thaw(self) -> None:
        if self.freezer is not None and self.freezer.frozen:
            self.freezer.thaw()

    def kill(self) -> None:
        self.thaw()  # a frozen process does not die
        if self.process is not None:
            self.signal(signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 60) -> bool:
        """Graceful stop; True when it exited by itself within ``timeout``."""
        if not self.running:
            return True
        assert self.process is not None
        self.thaw()
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return False
        return True
