"""A stand-in for `airflow scheduler` that reports to an independent recorder.

While alive it sends ``(node, pid, start, now)`` every ``--interval`` seconds over a Unix
datagram socket on the shared disk: network namespaces do not isolate such sockets, so
the reports reach the recorder even from a node that is cut off from the metastore, and
they never pass through the controller or the metastore. Times are CLOCK_BOOTTIME
seconds, which every namespace on the host shares. ``start`` is the kernel's record of
when this process was forked, so the recorder never sees a probe later than it lived.

Like the real scheduler it exits on SIGTERM and SIGINT, and with ``--children`` it forks
worker processes (they report too, as role ``child``), so orphans would be caught.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from types import FrameType

ROLE_SCHEDULER = "scheduler"
ROLE_CHILD = "child"


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

    def report(self) -> None:
        message = dict(self.base, t=boottime())
        # The recorder may be gone or busy: the next report tries again.
        with contextlib.suppress(OSError):
            self.sock.sendto(json.dumps(message).encode(), self.path)


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


def serve(recorder: str, interval: float, role: str, children: int = 0) -> int:
    stopping = False

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    reporter = Reporter(recorder, role)
    reporter.report()
    kids = spawn_children(children, recorder, interval) if children else []
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
    args = parser.parse_args(argv)
    return serve(args.recorder, args.interval, ROLE_SCHEDULER, args.children)


if __name__ == "__main__":
    sys.exit(main())
