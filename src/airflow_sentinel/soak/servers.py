"""Private metastore servers for a soak: started, restarted and removed by the soak only.

Each listens on the bridge's address (so test hosts reach it over their veth, and a cut
silences it) and keeps its data in the soak's directory. They run in the foreground as
children that die with the soak (PDEATHSIG), so not even kill -9 of the soak leaves one
behind. The operator's own database servers are never touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import psutil

from airflow_sentinel.errors import UserError
from airflow_sentinel.process.linux import die_with_parent

PRIVATE_DATA_PREFIX = "airflow-sentinel-soak-"
ZOOKEEPER_CLASSPATH = os.environ.get(
    "SENTINEL_ZOOKEEPER_CLASSPATH", "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar"
)

log = logging.getLogger(__name__)


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not found:
        raise UserError("the postgresql backend needs PostgreSQL's server (Debian: postgresql)")
    return found[-1].parent


class Server(ABC):
    """A metastore for the soak. ``restartable`` is False where there is no server."""

    restartable = True
    stop_signal = signal.SIGTERM

    def __init__(self, root: Path, host: str) -> None:
        self.root = root
        self.host = host
        self.port = free_port(host) if self.restartable else 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    @abstractmethod
    def url(self) -> str:
        """The metastore URL, as the test hosts reach it."""

    @abstractmethod
    def prepare(self) -> None:
        """Create the data directory (once)."""

    @abstractmethod
    def command(self) -> list[str]: ...

    def user(self) -> str | None:
        return None

    def start(self, timeout: float = 60) -> None:
        """Start the server, unless it runs: two metastore faults healed in one batch each
        start it, and a second server beside the first would fail and take its handle."""
        if self.running:
            return
        parent = os.getpid()
        log = (self.root / "server.log").open("ab")
        self.process = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            user=self.user(),
            preexec_fn=lambda: die_with_parent(parent),  # noqa: PLW1509 - prctl only, no locks
        )
        log.close()
        self._wait_listening(timeout)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 30) -> None:
        """The server and every process of it gone. A server that does not stop in time is
        killed whole: a PostgreSQL backend outliving its postmaster keeps the shared memory,
        and the next start refuses to run beside it."""
        if self.process is None:
            return
        if self.process.poll() is not None:
            log.warning(
                "%s had exited by itself (code %s)", type(self).__name__, self.process.returncode
            )
            return
        tree = self._processes()
        self.thaw()  # a frozen server cannot shut down
        self.process.send_signal(self.stop_signal)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            for proc in tree:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            self.process.wait()
        _, alive = psutil.wait_procs(tree, timeout=timeout)
        for proc in alive:  # children that outlived a clean stop of their parent
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=timeout)

    def restart(self) -> None:
        self.stop()
        self.start()

    def freeze(self) -> None:
        """SIGSTOP the server and every process of it: it hangs, the kernel still accepts
        its connections and acknowledges what is sent (a hung server, not a dead one)."""
        for pid in self._tree():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self._tree():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def _tree(self) -> list[int]:
        return [proc.pid for proc in self._processes()]

    def _processes(self) -> list[psutil.Process]:
        if self.process is None or self.process.poll() is not None:
            return []
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def close(self) -> None:
        self.stop()

    def _wait_listening(self, timeout: float) -> None:
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{type(self).__name__} exited; see {self.root}/server.log")
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{type(self).__name__} did not listen within {timeout:g}s")


class SqliteFile(Server):
    """No server: the database file is on the disk every test host shares."""

    restartable = False

    @property
    def url(self) -> str:
        return f"sqlite:///{self.root / 'sentinel.db'}"

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return []

    def start(self, timeout: float = 60) -> None:
        pass


class Postgres(Server):
    """Runs as the `postgres` user when the soak is root, so its data lives in a directory
    of its own that that user can reach (the soak's may be private), removed at close."""

    home_suffix = "pg"

    def __init__(self, root: Path, host: str) -> None:
        super().__init__(root, host)
        self.home = (
            Path(tempfile.gettempdir()) / f"{PRIVATE_DATA_PREFIX}{os.getpid()}-{self.home_suffix}"
        )
        self.data = self.home / "data"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@{self.host}:{self.port}/postgres"

    def user(self) -> str | None:
        return "postgres" if os.geteuid() == 0 else None

    def prepare(self) -> None:
        self.home.mkdir(mode=0o700)
        if self.user():
            shutil.chown(self.home, "postgres")
        subprocess.run(
            [str(_pg_bin() / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
             "-N", "-E", "UTF8"],
            user=self.user(), check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {self.host}/24 trust\n")

    def command(self) -> list[str]:
        return [
            str(_pg_bin() / "postgres"), "-D", str(self.data), "-p", str(self.port),
            "-c", f"listen_addresses={self.host}", "-c", f"unix_socket_directories={self.home}",
            "-c", "fsync=off", "-c", "max_connections=50",
        ]  # fmt: skip

    # SIGTERM would wait for every client to leave; SIGINT is PostgreSQL's fast shutdown.
    stop_signal = signal.SIGINT

    def start(self, timeout: float = 60) -> None:
        if not self.running:
            self._kill_orphaned_backends()
        super().start(timeout)

    def _kill_orphaned_backends(self) -> None:
        """Backends of a postmaster that died work on in the data directory and keep its
        shared memory: PostgreSQL would refuse to start beside them."""
        orphans = []
        for proc in psutil.process_iter(["cwd"]):
            if proc.info["cwd"] == str(self.data):
                orphans.append(proc)
        for proc in orphans:
            log.warning("killing pid %d, left working in %s", proc.pid, self.data)
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(orphans, timeout=30)

    def close(self) -> None:
        super().close()
        shutil.rmtree(self.home, ignore_errors=True)


class MariaDB(Server):
    def __init__(self, root: Path, host: str) -> None:
        super().__init__(root, host)
        self.data = root / "data"

    @property
    def url(self) -> str:
        return f"mysql+pymysql://root@{self.host}:{self.port}/sentinel"

    def prepare(self) -> None:
        installer = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
        if installer is None:
            raise UserError("the mariadb backend needs MariaDB's server (Debian: mariadb-server)")
        subprocess.run(
            [installer, "--no-defaults", f"--datadir={self.data}", "--user=root",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        (self.data / "sentinel").mkdir(exist_ok=True)  # the database, as a directory

    def command(self) -> list[str]:
        server = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        # A throwaway server on a private bridge: no grant tables, so the hosts need no
        # password.
        return [
            server, "--no-defaults", f"--datadir={self.data}", f"--port={self.port}",
            f"--bind-address={self.host}", f"--socket={self.root / 'mysqld.sock'}",
            f"--pid-file={self.root / 'mysqld.pid'}", "--user=root", "--skip-grant-tables",
            "--skip-name-resolve", "--skip-log-bin", "--innodb-buffer-pool-size=32M",
            "--innodb-flush-log-at-trx-commit=2", "--max-connections=100",
        ]  # fmt: skip


class ZooKeeper(Server):
    @property
    def url(self) -> str:
        return f"zookeeper://{self.host}:{self.port}/sentinel"

    def prepare(self) -> None:
        if shutil.which("java") is None or not Path(ZOOKEEPER_CLASSPATH.split(":")[-1]).exists():
            raise UserError("the zookeeper backend needs Java and ZooKeeper (Debian: zookeeper)")
        (self.root / "data").mkdir(exist_ok=True)
        # tickTime 1 s: sessions may last 2 s to 20 s, which covers both timing profiles.
        (self.root / "zoo.cfg").write_text(
            "tickTime=1000\ninitLimit=10\nsyncLimit=5\n"
            f"dataDir={self.root / 'data'}\nclientPort={self.port}\n"
            f"clientPortAddress={self.host}\nadmin.enableServer=false\n"
        )

    def command(self) -> list[str]:
        return [
            "java", "-Xmx256m", "-Dzookeeper.log.dir=" + str(self.root),
            "-cp", ZOOKEEPER_CLASSPATH,
            "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(self.root / "zoo.cfg"),
        ]  # fmt: skip


# Airflow's tables that the fence guards, with the columns the stand-in scheduler writes
# (Airflow's own names where it has them; pid and the epochs are the soak's).
AIRFLOW_TABLES = (
    "CREATE TABLE dag_run (id SERIAL PRIMARY KEY, dag_id VARCHAR(250), run_id VARCHAR(250), "
    "state VARCHAR(50))",
    "CREATE TABLE task_instance (id SERIAL PRIMARY KEY, dag_id VARCHAR(250), "
    "task_id VARCHAR(250), state VARCHAR(20))",
    "CREATE TABLE job (id SERIAL PRIMARY KEY, dag_id VARCHAR(250), state VARCHAR(20), "
    "job_type VARCHAR(30), start_date TIMESTAMPTZ, end_date TIMESTAMPTZ, "
    "latest_heartbeat TIMESTAMPTZ, executor_class VARCHAR(500), hostname VARCHAR(500), "
    "unixname VARCHAR(1000), pid INTEGER, sentinel_epoch BIGINT, session_epoch TEXT)",
)
AIRFLOW_DB = "airflow"


class AirflowDatabase(Postgres):
    """Airflow's own database for a soak whose stand-in schedulers write: a private
    PostgreSQL beside the metastore (on the same bridge address, so a cut silences both),
    holding the tables the fence guards, with the fence installed unless it is off. The
    nemesis does not restart or freeze it: its faults are the metastore's."""

    home_suffix = "airflow-pg"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@{self.host}:{self.port}/{AIRFLOW_DB}"

    def _connect(self, database: str = AIRFLOW_DB) -> Any:
        import psycopg

        return psycopg.connect(
            host=self.host, port=self.port, user="postgres", dbname=database,
            autocommit=True, connect_timeout=10,
        )  # fmt: skip

    def create(self, fence: bool, timeout: float = 10) -> int | None:
        """The database, its tables and (with ``fence``) the fence, installed here once
        so that the controllers starting together do not each install it; the fence's
        epoch (None without one)."""
        with self._connect("postgres") as conn:
            conn.execute(f"CREATE DATABASE {AIRFLOW_DB}")
        with self._connect() as conn:
            for statement in AIRFLOW_TABLES:
                conn.execute(statement)
        if not fence:
            return None
        from airflow_sentinel.fence import open_fence

        installed = open_fence("on", self.url, timeout, 2.0)
        assert installed is not None
        try:
            state = installed.install()
        finally:
            installed.close()
        problem = state.problem()
        if problem is not None:
            raise RuntimeError(f"the fence in the soak's Airflow database: {problem}")
        return state.epoch

    def writes(self) -> list[dict[str, object]]:
        """Every row the stand-in schedulers committed, in the order written."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT hostname, pid, sentinel_epoch, session_epoch, "
                "extract(epoch FROM latest_heartbeat)::float8 FROM job ORDER BY id"
            ).fetchall()
        return [
            {"node": r[0], "pid": r[1], "epoch": r[2], "session_epoch": r[3], "at": r[4]}
            for r in rows
        ]

    def fence_epoch(self) -> int | None:
        """The fence's epoch now; None when there is no fence."""
        with self._connect() as conn:
            found = conn.execute("SELECT to_regclass('sentinel_fence')").fetchone()
            if found is None or found[0] is None:
                return None
            row = conn.execute(
                "SELECT epoch FROM sentinel_fence WHERE service = 'scheduler'"
            ).fetchone()
        return None if row is None else int(row[0])


def remove_leftover_data(owners: list[int]) -> None:
    """Data that servers of killed soaks (by pid) kept outside their soak's directory."""
    for owner in owners:
        for path in Path(tempfile.gettempdir()).glob(f"{PRIVATE_DATA_PREFIX}{owner}-*"):
            shutil.rmtree(path, ignore_errors=True)


SERVERS: dict[str, type[Server]] = {
    "sqlite": SqliteFile,
    "mariadb": MariaDB,
    "postgresql": Postgres,
    "zookeeper": ZooKeeper,
}
