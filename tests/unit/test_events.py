"""The event log: emitting never touches the store; flushing writes in order, stops at the
first failure, and starts no write after its budget."""

from __future__ import annotations

from typing import cast

from airflow_sentinel.clock import FakeClock
from airflow_sentinel.controller.events import EventLog
from airflow_sentinel.errors import MetastoreError
from airflow_sentinel.metastore.base import Event, Metastore


class EventStore:
    """Records events; each write takes ``write_s`` on the fake clock; ``down`` fails them."""

    def __init__(self, clock: FakeClock, write_s: float = 0.0) -> None:
        self.clock = clock
        self.write_s = write_s
        self.down = False
        self.written: list[str] = []
        self.attempts = 0

    def record_event(self, event: Event, retention: int) -> None:
        self.attempts += 1
        self.clock.advance(self.write_s)
        if self.down:
            raise MetastoreError("metastore test: no answer within 1s")
        self.written.append(event.detail)


def event_log(store: EventStore) -> EventLog:
    return EventLog(cast(Metastore, store), "a", "scheduler", 100, clock=store.clock)


def test_emit_only_logs_and_queues() -> None:
    store = EventStore(FakeClock())
    events = event_log(store)
    events.emit("demoted", "one", epoch=1)
    events.emit("demoted", "two", epoch=1)
    assert store.attempts == 0
    assert events.pending == 2


def test_flush_writes_in_order_and_stops_at_the_first_failure() -> None:
    store = EventStore(FakeClock())
    events = event_log(store)
    for detail in ("one", "two", "three"):
        events.emit("x", detail, epoch=None)
    store.down = True
    assert not events.flush()
    assert store.attempts == 1  # one failed write, not one per event
    store.down = False
    assert events.flush()
    assert store.written == ["one", "two", "three"]


def test_a_flush_starts_no_write_once_its_budget_is_spent() -> None:
    store = EventStore(FakeClock(), write_s=0.4)
    events = event_log(store)
    for detail in ("one", "two", "three", "four"):
        events.emit("x", detail, epoch=None)
    assert not events.flush(budget=1.0)
    assert store.written == ["one", "two", "three"]  # the third began at 0.8 s
    assert events.flush(budget=1.0)
    assert store.written == ["one", "two", "three", "four"]
