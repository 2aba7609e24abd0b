"""A stand-in for `airflow scheduler` that reports to an independent recorder.

While alive it sends ``(node, pid, start, now)`` every ``--interval`` seconds over a Unix
datagram socket on the shared disk: network namespaces do not isolate such sockets, so
the reports reach the recorder even from a node that is cut off from the metastore, and
they never pass through the controller or the metastore. Times are CLOCK_BOOTTIME
seconds, which every namespace on the host shares. ``start`` is the kernel's record of
when this process was forked, so the recorder never sees a probe later than it lived.

Like the real scheduler it exits on SIGTERM and SIGINT, and with ``--children`` it forks
worker processes (they report too, as role ``child``), so orphans would be caught.

With ``--writes`` it also writes, as a scheduler does all the time, to Airflow's
database (AIRFLOW__DATABASE__SQL_ALCHEMY_CONN, PostgreSQL): a row in ``job`` every 50 to
100 ms, with its node, pid, the epoch it was started with (AIRFLOW_SENTINEL_EPOCH), the
epoch its connection carries for the fence (``sentinel.epoch``, from PGOPTIONS) and the
server's clock_timestamp(). A write the fence rejects is counted in its reports, and it
keeps trying, as a real scheduler would, until it is killed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

ROLE_SCHEDULER = "scheduler"
ROLE_CHILD = "child"
AIRFLOW_DB_ENV = "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"
EPOCH_ENV = "AIRFLOW_SENTINEL_EPOCH"  # as process/handle.py names it (not imported: startup)
WRITE_EVERY = (0.05, 0.1)  # seconds between writes, drawn each time
WRITE = (
    "INSERT INTO job (job_type, state, hostname, pid, sentinel_epoch, session_epoch, "
    "latest_heartbeat) VALUES ('SchedulerJob', 'running', %s, %s, %s, "
    "current_setting('sentinel.epoch', true), clock_timestamp())"
)


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def process_start(pid: int) -> float:
    """When ``pid`` was forked, in CLOCK_BOOTTIME seconds (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # Field 22 of the whole line, counted after "pid (comm)": index 19.
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")


def node_name() -> str:
    return os.environ.get("AIRFLOW_SENTINEL_NODE_ID") or socket.gethostname()


class Reporter:
    def __init__(self, path: str, role: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.settimeout(1.0)
        pid = os.getpid()
        self.base = {
            "node": node_name(),
            "pid": pid,
            "ppid": os.getppid(),
            "role": role,
            "start": process_start(pid),
        }
        self.counters: dict[str, int] = {}

    def report(self) -> None:
        message = dict(self.base, t=boottime(), **self.counters)
        # The recorder may be gone or busy: the next report tries again.
        with contextlib.suppress(OSError):
            self.sock.sendto(json.dumps(message).encode(), self.path)


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL (postgresql+psycopg://...) as libpq takes it."""
    return re.sub(r"^postgresql(\+\w+)?://", "postgresql://", url)


class Writer(threading.Thread):
    """Writes a row, again and again, until the process ends; counts the outcomes in the
    reporter's counters: ``written``, ``rejected`` (by the fence) and ``write_errors``."""

    def __init__(self, reporter: Reporter, url: str, epoch: int | None) -> None:
        super().__init__(name="writer", daemon=True)
        self.reporter = reporter
        self.url = libpq_url(url)
        self.epoch = epoch
        self.counters = reporter.counters
        self.counters.update(written=0, rejected=0, write_errors=0)

    def run(self) -> None:
        import psycopg  # here, not at the start: the probe reports before it loads it

        from airflow_sentinel.fence.base import REJECTION

        conn: psycopg.Connection[Any] | None = None
        node, pid = str(self.reporter.base["node"]), os.getpid()
        while True:
            try:
                if conn is None:
                    conn = psycopg.connect(
                        self.url, autocommit=True, connect_timeout=2, keepalives=1,
                        keepalives_idle=1, keepalives_interval=1, keepalives_count=2,
                        tcp_user_timeout=3000,
                    )  # fmt: skip
                conn.execute(WRITE, (node, pid, self.epoch))
                self.counters["written"] += 1
            except psycopg.Error as exc:
                said = (exc.diag.message_primary if exc.diag else None) or str(exc)
                if said.startswith(REJECTION):
                    self.counters["rejected"] += 1
                else:
                    self.counters["write_errors"] += 1
                    if conn is not None:
                        with contextlib.suppress(psycopg.Error):
                            conn.close()
                    conn = None
                self.reporter.report()  # at once: the guard may kill us any moment now
            time.sleep(random.uniform(*WRITE_EVERY))


def spawn_children(count: int, recorder: str, interval: float) -> list[int]:
    pids = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = serve(recorder, interval, ROLE_CHILD)
            finally:
                os._exit(code)
        pids.append(pid)
    return pids


def serve(
    recorder: str, interval: float, role: str, children: int = 0, writes: bool = False
) -> int:
    stopping = False

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    reporter = Reporter(recorder, role)
    reporter.report()
    kids = spawn_children(children, recorder, interval) if children else []
    if writes:  # after the forks: a child must not inherit the thread
        url = os.environ.get(AIRFLOW_DB_ENV, "")
        epoch = os.environ.get(EPOCH_ENV)
        if url:
            Writer(reporter, url, int(epoch) if epoch else None).start()
    while not stopping:
        reporter.report()
        time.sleep(interval)
    for pid in kids:
        try:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
        except (ChildProcessError, ProcessLookupError):
            pass
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="airflow-sentinel-probe", description=__doc__)
    parser.add_argument("--recorder", required=True, help="the recorder's socket path")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between reports")
    parser.add_argument("--children", type=int, default=0, help="worker processes to fork")
    parser.add_argument(
        "--writes", action="store_true", help=f"write to Airflow's database ({AIRFLOW_DB_ENV})"
    )
    args = parser.parse_args(argv)
    return serve(args.recorder, args.interval, ROLE_SCHEDULER, args.children, args.writes)


if __name__ == "__main__":
    sys.exit(main())
