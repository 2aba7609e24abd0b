"""The HTTP API on its own: what each probe answers for a view, and a real server on a
loopback port fed a view by hand (bad requests, slow clients, HEAD, metrics). Real
controllers behind it are in tests/integration/test_api.py."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from airflow_sentinel.api.actions import RECONNECT_EVERY, ClusterActions, LazyStore
from airflow_sentinel.api.metrics import Metrics, takeover_reason
from airflow_sentinel.api.server import MAX_BODY, MAX_CONNECTIONS, Access, ApiServer, Routes
from airflow_sentinel.api.wake import handed_over_to
from airflow_sentinel.cli import advertised_url
from airflow_sentinel.clock import FakeClock
from airflow_sentinel.config.settings import parse_api_allow
from airflow_sentinel.controller import events as ev
from airflow_sentinel.controller.published import NodeView, Publisher
from airflow_sentinel.errors import MetastoreError
from airflow_sentinel.metastore import Metastore, open_metastore
from airflow_sentinel.metastore.base import Event
from tests.support.views import ACTIVE

STANDBY = replace(
    ACTIVE,
    role="standby",
    epoch=None,
    lease_left_s=None,
    demote_in_s=None,
    scheduler_state=None,
    scheduler_pid=None,
)


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def routes(view: NodeView | None, clock: Clock) -> Routes:
    return Routes(lambda: view, clock)


@pytest.mark.parametrize(
    ("view", "path", "status"),
    [
        (ACTIVE, "/active", 200),
        (ACTIVE, "/standby", 503),
        (ACTIVE, "/readiness", 200),
        (STANDBY, "/active", 503),
        (STANDBY, "/standby", 200),
        (replace(ACTIVE, scheduler_state="starting"), "/active", 503),  # not proven yet
        (replace(ACTIVE, demote_in_s=-0.1), "/active", 503),
        (replace(ACTIVE, leaving=True), "/active", 503),  # stopping its scheduler
        (replace(STANDBY, paused=True), "/standby", 503),  # would not take over
        (replace(STANDBY, held="upgrade"), "/standby", 503),
        (replace(STANDBY, fit=False), "/standby", 503),  # cooling down
        (replace(STANDBY, conflict="clone"), "/standby", 503),
        (replace(STANDBY, conflict="clone"), "/readiness", 503),
        (replace(STANDBY, metastore_reachable=False), "/readiness", 503),
        (replace(STANDBY, role="stopped"), "/readiness", 503),
        (None, "/active", 503),  # no cycle finished yet
    ],
)
def test_each_probe_answers_for_the_view(view: NodeView | None, path: str, status: int) -> None:
    assert routes(view, Clock()).get(path).status == status


def test_past_its_demote_deadline_since_the_last_cycle_a_node_is_not_active() -> None:
    clock = Clock()
    clock.now = 100.0 + 3.0  # the lease is good for 4 s more than the last cycle saw
    assert routes(ACTIVE, clock).get("/active").status == 200
    clock.now = 100.0 + 4.5  # the loop has not looked since: it may be demoting now
    assert routes(ACTIVE, clock).get("/active").status == 503
    fresh = replace(ACTIVE, demote_in_s=60.0)
    clock.now = 100.0 + 6.5  # no cycle for two intervals: the view is too old to vouch
    assert routes(fresh, clock).get("/active").status == 503


def test_liveness_fails_when_the_loop_stops_cycling() -> None:
    clock = Clock()
    assert routes(STANDBY, clock).get("/liveness").status == 200
    clock.now = 100.0 + 3.0 + 30.0  # the longest a cycle may take (a stop, a kill)
    assert routes(STANDBY, clock).get("/liveness").status == 200
    clock.now += 0.1
    answer = routes(STANDBY, clock).get("/liveness")
    assert answer.status == 503 and json.loads(answer.body)["cycle_age_s"] == 33.1


def test_unknown_paths_name_the_known_ones() -> None:
    answer = routes(ACTIVE, Clock()).get("/nope")
    assert answer.status == 404 and "/active" in json.loads(answer.body)["paths"]


# -- a real server -------------------------------------------------------------------------
@pytest.fixture
def server() -> Iterator[ApiServer]:
    publisher = Publisher()
    publisher.publish(ACTIVE)
    metrics = Metrics("a", publisher.latest, lambda: 101.0)
    publisher.subscribe(metrics.on_event)
    publisher.event(
        Event(
            "a",
            "scheduler",
            ev.BECAME_ACTIVE,
            "holds the scheduler lease (it was free), epoch 7",
            7,
        )
    )
    api = ApiServer(("127.0.0.1", 0), Routes(publisher.latest, lambda: 101.0, metrics)).start()
    yield api
    api.close()


def request(api: ApiServer, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    try:
        conn.request(method, path, body=body)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def test_get_and_head_of_a_probe(server: ApiServer) -> None:
    status, body = request(server, "GET", "/active")
    assert status == 200 and json.loads(body)["epoch"] == 7
    status, body = request(server, "HEAD", "/standby")
    assert status == 503 and body == b""


def test_status_is_the_whole_view(server: ApiServer) -> None:
    status, body = request(server, "GET", "/status")
    view = json.loads(body)
    assert status == 200 and view["role"] == "active" and view["scheduler_pid"] == 42


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/switchover", b"{}", 403),  # no token configured: no actions at all
        ("PUT", "/status", b"x", 405),
        ("DELETE", "/status", None, 405),
        ("POST", "/switchover", b"x" * (MAX_BODY + 1), 403),
    ],
)
def test_writes_without_a_token_get_a_clean_4xx(
    server: ApiServer, method: str, path: str, body: bytes | None, status: int
) -> None:
    assert request(server, method, path, body)[0] == status


def test_garbage_and_a_silent_client_do_not_stop_the_others(server: ApiServer) -> None:
    silent = socket.create_connection(("127.0.0.1", server.port))  # sends nothing
    garbage = socket.create_connection(("127.0.0.1", server.port))
    garbage.sendall(b"\x00\xff not http at all\r\n\r\n")
    reply = garbage.recv(500)
    assert reply == b'{"error": 400}\n'  # short JSON, no detail page
    brew = socket.create_connection(("127.0.0.1", server.port))
    brew.sendall(b"BREW /coffee HTTP/1.1\r\nHost: x\r\n\r\n")
    assert brew.recv(200).startswith(b"HTTP/1.1 501")
    assert request(server, "GET", "/liveness")[0] == 200  # while the silent one waits
    for sock in (silent, garbage, brew):
        sock.close()


def test_metrics_parse_and_answer_the_3am_questions(server: ApiServer) -> None:
    status, body = request(server, "GET", "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    role = {s.labels["role"]: s.value for s in families["airflow_sentinel_role"].samples}
    assert role == {"active": 1.0, "standby": 0.0, "stopped": 0.0}
    assert families["airflow_sentinel_epoch"].samples[0].value == 7
    assert families["airflow_sentinel_lease_remaining_seconds"].samples[0].value == 9.0
    assert families["airflow_sentinel_lease_renewal_failures"].samples[0].value == 0
    takeovers = families["airflow_sentinel_takeovers"].samples
    assert any(s.labels == {"node_id": "a", "reason": "free"} and s.value == 1 for s in takeovers)
    for family in families.values():
        assert family.documentation, family.name  # every metric says what it is


@pytest.mark.parametrize(
    ("detail", "reason"),
    [
        ("holds the scheduler lease (it was free), epoch 1", "free"),
        ("took the scheduler lease from b after 15.2s of silence, epoch 3", "silence"),
        ("holds the scheduler lease (taken back or handed over), epoch 4", "handed_over"),
    ],
)
def test_takeovers_are_counted_by_how(detail: str, reason: str) -> None:
    assert takeover_reason(detail) == reason


# -- access ---------------------------------------------------------------------------------
TOKEN = b"s3cret-token-of-some-length"


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("Bearer s3cret-token-of-some-length", True),
        ("bearer s3cret-token-of-some-length", True),
        ("Basic " + base64.b64encode(b"ops:s3cret-token-of-some-length").decode(), True),
        ("Bearer wrong", False),
        ("Basic " + base64.b64encode(b"s3cret-token-of-some-length").decode(), False),  # no ':'
        ("Basic !!!", False),
        ("Token s3cret-token-of-some-length", False),
        (None, False),
    ],
)
def test_the_token_by_bearer_or_basic_auth(header: str | None, ok: bool) -> None:
    assert Access(token=TOKEN).authorized(header) is ok
    assert Access().authorized(header) is False  # no token configured: nobody


def test_only_the_allowed_networks_get_in() -> None:
    access = Access(networks=parse_api_allow("10.0.0.0/8, 127.0.0.1, ::1"))
    assert access.allows_address("10.1.2.3") and access.allows_address("127.0.0.1")
    assert access.allows_address("::ffff:127.0.0.1") and access.allows_address("::1")
    assert not access.allows_address("192.168.1.1") and not access.allows_address("junk")
    assert Access().allows_address("192.168.1.1")  # empty: any


@pytest.fixture
def guarded() -> Iterator[tuple[ApiServer, FakeActions]]:
    publisher = Publisher()
    publisher.publish(ACTIVE)
    actions = FakeActions()
    routes = Routes(publisher.latest, lambda: 101.0, None, actions)  # type: ignore[arg-type]
    access = Access(token=TOKEN, all_need_token=True, networks=parse_api_allow("127.0.0.0/8"))
    api = ApiServer(("127.0.0.1", 0), routes, access).start()
    yield api, actions
    api.close()


class FakeActions:
    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def pause(self) -> tuple[int, dict[str, object]]:
        self.calls.append(("pause",))
        return 200, {"paused": True}

    def resume(self) -> tuple[int, dict[str, object]]:
        self.calls.append(("resume",))
        return 200, {"paused": False}

    def switchover(self, to: str | None, timeout: float) -> tuple[int, dict[str, object]]:
        self.calls.append(("switchover", to, timeout))
        return 200, {"to": to}


def call(
    api: ApiServer, method: str, path: str, body: bytes | None, auth: str | None
) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    headers = {"Authorization": auth} if auth else {}
    try:
        conn.request(method, path, body=body, headers=headers)
        answer = conn.getresponse()
        return answer.status, answer.read(), dict(answer.getheaders())
    finally:
        conn.close()


def test_a_wrong_token_is_a_bare_401_and_the_right_one_acts(
    guarded: tuple[ApiServer, FakeActions],
) -> None:
    api, actions = guarded
    status, body, headers = call(api, "POST", "/pause", b"", "Bearer nope")
    assert status == 401 and json.loads(body) == {"error": "unauthorized"}
    assert "WWW-Authenticate" in headers and actions.calls == []
    assert call(api, "GET", "/active", None, None)[0] == 401  # api_auth = all
    bearer = f"Bearer {TOKEN.decode()}"
    assert call(api, "GET", "/active", None, bearer)[0] == 200
    assert call(api, "POST", "/pause", b"", bearer)[0] == 200
    assert call(api, "POST", "/switchover", b'{"to": "b", "timeout": 5}', bearer)[0] == 200
    assert actions.calls == [("pause",), ("switchover", "b", 5.0)]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"not json", "the body is not JSON"),
        (b"[1]", "must be a JSON object"),
        (b'{"to": 3}', '"to" must be a node_id'),
        (b'{"timeout": "soon"}', '"timeout" must be a number'),
        (b'{"timeout": 0}', "more than 0"),
        (b'{"target": "b"}', "unknown field(s) target; accepted: to, timeout"),
    ],
)
def test_a_bad_switchover_request_says_what_is_accepted(
    guarded: tuple[ApiServer, FakeActions], body: bytes, words: str
) -> None:
    api, actions = guarded
    status, answer, _ = call(api, "POST", "/switchover", body, f"Bearer {TOKEN.decode()}")
    assert status == 400 and words in json.loads(answer)["error"] and actions.calls == []


def test_an_unknown_action_names_the_known_ones(guarded: tuple[ApiServer, FakeActions]) -> None:
    api, _ = guarded
    status, answer, _ = call(api, "POST", "/reboot", b"", f"Bearer {TOKEN.decode()}")
    assert status == 404 and json.loads(answer)["actions"] == [
        "/pause",
        "/resume",
        "/switchover",
        "/wake",
    ]


@pytest.mark.parametrize(
    ("detail", "target"),
    [("to b", "b"), ("to b failed: lease lost", None), ("", None)],
)
def test_only_a_completed_hand_over_wakes_its_target(detail: str, target: str | None) -> None:
    event = Event("a", "scheduler", ev.HANDED_OVER, detail, 3)
    assert handed_over_to(event) == target
    assert handed_over_to(Event("a", "scheduler", ev.DEMOTED, "to b", 3)) is None


@pytest.mark.parametrize(
    ("host", "url"),
    [("127.0.0.1", "http://127.0.0.1:8975"), ("::1", "http://[::1]:8975")],
)
def test_the_advertised_url(host: str, url: str) -> None:
    assert advertised_url(host, 8975) == url
    assert advertised_url("0.0.0.0", 8975) == f"http://{socket.getfqdn()}:8975"


def test_a_flood_of_idle_connections_is_capped_and_the_api_still_answers(
    server: ApiServer,
) -> None:
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(MAX_CONNECTIONS)]
    try:
        wait_for_full(server)
        extra = socket.create_connection(("127.0.0.1", server.port))
        assert extra.recv(10) == b""  # closed at once: no thread for it
        extra.close()
    finally:
        for sock in idle:
            sock.close()
    assert wait_for_answer(server) == 200  # the slots are back once those are gone


def wait_for_full(server: ApiServer) -> None:
    deadline = time.monotonic() + 10
    while server.busy < MAX_CONNECTIONS:
        assert time.monotonic() < deadline, "the idle connections never took their slots"
        time.sleep(0.01)


def wait_for_answer(server: ApiServer) -> int:
    deadline = time.monotonic() + 10
    while True:
        try:
            return request(server, "GET", "/liveness")[0]
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_the_apis_own_connection_is_tried_again_after_a_failure_to_open(tmp_path: Path) -> None:
    clock, tries = Clock(), []

    def open_store() -> Metastore:
        tries.append(clock.now)
        if len(tries) == 1:
            raise MetastoreError("connection refused")
        return open_metastore(f"sqlite:///{tmp_path / 'm.db'}", FakeClock())

    stores = LazyStore(open_store, clock)
    actions = ClusterActions(stores, "a", 15.0, lambda: None)
    assert actions.cluster() == (503, {"error": "metastore: connection refused"})
    clock.now += RECONNECT_EVERY / 2
    status, body = actions.history(10)  # too soon: no second try yet
    assert status == 503 and "tries again shortly" in body["error"] and len(tries) == 1
    clock.now += RECONNECT_EVERY
    assert actions.history(10) == (200, {"events": []})
    assert actions.cluster()[0] == 200 and len(tries) == 2  # opened once, then kept
    stores.close()
