"""The independent witness: which probe processes lived, and exactly when they died.

A probe's first report opens a pidfd on it, so its end is the moment the kernel says it
exited (not the last report heard), and a probe killed between two reports is still
seen whole. The recorder only listens; it runs in the soak's process, outside every
test host, and the controllers do not know it exists.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from airflow_sentinel.soak.probe import boottime, process_start


@dataclass
class ProbeLife:
    node: str
    pid: int
    ppid: int
    role: str
    start: float
    last_report: float
    end: float | None = None  # None: still alive
    # What a probe that writes to Airflow's database says of its writes (see probe.py).
    written: int = 0
    rejected: int = 0  # by the fence
    write_errors: int = 0  # anything else: the database unreachable, say

    @property
    def key(self) -> tuple[int, float]:
        return (self.pid, self.start)


def _started_at(pid: int) -> float | None:
    try:
        return process_start(pid)
    except OSError:
        return None


COUNTERS = ("written", "rejected", "write_errors")


class Recorder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.lives: dict[tuple[int, float], ProbeLife] = {}
        self._pidfds: dict[int, tuple[int, float]] = {}
        self._lock = threading.Lock()
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)

    def start(self) -> Recorder:
        self._thread.start()
        return self

    def alive(self, role: str = "scheduler") -> list[ProbeLife]:
        with self._lock:
            return [p for p in self.lives.values() if p.end is None and p.role == role]

    def history(self) -> list[dict[str, object]]:
        with self._lock:
            return [asdict(p) for p in sorted(self.lives.values(), key=lambda p: p.start)]

    def close(self) -> None:
        if self._thread.is_alive():
            os.write(self._stop_w, b"x")
            self._thread.join(timeout=5)
        for fd in self._pidfds:
            os.close(fd)
        self._pidfds.clear()
        self.sock.close()
        os.close(self._stop_r)
        os.close(self._stop_w)
        self.path.unlink(missing_ok=True)

    # -- the listening thread -----------------------------------------------------------
    def _run(self) -> None:
        while True:
            sock = self.sock.fileno()
            ready, _, _ = select.select([sock, self._stop_r, *self._pidfds], [], [])
            now = boottime()
            for fd in ready:
                if fd == sock:
                    self._receive(now)
                elif fd == self._stop_r:
                    return
                else:
                    self._ended(fd, now)

    def _receive(self, now: float) -> None:
        data = self.sock.recv(4096)
        try:
            report = json.loads(data)
            key = (int(report["pid"]), float(report["start"]))
        except (ValueError, KeyError, TypeError):
            return
        with self._lock:
            life = self.lives.get(key)
            known = life is not None
            if life is None:
                life = ProbeLife(
                    node=str(report["node"]),
                    pid=key[0],
                    ppid=int(report["ppid"]),
                    role=str(report["role"]),
                    start=key[1],
                    last_report=float(report["t"]),
                )
                self.lives[key] = life
            life.last_report = max(life.last_report, float(report["t"]))
            for counter in COUNTERS:  # datagrams may come out of order: keep the highest
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    setattr(life, counter, max(getattr(life, counter), int(report[counter])))
        if not known:
            self._watch(life, now)

    def _watch(self, life: ProbeLife, now: float) -> None:
        try:
            fd = os.pidfd_open(life.pid)
        except ProcessLookupError:
            with self._lock:
                life.end = now  # died before we could watch it: it lived at least this long
            return
        if _started_at(life.pid) != life.start:  # the pid was reused: the probe is gone
            os.close(fd)
            with self._lock:
                life.end = now
            return
        self._pidfds[fd] = life.key

    def _ended(self, fd: int, now: float) -> None:
        key = self._pidfds.pop(fd)
        os.close(fd)
        with self._lock:
            self.lives[key].end = now
