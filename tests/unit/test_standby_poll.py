"""When a standby reads the lease between its cycles (no I/O: a fake clock)."""

from __future__ import annotations

import math

from airflow_sentinel.clock import FakeClock
from airflow_sentinel.controller.standby_poll import StandbyPoll
from airflow_sentinel.metastore.observed import ObservedExpiry


def test_the_next_read_is_a_poll_away_or_at_the_waits_end_if_sooner() -> None:
    clock = FakeClock()
    poll = StandbyPoll(clock, 0.5)
    poll.cycle_ran()
    assert poll.due(None) == clock.now() + 0.5
    assert poll.due(clock.now() + 0.2) == clock.now() + 0.2
    assert poll.due(clock.now() + 9) == clock.now() + 0.5


def test_an_end_already_looked_at_does_not_bring_the_read_forward_again() -> None:
    clock = FakeClock()
    poll = StandbyPoll(clock, 0.5)
    end = clock.now() + 0.2
    clock.advance(0.2)
    poll.polled(failed=False)  # read at the end; the lease had changed meanwhile
    assert poll.due(end) == clock.now() + 0.5  # no busy loop on an end in the past


def test_after_a_failed_read_only_the_next_cycle_reads() -> None:
    clock = FakeClock()
    poll = StandbyPoll(clock, 0.5)
    poll.polled(failed=True)
    assert poll.due(clock.now() + 0.1) == math.inf
    poll.cycle_ran()
    assert poll.due(None) == clock.now() + 0.5


def test_observed_expiry_says_when_the_wait_for_the_judged_state_ends() -> None:
    expiry = ObservedExpiry()
    assert expiry.due("s") is None
    assert not expiry.expired("s", ("a", 1, 7), 15.0, 100.0)
    assert expiry.due("s") == 115.0
    assert not expiry.expired("s", ("a", 1, 7), 15.0, 110.0)
    assert expiry.due("s") == 115.0  # the same state: the wait does not restart
    assert not expiry.expired("s", ("a", 1, 8), 15.0, 111.0)
    assert expiry.due("s") == 126.0
    expiry.forget("s")
    assert expiry.due("s") is None
