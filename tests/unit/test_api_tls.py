"""The API over TLS, on a loopback port: HTTPS only, client certificates checked against the
CA when asked, and every client that fails its handshake (plain HTTP, no certificate, a
certificate the CA never signed, one that never finishes) costs only its own connection."""

from __future__ import annotations

import http.client
import socket
import ssl
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from airflow_sentinel.api import tls
from airflow_sentinel.api.server import ApiServer, Routes
from airflow_sentinel.config import load_settings
from airflow_sentinel.errors import ConfigError, UserError
from tests.support.certs import Certs, make_certs
from tests.support.views import ACTIVE


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def files(certs: Certs, verify_client: bool = False) -> tls.TlsFiles:
    return tls.TlsFiles(str(certs.cert), str(certs.key), str(certs.ca), verify_client)


@pytest.fixture(params=[False, True], ids=["server-only", "client-certificates"])
def server(request: pytest.FixtureRequest, certs: Certs) -> Iterator[ApiServer]:
    view = replace(ACTIVE, cycle_at=time.monotonic())
    context = tls.server_context(files(certs, verify_client=request.param))
    api = ApiServer(("127.0.0.1", 0), Routes(lambda: view, time.monotonic), tls=context).start()
    yield api
    api.close()


def client(certs: Certs, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca))
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def https_status(port: int, context: ssl.SSLContext) -> int:
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
    try:
        conn.request("GET", "/liveness")
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_client_with_the_cas_certificate_is_served(server: ApiServer, certs: Certs) -> None:
    assert https_status(server.port, client(certs, certs.cert, certs.key)) == 200


def test_without_a_client_certificate_only_a_server_that_asks_none_answers(
    server: ApiServer, certs: Certs
) -> None:
    anonymous = client(certs, None, None)
    if server.tls is not None and server.tls.verify_mode == ssl.CERT_REQUIRED:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            https_status(server.port, anonymous)
    else:
        assert https_status(server.port, anonymous) == 200


def test_a_certificate_the_ca_never_signed_is_refused_when_certificates_are_checked(
    certs: Certs,
) -> None:
    context = tls.server_context(files(certs, verify_client=True))
    view = replace(ACTIVE, cycle_at=time.monotonic())
    api = ApiServer(("127.0.0.1", 0), Routes(lambda: view, time.monotonic), tls=context).start()
    try:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            https_status(api.port, client(certs, certs.rogue_cert, certs.rogue_key))
        assert https_status(api.port, client(certs, certs.cert, certs.key)) == 200
    finally:
        api.close()


def test_plain_http_and_a_silent_handshake_do_not_stop_the_others(
    server: ApiServer, certs: Certs
) -> None:
    silent = socket.create_connection(("127.0.0.1", server.port))  # never says hello
    plain = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            plain.request("GET", "/liveness")
            plain.getresponse()
        assert https_status(server.port, client(certs, certs.cert, certs.key)) == 200
    finally:
        plain.close()
        silent.close()


def test_the_nodes_client_side_checks_the_server_against_the_ca(certs: Certs) -> None:
    context = tls.server_context(files(certs))
    view = replace(ACTIVE, cycle_at=time.monotonic())
    api = ApiServer(("127.0.0.1", 0), Routes(lambda: view, time.monotonic), tls=context).start()
    try:
        ours = tls.opener(files(certs))
        with ours.open(f"https://localhost:{api.port}/liveness", timeout=5) as answer:
            assert answer.status == 200
        stranger = tls.TlsFiles(str(certs.rogue_cert), str(certs.rogue_key), str(certs.rogue_cert))
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            tls.opener(stranger).open(f"https://localhost:{api.port}/liveness", timeout=5)
    finally:
        api.close()


def test_broken_tls_files_are_one_line_each(certs: Certs, tmp_path: Path) -> None:
    readable = tmp_path / "open.key"
    readable.write_bytes(certs.key.read_bytes())
    readable.chmod(0o644)
    with pytest.raises(UserError, match=r"api_tls_key_file: .* readable by others .*chmod 600"):
        tls.check(tls.TlsFiles(str(certs.cert), str(readable)))
    with pytest.raises(UserError, match=r"api_tls_cert_file: cannot read /nowhere/c.pem"):
        tls.check(tls.TlsFiles("/nowhere/c.pem", str(certs.key)))
    with pytest.raises(UserError, match="are not a PEM certificate and its private key"):
        tls.check(tls.TlsFiles(str(certs.cert), str(certs.rogue_key)))  # not its key
    with pytest.raises(UserError, match=r"api_tls_ca_file: .* holds no PEM CA certificate"):
        tls.check(tls.TlsFiles(str(certs.cert), str(certs.key), str(certs.key), True))


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ({"api_tls_cert_file": "/c.pem"}, "give both (HTTPS) or neither"),
        ({"api_tls_key_file": "/k.pem"}, "give both (HTTPS) or neither"),
        (
            {
                "api_tls_cert_file": "/c",
                "api_tls_key_file": "/k",
                "api_tls_verify_client": "required",
            },
            "required needs api_tls_cert_file, api_tls_key_file and api_tls_ca_file",
        ),
        ({"api_tls_verify_client": "optional"}, "'optional' is not accepted; use one of none"),
    ],
)
def test_tls_settings_that_do_not_fit_together_are_named(
    tmp_path: Path, given: dict[str, str], problem: str
) -> None:
    flags = {"node_id": "a", "metastore": f"sqlite:///{tmp_path / 'm.db'}", **given}
    with pytest.raises(ConfigError) as caught:
        load_settings(flags, environ={}, airflow_home=tmp_path)
    assert problem in str(caught.value)
