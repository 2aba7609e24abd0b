"""How the loop sleeps until its next deadline, and what cuts the sleep short: a wake-up
from another thread or a signal handler (a socket pair, safe from both), or the guard's
pipe when the scheduler's run has something to say; and the signal handlers, which only
note what was asked and wake the loop. Kept apart from the loop, which only decides how
long to sleep and what to do once awake."""

from __future__ import annotations

import contextlib
import selectors
import signal
import socket
from collections.abc import Callable
from types import FrameType


class Wakeup:
    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)

    def wake(self) -> None:
        """End the current or next sleep; safe from any thread and from a signal handler."""
        with contextlib.suppress(OSError):  # full buffer: a wake-up is pending anyway
            self._w.send(b"\0")

    def sleep(self, timeout: float, also: int | None = None) -> None:
        """Up to ``timeout`` seconds, less when woken or when the file descriptor ``also``
        becomes readable. The wake-ups that ended it are used up."""
        with selectors.DefaultSelector() as selector:
            selector.register(self._r, selectors.EVENT_READ)
            if also is not None:
                selector.register(also, selectors.EVENT_READ)
            selector.select(timeout)
        with contextlib.suppress(OSError):  # BlockingIOError: drained
            while self._r.recv(512):
                pass


def install_signal_handlers(stop: Callable[[str], None], hangup: Callable[[], None]) -> None:
    """SIGTERM and SIGINT call ``stop`` with the signal's name, SIGHUP calls ``hangup``.
    Both run in a signal handler: they note the request and wake the loop, which logs it
    (a handler that logged could interrupt a write to the same stream, and that write
    would fail)."""

    def on_stop(signum: int, _frame: FrameType | None) -> None:
        stop(signal.Signals(signum).name)

    def on_hangup(_signum: int, _frame: FrameType | None) -> None:
        hangup()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    # A closed terminal or SSH session sends SIGHUP: reload, as daemons do; never die.
    signal.signal(signal.SIGHUP, on_hangup)
