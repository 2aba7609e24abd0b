"""Log lines carry the node and the fencing token (epoch) of every action."""

from __future__ import annotations

import logging
import sys


class _ContextFilter(logging.Filter):
    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = self.node_id
        if getattr(record, "epoch", None) is None:
            record.epoch = "-"
        return True


def configure_logging(node_id: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter(node_id))
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s %(levelname)-7s node=%(node)s epoch=%(epoch)s %(message)s",
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
