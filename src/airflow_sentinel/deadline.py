"""Calls that return by a deadline, whatever the other end of a connection does.

A database client blocked on a server that stopped answering without closing the
connection (a server stopped with SIGSTOP, a hung proxy) may wait for ever: libpq has no
read timeout, and the stopped server's kernel still acknowledges every packet, so TCP
keepalives and ``tcp_user_timeout`` never fire. A call made here runs on a thread of its
own, and the caller stops waiting at the deadline, measured on this process's monotonic
clock. The call itself cannot be cancelled: it goes on in the background and may still
complete later, and the caller must be ready for that.

The thread is a daemon, so a call stuck for good never keeps the process from exiting
(``concurrent.futures`` joins its workers at exit, so it is not used).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")


class Call(Generic[T]):
    """One function running on a daemon thread of its own; its outcome, once it ends."""

    def __init__(self, fn: Callable[[], T], name: str = "sentinel-call") -> None:
        self._fn = fn
        self._ended = threading.Event()
        self._value: T | None = None
        self._error: BaseException | None = None
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as exc:  # handed to whoever asks for the result
            self._error = exc
        finally:
            self._ended.set()

    def done(self) -> bool:
        return self._ended.is_set()

    def failed(self) -> bool:
        return self.done() and self._error is not None

    def wait(self, timeout: float | None = None) -> bool:
        """True once the call has ended; False when ``timeout`` seconds passed first."""
        return self._ended.wait(None if timeout is None else max(0.0, timeout))

    def result(self) -> T:
        """The function's value, or its exception raised here. Only once it has ended."""
        if not self.done():
            raise RuntimeError("the call has not ended")
        if self._error is not None:
            raise self._error
        return cast(T, self._value)


class DeadlinePassed(TimeoutError):
    """A call did not end in time. It still runs as ``call``, and may end later."""

    def __init__(self, call: Call[Any], timeout: float) -> None:
        super().__init__(f"no answer within {timeout:g}s")
        self.call = call
        self.timeout = timeout


def call_with_deadline(fn: Callable[[], T], timeout: float, name: str = "sentinel-call") -> T:
    """``fn()``, or DeadlinePassed after ``timeout`` seconds; its own exceptions pass through."""
    call = Call(fn, name)
    if not call.wait(timeout):
        raise DeadlinePassed(call, timeout)
    return call.result()


def when_done(call: Call[T], then: Callable[[T], object], name: str = "sentinel-cleanup") -> None:
    """Run ``then(result)`` in the background once ``call`` ends well (best effort)."""

    def follow() -> None:
        call.wait()
        if not call.failed():
            then(call.result())

    Call(follow, name)
