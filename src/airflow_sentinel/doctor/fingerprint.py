"""What must be the same on every master, as this node sees it."""

from __future__ import annotations

from airflow_sentinel.config.settings import Settings


def node_fingerprint(settings: Settings) -> str | None:
    """JSON for the registry; None when it cannot be taken."""
    return None
