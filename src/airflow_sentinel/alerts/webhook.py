"""Alerts by webhook: a JSON POST whose `text` field Slack and Mattermost incoming webhooks
show as they are. The URL is a secret (Slack's carry their token in the path): it is shown
as scheme://host only."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

from airflow_sentinel.alerts.delivery import SendError
from airflow_sentinel.alerts.model import Alert, webhook_body

TIMEOUT = 10.0


def shown(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # refused by the settings' check; never a reason to fail here
        port = ""
    return f"{parts.scheme}://{parts.hostname}{port}"


class WebhookChannel:
    def __init__(self, url: str, timeout: float = TIMEOUT) -> None:
        self._url = url
        self.timeout = timeout

    @property
    def name(self) -> str:
        return f"webhook {shown(self._url)}"

    def send(self, alert: Alert, sender: str) -> None:
        request = urllib.request.Request(  # noqa: S310 - http(s) only, checked at load
            self._url,
            data=json.dumps(webhook_body(alert, sender)).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "airflow-sentinel"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:  # noqa: S310
                answer.read(4096)
        except urllib.error.HTTPError as exc:
            raise SendError(f"answered HTTP {exc.code}") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            kind = "URLError" if isinstance(reason, str) else type(reason).__name__
            raise SendError(str(getattr(reason, "strerror", None) or kind)) from None
        except (OSError, ValueError) as exc:
            raise SendError(getattr(exc, "strerror", None) or type(exc).__name__) from None
