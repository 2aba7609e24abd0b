"""Database servers of a test's own, which it may stop with SIGSTOP.

The machine's shared servers (5432, 3306) are never stopped: other tests use them. These are
the soak's private servers (airflow_sentinel.soak.servers) on 127.0.0.1 and a free port,
with their data under the test's directory, gone when the test ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import psutil

from airflow_sentinel.soak.servers import SERVERS, Server

LOOPBACK = "127.0.0.1"


@contextlib.contextmanager
def private_server(backend: str, root: Path) -> Iterator[Server]:
    """A PostgreSQL or MariaDB server for this test alone; always resumed and stopped."""
    root.mkdir(parents=True, exist_ok=True)
    server = SERVERS[backend](root, LOOPBACK)
    try:
        server.prepare()
        server.start()
        yield server
    finally:
        if server.process is not None:
            _resume(_tree(server.process.pid))
        server.close()


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """SIGSTOP a server and every process under it, and SIGCONT them all on the way out.

    PostgreSQL serves each connection from a process of its own: stopping only the
    postmaster would leave open connections answered. The postmaster stops first, so that
    it starts no process that would be missed.
    """
    server = psutil.Process(pid)
    server.suspend()
    tree = [server]
    try:
        tree = _tree(pid)
        for proc in tree[1:]:
            with contextlib.suppress(psutil.Error):
                proc.suspend()
        yield
    finally:
        _resume(tree)


def _tree(pid: int) -> list[psutil.Process]:
    try:
        server = psutil.Process(pid)
        return [server, *server.children(recursive=True)]
    except psutil.Error:
        return []


def _resume(processes: list[psutil.Process]) -> None:
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            proc.resume()
