"""The controller's side of a guarded scheduler run: start, extend the fence, stop, events.

This is the thin layer between the controller and the operating system; unit tests swap
it for a recorder (``Launcher`` is the seam).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from airflow_sentinel.crash_release import MetastoreAccess, ReleaseRequest
from airflow_sentinel.process.guard import MODULE as GUARD_MODULE
from airflow_sentinel.process.guard import RunOwner

MARKER_ENV = "AIRFLOW_SENTINEL_NODE_ID"
EPOCH_ENV = "AIRFLOW_SENTINEL_EPOCH"


@dataclass(frozen=True)
class RunEnded:
    """The guard's last word: the scheduler exited (code), was fenced, or was refused."""

    outcome: str  # "exited", "fenced", "refused", "lost" (guard vanished without a word)
    code: int | None = None


class SchedulerRun(Protocol):
    @property
    def scheduler_pid(self) -> int | None: ...

    def fileno(self) -> int: ...

    def extend(self, fence_at: float) -> None: ...

    def stop(self, grace: float) -> None: ...

    def poll(self) -> RunEnded | None:
        """Read what the guard said (without blocking); the end of the run, if it came."""

    def wait(self, timeout: float) -> RunEnded | None:
        """Block until the run ends or ``timeout`` passes."""


class Launcher(Protocol):
    def launch(
        self,
        argv: list[str],
        env: Mapping[str, str],
        fence_at: float,
        grace: float,
        owner: RunOwner | None = None,
    ) -> SchedulerRun:
        """Start ``argv`` under a guard; ``owner`` is written where other controllers read
        it (the guard's command line)."""


class GuardedRun:
    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self._process = process
        self._buffer = b""
        self._pid: int | None = None
        self._ended: RunEnded | None = None
        assert process.stdout is not None and process.stdin is not None
        self._out = process.stdout.fileno()
        self._in = process.stdin
        os.set_blocking(self._out, False)

    @property
    def scheduler_pid(self) -> int | None:
        return self._pid

    @property
    def guard_pid(self) -> int:
        return self._process.pid

    def fileno(self) -> int:
        return self._out

    def _send(self, line: str) -> None:
        try:
            self._in.write(f"{line}\n".encode())
            self._in.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass  # the guard is gone; poll() will say how it ended

    def extend(self, fence_at: float) -> None:
        self._send(f"deadline {fence_at:.6f}")

    def stop(self, grace: float) -> None:
        self._send(f"stop {grace:.3f}")

    def send_release(self, request: str) -> None:
        """How the guard gives the lease back if we die; through the pipe only (secret)."""
        self._send(f"release {request}")

    def poll(self) -> RunEnded | None:
        if self._ended is not None:
            return self._ended
        while True:
            try:
                chunk = os.read(self._out, 4096)
            except BlockingIOError:
                return None
            if not chunk:
                return self._finish(RunEnded("lost"))
            self._buffer += chunk
            *lines, self._buffer = self._buffer.split(b"\n")
            for line in lines:
                ended = self._parse(line.decode(errors="replace").strip())
                if ended is not None:
                    return self._finish(ended)

    def _parse(self, line: str) -> RunEnded | None:
        verb, _, arg = line.partition(" ")
        if verb == "started" and arg.isdigit():
            self._pid = int(arg)
        elif verb == "exited":
            return RunEnded("exited", int(arg) if arg.lstrip("-").isdigit() else None)
        elif verb in ("fenced", "refused"):
            return RunEnded(verb)
        return None

    def _finish(self, ended: RunEnded) -> RunEnded:
        self._ended = ended
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        for stream in (self._process.stdout, self._process.stdin):
            if stream is not None:
                with contextlib.suppress(OSError):  # the guard is gone; nothing to flush to
                    stream.close()
        return ended

    def wait(self, timeout: float) -> RunEnded | None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._out, selectors.EVENT_READ)
            give_up = time.monotonic() + timeout
            while True:
                ended = self.poll()
                remaining = give_up - time.monotonic()
                if ended is not None or remaining <= 0:
                    return ended
                selector.select(remaining)


def guard_command(
    argv: list[str], fence_at: float, grace: float, owner: RunOwner | None = None
) -> list[str]:
    """The guard's command line: its owner first (read by other controllers), the scheduler's
    own command after ``--``."""
    return [
        sys.executable,
        "-m",
        GUARD_MODULE,
        *(owner.arguments() if owner is not None else []),
        "--deadline",
        f"{fence_at:.6f}",
        "--grace",
        f"{grace:.3f}",
        "--",
        *argv,
    ]


class GuardLauncher:
    """Starts each scheduler run under a guard process in a session of its own.
    ``output``: the file descriptor that gets the scheduler's own output (and the guard's
    few lines); None: the controller's standard error."""

    def __init__(self, output: int | None = None, access: MetastoreAccess | None = None) -> None:
        self.output = output
        # Given to each guard, so that it can give the lease back if the controller dies.
        self.access = access

    def launch(
        self,
        argv: list[str],
        env: Mapping[str, str],
        fence_at: float,
        grace: float,
        owner: RunOwner | None = None,
    ) -> GuardedRun:
        process = subprocess.Popen(
            guard_command(argv, fence_at, grace, owner),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.output,
            bufsize=0,  # each command reaches the guard whole, or fails at once
            env=dict(env),
            start_new_session=True,
        )
        run = GuardedRun(process)
        epoch = env.get(EPOCH_ENV, "")
        if self.access is not None and owner is not None and epoch.isdigit():
            request = ReleaseRequest(self.access, owner.node_id, owner.instance, int(epoch))
            run.send_release(request.to_line())
        return run
