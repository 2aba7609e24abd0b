"""The controller's HTTP API: probes for load balancers (200 or 503, HEAD too), the node's
view as JSON, Prometheus metrics.

It answers from what the loop published last, on threads of its own: a slow or hostile
client costs a thread until its socket times out, never a cycle of the loop. Requests are
bounded (line, headers, body), and every bad one gets a short 4xx.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from airflow_sentinel.api.actions import ClusterActions, switchover_request
from airflow_sentinel.api.metrics import Metrics
from airflow_sentinel.api.page import render as render_page
from airflow_sentinel.controller.published import NodeView

log = logging.getLogger("airflow_sentinel.api")

SOCKET_TIMEOUT = 5.0  # a client that sends nothing for this long is dropped
MAX_BODY = 64 * 1024  # no endpoint needs more
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
ACTIONS = ["/pause", "/resume", "/switchover", "/wake"]


@dataclass(frozen=True)
class Access:
    """Who may ask what: networks first (403), then the token (401, no detail)."""

    token: bytes = b""  # empty: no token configured, so no actions
    all_need_token: bool = False  # api_auth = all
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def allows_address(self, address: str) -> bool:
        if not self.networks:
            return True
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self.networks)

    def authorized(self, header: str | None) -> bool:
        """A Bearer token, or basic auth whose password is the token (any user name)."""
        if not self.token or not header:
            return False
        scheme, _, value = header.strip().partition(" ")
        given = b""
        if scheme.lower() == "bearer":
            given = value.strip().encode()
        elif scheme.lower() == "basic":
            try:
                given = base64.b64decode(value.strip(), validate=True).partition(b":")[2]
            except (ValueError, binascii.Error):
                return False
        return bool(given) and hmac.compare_digest(given, self.token)


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "application/json"


def _json(status: int, payload: dict[str, Any]) -> Answer:
    return Answer(status, (json.dumps(payload, sort_keys=True) + "\n").encode())


class Routes:
    """What each path answers, from a view and the time: no I/O, tested without a socket."""

    def __init__(
        self,
        view: Callable[[], NodeView | None],
        now: Callable[[], float],
        metrics: Metrics | None = None,
        actions: ClusterActions | None = None,
    ) -> None:
        self._view = view
        self._now = now
        self._metrics = metrics
        self._actions = actions
        self.probes: dict[str, Callable[[NodeView, float], bool]] = {
            "/active": NodeView.is_active,
            "/standby": NodeView.is_fit_standby,
            "/liveness": NodeView.live,
            "/readiness": NodeView.is_ready,
        }

    def get(self, target: str) -> Answer:
        path, _, query = target.partition("?")
        path = path.rstrip("/") or "/"
        if path == "/metrics" and self._metrics is not None:
            return Answer(HTTPStatus.OK, self._metrics.render(), PROMETHEUS_TEXT)
        view = self._view()
        if path in self.probes:
            if view is None:  # the loop has not finished a cycle yet
                return _json(HTTPStatus.SERVICE_UNAVAILABLE, {"state": "starting"})
            ok = self.probes[path](view, self._now())
            return _json(
                HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, self._summary(view)
            )
        if path == "/" and self._actions is not None:
            page = render_page(self._actions.page())
            return Answer(HTTPStatus.OK, page.encode(), "text/html; charset=utf-8")
        if path in ("/cluster", "/history") and self._actions is not None:
            if path == "/cluster":
                return _json(*self._actions.cluster())
            return _json(*self._actions.history(_limit(query)))
        if path == "/status":
            if view is None:
                return _json(HTTPStatus.SERVICE_UNAVAILABLE, {"state": "starting"})
            return _json(HTTPStatus.OK, {**view.as_json(), "cycle_age_s": self._age(view)})
        return _json(HTTPStatus.NOT_FOUND, {"error": "no such path", "paths": self.paths()})

    def post(self, path: str, body: object) -> Answer:
        path = path.split("?", 1)[0].rstrip("/")
        if path not in ACTIONS:
            if path in self.paths():
                return _json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "read-only endpoint"})
            return _json(HTTPStatus.NOT_FOUND, {"error": "no such action", "actions": ACTIONS})
        if self._actions is None:
            return _json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "actions are not available"})
        if path == "/pause":
            return _json(*self._actions.pause())
        if path == "/resume":
            return _json(*self._actions.resume())
        if path == "/wake":  # a switchover's target, told by the node that handed over
            return _json(*self._actions.wake_self())
        request = switchover_request(body)
        if isinstance(request, str):
            return _json(HTTPStatus.BAD_REQUEST, {"error": request})
        return _json(*self._actions.switchover(*request))

    def paths(self) -> list[str]:
        found = [*self.probes, "/status", *(["/metrics"] if self._metrics else [])]
        if self._actions is not None:
            found += ["/", "/cluster", "/history"]
        return sorted(found)

    def _summary(self, view: NodeView) -> dict[str, Any]:
        return {
            "node_id": view.node_id,
            "role": view.role,
            "epoch": view.epoch,
            "scheduler": view.scheduler_state,
            "cycle_age_s": self._age(view),
        }

    def _age(self, view: NodeView) -> float:
        return round(self._now() - view.cycle_at, 3)


def _limit(query: str, default: int = 100, most: int = 1000) -> int:
    """?limit=N, bounded; anything else is the default."""
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name == "limit" and value.isdigit():
            return max(1, min(most, int(value)))
    return default


class _Handler(BaseHTTPRequestHandler):
    server: ApiServer
    timeout = SOCKET_TIMEOUT  # per socket operation: a slow client is cut off
    protocol_version = "HTTP/1.1"
    server_version = "airflow-sentinel"
    sys_version = ""
    error_message_format = '{"error": %(code)d}\n'  # no HTML, no detail, always JSON
    error_content_type = "application/json"

    def do_GET(self) -> None:
        if self._admitted(action=False):
            self._send(self.server.routes.get(self.path))

    def do_HEAD(self) -> None:
        if self._admitted(action=False):
            self._send(self.server.routes.get(self.path), body=False)

    def do_POST(self) -> None:
        if not self._admitted(action=True):
            return
        raw = self._read_body()
        if raw is None:
            return
        try:
            body = json.loads(raw) if raw.strip() else None
        except ValueError:
            self._send(_json(HTTPStatus.BAD_REQUEST, {"error": "the body is not JSON"}))
            return
        self._send(self.server.routes.post(self.path, body))

    def do_PUT(self) -> None:
        if self._admitted(action=False) and self._read_body() is not None:
            self._send(_json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "GET, HEAD or POST"}))

    do_DELETE = do_PATCH = do_PUT  # noqa: N815

    def _admitted(self, action: bool) -> bool:
        """The network, then the token; False when already answered (403 or 401)."""
        access = self.server.access
        if not access.allows_address(self.client_address[0]):
            self.close_connection = True
            self._send(_json(HTTPStatus.FORBIDDEN, {"error": "forbidden"}))
            return False
        if not (action or access.all_need_token):
            return True
        if action and not access.token:
            self.close_connection = True  # its body is not read
            self._send(
                _json(
                    HTTPStatus.FORBIDDEN,
                    {"error": "actions need a token: set [sentinel] api_token_file"},
                )
            )
            return False
        if access.authorized(self.headers.get("Authorization")):
            return True
        self.close_connection = True
        self._send(_json(HTTPStatus.UNAUTHORIZED, {"error": "unauthorized"}))
        return False

    def _read_body(self) -> bytes | None:
        """The body within bounds; None (answered) when it is not."""
        raw = self.headers.get("Content-Length", "0")
        if not raw.isdigit():
            self.close_connection = True
            self._send(_json(HTTPStatus.BAD_REQUEST, {"error": "bad Content-Length"}))
            return None
        length = int(raw)
        if length > MAX_BODY:
            self.close_connection = True
            self._send(_json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "body too large"}))
            return None
        return self.rfile.read(length)

    def _send(self, answer: Answer, body: bool = True) -> None:
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        self.send_header("Cache-Control", "no-store")
        if answer.status == HTTPStatus.METHOD_NOT_ALLOWED:
            self.send_header("Allow", "GET, HEAD, POST")
        if answer.status == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Bearer realm="airflow-sentinel"')
        self.end_headers()
        if body:
            self.wfile.write(answer.body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("api %s: " + format, self.address_string(), *args)


MAX_CONNECTIONS = 32  # served at once; more are closed at once, not queued on threads


class ApiServer(ThreadingHTTPServer):
    """Serves ``routes`` on ``address`` from a daemon thread; ``close`` stops it. At most
    MAX_CONNECTIONS at once, each on its own thread: a flood costs sockets, not threads."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        routes: Routes,
        access: Access | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)
        self.routes = routes
        self.access = access or Access()
        self.tls = tls
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.5}, name="api", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def busy(self) -> int:
        """Connections being served now (at most MAX_CONNECTIONS)."""
        with self._busy_lock:
            return self._busy

    def start(self) -> ApiServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self.shutdown()
        self.server_close()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._busy_lock:
            full = self._busy >= MAX_CONNECTIONS
            if not full:
                self._busy += 1
        if full:
            self.shutdown_request(request)  # this one is dropped, the others go on
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            if self.tls is not None:
                request = self._handshake(request, client_address)
                if request is None:
                    return
            super().process_request_thread(request, client_address)
        finally:
            with self._busy_lock:
                self._busy -= 1

    def _handshake(self, raw: socket.socket, client_address: Any) -> ssl.SSLSocket | None:
        """TLS on this connection's own thread, bounded by the socket timeout: a client that
        never finishes its handshake holds one slot until then, never the accepting thread.
        None (closed, logged at debug) when it fails: a plain-HTTP client, no certificate
        or one the CA did not sign."""
        assert self.tls is not None
        raw.settimeout(SOCKET_TIMEOUT)
        wrapped = None
        try:
            wrapped = self.tls.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            wrapped.do_handshake()
        except (OSError, ValueError) as exc:
            log.debug("api: TLS handshake with %s failed: %s", client_address, exc)
            self.shutdown_request(wrapped or raw)
            return None
        return wrapped

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("api: request from %s failed", client_address, exc_info=True)


def start_api(
    address: tuple[str, int],
    routes: Routes,
    access: Access | None = None,
    tls: ssl.SSLContext | None = None,
) -> ApiServer | None:
    """The running server, or None (logged) when the address cannot be bound: the
    controller runs on without its API rather than not at all."""
    try:
        server = ApiServer(address, routes, access, tls)
    except OSError as exc:
        log.error(  # noqa: TRY400 - an environment problem: one line
            "HTTP API not started: cannot listen on %s:%s (%s); set [sentinel] api_address",
            address[0],
            address[1],
            exc.strerror,
        )
        return None
    log.info("HTTP API on %s://%s:%s", "https" if tls else "http", address[0], server.port)
    return server.start()
