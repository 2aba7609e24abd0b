"""Real SMTP servers in the test process (aiosmtpd): plain, or with STARTTLS and AUTH, that
keep every message they accept, raw; and a server that accepts and never answers."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from airflow_sentinel.soak.servers import free_port

HOST = "127.0.0.1"


@dataclass
class Received:
    mail_from: str
    rcpt_to: list[str]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.raw, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @property
    def body(self) -> str:
        return str(self.message.get_content()).replace("\r\n", "\n")  # as a reader shows it


@dataclass
class Inbox:
    messages: list[Received] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802 - aiosmtpd's name
        content = envelope.original_content or b""
        with self.lock:
            self.messages.append(
                Received(str(envelope.mail_from), list(envelope.rcpt_tos), bytes(content))
            )
        return "250 OK"

    def received(self) -> list[Received]:
        with self.lock:
            return list(self.messages)


@dataclass(frozen=True)
class SmtpServer:
    host: str
    port: int
    inbox: Inbox


@contextmanager
def smtp_server(
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    login: tuple[str, str] | None = None,
) -> Iterator[SmtpServer]:
    """A server on a free port. With a certificate it offers STARTTLS and requires it;
    with ``login`` it requires AUTH (only after STARTTLS, as aiosmtpd insists)."""
    inbox = Inbox()
    options: dict[str, Any] = {}
    if tls_cert is not None and tls_key is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(tls_cert), str(tls_key))
        options.update(tls_context=context, require_starttls=True)
    if login is not None:
        options.update(
            authenticator=_authenticator(login, inbox), auth_required=True, auth_require_tls=True
        )
    port = free_port(HOST)
    controller = Controller(inbox, hostname=HOST, port=port, **options)
    controller.start()
    try:
        yield SmtpServer(HOST, port, inbox)
    finally:
        controller.stop()


def _authenticator(login: tuple[str, str], inbox: Inbox) -> Any:
    def authenticate(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and (data.login.decode(), data.password.decode()) == login
        )
        if ok:
            inbox.logins.append(data.login.decode())
        return AuthResult(success=ok, handled=False)

    return authenticate


@contextmanager
def hanging_smtp_server() -> Iterator[tuple[str, int]]:
    """Accepts connections and never says a word: a client waits for its greeting."""
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield HOST, listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        listener.close()


def closed_port() -> int:
    """A port nothing listens on: connections to it are refused."""
    return free_port(HOST)
