"""Alerts by email, through Airflow's own `[smtp]` settings (environment first, then
airflow.cfg, as Airflow reads them) or the `[sentinel] alert_smtp_*` overrides."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from airflow_sentinel.alerts.delivery import SendError
from airflow_sentinel.alerts.model import Alert, email_message
from airflow_sentinel.alerts.secrets import Secret, airflow_secret
from airflow_sentinel.api.token import from_secrets_backend
from airflow_sentinel.config.airflow_cfg import AirflowConfig, run_command
from airflow_sentinel.config.settings import Settings, split_list
from airflow_sentinel.errors import UserError

# Airflow's own defaults for [smtp].
DEFAULTS = {
    "smtp_host": "localhost",
    "smtp_port": "25",
    "smtp_starttls": "True",
    "smtp_ssl": "False",
    "smtp_mail_from": "airflow@example.com",
    "smtp_timeout": "30",
}
TRUE, FALSE = ("t", "true", "1", "on", "yes"), ("f", "false", "0", "off", "no")


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    starttls: bool
    ssl: bool
    user: str
    password: Secret | None  # asked at the first send, then kept
    mail_from: str
    to: tuple[str, ...]
    timeout: float
    verify: bool  # check the server's certificate ([email] ssl_context = none: not)

    @property
    def where(self) -> str:
        tls = "ssl" if self.ssl else "starttls" if self.starttls else "plain"
        return f"{self.host}:{self.port} ({tls})"


def smtp_settings(settings: Settings, cfg: AirflowConfig) -> SmtpSettings:
    """The SMTP settings for alerts; UserError naming the key when one is unusable."""

    def airflow(key: str) -> str:
        found = airflow_secret(cfg, settings, "smtp", key)
        return found[0]().strip() if found is not None else DEFAULTS.get(key, "")

    port = settings.alert_smtp_port or _number(airflow("smtp_port"), "[smtp] smtp_port", int)
    user = settings.alert_smtp_user or airflow("smtp_user")
    return SmtpSettings(
        host=settings.alert_smtp_host or airflow("smtp_host"),
        port=int(port),
        starttls=_switch(settings.alert_smtp_starttls, airflow, "smtp_starttls"),
        ssl=_switch(settings.alert_smtp_ssl, airflow, "smtp_ssl"),
        user=user,
        password=_password(settings, cfg) if user else None,
        mail_from=settings.alert_email_from or airflow("smtp_mail_from"),
        to=tuple(split_list(settings.alert_email_to)),
        timeout=_number(airflow("smtp_timeout"), "[smtp] smtp_timeout", float),
        verify=airflow_ssl_context(cfg) != "none",
    )


def airflow_ssl_context(cfg: AirflowConfig) -> str:
    value = cfg.from_env("email", "ssl_context") or cfg.from_file("email", "ssl_context")
    return (value or "default").strip().lower()


def _switch(override: str, airflow: Callable[[str], str], key: str) -> bool:
    if override != "airflow":
        return override == "on"
    raw = airflow(key).lower()
    if raw not in TRUE + FALSE:
        raise UserError(f"[smtp] {key}: '{raw}' is not a boolean (True or False)")
    return raw in TRUE


def _number(raw: str, origin: str, kind: type[float] | type[int]) -> float:
    try:
        value = kind(raw)
    except ValueError:
        raise UserError(f"{origin}: '{raw}' is not a number") from None
    if value <= 0:
        raise UserError(f"{origin}: must be more than 0")
    return value


def _password(settings: Settings, cfg: AirflowConfig) -> Secret | None:
    if settings.alert_smtp_password_cmd:
        command = settings.alert_smtp_password_cmd
        return lambda: run_command("alert_smtp_password_cmd", command)
    if settings.alert_smtp_password_secret:
        key = settings.alert_smtp_password_secret
        return lambda: from_secrets_backend(settings, key, "alert_smtp_password_secret")
    found = airflow_secret(cfg, settings, "smtp", "smtp_password")
    return None if found is None else found[0]


class SmtpChannel:
    def __init__(self, smtp: SmtpSettings) -> None:
        self.smtp = smtp
        self._password: str | None = None

    @property
    def name(self) -> str:
        return f"email to {', '.join(self.smtp.to)} via {self.smtp.where}"

    def send(self, alert: Alert, sender: str) -> None:
        message = email_message(alert, sender, self.smtp.mail_from, list(self.smtp.to))
        try:
            with self._connect() as server:
                self._login(server)
                server.send_message(message)
        except UserError as exc:
            raise SendError(str(exc)) from None
        except smtplib.SMTPResponseException as exc:
            raise SendError(f"the server answered {exc.smtp_code}") from None
        except smtplib.SMTPRecipientsRefused as exc:
            raise SendError(f"recipients refused: {', '.join(exc.recipients)}") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise SendError(_why(exc)) from None

    def _connect(self) -> smtplib.SMTP:
        smtp = self.smtp
        context = _context(smtp.verify)
        if smtp.ssl:
            return smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=smtp.timeout, context=context)
        server = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout)
        if smtp.starttls:
            try:
                server.starttls(context=context)
            except BaseException:
                server.close()
                raise
        return server

    def _login(self, server: smtplib.SMTP) -> None:
        if not self.smtp.user or self.smtp.password is None:
            return  # as Airflow: no login without both
        if self._password is None:
            self._password = self.smtp.password().strip()  # a command's output ends in \n
        try:
            server.login(self.smtp.user, self._password)
        except smtplib.SMTPAuthenticationError:
            self._password = None  # a rotated password: ask for it again at the next try
            raise


def _context(verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _why(exc: BaseException) -> str:
    """An error as one short line: its kind and the operating system's words."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return str(exc).lower() or "the server closed the connection"  # smtplib's own words
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or type(exc).__name__})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__
