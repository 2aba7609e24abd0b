"""Certificates for the API's TLS tests, made with the openssl command: a CA, a certificate
it signs for localhost and 127.0.0.1 (used by the nodes as server and as client), and a
self-signed one the CA never saw."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = "2"


@dataclass(frozen=True)
class Certs:
    ca: Path
    cert: Path
    key: Path
    rogue_cert: Path
    rogue_key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_certs(folder: Path) -> Certs:
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    _openssl(
        *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", DAYS),
        *("-subj", "/CN=airflow-sentinel test CA", "-keyout", str(ca_key), "-out", str(ca)),
    )
    cert, key, request = folder / "node.pem", folder / "node.key", folder / "node.csr"
    _openssl(
        *("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost"),
        *("-keyout", str(key), "-out", str(request)),
    )
    extensions = folder / "node.ext"
    extensions.write_text(
        "subjectAltName = DNS:localhost, IP:127.0.0.1\nextendedKeyUsage = serverAuth, clientAuth\n"
    )
    _openssl(
        *("x509", "-req", "-in", str(request), "-CA", str(ca), "-CAkey", str(ca_key)),
        *("-CAcreateserial", "-days", DAYS, "-extfile", str(extensions), "-out", str(cert)),
    )
    rogue_cert, rogue_key = folder / "rogue.pem", folder / "rogue.key"
    _openssl(
        *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", DAYS),
        *("-subj", "/CN=localhost", "-keyout", str(rogue_key), "-out", str(rogue_cert)),
        *("-addext", "subjectAltName = DNS:localhost, IP:127.0.0.1"),
    )
    for private in (ca_key, key, rogue_key):
        private.chmod(0o600)
    return Certs(ca, cert, key, rogue_cert, rogue_key)
