"""The sd_notify protocol with the standard library: one datagram of ``KEY=VALUE`` lines
to the unix socket that systemd names in NOTIFY_SOCKET. Sending never blocks and never
raises: a message systemd cannot take is dropped, as libsystemd's sd_notify drops it."""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger("airflow_sentinel.systemd")

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"
SYSTEMD_VARIABLES = (NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID)


def socket_address(raw: str) -> str | None:
    """The address to send to: an absolute path, or an abstract name ('@' stands for the
    leading NUL byte). None for anything else (a relative path, a vsock address)."""
    if raw.startswith("@") and len(raw) > 1:
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    return None


class Notifier:
    """Sends notifications to one socket; ``send`` reports whether the datagram left."""

    def __init__(self, address: str, sock: socket.socket | None = None) -> None:
        self.address = address
        self._sock = sock or socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)  # a full queue drops the message, the loop goes on
        self._failed = False
        self._closed = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Notifier | None:
        raw = environ.get(NOTIFY_SOCKET)
        if not raw:
            return None
        address = socket_address(raw)
        if address is None:
            log.warning("NOTIFY_SOCKET=%s is not a unix socket path or @name; not notifying", raw)
            return None
        return cls(address)

    def send(self, *assignments: str) -> bool:
        if self._closed:
            return False
        message = "\n".join(assignments).encode()
        try:
            self._sock.sendto(message, self.address)
        except OSError as exc:
            self._report(exc)
            return False
        return True

    def close(self) -> None:
        self._closed = True
        self._sock.close()

    def _report(self, exc: OSError) -> None:
        # Once as a warning; a service manager that is gone would repeat it every cycle.
        level = logging.DEBUG if self._failed else logging.WARNING
        self._failed = True
        log.log(level, "cannot notify systemd at %s: %s", self.address.replace("\0", "@"), exc)


@dataclass(frozen=True)
class Watchdog:
    """systemd expects a WATCHDOG=1 at least this often, or it kills and restarts us."""

    interval_s: float


def watchdog_from(environ: Mapping[str, str], pid: int) -> Watchdog | None:
    """The watchdog systemd asks for, if it asks this process (WATCHDOG_PID absent or ours)."""
    try:
        usec = int(environ.get(WATCHDOG_USEC, ""))
    except ValueError:
        return None
    owner = environ.get(WATCHDOG_PID)
    if usec <= 0 or (owner is not None and owner.strip() != str(pid)):
        return None
    return Watchdog(usec / 1_000_000)
