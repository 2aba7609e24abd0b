"""Freezing a whole node: its controller, guard, scheduler and every child at once.

Each node's controller is placed, before it execs, in a cgroup of its own under the v1
freezer (``/sys/fs/cgroup/freezer/snk<soak pid>/<node>``), so everything it starts is in
that cgroup too, and writing FROZEN stops all of it in one step, as when a VM or a host
stalls: nothing on the node can act, not even the guard that would kill the scheduler.
Where there is no v1 freezer, the fallback stops the whole process tree with SIGSTOP in
one sweep (repeated until no new process turns up) and resumes it with SIGCONT.

The soak's pid is in the cgroup's path, so the cgroups of a soak that was killed are
found, thawed (a frozen process cannot die) and removed by the next one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

FREEZER_ROOT = Path("/sys/fs/cgroup/freezer")
PREFIX = "snk"  # as the soak's namespaces and links: see hosts.py
FROZEN, THAWED = "FROZEN", "THAWED"


def available(root: Path = FREEZER_ROOT) -> bool:
    return (root / "cgroup.procs").exists() and os.access(root, os.W_OK)


def soak_dir(owner: int, root: Path = FREEZER_ROOT) -> Path:
    return root / f"{PREFIX}{owner}"


@dataclass
class NodeFreezer:
    """The freezer of one node. ``cgroup`` is None where the fallback (SIGSTOP) is used."""

    name: str
    cgroup: Path | None = None
    stopped: list[psutil.Process] = field(default_factory=list)

    @classmethod
    def create(cls, owner: int, name: str, root: Path = FREEZER_ROOT) -> NodeFreezer:
        if not available(root):
            log.info("no cgroup v1 freezer at %s: node %s freezes with SIGSTOP", root, name)
            return cls(name)
        path = soak_dir(owner, root) / name
        path.mkdir(parents=True, exist_ok=True)
        return cls(name, path)

    @property
    def method(self) -> str:
        return "cgroup freezer" if self.cgroup is not None else "SIGSTOP of the process tree"

    def procs_file(self) -> str | None:
        """The cgroup.procs of this node (None under the fallback), for ``join``."""
        return None if self.cgroup is None else str(self.cgroup / "cgroup.procs")

    @staticmethod
    def join(procs_file: str | None) -> None:
        """In a child before exec: move this process into the node's cgroup (plain os
        calls: no lock that another thread of the parent might have held at the fork)."""
        if procs_file is not None:
            fd = os.open(procs_file, os.O_WRONLY)
            try:
                os.write(fd, str(os.getpid()).encode())
            finally:
                os.close(fd)

    def pids(self) -> list[int]:
        if self.cgroup is None:
            return []
        try:
            return [int(p) for p in (self.cgroup / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def freeze(self, root_pid: int | None, timeout: float = 10) -> int:
        """Stop everything on the node; the number of processes stopped."""
        if self.cgroup is not None:
            self._set_state(FROZEN, timeout)
            return len(self.pids())
        if root_pid is None:
            return 0
        self.stopped = _stop_tree(root_pid)
        return len(self.stopped)

    def thaw(self, timeout: float = 10) -> None:
        if self.cgroup is not None:
            self._set_state(THAWED, timeout)
            return
        for proc in self.stopped:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGCONT)
        self.stopped = []

    @property
    def frozen(self) -> bool:
        if self.cgroup is not None:
            return self._state() != THAWED
        return bool(self.stopped)

    def _state(self) -> str:
        assert self.cgroup is not None
        try:
            return (self.cgroup / "freezer.state").read_text().strip()
        except OSError:
            return THAWED

    def _set_state(self, state: str, timeout: float) -> None:
        """Write ``state`` and wait until the kernel reports it (FREEZING: not yet)."""
        assert self.cgroup is not None
        (self.cgroup / "freezer.state").write_text(state)
        give_up = time.monotonic() + timeout
        while self._state() != state:
            if time.monotonic() >= give_up:
                raise RuntimeError(f"{self.cgroup} did not become {state} within {timeout:g}s")
            (self.cgroup / "freezer.state").write_text(state)
            time.sleep(0.01)

    def remove(self) -> None:
        if self.cgroup is not None:
            remove_cgroup(self.cgroup)


def _stop_tree(root_pid: int) -> list[psutil.Process]:
    """SIGSTOP ``root_pid`` and all its descendants, sweeping again until no new one has
    appeared (a process may fork between the listing and its stop)."""
    stopped: dict[int, psutil.Process] = {}
    while True:
        try:
            root = psutil.Process(root_pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            tree = []
        new = [p for p in tree if p.pid not in stopped]
        if not new:
            return list(stopped.values())
        for proc in new:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGSTOP)
                stopped[proc.pid] = proc


def remove_cgroup(path: Path, timeout: float = 10) -> None:
    """Thaw the cgroup, kill what is left in it, and remove it."""
    if not path.is_dir():
        return
    with contextlib.suppress(OSError):
        (path / "freezer.state").write_text(THAWED)
    give_up = time.monotonic() + timeout
    while True:
        try:
            pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
        except OSError:
            pids = []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            path.rmdir()
        except OSError:
            if time.monotonic() >= give_up:
                log.warning("cannot remove %s: processes %s are still in it", path, pids)
                return
            time.sleep(0.05)
        else:
            return


def remove_owned_by(owner: int, root: Path = FREEZER_ROOT) -> None:
    """The freezer cgroups of the soak with pid ``owner``: thawed, emptied and removed."""
    top = soak_dir(owner, root)
    if not top.is_dir():
        return
    for child in top.iterdir():
        if child.is_dir():
            remove_cgroup(child)
    remove_cgroup(top)


def thaw_owned_by(owner: int, root: Path = FREEZER_ROOT) -> None:
    """Thaw every node of soak ``owner`` (a frozen process cannot be killed)."""
    top = soak_dir(owner, root)
    if not top.is_dir():
        return
    for child in top.iterdir():
        with contextlib.suppress(OSError):
            (child / "freezer.state").write_text(THAWED)


def owners(root: Path = FREEZER_ROOT) -> list[int]:
    """The soak pids that have freezer cgroups here."""
    found = []
    if root.is_dir():
        for child in root.iterdir():
            if child.is_dir() and child.name.startswith(PREFIX) and child.name[3:].isdigit():
                found.append(int(child.name[3:]))
    return found
