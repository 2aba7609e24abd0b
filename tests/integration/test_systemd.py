"""A real controller under a stand-in for systemd: a unix datagram socket named by
NOTIFY_SOCKET that records every message and its sender. The notify protocol does not
depend on the metastore, so these run on SQLite only."""

from __future__ import annotations

import http.client
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from airflow_sentinel.soak.servers import free_port
from tests.support.backends import fresh_metastore_url
from tests.support.cluster import Cluster, running_cluster, wait_until
from tests.support.notify_socket import Notification, NotifySocket, notify_socket

pytestmark = pytest.mark.slow

RENEW_INTERVAL = 1.0  # the FAST profile of tests/support/cluster.py
# Shorter than a cycle may take with that profile (1 + 15 s), to see the warning.
SHORT_WATCHDOG_USEC = "5000000"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with fresh_metastore_url("sqlite", tmp_path) as url, running_cluster(tmp_path, url) as c:
        yield c


@pytest.fixture
def systemd() -> Iterator[NotifySocket]:
    with notify_socket() as sock:
        sock.start()
        yield sock


def under_systemd(cluster: Cluster, systemd: NotifySocket) -> None:
    cluster.extra_env = {"NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": SHORT_WATCHDOG_USEC}


def has(assignment: str) -> Callable[[Notification], bool]:
    return lambda message: message.has(assignment)


def pings(messages: list[Notification]) -> list[Notification]:
    return [m for m in messages if m.has("WATCHDOG=1")]


def monotonic_usec() -> int:
    return time.monotonic_ns() // 1000  # CLOCK_MONOTONIC, the clock of MONOTONIC_USEC


def test_a_real_controller_speaks_the_notify_protocol(
    cluster: Cluster, systemd: NotifySocket
) -> None:
    under_systemd(cluster, systemd)
    controller = cluster.start("a")

    ready = systemd.wait_for("READY=1", has("READY=1"))
    cluster.wait_for_one_scheduler(on="a")
    [scheduler] = cluster.schedulers()
    expected = f"STATUS=active, epoch {cluster.epoch()}, scheduler pid {scheduler.pid}"
    systemd.wait_for(expected, has(expected))

    # Pinged at every cycle, from the controller itself (NotifyAccess=main).
    wait_until(lambda: len(pings(systemd.snapshot()[ready:])) >= 4, 20, "four watchdog pings")
    times = [m.at for m in pings(systemd.snapshot()[ready:])]
    assert max(b - a for a, b in itertools.pairwise(times)) < 3 * RENEW_INTERVAL
    assert {m.pid for m in systemd.snapshot()} == {controller.pid}

    # The scheduler does not inherit the socket: systemd would log each message it sent.
    inherited = set(scheduler.environ()) & {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}
    assert inherited == set()
    log = (cluster.root / "a.log").read_text()
    assert log.count("WatchdogSec=5s is shorter than a healthy control loop") == 1

    mark, before = len(systemd.snapshot()), monotonic_usec()
    controller.send_signal(signal.SIGHUP)
    reloading = systemd.wait_for("RELOADING=1", has("RELOADING=1"), since=mark)
    after = monotonic_usec()
    assert before <= int(systemd.snapshot()[reloading].fields["MONOTONIC_USEC"]) <= after
    systemd.wait_for("READY=1 after the reload", has("READY=1"), since=reloading)

    mark = len(systemd.snapshot())
    controller.send_signal(signal.SIGTERM)
    stopping = systemd.wait_for("STOPPING=1", has("STOPPING=1"), since=mark)
    assert controller.wait(timeout=30) == 0
    assert systemd.snapshot()[-1].has("STATUS=stopped"), systemd.snapshot()[stopping:]


