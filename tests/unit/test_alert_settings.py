"""The alert keys: checked at load without echoing secrets, and the SMTP settings taken
from Airflow's [smtp] (environment, then airflow.cfg) unless [sentinel] overrides them."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_sentinel.alerts.channels import sources
from airflow_sentinel.alerts.mail import smtp_settings
from airflow_sentinel.config import load_settings
from airflow_sentinel.config.airflow_cfg import load_airflow_config
from airflow_sentinel.errors import ConfigError, UserError

SLACK = "https://hooks.slack.com/services/T000/B000/XXXXSECRETXXXX"


def problems(tmp_path: Path, flags: dict[str, str] | None = None, **env: str) -> list[str]:
    environ = {f"AIRFLOW__SENTINEL__{k.upper()}": v for k, v in env.items()}
    with pytest.raises(ConfigError) as raised:
        load_settings(flags or {}, environ, tmp_path)
    return raised.value.problems


def test_webhook_urls_are_refused_as_a_flag_without_echoing_them(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, {"alert_webhook_urls": SLACK})
    assert problem.startswith("--alert-webhook-urls: webhook URLs are secrets")
    assert "SECRET" not in problem


def test_a_malformed_webhook_is_named_by_its_number_and_host_only(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, alert_webhook_urls=f"{SLACK}, ftp://files.example.com/token-abc")
    assert problem == (
        "AIRFLOW__SENTINEL__ALERT_WEBHOOK_URLS: webhook 2: ftp://files.example.com: must be an "
        "http:// or https:// URL with a host"
    )


def test_bad_alert_values_are_all_reported_together(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        alert_email_to="ops@example.com, nobody",
        alert_smtp_password_cmd="pass smtp",
        alert_smtp_password_secret="smtp_password",
        alert_no_scheduler_after="0",
        alert_restarts_per_hour="0",
        alert_smtp_port="70000",
    )
    assert len(found) == 5, found
    assert "'nobody' is not an email address" in found[0]


def test_no_channel_without_addresses_or_webhooks(tmp_path: Path) -> None:
    assert sources(load_settings({}, {}, tmp_path)) == []


def write_cfg(home: Path, text: str) -> None:
    (home / "airflow.cfg").write_text(text)


def test_smtp_comes_from_airflows_smtp_section(tmp_path: Path) -> None:
    write_cfg(
        tmp_path,
        "[smtp]\nsmtp_host = mail.example.com\nsmtp_port = 587\nsmtp_starttls = True\n"
        "smtp_ssl = False\nsmtp_user = airflow\nsmtp_password = hunter2\n"
        "smtp_mail_from = airflow@example.com\nsmtp_timeout = 12\n",
    )
    settings = load_settings({"alert_email_to": "ops@example.com"}, {}, tmp_path)

    smtp = smtp_settings(settings, load_airflow_config(tmp_path, {}))

    assert (smtp.host, smtp.port, smtp.starttls, smtp.ssl) == ("mail.example.com", 587, True, False)
    assert (smtp.user, smtp.mail_from, smtp.timeout) == ("airflow", "airflow@example.com", 12.0)
    assert smtp.password is not None and smtp.password() == "hunter2"
    assert smtp.to == ("ops@example.com",)


def test_airflows_environment_wins_over_its_file_and_sentinel_over_both(tmp_path: Path) -> None:
    write_cfg(tmp_path, "[smtp]\nsmtp_host = file.example.com\nsmtp_user = u\n")
    environ = {
        "AIRFLOW__SMTP__SMTP_HOST": "env.example.com",
        "AIRFLOW__SMTP__SMTP_PASSWORD_CMD": "echo from-env-cmd",
        "AIRFLOW__SMTP__SMTP_STARTTLS": "False",
    }
    settings = load_settings({"alert_email_to": "ops@example.com"}, {}, tmp_path)
    smtp = smtp_settings(settings, load_airflow_config(tmp_path, environ))
    assert smtp.host == "env.example.com"
    assert smtp.starttls is False
    assert smtp.password is not None and smtp.password() == "from-env-cmd"

    overridden = load_settings(
        {
            "alert_email_to": "ops@example.com",
            "alert_smtp_host": "relay.example.com",
            "alert_smtp_port": "2525",
            "alert_smtp_ssl": "on",
            "alert_smtp_password_cmd": "echo from-sentinel",
            "alert_email_from": "sentinel@example.com",
        },
        {},
        tmp_path,
    )
    smtp = smtp_settings(overridden, load_airflow_config(tmp_path, environ))
    assert (smtp.host, smtp.port, smtp.ssl) == ("relay.example.com", 2525, True)
    assert smtp.mail_from == "sentinel@example.com"
    assert smtp.password is not None and smtp.password() == "from-sentinel"


def test_the_password_command_runs_only_when_the_password_is_needed(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    settings = load_settings(
        {
            "alert_email_to": "ops@example.com",
            "alert_smtp_user": "u",
            "alert_smtp_password_cmd": f"touch {marker}",
        },
        {},
        tmp_path,
    )
    smtp = smtp_settings(settings, load_airflow_config(tmp_path, {}))
    assert not marker.exists()
    assert smtp.password is not None
    smtp.password()
    assert marker.exists()


def test_a_failing_password_command_is_one_line_without_the_command(tmp_path: Path) -> None:
    settings = load_settings(
        {"alert_email_to": "o@example.com", "alert_smtp_user": "u"},
        {"AIRFLOW__SENTINEL__ALERT_SMTP_PASSWORD_CMD": "false --token abc"},
        tmp_path,
    )
    smtp = smtp_settings(settings, load_airflow_config(tmp_path, {}))
    assert smtp.password is not None
    with pytest.raises(UserError) as raised:
        smtp.password()
    assert str(raised.value) == "alert_smtp_password_cmd: the command exited with code 1"


def test_webhook_urls_from_a_command(tmp_path: Path) -> None:
    settings = load_settings(
        {"alert_webhook_urls_cmd": "printf 'https://a.example.com/x\\nhttp://b.example.com/y'"},
        {},
        tmp_path,
    )
    [source] = sources(settings)
    assert [c.name for c in source.build()] == [
        "webhook https://a.example.com",
        "webhook http://b.example.com",
    ]
