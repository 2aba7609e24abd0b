"""A stand-in for systemd's notify socket: a unix datagram socket that keeps every message
with the time it arrived and the sender's pid, which the kernel vouches for
(SCM_CREDENTIALS, as systemd reads it to enforce NotifyAccess=main)."""

from __future__ import annotations

import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tests.support.cluster import wait_until

CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class Notification:
    at: float  # time.monotonic() when it arrived
    pid: int | None  # the sender's pid, None when the kernel sent no credentials
    raw: str

    @property
    def fields(self) -> dict[str, str]:
        pairs = (line.split("=", 1) for line in self.raw.split("\n") if "=" in line)
        return dict(pairs)

    def has(self, assignment: str) -> bool:
        """READY=1 or STATUS=..., as one whole line of the message."""
        return assignment in self.raw.split("\n")


class NotifySocket:
    """Bound at ``address`` ('@name' for an abstract name); ``drain`` reads what has come
    (for tests without threads), ``start`` reads on a thread of its own as it comes."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.messages: list[Notification] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock.bind(self.bound_to)
        self._sock.setblocking(False)
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def bound_to(self) -> str:
        """The address as the socket calls take it: '@' is the abstract name's NUL byte."""
        return "\0" + self.address[1:] if self.address.startswith("@") else self.address

    def drain(self) -> list[Notification]:
        """Every message that has arrived and was not read yet."""
        new = []
        while (message := self._receive()) is not None:
            new.append(message)
        with self._lock:
            self.messages += new
        return new

    def start(self) -> None:
        self._sock.settimeout(0.1)  # to notice close()
        self._thread = threading.Thread(target=self._read_until_closed, daemon=True)
        self._thread.start()

    def snapshot(self) -> list[Notification]:
        with self._lock:
            return list(self.messages)

    def wait_for(
        self, what: str, match: Callable[[Notification], bool], since: int = 0, timeout: float = 30
    ) -> int:
        """The index of the first message, at ``since`` or later, that matches."""

        def found() -> int | None:
            messages = self.snapshot()
            hits = [i for i in range(since, len(messages)) if match(messages[i])]
            return hits[0] + 1 if hits else None  # +1: index 0 must count as found

        return wait_until(found, timeout, what) - 1

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sock.close()

    def _read_until_closed(self) -> None:
        while not self._closed.is_set():
            try:
                message = self._receive()
            except OSError:
                return
            if message is not None:
                with self._lock:
                    self.messages.append(message)

    def _receive(self) -> Notification | None:
        try:
            data, ancillary, _flags, _addr = self._sock.recvmsg(
                4096, socket.CMSG_SPACE(CREDENTIALS.size)
            )
        except (BlockingIOError, TimeoutError):
            return None
        pid = None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = CREDENTIALS.unpack(payload[: CREDENTIALS.size])[0]
        return Notification(time.monotonic(), pid, data.decode(errors="replace"))


@contextmanager
def notify_socket(address: str | None = None) -> Iterator[NotifySocket]:
    """A fresh socket, by default under an abstract name of its own (no path-length limit,
    nothing to clean up)."""
    sock = NotifySocket(address or f"@airflow-sentinel-test-{uuid.uuid4().hex}")
    try:
        yield sock
    finally:
        sock.close()
