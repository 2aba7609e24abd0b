"""A TCP proxy on loopback that a test can cut (traffic silently dropped) and heal, or
freeze (nothing forwarded, nothing closed: a hung server) and thaw."""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field


@dataclass
class Proxy:
    upstream: tuple[str, int]
    listener: socket.socket = field(init=False)
    cut: threading.Event = field(default_factory=threading.Event)
    closed: threading.Event = field(default_factory=threading.Event)
    flowing: threading.Event = field(default_factory=threading.Event)
    _sockets: list[socket.socket] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.flowing.set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        host, port = self.listener.getsockname()[:2]
        return f"{host}:{port}"

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.flowing.wait()  # frozen: the connection is open, and nobody answers it
            if self.cut.is_set() or self.closed.is_set():
                client.close()  # nothing gets through while cut
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                self.flowing.wait()  # frozen: the bytes wait, and so does everything after
                if not self.cut.is_set():  # while cut, bytes vanish like dropped packets
                    sink.sendall(chunk)
        _hang_up(source, sink)

    def sever(self) -> None:
        self.cut.set()

    def heal(self) -> None:
        """Close the connections that lost bytes; new ones go through again."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        _hang_up(*sockets)
        self.cut.clear()

    def freeze(self) -> None:
        """Stop forwarding and keep every connection open: new ones are accepted (by the
        kernel) and wait, bytes sent wait, as with a server stopped by SIGSTOP."""
        self.flowing.clear()

    def thaw(self) -> None:
        """Forward again, the bytes that waited first (an abandoned call may land now)."""
        self.flowing.set()

    def close(self) -> None:
        self.closed.set()
        self.flowing.set()
        self.listener.close()
        self.heal()


def _hang_up(*sockets: socket.socket) -> None:
    """FIN to every peer (a plain close() leaves a peer hanging while a thread still
    reads the socket), then close."""
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()
