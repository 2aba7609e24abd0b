"""The guard: a small process that owns one scheduler run and enforces the lease fence.

The controller starts one guard per scheduler run, in a session of its own. The guard
starts the scheduler, and kills it and every process it left behind when any of these
happens, without needing the controller:

* the fence deadline passes (the controller stopped renewing: frozen, cut off, slow);
* the controller dies (its end of our stdin pipe closes);
* the controller asks (``stop GRACE``), or the guard gets SIGTERM.

When the controller died (and only then: a frozen one keeps the pipe open) and nothing of
the run is left, the guard starts a helper that gives the lease back, if the controller
told it how (``release JSON``); see crash_release.py.

It is a child subreaper, so descendants that double-fork or change process group still
re-parent to it and are found. The scheduler gets PDEATHSIG=SIGKILL, so even a guard
killed with SIGKILL takes its scheduler with it.

Protocol: the controller writes ``deadline T`` (absolute CLOCK_BOOTTIME seconds),
``stop GRACE`` and ``release JSON`` lines to stdin. The guard writes ``started PID``, then
``exited CODE`` or ``fenced`` or ``refused`` to stdout, and exits. The scheduler's own
output goes to stderr.

Ownership: the guard's command line names the run's owner (``--owner=NODE_ID --instance=TOKEN
--airflow-home=DIR --airflow-config=FILE``). A guard is an ancestor of every process
of its run and never changes its title, so this is the one record of whose scheduler it is
that the scheduler cannot erase (Airflow's setproctitle overwrites the scheduler's own
title and environment), and any controller on the host can read it from /proc.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import psutil

from airflow_sentinel.clock import boottime
from airflow_sentinel.process.linux import become_subreaper, die_with_parent
from airflow_sentinel.process.tree import is_alive, send, wait_gone

KILL_WAIT = 5.0
RELEASE_MODULE = "airflow_sentinel.crash_release"  # imported by the helper, never by us
# A run that would have less than this before its fence is not started at all.
MIN_RUNWAY = 0.5
MODULE = "airflow_sentinel.process.guard"
OWNER_OPTIONS = ("--owner", "--instance", "--airflow-home", "--airflow-config")


@dataclass(frozen=True)
class RunOwner:
    """Whose run a guard serves: a node, one controller process of it, an installation."""

    node_id: str
    instance: str
    airflow_home: str
    airflow_config: str

    def arguments(self) -> list[str]:
        """``--owner=NODE_ID ...``: one word each, so that no value is taken for an option."""
        values = (self.node_id, self.instance, self.airflow_home, self.airflow_config)
        return [f"{option}={value}" for option, value in zip(OWNER_OPTIONS, values, strict=True)]


def is_guard(cmdline: Sequence[str]) -> bool:
    """Whether a command line is a guard's: ``PYTHON -m airflow_sentinel.process.guard``."""
    return list(cmdline[1:3]) == ["-m", MODULE]


def owner_of(cmdline: Sequence[str]) -> RunOwner | None:
    """The owner named on a guard's command line; None if it names none (or not all)."""
    values: dict[str, str] = {}
    for word in cmdline[3:]:
        if word == "--":
            break  # the scheduler's own arguments follow
        option, equals, value = word.partition("=")
        if equals and option in OWNER_OPTIONS:
            values[option] = value
    if set(values) != set(OWNER_OPTIONS):
        return None
    return RunOwner(*(values[option] for option in OWNER_OPTIONS))


@dataclass
class GuardState:
    deadline: float
    eof_grace: float
    child_pid: int = 0
    exit_code: int | None = None
    stop_by: float | None = None  # when a requested stop turns into SIGKILL
    buffer: bytes = field(default=b"")
    release: str | None = None  # how to give the lease back once the controller died
    controller_gone: bool = False  # our stdin closed: the controller process is dead
    all_dead: bool = False  # the last sweep found no process of the run left


def report(message: str) -> None:
    with contextlib.suppress(BrokenPipeError):  # the controller is gone: no one to tell
        os.write(sys.stdout.fileno(), f"{message}\n".encode())


