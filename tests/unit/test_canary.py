"""The canary's decisions: when it has succeeded, failed or is still on its way, and the
line that says where it got stuck. (The real canary runs in tests/integration/test_upgrade.py.)"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from airflow_sentinel.errors import UserError
from airflow_sentinel.upgrade import canary
from airflow_sentinel.upgrade.canary import Progress, failure, follow, verdict
from airflow_sentinel.upgrade.command import _checked_url
from airflow_sentinel.upgrade.installation import UpgradeError
from airflow_sentinel.upgrade.verify import health_url, wait_for_api

PARSED = Progress(True, None, None)
QUEUED = Progress(True, "running", "queued")


@pytest.mark.parametrize(
    ("progress", "expected"),
    [
        (Progress(False, None, None), None),
        (PARSED, None),
        (QUEUED, None),
        (Progress(True, "running", "running"), None),
        (Progress(True, "success", "success"), True),
        (Progress(True, "running", "failed"), False),
        (Progress(True, "failed", None), False),
        (Progress(True, "running", "upstream_failed"), False),
    ],
)
def test_verdict(progress: Progress, expected: bool | None) -> None:
    assert verdict(progress) is expected


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_follow_ends_as_soon_as_the_task_succeeds() -> None:
    clock = FakeClock()
    states = iter(
        [Progress(False, None, None), PARSED, QUEUED, Progress(True, "success", "success")]
    )
    ok, last, waited = follow(lambda: next(states), 60, clock, clock.sleep)
    assert ok and last.task_state == "success" and waited == 1.5


def test_follow_ends_at_once_on_a_failed_task_not_at_the_deadline() -> None:
    clock = FakeClock()
    ok, _, waited = follow(lambda: Progress(True, "failed", "failed"), 60, clock, clock.sleep)
    assert not ok and waited == 0.0


def test_follow_gives_up_at_the_deadline_with_the_last_progress() -> None:
    clock = FakeClock()
    ok, last, waited = follow(lambda: QUEUED, 10, clock, clock.sleep)
    assert not ok and last == QUEUED and waited == 10.0


@pytest.mark.parametrize(
    ("progress", "words"),
    [
        (Progress(False, None, None), "was not parsed within 30s: is a DAG processor running"),
        (PARSED, "was parsed but no run was created"),
        (Progress(True, "failed", "failed"), "ended failed on CeleryExecutor"),
        (QUEUED, "still queued after 30s on CeleryExecutor: does the executor have a worker"),
    ],
)
def test_each_stuck_stage_gets_its_own_line(progress: Progress, words: str) -> None:
    line = failure(progress, 30, "CeleryExecutor", Path("/srv/dags"))
    assert words in line and "\n" not in line


def test_the_canary_file_is_placed_whole_readable_and_removed_with_its_bytecode(
    tmp_path: Path,
) -> None:
    path = canary.place(tmp_path)
    assert path.name == canary.FILE_NAME and path.stat().st_mode & 0o777 == 0o644
    assert f'"{canary.DAG_ID}"' in path.read_text() and "is_paused_upon_creation=False" in (
        path.read_text()
    )
    compile(path.read_text(), str(path), "exec")  # valid Python
    (tmp_path / "__pycache__").mkdir()
    cached = tmp_path / "__pycache__" / f"{canary.DAG_ID}.cpython-311.pyc"
    cached.write_bytes(b"")
    assert canary.remove_file(tmp_path) and not path.exists() and not cached.exists()
    assert not canary.remove_file(tmp_path)  # twice is fine: a resumed rollback repeats it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["__pycache__"]


@pytest.mark.parametrize(
    ("version", "url"),
    [
        ("3.3.2", "http://h:8080/api/v2/monitor/health"),
        ("2.10.5", "http://h:8080/health"),
    ],
)
def test_the_health_endpoint_follows_the_version(version: str, url: str) -> None:
    assert health_url("http://h:8080/", version) == url


class _Health(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(type(self).body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[str, type[_Health]]]:
    handler = type("Handler", (_Health,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def test_a_healthy_api_server_is_seen_with_its_components(
    health_server: tuple[str, type[_Health]],
) -> None:
    url, handler = health_server
    handler.body = b'{"metadatabase": {"status": "healthy"}, "scheduler": {"status": "healthy"}}'
    line = wait_for_api(url, "3.3.2", 5)
    assert "api-server healthy" in line and "scheduler healthy" in line


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b"[1, 2]", "not a health answer"),
        (b"<html>", "JSONDecodeError"),
        (b'{"metadatabase": {"status": "unhealthy"}}', "metadatabase unhealthy"),
    ],
)
def test_an_api_server_that_is_not_healthy_fails_in_one_line(
    health_server: tuple[str, type[_Health]], body: bytes, said: str
) -> None:
    url, handler = health_server
    handler.body = body
    with pytest.raises(UpgradeError, match=said):
        wait_for_api(url, "3.3.2", 0.6)


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("localhost:8080", "not a URL"),
        ("ftp://host", "not a URL"),
        ("http://admin:s3cret@host:8080", "drop the user and password"),
    ],
)
def test_a_bad_api_url_is_refused_without_echoing_a_password(url: str, said: str) -> None:
    with pytest.raises(UserError, match=said) as raised:
        _checked_url(url)
    assert "s3cret" not in str(raised.value)
