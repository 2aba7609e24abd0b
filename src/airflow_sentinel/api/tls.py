"""TLS for the HTTP API: the server's certificate, and optionally clients' certificates
checked against a CA (`api_tls_verify_client = required`). The same files make the client
side, the wake-up of a switchover's target and the CLI's switchover, which present this
node's certificate and check the other node's against the CA.

The files are loaded once, at start: a wrong path, a key that does not match, a key others
can read are one line and exit 2, before anything runs.
"""

from __future__ import annotations

import os
import ssl
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from airflow_sentinel.config.settings import Settings
from airflow_sentinel.errors import UserError


@dataclass(frozen=True)
class TlsFiles:
    cert: str
    key: str
    ca: str = ""  # empty: the system's CAs check the other side (client side only)
    verify_client: bool = False

    @classmethod
    def of(cls, settings: Settings) -> TlsFiles | None:
        """The API's TLS files, None when it speaks plain HTTP."""
        if not settings.api_tls_cert_file:
            return None
        return cls(
            settings.api_tls_cert_file,
            settings.api_tls_key_file,
            settings.api_tls_ca_file,
            settings.api_tls_verify_client == "required",
        )


def server_context(files: TlsFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, files)
    if files.verify_client:
        context.verify_mode = ssl.CERT_REQUIRED
        _load_ca(context, files.ca)
    return context


def client_context(files: TlsFiles | None) -> ssl.SSLContext:
    """Checks the other side's certificate and host name; presents ours when we have one."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if files is not None:
        if files.ca:
            _load_ca(context, files.ca)
        _load_chain(context, files)
    return context


def check(files: TlsFiles | None) -> None:
    """Every file readable and consistent, the key for its owner only; UserError if not."""
    if files is None:
        return
    mode = _stat(files.key, "api_tls_key_file").st_mode
    if mode & 0o077:
        raise UserError(
            f"api_tls_key_file: {files.key} is readable by others (mode {mode & 0o777:o}); "
            f"chmod 600 {files.key}"
        )
    server_context(files)
    client_context(files)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """The token goes to the address in the registry, never where a redirect points."""

    def redirect_request(self, *_args: object, **_kwargs: object) -> None:
        return None


def opener(files: TlsFiles | None) -> urllib.request.OpenerDirector:
    """urllib for another node's API: no redirects; https with our certificate and CA."""
    https = urllib.request.HTTPSHandler(context=client_context(files))
    return urllib.request.build_opener(_NoRedirects(), https)


def _load_chain(context: ssl.SSLContext, files: TlsFiles) -> None:
    _stat(files.cert, "api_tls_cert_file")
    _stat(files.key, "api_tls_key_file")
    try:
        context.load_cert_chain(files.cert, files.key)
    except ssl.SSLError as exc:
        raise UserError(
            f"api_tls_cert_file/api_tls_key_file: {files.cert} and {files.key} are not a "
            f"PEM certificate and its private key ({exc.reason or exc})"
        ) from None


def _load_ca(context: ssl.SSLContext, ca: str) -> None:
    _stat(ca, "api_tls_ca_file")
    try:
        context.load_verify_locations(cafile=ca)
    except ssl.SSLError as exc:
        raise UserError(
            f"api_tls_ca_file: {ca} holds no PEM CA certificate ({exc.reason or exc})"
        ) from None


def _stat(path: str, key: str) -> os.stat_result:
    try:
        info = Path(path).stat()
        with Path(path).open("rb"):
            pass
    except OSError as exc:
        raise UserError(f"{key}: cannot read {path} ({exc.strerror})") from None
    return info
