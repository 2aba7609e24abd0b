"""The controller's HTTP API: probes for load balancers (200 or 503, HEAD too), the node's
view as JSON, Prometheus metrics.

It answers from what the loop published last, on threads of its own: a slow or hostile
client costs a thread until its socket times out, never a cycle of the loop. Requests are
bounded (line, headers, body), and every bad one gets a short 4xx.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from airflow_sentinel.api.metrics import Metrics
from airflow_sentinel.controller.published import NodeView

log = logging.getLogger("airflow_sentinel.api")

SOCKET_TIMEOUT = 5.0  # a client that sends nothing for this long is dropped
MAX_BODY = 64 * 1024  # no endpoint needs more
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


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
    ) -> None:
        self._view = view
        self._now = now
        self._metrics = metrics
        self.probes: dict[str, Callable[[NodeView, float], bool]] = {
            "/active": NodeView.is_active,
            "/standby": NodeView.is_fit_standby,
            "/liveness": NodeView.live,
            "/readiness": NodeView.is_ready,
        }

    def get(self, path: str) -> Answer:
        path = path.split("?", 1)[0].rstrip("/") or "/"
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
        if path == "/status":
            if view is None:
                return _json(HTTPStatus.SERVICE_UNAVAILABLE, {"state": "starting"})
            return _json(HTTPStatus.OK, {**view.as_json(), "cycle_age_s": self._age(view)})
        return _json(HTTPStatus.NOT_FOUND, {"error": "no such path", "paths": self.paths()})

    def paths(self) -> list[str]:
        return sorted([*self.probes, "/status", *(["/metrics"] if self._metrics else [])])

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


class _Handler(BaseHTTPRequestHandler):
    server: ApiServer
    timeout = SOCKET_TIMEOUT  # per socket operation: a slow client is cut off
    protocol_version = "HTTP/1.1"
    server_version = "airflow-sentinel"
    sys_version = ""
    error_message_format = '{"error": "%(code)d %(message)s"}\n'  # no HTML, no detail
    error_content_type = "application/json"

    def do_GET(self) -> None:
        self._send(self.server.routes.get(self.path))

    def do_HEAD(self) -> None:
        self._send(self.server.routes.get(self.path), body=False)

    def do_POST(self) -> None:
        if not self._discard_body():
            return
        self._send(_json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "read-only endpoints"}))

    do_PUT = do_DELETE = do_PATCH = do_POST  # noqa: N815

    def _discard_body(self) -> bool:
        """Read and drop a body within bounds; False (answered) when it is not."""
        raw = self.headers.get("Content-Length", "0")
        if not raw.isdigit():
            self._send(_json(HTTPStatus.BAD_REQUEST, {"error": "bad Content-Length"}))
            return False
        length = int(raw)
        if length > MAX_BODY:
            self.close_connection = True
            self._send(_json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "body too large"}))
            return False
        self.rfile.read(length)
        return True

    def _send(self, answer: Answer, body: bool = True) -> None:
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        self.send_header("Cache-Control", "no-store")
        if answer.status == HTTPStatus.METHOD_NOT_ALLOWED:
            self.send_header("Allow", "GET, HEAD")
        self.end_headers()
        if body:
            self.wfile.write(answer.body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("api %s: " + format, self.address_string(), *args)


class ApiServer(ThreadingHTTPServer):
    """Serves ``routes`` on ``address`` from a daemon thread; ``close`` stops it."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], routes: Routes) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)
        self.routes = routes
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.5}, name="api", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> ApiServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self.shutdown()
        self.server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("api: request from %s failed", client_address, exc_info=True)


def start_api(address: tuple[str, int], routes: Routes) -> ApiServer | None:
    """The running server, or None (logged) when the address cannot be bound: the
    controller runs on without its API rather than not at all."""
    try:
        server = ApiServer(address, routes)
    except OSError as exc:
        log.error(  # noqa: TRY400 - an environment problem: one line
            "HTTP API not started: cannot listen on %s:%s (%s); set [sentinel] api_address",
            address[0],
            address[1],
            exc.strerror,
        )
        return None
    log.info("HTTP API on http://%s:%s", address[0], server.port)
    return server.start()
