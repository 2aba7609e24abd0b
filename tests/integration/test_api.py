"""The HTTP API of real controllers on every metastore: the load balancer's view of who is
active follows a failover, and the metrics say the same as the probes."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from airflow_sentinel.soak.servers import free_port
from tests.support.certs import make_certs
from tests.support.cluster import Cluster, running_cluster, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path, metastore_url: str) -> Iterator[Cluster]:
    with running_cluster(tmp_path, metastore_url) as c:
        c.api_ports = {"a": free_port("127.0.0.1"), "b": free_port("127.0.0.1")}
        yield c


def status(cluster: Cluster, node: str, path: str, method: str = "GET") -> int | None:
    """The answer's status, None while nothing listens."""
    conn = http.client.HTTPConnection("127.0.0.1", cluster.api_ports[node], timeout=5)
    try:
        conn.request(method, path)
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def get_json(cluster: Cluster, node: str, path: str) -> dict[str, object]:
    conn = http.client.HTTPConnection("127.0.0.1", cluster.api_ports[node], timeout=10)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        assert answer.status == 200, path
        return dict(json.loads(answer.read()))
    finally:
        conn.close()


def metrics(cluster: Cluster, node: str) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", cluster.api_ports[node], timeout=5)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            label = sample.labels.get("role", sample.labels.get("reason", ""))
            values[sample.name + (f"[{label}]" if label else "")] = sample.value
    return values


def test_the_probes_follow_the_lease_through_a_failover(cluster: Cluster) -> None:
    for node in ("a", "b"):
        cluster.start(node)
    active = cluster.wait_for_one_scheduler()
    standby = "b" if active == "a" else "a"
    wait_until(lambda: status(cluster, active, "/active") == 200, 20, "/active on the leader")
    assert status(cluster, standby, "/active") == 503
    wait_until(lambda: status(cluster, standby, "/standby") == 200, 20, "/standby")
    assert status(cluster, active, "/standby") == 503
    for node in (active, standby):
        assert status(cluster, node, "/liveness") == 200
        assert status(cluster, node, "/readiness") == 200
        assert status(cluster, node, "/active", "HEAD") in (200, 503)
    assert get_json(cluster, standby, "/cluster")["active_node"] == active  # any node knows
    events = get_json(cluster, active, "/history?limit=50")["events"]
    assert isinstance(events, list) and any(e["kind"] == "became_active" for e in events)
    assert get_json(cluster, active, "/status")["role"] == "active"
    seen = metrics(cluster, active)
    assert seen["airflow_sentinel_role[active]"] == 1
    assert seen["airflow_sentinel_scheduler_up"] == 1 and seen["airflow_sentinel_metastore_up"] == 1
    assert seen["airflow_sentinel_scheduler_starts_total"] >= 1
    assert seen["airflow_sentinel_lease_renewal_seconds_count"] >= 1

    cluster.kill_node(active)  # a silent death: the standby takes over after the TTL
    wait_until(lambda: status(cluster, standby, "/active") == 200, 60, "/active after failover")
    after = metrics(cluster, standby)
    assert after["airflow_sentinel_takeovers_total[silence]"] == 1
    assert status(cluster, active, "/liveness") is None  # gone with its controller


def test_a_taken_port_leaves_the_controller_running_without_its_api(cluster: Cluster) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", cluster.api_ports["a"]))
        taken.listen()
        cluster.start("a")
        cluster.wait_for_one_scheduler()
        log_file = cluster.root / "a.log"

        def warned() -> str | None:
            text = log_file.read_text()
            return text if "HTTP API not started" in text else None

        log = wait_until(warned, 20, "the one-line warning")
        assert "Traceback" not in log and "127.0.0.1:" in log


TOKEN = "a-token-for-the-test-cluster-0123"


def post(
    cluster: Cluster, node: str, path: str, body: dict[str, object] | None, token: str | None
) -> tuple[int, dict[str, object]]:
    conn = http.client.HTTPConnection("127.0.0.1", cluster.api_ports[node], timeout=90)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        conn.request(
            "POST", path, body=json.dumps(body) if body is not None else b"", headers=headers
        )
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


def test_a_switchover_through_the_api_answers_when_the_target_runs(cluster: Cluster) -> None:
    token_file = cluster.root / "api-token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    cluster.settings["api_token_file"] = str(token_file)
    for node in ("a", "b"):
        cluster.start(node)
    active = cluster.wait_for_one_scheduler()
    standby = "b" if active == "a" else "a"
    wait_until(lambda: status(cluster, standby, "/standby") == 200, 20, "a fit standby")

    assert post(cluster, active, "/switchover", None, "wrong-token") == (
        401,
        {"error": "unauthorized"},
    )
    refused = post(cluster, standby, "/switchover", None, TOKEN)
    assert refused[0] == 409 and refused[1]["active"] == active
    done = post(cluster, active, "/switchover", {"timeout": 60}, TOKEN)
    assert done[0] == 200 and done[1]["to"] == standby, done
    print(f"\nswitchover through the API: {done[1]['seconds']}s")
    wait_until(lambda: cluster.running_on() == [standby], 10, "the stand-in on the target")
    assert cluster.overlaps() == []

    assert post(cluster, standby, "/pause", None, TOKEN) == (200, {"paused": True})
    assert "paused" in cluster.store.flags()
    assert post(cluster, standby, "/resume", None, TOKEN) == (200, {"paused": False})
    assert "paused" not in cluster.store.flags()

    # The CLI asks the active node's API itself (its address is in the node registry).
    wait_until(lambda: status(cluster, active, "/standby") == 200, 20, "the old leader fit")
    done_cli = cluster.cli("switchover", "--to", active)
    assert done_cli.returncode == 0, done_cli.stdout + done_cli.stderr
    assert f"through {standby}'s API" in done_cli.stdout
    wait_until(lambda: cluster.running_on() == [active], 10, "the stand-in back on the first")
    assert cluster.overlaps() == []


