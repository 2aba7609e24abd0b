"""Log lines carry the time with its zone, the node, the instance and the fencing token
(epoch) of every action; as text for people or as one JSON object per line for machines."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime

TEXT, JSON = "text", "json"
# Every JSON line has these keys, in this order (null where a line has no value).
JSON_KEYS = ("time", "level", "node", "instance", "epoch", "event", "detail", "logger")


class _ContextFilter(logging.Filter):
    def __init__(self, node_id: str, instance: str) -> None:
        super().__init__()
        self.node_id = node_id
        self.instance = instance

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = self.node_id
        record.instance = self.instance
        if getattr(record, "epoch", None) is None:
            record.epoch = "-"
        return True


def timestamp(record: logging.LogRecord) -> str:
    """ISO 8601 in the host's zone, with its offset: lines from hosts in other zones (or
    read after a change to daylight saving time) still line up."""
    moment = datetime.fromtimestamp(record.created).astimezone()
    return moment.isoformat(timespec="milliseconds")


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s node=%(node)s epoch=%(epoch)s %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return timestamp(record)


class JsonFormatter(logging.Formatter):
    """One object per line with stable keys. An event's kind and detail are their own keys
    (see EventLog.emit); any other line has no event and its message as the detail."""

    def format(self, record: logging.LogRecord) -> str:
        epoch = getattr(record, "epoch", None)
        event = getattr(record, "event", None)
        detail = getattr(record, "detail", None) if event else record.getMessage()
        line: dict[str, object] = {
            "time": timestamp(record),
            "level": record.levelname,
            "node": getattr(record, "node", None),
            "instance": getattr(record, "instance", None),
            "epoch": epoch if isinstance(epoch, int) else None,
            "event": event,
            "detail": detail,
            "logger": record.name,
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(node_id: str, level: str, fmt: str = TEXT, instance: str = "-") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter(node_id, instance))
    handler.setFormatter(JsonFormatter() if fmt == JSON else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
