"""Alerts through real servers: an SMTP server in this process (aiosmtpd; plain, and with
STARTTLS and AUTH), an HTTP receiver in a thread, a dead and a hanging SMTP server, the
`alert test` command, and real controllers failing over."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_sentinel.alerts.channels import sources
from airflow_sentinel.alerts.delivery import Backoff
from airflow_sentinel.alerts.service import AlertDesk, AlertService, ClusterReader
from airflow_sentinel.clock import SystemClock
from airflow_sentinel.config import Settings, load_settings
from airflow_sentinel.controller import events as ev
from airflow_sentinel.metastore import open_metastore
from airflow_sentinel.metastore.base import Event
from tests.support.certs import make_certs
from tests.support.cluster import Cluster, running_cluster, wait_until
from tests.support.http_receiver import Receiver, http_receiver
from tests.support.smtp_server import (
    SmtpServer,
    closed_port,
    hanging_smtp_server,
    smtp_server,
)

pytestmark = pytest.mark.slow

WALL = 1_700_000_000.0  # 2023-11-14T22:13:20Z
FAST_RETRY = Backoff(first=0.2, cap=0.5, attempts=4)
# The email and the webhook body as received, kept for people to read (like the upgrade
# tests' timings): SENTINEL_TEST_SAMPLES names the folder.
SAMPLES = Path(os.environ.get("SENTINEL_TEST_SAMPLES", "/tmp/airflow-sentinel-test-samples"))
FAILOVER_DETAIL = "took the scheduler lease from a (its epoch 6) after 15.1s of silence, epoch 7"


class FixedWall(SystemClock):
    """Real time for waits and retries; a fixed time of day, so the text can be checked."""

    def wall(self) -> float:
        return WALL


@pytest.fixture(autouse=True)
def clean_airflow_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith("AIRFLOW"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))


def alert_settings(tmp_path: Path, webhook: str = "", **flags: str) -> Settings:
    environ = {"AIRFLOW__SENTINEL__ALERT_WEBHOOK_URLS": webhook} if webhook else {}
    base = {
        "node_id": "b",
        "metastore": f"sqlite:///{tmp_path / 'm.db'}",
        "alert_email_to": "ops@example.com",
        "alert_email_from": "sentinel@example.com",
        "alert_smtp_starttls": "off",
    }
    return load_settings({**base, **flags}, environ, tmp_path)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with http_receiver() as found:
        yield found


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with smtp_server() as server:
        yield server


def running_service(settings: Settings) -> AlertService:
    clock = FixedWall()
    reader = ClusterReader(lambda: open_metastore(settings.metastore, clock), clock, 15.0)
    service = AlertService(
        AlertDesk(settings, clock), reader, sources(settings), clock, 0.2, FAST_RETRY
    )
    service.start()
    return service


def failover() -> Event:
    return Event("b", "scheduler", ev.BECAME_ACTIVE, FAILOVER_DETAIL, 7)


EXPECTED_BODY = """\
failover: b took over the scheduler from a after 15.1s of silence, epoch 7

kind:       failover
severity:   critical
node:       b
epoch:      7
time:       2023-11-14T22:13:20Z
new active: b
previous:   a
silence:    15.1s
detail:     took the scheduler lease from a (its epoch 6) after 15.1s of silence, epoch 7

