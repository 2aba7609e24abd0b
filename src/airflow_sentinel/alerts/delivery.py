"""Getting alerts out through one channel: a bounded queue, retries with backoff, and a
thread of its own, so that a dead or hanging server delays only its own channel."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from airflow_sentinel.alerts.model import Alert

log = logging.getLogger("airflow_sentinel.alerts")

CAPACITY = 100  # alerts waiting per channel; the oldest goes first when it is full


class SendError(Exception):
    """A channel could not deliver; the message never holds a secret."""


class Channel(Protocol):
    @property
    def name(self) -> str:
        """What it is, without secrets: 'email to ops@example.com via smtp.example.com:587'."""

    def send(self, alert: Alert, sender: str) -> None:
        """Deliver, or raise SendError; bounded by the channel's own timeout."""


@dataclass(frozen=True)
class Backoff:
    """Seconds before retry n (1, 2, ...): first, doubling, at most ``cap``; ``attempts``
    tries in all, then the alert is given up (logged)."""

    first: float = 5.0
    cap: float = 300.0
    attempts: int = 8

    def delay(self, retry: int) -> float:
        return float(min(self.cap, self.first * 2 ** (retry - 1)))


DEFAULT_BACKOFF = Backoff()


@dataclass
class Pending:
    alert: Alert
    tries: int
    due: float


class Delivery:
    """One channel's queue. ``send_due`` does the sending (on the worker's thread);
    ``offer`` is safe from any thread and never waits for the network."""

    def __init__(
        self,
        channel: Channel,
        sender: str,
        now: Callable[[], float],
        backoff: Backoff = DEFAULT_BACKOFF,
        capacity: int = CAPACITY,
    ) -> None:
        self.channel = channel
        self.sender = sender
        self._now = now
        self.backoff = backoff
        self.capacity = capacity
        self._pending: list[Pending] = []
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)
        self.sent = 0
        self.given_up = 0

    def offer(self, alert: Alert) -> None:
        with self._lock:
            if len(self._pending) >= self.capacity:
                oldest = min(self._pending, key=lambda p: p.alert.at)
                self._pending.remove(oldest)
                self.given_up += 1
                log.warning(
                    "alert %s: queue full, dropped: %s", self.channel.name, oldest.alert.summary
                )
            self._pending.append(Pending(alert, 0, self._now()))
            self.changed.notify_all()

    def next_due(self) -> float | None:
        with self._lock:
            return min((p.due for p in self._pending), default=None)

    def wait_for_due(self, stopping: Callable[[], bool]) -> bool:
        """Block until an alert is due (True) or ``stopping()`` (False)."""
        with self.changed:
            while not stopping():
                due = min((p.due for p in self._pending), default=None)
                if due is not None and due <= self._now():
                    return True
                self.changed.wait(None if due is None else due - self._now())
            return False

    def waiting(self) -> int:
        with self._lock:
            return len(self._pending)

    def send_due(self) -> int:
        """Try every alert that is due, oldest first; the number delivered."""
        delivered = 0
        while (item := self._take_due()) is not None:
            delivered += self._try(item)
        return delivered

    def _take_due(self) -> Pending | None:
        with self._lock:
            due = [p for p in self._pending if p.due <= self._now()]
            if not due:
                return None
            item = min(due, key=lambda p: (p.due, p.alert.at))
            self._pending.remove(item)
            return item

    def _try(self, item: Pending) -> int:
        item.tries += 1
        try:
            self.channel.send(item.alert, self.sender)
        except SendError as exc:
            self._failed(item, str(exc))
            return 0
        except Exception as exc:  # a channel's surprise must not end its thread
            # Only the type: an unexpected message may hold what it was sending.
            self._failed(item, f"unexpected {type(exc).__name__}")
            return 0
        self.sent += 1
        log.info("alert sent (%s): %s", self.channel.name, item.alert.summary)
        return 1

    def _failed(self, item: Pending, why: str) -> None:
        if item.tries >= self.backoff.attempts:
            self.given_up += 1
            log.error(
                "alert not sent (%s), given up after %d tries: %s; last error: %s",
                self.channel.name,
                item.tries,
                item.alert.summary,
                why,
            )
            return
        delay = self.backoff.delay(item.tries)
        log.warning(
            "alert not sent (%s): %s; try %d of %d in %gs",
            self.channel.name,
            why,
            item.tries + 1,
            self.backoff.attempts,
            delay,
        )
        with self._lock:
            item.due = self._now() + delay
            self._pending.append(item)


class ChannelWorker:
    """The thread that runs one Delivery. ``stop`` gives it ``grace`` seconds to send what
    is due already, then leaves it (a daemon thread: it never holds up the exit)."""

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name=f"alerts: {delivery.channel.name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self, grace: float) -> None:
        with self.delivery.changed:
            self._stopping = True
            self.delivery.changed.notify_all()
        self._thread.join(grace)

    def _run(self) -> None:
        while self.delivery.wait_for_due(lambda: self._stopping):
            self.delivery.send_due()
        self.delivery.send_due()  # what is due as it stops, within the grace it is given
