"""Controller instances for metastore tests: live ones, twins, and dead predecessors."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

from airflow_sentinel.identity import Instance, start_ticks


def live(node_id: str, pid: int | None = None) -> Instance:
    """An instance of ``node_id`` speaking for a live process (this one by default): the
    same node_id and pid always give the same token."""
    me = Instance.of_this_process(node_id)
    pid = pid if pid is not None else os.getpid()
    return replace(me, pid=pid, started=start_ticks(pid) or 0)


def twin(node_id: str) -> Instance:
    """A second live instance of ``node_id`` on this boot (our parent process speaks for it)."""
    return live(node_id, os.getppid())


def dead(node_id: str) -> Instance:
    """An instance of ``node_id`` whose process has exited, on this boot."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = start_ticks(child.pid) or 1
    child.wait()
    return replace(live(node_id), pid=child.pid, started=started)
