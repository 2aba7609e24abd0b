"""A switchover's last hop: the node that handed the lease over tells the target at once,
through the target's API, instead of letting it find out at its next poll. Best effort:
on any failure the target still takes over at its next cycle."""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable

from airflow_sentinel.controller import events as ev
from airflow_sentinel.metastore.base import Event

log = logging.getLogger("airflow_sentinel.api")

WAKE_TIMEOUT = 1.0


def handed_over_to(event: Event) -> str | None:
    """The target of a completed hand-over event, or None."""
    if event.kind != ev.HANDED_OVER or not event.detail.startswith("to "):
        return None
    target, _, rest = event.detail[3:].partition(" ")
    return None if rest.startswith("failed") or not target else target


def wake_on_hand_over(
    api_of: Callable[[str], str | None], token: bytes, opener: urllib.request.OpenerDirector
) -> Callable[[Event], None]:
    """An event listener: it runs on the loop's thread, so it only starts a thread.
    ``opener`` follows no redirect (see tls.opener)."""

    def on_event(event: Event) -> None:
        target = handed_over_to(event)
        if target is not None and token:
            threading.Thread(
                target=_wake, args=(api_of, target, token, opener), name="wake", daemon=True
            ).start()

    return on_event


def _wake(
    api_of: Callable[[str], str | None],
    target: str,
    token: bytes,
    opener: urllib.request.OpenerDirector,
) -> None:
    url = api_of(target)
    if not url or not url.startswith(("http://", "https://")):
        return  # nothing to wake, or a registry entry that is not ours to follow
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
        f"{url}/wake",
        data=b"",
        method="POST",
        headers={"Authorization": f"Bearer {token.decode()}"},
    )
    try:
        with opener.open(request, timeout=WAKE_TIMEOUT):
            pass
    except (OSError, ValueError) as exc:
        log.debug("could not wake %s at %s: %s", target, url, type(exc).__name__)