# -- a loop that stops pinging ----------------------------------------------------------
class LogPipe:
    """The controller's output through a FIFO that the test can fill: once it is full,
    the next log line the loop writes blocks the loop in write(2), in the middle of a
    cycle, as a stalled log reader would; the process's other threads run on."""

    FILLER = b"\0"

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self.reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # first: the writer needs one
        self.writer = os.open(path, os.O_WRONLY)  # the controller's stdout and stderr
        self._thread: threading.Thread | None = None

    def fill(self) -> int:
        """Fill what the controller's output left free; a description of our own, so that
        O_NONBLOCK does not reach the controller's."""
        filler = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        written = 0
        try:
            for size in (4096, 1):  # whole pages first, then the last bytes of the last one
                while True:
                    try:
                        written += os.write(filler, self.FILLER * size)
                    except BlockingIOError:
                        break
        finally:
            os.close(filler)
        return written

    def drain_to(self, log: Path) -> None:
        """Copy the output (without the filler) to ``log`` from now on."""
        if self._thread is not None:
            return
        out = log.open("ab")
        self._copy_available(out)  # at once: a failing test shows the log
        os.set_blocking(self.reader, True)
        self._thread = threading.Thread(target=self._copy_to_end, args=(out,), daemon=True)
        self._thread.start()

    def _copy_available(self, out: BinaryIO) -> None:
        while True:
            try:
                chunk = os.read(self.reader, 65536)
            except BlockingIOError:
                return
            if not chunk:
                return
            out.write(chunk.replace(self.FILLER, b""))
            out.flush()

    def _copy_to_end(self, out: BinaryIO) -> None:
        with out:
            while chunk := os.read(self.reader, 65536):
                out.write(chunk.replace(self.FILLER, b""))
                out.flush()


def start_writing_to(cluster: Cluster, pipe: LogPipe) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow_sentinel", "start", "--node-id", "a"],
        env=cluster.env("a"),
        stdout=pipe.writer,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    os.close(pipe.writer)
    cluster.processes["a"] = process  # stopped by the cluster's teardown
    return process


def main_thread_waits_in(pid: int) -> str:
    """Where the kernel has the main thread, the one that runs the control loop."""
    return Path(f"/proc/{pid}/task/{pid}/wchan").read_text()


def api_view(port: int) -> dict[str, object] | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/status")
        answer = conn.getresponse()
        return dict(json.loads(answer.read())) if answer.status == 200 else None
    except OSError:
        return None
    finally:
        conn.close()


def test_a_loop_stuck_in_a_write_stops_pinging_while_its_api_answers(
    cluster: Cluster, systemd: NotifySocket
) -> None:
    under_systemd(cluster, systemd)
    port = free_port("127.0.0.1")
    cluster.api_ports = {"a": port}
    pipe = LogPipe(cluster.root / "output.fifo")
    try:
        controller = start_writing_to(cluster, pipe)
        running = "STATUS=active, epoch 1, scheduler pid"
        systemd.wait_for("a running scheduler", lambda m: m.raw.startswith(running))
        wait_until(lambda: api_view(port), 20, "the API")
        assert pipe.fill() > 0

        # A reload logs what it changed: that line cannot be written, so the loop stops.
        mark = len(systemd.snapshot())
        controller.send_signal(signal.SIGHUP)
        stuck_at = systemd.wait_for("RELOADING=1", has("RELOADING=1"), since=mark)
        wait_until(
            lambda: "pipe_write" in main_thread_waits_in(controller.pid),
            20,
            "the control loop blocked in a pipe write",
        )
        answers = watch_the_api(port, seconds=4 * RENEW_INTERVAL)
        assert len(answers) >= 8  # the API thread serves throughout ...
        assert len({view["cycle_at"] for view in answers}) == 1  # ... the loop's last view
        assert systemd.snapshot()[stuck_at + 1 :] == []  # and no ping came meanwhile
        assert "pipe_write" in main_thread_waits_in(controller.pid)

        pipe.drain_to(cluster.root / "a.log")
        resumed = systemd.wait_for("READY=1 once the loop runs", has("READY=1"), since=stuck_at)
        wait_until(lambda: len(pings(systemd.snapshot()[resumed:])) >= 2, 20, "pings again")
        controller.send_signal(signal.SIGTERM)
        assert controller.wait(timeout=30) == 0
    finally:
        pipe.drain_to(cluster.root / "a.log")


def watch_the_api(port: int, seconds: float) -> list[dict[str, object]]:
    """The API's answers over ``seconds``: four cycles, in which a running loop pings four
    times. Each answer must come, or the API is stuck too."""
    answers: list[dict[str, object]] = []
    until = time.monotonic() + seconds

    def one_more() -> bool:
        view = api_view(port)
        assert view is not None, "the API stopped answering"
        answers.append(view)
        return time.monotonic() >= until

    wait_until(one_more, seconds + 10, "the API's answers", every=0.25)
    return answers