def reap(state: GuardState) -> None:
    """Collect every exited child; remember the scheduler's exit code."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break  # no children at all
        if pid == 0:
            break
        if pid == state.child_pid:
            state.exit_code = os.waitstatus_to_exitcode(status)
    if state.exit_code is None and state.child_pid and not psutil.pid_exists(state.child_pid):
        state.exit_code = -signal.SIGKILL  # gone without a status we could read


def kill_descendants(state: GuardState) -> None:
    """SIGKILL every descendant until none is left (bounded). New orphans re-parent to us.
    ``state.all_dead`` says whether none was left in the end."""
    me = psutil.Process()
    give_up = boottime() + KILL_WAIT
    state.all_dead = False
    while boottime() < give_up:
        reap(state)
        try:
            alive = [p for p in me.children(recursive=True) if is_alive(p)]
        except psutil.Error:
            return  # cannot tell: not proven dead
        if not alive:
            state.all_dead = state.exit_code is not None
            return
        for proc in alive:
            send(proc.pid, signal.SIGKILL)
        wait_gone(alive, 0.2, on_tick=lambda: reap(state))


def begin_stop(state: GuardState, grace: float) -> None:
    if state.stop_by is None and state.child_pid > 0:
        send(state.child_pid, signal.SIGTERM)
    stop_by = boottime() + max(0.0, grace)
    state.stop_by = stop_by if state.stop_by is None else min(state.stop_by, stop_by)


def handle_line(state: GuardState, line: str) -> None:
    verb, _, arg = line.strip().partition(" ")
    if verb == "release":
        state.release = arg or None
        return
    try:
        value = float(arg)
    except ValueError:
        return
    if verb == "deadline":
        state.deadline = value
    elif verb == "stop":
        begin_stop(state, value)


def read_commands(state: GuardState, fd: int) -> bool:
    """Apply complete lines from the controller; False once the controller is gone."""
    chunk = os.read(fd, 4096)
    if not chunk:
        return False
    state.buffer += chunk
    *lines, state.buffer = state.buffer.split(b"\n")
    for line in lines:
        handle_line(state, line.decode(errors="replace"))
    return True


def next_timeout(state: GuardState) -> float:
    wake = state.deadline if state.stop_by is None else min(state.deadline, state.stop_by)
    return max(0.0, wake - boottime())


def supervise(state: GuardState, stdin_fd: int) -> str:
    """Wait for the scheduler to exit or the fence to fall; returns the final report."""
    selector = selectors.DefaultSelector()
    selector.register(stdin_fd, selectors.EVENT_READ, "controller")
    selector.register(os.pidfd_open(state.child_pid), selectors.EVENT_READ, "child")
    controller_alive = True
    while True:
        now = boottime()
        if now >= state.deadline:
            kill_descendants(state)
            return "fenced"
        if state.stop_by is not None and now >= state.stop_by:
            kill_descendants(state)
            if state.exit_code is not None:
                return f"exited {state.exit_code}"
        for key, _ in selector.select(next_timeout(state)):
            if key.data == "child":
                reap(state)
                if state.exit_code is not None:
                    kill_descendants(state)
                    return f"exited {state.exit_code}"
            elif controller_alive and not read_commands(state, stdin_fd):
                controller_alive = False
                state.controller_gone = True
                selector.unregister(stdin_fd)
                begin_stop(state, min(state.eof_grace, state.deadline - boottime()))


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="airflow-sentinel-guard")
    parser.add_argument("--deadline", type=float, required=True)
    parser.add_argument("--grace", type=float, required=True)
    for option in OWNER_OPTIONS:  # read by other processes from /proc, never by the guard
        parser.add_argument(option, default="")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    state = GuardState(deadline=args.deadline, eof_grace=args.grace)
    become_subreaper()
    signal.signal(signal.SIGTERM, lambda *_: begin_stop(state, args.grace))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not command or state.deadline - boottime() < MIN_RUNWAY:
        report("refused")
        return 3
    me = os.getpid()
    try:
        child = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=sys.stderr.fileno(),
            preexec_fn=lambda: die_with_parent(me),  # noqa: PLW1509 - single-threaded guard
        )
    except OSError as exc:
        print(f"cannot start {command[0]}: {exc.strerror}", file=sys.stderr)
        report("exited 127")
        return 0
    state.child_pid = child.pid
    report(f"started {child.pid}")
    outcome = supervise(state, sys.stdin.fileno())
    child.returncode = state.exit_code if state.exit_code is not None else -9
    report(outcome)
    if state.controller_gone and state.all_dead and state.release is not None:
        give_lease_back(state.release)
    return 0


def give_lease_back(request: str) -> None:
    """Start the helper that releases the dead controller's lease; do not wait for it (it
    is bounded, and a restarted controller must not find this guard still there)."""
    print(
        "airflow-sentinel guard: the controller died and the run is dead: giving the lease back",
        file=sys.stderr,
        flush=True,
    )
    try:
        helper = subprocess.Popen(
            [sys.executable, "-m", RELEASE_MODULE],
            stdin=subprocess.PIPE,
            stdout=sys.stderr.fileno(),
            start_new_session=True,
        )
    except OSError as exc:
        print(f"cannot give the lease back: {exc.strerror}", file=sys.stderr)
        return
    assert helper.stdin is not None
    with contextlib.suppress(OSError):
        helper.stdin.write(f"{request}\n".encode())
        helper.stdin.close()


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
