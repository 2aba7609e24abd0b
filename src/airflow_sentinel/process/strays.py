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


def _tokens(args: Iterable[str]) -> list[str]:
    """Command-line words with paths reduced to their last part (``/venv/bin/airflow``)."""
    words: list[str] = []
    for arg in args:
        words.extend(PurePath(part).name if "/" in part else part for part in arg.split())
    return words


def matches(cmdline: list[str], command: list[str]) -> bool:
    """Whether a process's command line contains the scheduler command's words in order."""
    wanted, words = _tokens(command), _tokens(cmdline)
    n = len(wanted)
    return n > 0 and any(words[i : i + n] == wanted for i in range(len(words) - n + 1))


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
