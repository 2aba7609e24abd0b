"""An alert, and how it reads: as an email and as a webhook's JSON body."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from airflow_sentinel import __version__

# Kinds of alert: what the operator must hear of.
FAILOVER = "failover"
FENCED = "fenced"
STEPPED_DOWN = "stepped_down"
NO_SCHEDULER = "no_scheduler"
RESTARTS = "restarts"
STRAY = "stray"
INSTANCE_CONFLICT = "instance_conflict"
SCHEMA_REFUSED = "schema_refused"
HOLD_TOO_LONG = "hold_too_long"
METASTORE_UNREACHABLE = "metastore_unreachable"
RESOLVED = "resolved"
TEST = "test"

CRITICAL, WARNING, INFO = "critical", "warning", "info"
PRODUCT = "airflow-sentinel"


@dataclass(frozen=True)
class Alert:
    kind: str
    severity: str
    summary: str  # one line: the subject, and the start of the webhook's text
    node_id: str | None  # the node it is about, if one
    epoch: int | None
    at: float  # wall-clock seconds
    facts: tuple[tuple[str, str], ...] = ()  # label and value, in the order shown
    topic: str = ""  # what makes two alerts of a kind alike (deduplication)
    suppressed: int = 0  # alike ones left out since the last one was sent

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.node_id or ''}:{self.topic}"

    def with_suppressed(self, count: int) -> Alert:
        return replace(self, suppressed=count)


def iso_time(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))


def body_lines(alert: Alert, sender: str) -> list[str]:
    """The alert as text: the summary, its facts, and who sent it."""
    lines = [alert.summary, ""]
    facts = [
        ("kind", alert.kind),
        ("severity", alert.severity),
        *([("node", alert.node_id)] if alert.node_id else []),
        *([("epoch", str(alert.epoch))] if alert.epoch is not None else []),
        ("time", iso_time(alert.at)),
        *alert.facts,
    ]
    width = max(len(label) for label, _ in facts)
    lines.extend(f"{label + ':':<{width + 1}} {value}" for label, value in facts)
    if alert.suppressed:
        lines.extend(["", f"{alert.suppressed} more alert(s) like this were not sent meanwhile."])
    lines.extend(["", f"sent by {sender} ({PRODUCT} {__version__})"])
    return lines


def subject(alert: Alert) -> str:
    """One line whatever the summary holds: a line break in a header is refused."""
    return " ".join(f"[{PRODUCT}] {alert.severity.upper()}: {alert.summary}".split())


def email_message(alert: Alert, sender: str, mail_from: str, to: list[str]) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = subject(alert)
    message["From"] = mail_from
    message["To"] = ", ".join(to)
    message["Date"] = formatdate(alert.at, usegmt=True)
    message["Message-ID"] = make_msgid(domain=mail_from.rpartition("@")[2] or None)
    message["X-Airflow-Sentinel-Kind"] = alert.kind
    message.set_content("\n".join(body_lines(alert, sender)) + "\n")
    return message


def webhook_body(alert: Alert, sender: str) -> dict[str, Any]:
    """Slack and Mattermost show ``text``; tools read the rest."""
    text = "\n".join(line for line in body_lines(alert, sender)[2:] if line)
    return {
        "text": f"*{subject(alert)}*\n{text}",
        "airflow_sentinel": {
            "kind": alert.kind,
            "severity": alert.severity,
            "summary": alert.summary,
            "node_id": alert.node_id,
            "epoch": alert.epoch,
            "time": iso_time(alert.at),
            "facts": dict(alert.facts),
            "suppressed": alert.suppressed,
            "sender": sender,
            "version": __version__,
        },
    }
