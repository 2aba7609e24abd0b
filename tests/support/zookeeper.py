"""Real ZooKeeper servers for tests: standalone or an ensemble, on ports of their own.

Uses the Debian package `zookeeper` (/usr/share/java/zookeeper.jar) and Java; set
SENTINEL_TEST_ZOOKEEPER_CLASSPATH to use another installation, or SENTINEL_TEST_ZOOKEEPER
(host:port) to use a running server instead of starting one.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from kazoo.client import KazooClient

CLASSPATH = os.environ.get(
    "SENTINEL_TEST_ZOOKEEPER_CLASSPATH", "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar"
)
# tickTime 1000 ms: sessions from 2 s to 20 s, enough for every profile in the tests.
TICK_MS = 1000


def four_letter(port: int, word: bytes) -> str:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(word)
            return conn.recv(4096).decode(errors="replace")
    except OSError:
        return ""


@dataclass
class Ensemble:
    """``size`` ZooKeeper servers on consecutive client ports from ``base_port``."""

    root: Path
    size: int
    base_port: int
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def client_port(self, index: int) -> int:
        return self.base_port + index

    @property
    def hosts(self) -> str:
        return ",".join(f"127.0.0.1:{self.client_port(i)}" for i in range(self.size))

    def _config(self, index: int) -> Path:
        data = self.root / f"server{index}"
        data.mkdir(parents=True, exist_ok=True)
        lines = [
            f"tickTime={TICK_MS}",
            "initLimit=10",
            "syncLimit=5",
            f"dataDir={data}",
            f"clientPort={self.client_port(index)}",
            "clientPortAddress=127.0.0.1",
            "admin.enableServer=false",
            "4lw.commands.whitelist=ruok,srvr",
        ]
        if self.size > 1:
            (data / "myid").write_text(f"{index + 1}\n")
            for peer in range(self.size):
                quorum, election = self.base_port + 100 + peer, self.base_port + 200 + peer
                lines.append(f"server.{peer + 1}=127.0.0.1:{quorum}:{election}")
        config = self.root / f"zoo{index}.cfg"
        config.write_text("\n".join(lines) + "\n")
        return config

    def running(self, index: int) -> bool:
        process = self.processes.get(index)
        return process is not None and process.poll() is None

    def start(self, index: int) -> None:
        if self.running(index):
            return
        log = (self.root / f"server{index}.log").open("ab")
        self.processes[index] = subprocess.Popen(
            [
                "java",
                "-Xmx256m",
                "-cp",
                CLASSPATH,
                "-Dzookeeper.root.logger=WARN,CONSOLE",
                f"-Dzookeeper.log.dir={self.root}",
                "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                str(self._config(index)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self, index: int) -> None:
        process = self.processes.pop(index, None)
        if process is not None:
            process.kill()
            process.wait()

    def serving(self, index: int) -> bool:
        mode = four_letter(self.client_port(index), b"srvr")
        return "Mode: " in mode

    def mode(self, index: int) -> str:
        """``leader``, ``follower`` or ``standalone``; empty while the server does not serve."""
        for line in four_letter(self.client_port(index), b"srvr").splitlines():
            if line.startswith("Mode: "):
                return line.removeprefix("Mode: ").strip()
        return ""

    def wait_serving(self, indexes: list[int] | None = None, timeout: float = 60) -> None:
        wanted = list(range(self.size)) if indexes is None else indexes
        give_up = time.monotonic() + timeout
        while not all(self.serving(i) for i in wanted):
            if time.monotonic() > give_up:
                logs = "\n".join(
                    (self.root / f"server{i}.log").read_text(errors="replace")[-2000:]
                    for i in wanted
                )
                raise RuntimeError(f"ZooKeeper did not start within {timeout:g}s:\n{logs}")
            time.sleep(0.1)

    def start_all(self) -> Ensemble:
        for index in range(self.size):
            self.start(index)
        self.wait_serving()
        return self

    def close(self) -> None:
        for index in list(self.processes):
            self.stop(index)
        shutil.rmtree(self.root, ignore_errors=True)


def free_port_block(span: int = 300) -> int:
    """A base port whose client, quorum and election ports are all free (best effort)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + span >= 65000:
            continue
        if all(_free(base + offset) for offset in (0, 1, 2, 100, 101, 102, 200, 201, 202)):
            return base
    raise RuntimeError("no free block of ports for ZooKeeper")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


_shared: Ensemble | None = None


def shared_server_hosts() -> str:
    """host:port of one standalone server shared by this process's tests (started once)."""
    global _shared  # noqa: PLW0603 - one server per test process
    external = os.environ.get("SENTINEL_TEST_ZOOKEEPER")
    if external:
        return external
    if _shared is None:
        root = Path(tempfile.mkdtemp(prefix="sentinel-zk-"))
        _shared = Ensemble(root, 1, free_port_block()).start_all()
        atexit.register(_shared.close)
    return _shared.hosts


def expire_session(client: KazooClient, hosts: str) -> None:
    """Make the servers expire ``client``'s session, as kazoo's own test harness does:
    connect a second client with the same session id, then close it."""
    session_id, password = client.client_id
    twin = KazooClient(hosts=hosts, client_id=(session_id, password), timeout=10)
    twin.start(timeout=10)
    twin.stop()
    twin.close()