def https_status(cluster: Cluster, node: str, context: ssl.SSLContext) -> int | str:
    conn = http.client.HTTPSConnection(
        "127.0.0.1", cluster.api_ports[node], timeout=5, context=context
    )
    try:
        conn.request("GET", "/active")
        return conn.getresponse().status
    except (ssl.SSLError, ConnectionError):
        return "refused"  # the handshake failed, or the server closed it
    finally:
        conn.close()


def test_over_tls_with_client_certificates_the_cli_switches_over_through_the_api(
    cluster: Cluster, tmp_path: Path
) -> None:
    certs = make_certs(tmp_path / "certs")
    token_file = cluster.root / "api-token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    cluster.settings.update(
        api_token_file=str(token_file),
        api_tls_cert_file=str(certs.cert),
        api_tls_key_file=str(certs.key),
        api_tls_ca_file=str(certs.ca),
        api_tls_verify_client="required",
    )
    for node in ("a", "b"):
        cluster.start(node)
    active = cluster.wait_for_one_scheduler()
    standby = "b" if active == "a" else "a"
    ours = ssl.create_default_context(cafile=str(certs.ca))
    ours.load_cert_chain(str(certs.cert), str(certs.key))
    wait_until(lambda: https_status(cluster, active, ours) == 200, 20, "/active over https")
    anonymous = ssl.create_default_context(cafile=str(certs.ca))
    assert https_status(cluster, active, anonymous) == "refused"
    assert status(cluster, active, "/active") is None  # plain HTTP: no answer at all
    assert cluster.nodes()[active].api == f"https://127.0.0.1:{cluster.api_ports[active]}"

    wait_until(lambda: https_status(cluster, standby, ours) == 503, 20, "the standby's API")
    done = cluster.cli("switchover", "--to", standby)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"through {active}'s API" in done.stdout and done.stderr == ""
    wait_until(lambda: https_status(cluster, standby, ours) == 200, 20, "/active moved")
    assert cluster.overlaps() == []

    # A token file this user may not use: one line, then the metastore flag.
    token_file.chmod(0o644)
    wait_until(lambda: https_status(cluster, active, ours) == 503, 20, "a fit old leader")
    back = cluster.cli("switchover", "--to", active)
    assert back.returncode == 0, back.stdout + back.stderr
    assert back.stderr.strip().splitlines() == [
        f"note: not through the API: api_token_file: {token_file} is readable by others "
        f"(mode 644); chmod 600 {token_file}; using the metastore flag"
    ]
    assert "switchover requested" in back.stdout
    wait_until(lambda: cluster.running_on() == [active], 30, "the stand-in back on the first")
    assert cluster.overlaps() == []


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    if CHROMIUM is None:
        pytest.fail("chromium is missing: scripts/setup-services installs it (Debian: chromium)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    return subprocess.run(
        [CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_the_status_page_renders_the_cluster_in_a_real_browser(
    cluster: Cluster, backend: str, tmp_path: Path
) -> None:
    if backend != "sqlite":
        pytest.skip("the page is the same on every metastore: rendered once")
    for node in ("a", "b"):
        cluster.start(node)
    active = cluster.wait_for_one_scheduler()
    os.kill(cluster.schedulers()[0].pid, signal.SIGKILL)  # a restart, for the timeline
    wait_until(lambda: cluster.running_on() == [active], 30, "the scheduler back")
    url = f"http://127.0.0.1:{cluster.api_ports[active]}/"
    wait_until(lambda: status(cluster, active, "/active") == 200, 20, "/active")

    dom = chromium("--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = dom.stdout
    assert f"{active} is active, epoch" in page and 'class="banner ok"' in page
    assert page.count("<tr><td>a</td>") == 1 and page.count("<tr><td>b</td>") == 1
    assert 'data-kind="became_active"' in page and "<script" not in page

    shot = tmp_path / "status-page.png"
    taken = chromium(f"--screenshot={shot}", "--window-size=1000,760", url)
    assert taken.returncode == 0 and shot.stat().st_size > 10_000, taken.stderr[-2000:]
    keep = os.environ.get("SENTINEL_KEEP_SCREENSHOT")
    if keep:  # how docs/status-page.png is made
        shutil.copy(shot, keep)
