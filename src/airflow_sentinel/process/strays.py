"""Finding and stopping schedulers on this node that the controller did not start."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePath

import psutil

from airflow_sentinel.process.handle import MARKER_ENV


@dataclass(frozen=True)
class Stray:
    pid: int
    cmdline: str


def _words(args: Iterable[str]) -> list[str]:
    """Command-line words; a process title set with setproctitle arrives as one string."""
    return [word for arg in args for word in arg.split()]


def matches(cmdline: list[str], command: list[str]) -> bool:
    """Whether a process runs the scheduler command: its program (compared by file name,
    so ``/venv/bin/airflow`` is ``airflow``) followed by exactly its arguments."""
    wanted, words = _words(command), _words(cmdline)
    if not wanted or not words:
        return False
    program, arguments = PurePath(wanted[0]).name, wanted[1:]
    # The program is the process's own first word, or the script an interpreter runs:
    # never a word further along (`airflow-sentinel start --scheduler-command "airflow
    # scheduler"` and `grep airflow scheduler` are not schedulers).
    starts = [0, 1] if PurePath(words[0]).name.startswith("python") else [0]
    return any(
        i < len(words)
        and PurePath(words[i]).name == program
        and words[i + 1 : i + 1 + len(arguments)] == arguments
        for i in starts
    )


def _owned_by_other_node(proc: psutil.Process, node_id: str) -> bool:
    """Another controller's scheduler on this host (several nodes on one machine)."""
    try:
        owner = proc.environ().get(MARKER_ENV)
    except psutil.Error:
        return False
    return owner is not None and owner != node_id


def find_strays(command: list[str], node_id: str, own_pids: set[int]) -> list[psutil.Process]:
    """Scheduler processes on this node outside our own guarded run, outermost only."""
    me = os.getpid()
    found: list[psutil.Process] = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        pid = proc.info["pid"]
        if pid == me or pid in own_pids or not proc.info["cmdline"]:
            continue
        if matches(proc.info["cmdline"], command) and not _owned_by_other_node(proc, node_id):
            found.append(proc)
    pids = {p.pid for p in found}
    return [p for p in found if not _has_ancestor_in(p, pids)]


def _has_ancestor_in(proc: psutil.Process, pids: set[int]) -> bool:
    try:
        return any(parent.pid in pids for parent in proc.parents())
    except psutil.Error:
        return False


def describe(proc: psutil.Process) -> Stray:
    try:
        return Stray(proc.pid, " ".join(proc.cmdline())[:200])
    except psutil.Error:
        return Stray(proc.pid, "?")