sent by b (airflow-sentinel 0.1.0)
"""
SUBJECT = (
    "[airflow-sentinel] CRITICAL: failover: b took over the scheduler from a after 15.1s of "
    "silence, epoch 7"
)


def test_an_alert_arrives_as_the_exact_email_and_webhook(
    tmp_path: Path, smtp: SmtpServer, receiver: Receiver
) -> None:
    settings = alert_settings(
        tmp_path, receiver.url, alert_smtp_host=smtp.host, alert_smtp_port=str(smtp.port)
    )
    service = running_service(settings)
    try:
        service.on_event(failover())
        [mail] = wait_until(smtp.inbox.received, 10, "the email")
        [post] = wait_until(receiver.received, 10, "the webhook")
    finally:
        service.stop()

    message = mail.message
    assert (mail.mail_from, mail.rcpt_to) == ("sentinel@example.com", ["ops@example.com"])
    assert message["Subject"] == SUBJECT
    assert (message["From"], message["To"]) == ("sentinel@example.com", "ops@example.com")
    assert message["X-Airflow-Sentinel-Kind"] == "failover"
    assert mail.body == EXPECTED_BODY
    assert post.path == "/hooks/T000/B000/secret-token"
    assert post.headers["Content-Type"] == "application/json"
    assert post.json == {
        "text": f"*{SUBJECT}*\n" + "\n".join(x for x in EXPECTED_BODY.splitlines()[2:] if x),
        "airflow_sentinel": {
            "kind": "failover",
            "severity": "critical",
            "summary": SUBJECT.split("CRITICAL: ", 1)[1],
            "node_id": "b",
            "epoch": 7,
            "time": "2023-11-14T22:13:20Z",
            "facts": {
                "new active": "b",
                "previous": "a",
                "silence": "15.1s",
                "detail": FAILOVER_DETAIL,
            },
            "suppressed": 0,
            "sender": "b",
            "version": "0.1.0",
        },
    }


def test_email_over_starttls_with_auth_and_a_password_from_a_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    certs = make_certs(tmp_path / "certs")
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.ca))  # the client trusts the test CA
    with smtp_server(certs.cert, certs.key, login=("alerts", "s3cret-pw")) as server:
        settings = alert_settings(
            tmp_path,
            alert_smtp_host="localhost",
            alert_smtp_port=str(server.port),
            alert_smtp_starttls="on",
            alert_smtp_user="alerts",
            alert_smtp_password_cmd="echo s3cret-pw",
        )
        service = running_service(settings)
        try:
            service.on_event(failover())
            [mail] = wait_until(server.inbox.received, 10, "the email over STARTTLS")
        finally:
            service.stop()
    assert mail.message["Subject"] == SUBJECT
    assert server.inbox.logins == ["alerts"]


def test_a_dead_smtp_server_is_logged_and_retried_and_the_webhook_still_goes(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "airflow_sentinel.alerts")
    settings = alert_settings(
        tmp_path, receiver.url, alert_smtp_host="127.0.0.1", alert_smtp_port=str(closed_port())
    )
    service = running_service(settings)
    try:
        service.on_event(failover())
        wait_until(receiver.received, 10, "the webhook")
        wait_until(lambda: "given up after 4 tries" in caplog.text, 10, "the email given up")
        started = time.monotonic()
    finally:
        service.stop()
    assert time.monotonic() - started < 2
    assert "connection refused; try 2 of 4 in 0.2s" in caplog.text
    assert "secret-token" not in caplog.text  # the webhook is logged as scheme://host only


def test_a_hanging_smtp_server_delays_neither_the_loop_nor_the_webhook(
    tmp_path: Path,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, "airflow_sentinel.alerts")
    monkeypatch.setenv("AIRFLOW__SMTP__SMTP_TIMEOUT", "1")  # Airflow's own key
    with hanging_smtp_server() as (host, port):
        settings = alert_settings(
            tmp_path, receiver.url, alert_smtp_host=host, alert_smtp_port=str(port)
        )
        service = running_service(settings)
        try:
            started = time.monotonic()
            for _ in range(20):
                service.on_event(failover())  # as the loop calls it
            assert time.monotonic() - started < 0.05
            wait_until(receiver.received, 10, "the webhook while SMTP hangs")
            wait_until(lambda: "timed out; try 2 of 4" in caplog.text, 10, "the SMTP timeout")
        finally:
            stopping = time.monotonic()
            service.stop(grace=2)
    assert time.monotonic() - stopping < 3
    assert len(receiver.received()) == 1  # the other 19 were alike: left out


def run_cli(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    return subprocess.run(
        [sys.executable, "-m", "airflow_sentinel", "alert", "test", *args],
        env={**base, "AIRFLOW_HOME": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_alert_test_sends_through_every_channel_and_says_how_each_went(
    tmp_path: Path, smtp: SmtpServer, receiver: Receiver
) -> None:
    env = {
        "AIRFLOW__SENTINEL__ALERT_EMAIL_TO": "ops@example.com",
        "AIRFLOW__SENTINEL__ALERT_WEBHOOK_URLS": receiver.url,
        "AIRFLOW__SMTP__SMTP_HOST": smtp.host,
        "AIRFLOW__SMTP__SMTP_PORT": str(smtp.port),
        "AIRFLOW__SMTP__SMTP_STARTTLS": "False",
        "AIRFLOW__SENTINEL__METASTORE": f"sqlite:///{tmp_path / 'm.db'}",
    }
    done = run_cli(tmp_path, env, "--node-id", "n1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"email to ops@example.com via {smtp.host}:{smtp.port} (plain): sent",
        f"webhook http://127.0.0.1:{receiver.url.split(':')[2].split('/')[0]}: sent",
    ]
    [mail] = smtp.inbox.received()
    assert mail.message["Subject"] == (
        "[airflow-sentinel] INFO: test alert from n1: this channel works"
    )
    assert mail.mail_from == "airflow@example.com"  # Airflow's default smtp_mail_from
    assert receiver.received()[0].json["airflow_sentinel"]["kind"] == "test"

    env["AIRFLOW__SMTP__SMTP_PORT"] = str(closed_port())
    done = run_cli(tmp_path, env, "--node-id", "n1")
    assert done.returncode == 1
    assert done.stdout.splitlines()[0].endswith("(plain): failed: connection refused")
    assert "secret-token" not in done.stdout + done.stderr


def test_alert_test_without_a_channel_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = run_cli(tmp_path, {"AIRFLOW__SENTINEL__METASTORE": f"sqlite:///{tmp_path / 'm.db'}"})
    assert done.returncode == 2
    assert done.stderr.startswith("airflow-sentinel: error: no alert channel is configured")
    assert len(done.stderr.splitlines()) == 1


def test_killing_the_active_controller_sends_one_failover_alert_from_the_new_active_node(
    tmp_path: Path, smtp: SmtpServer, receiver: Receiver
) -> None:
    with running_cluster(tmp_path, f"sqlite:///{tmp_path / 'metastore.db'}") as cluster:
        configure_alerts(cluster, smtp, receiver)
        for node in ("a", "b", "c"):
            cluster.start(node)
        first = cluster.wait_for_one_scheduler(timeout=30)
        epoch = cluster.epoch()
        cluster.kill_node(first)  # a silent death: the others wait out the TTL
        second = cluster.wait_for_one_scheduler(timeout=30, not_on=first)
        [mail] = wait_until(smtp.inbox.received, 20, "the failover email")
        [post] = wait_until(receiver.received, 20, "the failover webhook")
        arrived = time.monotonic()
        survivors = [n for n in ("a", "b", "c") if n != first]
        # Every survivor reports twice more after the alert came: none sends another one.
        wait_until(lambda: reported_since(cluster, survivors, arrived + 2.0), 20, "two reports")

        assert len(smtp.inbox.received()) == 1
        assert len(receiver.received()) == 1
        assert cluster.epoch() == epoch + 1
    message = mail.message
    assert message["Subject"].startswith(
        f"[airflow-sentinel] CRITICAL: failover: {second} took over the scheduler from {first} "
        f"after "
    )
    body = mail.body
    assert body.rstrip().endswith(f"sent by {second} (airflow-sentinel 0.1.0)")
    assert f"previous:   {first}\n" in body
    assert f"epoch:      {epoch + 1}\n" in body
    data = post.json["airflow_sentinel"]
    assert (data["kind"], data["sender"], data["epoch"]) == ("failover", second, epoch + 1)
    assert post.json["text"].startswith("*[airflow-sentinel] CRITICAL: failover:")
    SAMPLES.mkdir(parents=True, exist_ok=True)
    (SAMPLES / "alert-email.txt").write_bytes(mail.raw)
    (SAMPLES / "alert-webhook.json").write_text(json.dumps(post.json, indent=2) + "\n")


def configure_alerts(cluster: Cluster, smtp: SmtpServer, receiver: Receiver) -> None:
    cluster.settings.update(
        alert_email_to="ops@example.com",
        alert_email_from="sentinel@example.com",
        alert_smtp_host=smtp.host,
        alert_smtp_port=str(smtp.port),
        alert_smtp_starttls="off",
        alert_webhook_urls=receiver.url,
    )


def reported_since(cluster: Cluster, nodes: list[str], since: float) -> bool:
    """Each node has written a heartbeat after ``since`` (a time.monotonic() instant)."""
    if time.monotonic() < since:
        return False
    found = cluster.nodes()
    now = time.monotonic()
    return all(n in found and found[n].last_heartbeat_age_s < now - since for n in nodes)


def test_a_controller_refused_at_start_for_a_node_id_in_use_alerts_before_it_exits(
    tmp_path: Path, smtp: SmtpServer, receiver: Receiver
) -> None:
    """A cloned VM starts a second controller under a node_id in use: it is refused
    (exit 2), and the operator hears of it from the refused one."""
    with running_cluster(tmp_path, f"sqlite:///{tmp_path / 'metastore.db'}") as cluster:
        configure_alerts(cluster, smtp, receiver)
        cluster.start("a")
        cluster.wait_for_one_scheduler(on="a", timeout=30)
        twin_home = tmp_path / "clone-home"  # its own lock file: only the registry can tell
        twin_home.mkdir()
        twin = subprocess.run(
            [sys.executable, "-m", "airflow_sentinel", "start", "--node-id", "a"],
            env={**cluster.env("a"), "AIRFLOW_HOME": str(twin_home)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert twin.returncode == 2, twin.stderr
        assert "node_id 'a' is in use by a live controller" in twin.stderr
        [post] = wait_until(receiver.received, 20, "the conflict's webhook")
        data = post.json["airflow_sentinel"]
        assert (data["kind"], data["sender"]) == ("instance_conflict", "a")
        assert cluster.running_on() == ["a"]  # the first one never stopped
