"""The alerts' decisions, on a clock that moves only when told: which events are alerts,
who sends the cluster's alerts, deduplication, the rate limit, retries and backoff."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from airflow_sentinel.alerts import model as m
from airflow_sentinel.alerts.cluster import ClusterFacts
from airflow_sentinel.alerts.delivery import Backoff, Delivery, SendError
from airflow_sentinel.alerts.limiter import Limiter
from airflow_sentinel.alerts.model import Alert, email_message, webhook_body
from airflow_sentinel.alerts.rules import EventRules, Takeover, parse_takeover
from airflow_sentinel.alerts.service import AlertDesk, AlertService
from airflow_sentinel.clock import FakeClock
from airflow_sentinel.config import Settings
from airflow_sentinel.controller import events as ev
from airflow_sentinel.controller.lease_keeper import describe_takeover
from airflow_sentinel.metastore.base import Event, Lease


def event(kind: str, detail: str = "", epoch: int | None = 7, node: str = "a") -> Event:
    return Event(node, "scheduler", kind, detail, epoch)


def facts(
    active: str | None = "a",
    live: tuple[str, ...] = ("a", "b"),
    running: tuple[str, ...] = ("a",),
    hold: str | None = None,
) -> ClusterFacts:
    return ClusterFacts(active, live, running, hold, 7)


def an_alert(kind: str = m.FAILOVER, node: str = "a", topic: str = "") -> Alert:
    return Alert(kind, m.CRITICAL, f"{kind} on {node}", node, 7, 1_700_000_000.0, topic=topic)


@pytest.fixture
def alert_settings(settings: Settings) -> Settings:
    return replace(
        settings,
        alert_no_scheduler_after=60.0,
        alert_hold_after=600.0,
        alert_min_interval=300.0,
        alert_restarts_per_hour=2,
    )


# -- which events are alerts ----------------------------------------------------------------
def test_the_takeover_words_are_read_as_the_controller_writes_them() -> None:
    silent = Lease("scheduler", "b", 7, 0.0, taken_from="a", silent_for=15.14)
    free = Lease("scheduler", "b", 7, 0.0, taken_from=None)
    handed = Lease("scheduler", "b", 7, 0.0, taken_from="a", silent_for=None)

    taken = parse_takeover(describe_takeover(silent, "b"))
    assert taken is not None and (taken.from_node, taken.silence_s) == ("a", 15.1)
    assert parse_takeover(describe_takeover(free, "b")) == Takeover(None, None)
    assert parse_takeover(describe_takeover(handed, "b")) is None


def test_a_takeover_after_silence_is_a_failover_alert_with_who_from_whom_epoch_silence() -> None:
    rules = EventRules("b", 5)
    detail = "took the scheduler lease from a after 15.1s of silence, epoch 7"

    alert = rules.on_event(event(ev.BECAME_ACTIVE, detail, node="b"), 0.0, 1_700_000_000.0)

    assert alert is not None and alert.kind == m.FAILOVER
    assert alert.summary == (
        "failover: b took over the scheduler from a after 15.1s of silence, epoch 7"
    )
    assert dict(alert.facts)["previous"] == "a"
    assert dict(alert.facts)["silence"] == "15.1s"
    assert alert.epoch == 7


def test_the_clusters_first_lease_and_a_planned_handover_are_no_failover() -> None:
    rules = EventRules("b", 5)
    first = "holds the scheduler lease (it was free), epoch 1"
    handed = "holds the scheduler lease (taken back or handed over), epoch 8"

    assert rules.on_event(event(ev.BECAME_ACTIVE, first, epoch=1), 0.0, 0.0) is None
    assert rules.on_event(event(ev.BECAME_ACTIVE, handed, epoch=8), 0.0, 0.0) is None
    released = rules.on_event(
        event(ev.BECAME_ACTIVE, "holds the scheduler lease (it was free), epoch 4", epoch=4),
        0.0,
        0.0,
    )
    assert released is not None and released.kind == m.FAILOVER
    assert "from a released lease" in released.summary


def test_a_step_down_names_the_last_exit_reasons() -> None:
    rules = EventRules("a", 5)
    for code in (1, 2, 3):
        rules.on_event(event(ev.SCHEDULER_EXITED, f"exited code {code} (failed start)"), 0, 0)

    alert = rules.on_event(event(ev.STEPPED_DOWN, "3 failed starts; unfit for 300s"), 0, 0)

    assert alert is not None and alert.kind == m.STEPPED_DOWN
    assert [v for k, v in alert.facts if k.startswith("exit")] == [
        f"scheduler_exited: exited code {code} (failed start)" for code in (1, 2, 3)
    ]


@pytest.mark.parametrize(
    ("kind", "detail", "expected"),
    [
        (ev.SCHEDULER_FENCED, "killed by the guard: lease deadline passed", m.FENCED),
        (ev.STRAY_KILLED, "pid 31 airflow scheduler", m.STRAY),
        (
            ev.INSTANCE_CONFLICT,
            "node_id 'a' is in use by a live controller on h/2",
            m.INSTANCE_CONFLICT,
        ),
        (ev.INSTANCE_CONFLICT, "resolved: this instance owns its node_id again", m.RESOLVED),
        (ev.SCHEDULER_REFUSED, "Airflow expects schema 5f2621c13b39", m.SCHEMA_REFUSED),
    ],
)
def test_node_events_that_are_alerts(kind: str, detail: str, expected: str) -> None:
    alert = EventRules("a", 5).on_event(event(kind, detail), 0.0, 0.0)
    assert alert is not None and alert.kind == expected
    assert dict(alert.facts)["detail"] == detail


@pytest.mark.parametrize("kind", [ev.SCHEDULER_EXITED, ev.HANDED_OVER, ev.DEMOTED, ev.RELOADED])
def test_other_events_are_no_alerts(kind: str) -> None:
    assert EventRules("a", 5).on_event(event(kind, "x"), 0.0, 0.0) is None


def test_restarts_beyond_the_hourly_rate_are_an_alert_and_old_ones_age_out() -> None:
    rules = EventRules("a", 2)
    started = event(ev.SCHEDULER_STARTED)
    assert rules.on_event(started, 0.0, 0.0) is None  # the epoch's first start: no restart
    assert rules.on_event(started, 10.0, 0.0) is None
    assert rules.on_event(started, 20.0, 0.0) is None
    alert = rules.on_event(started, 30.0, 0.0)
    assert alert is not None and alert.kind == m.RESTARTS
    assert "3 times within an hour" in alert.summary
    # An hour later the early restarts no longer count.
    assert rules.on_event(started, 3625.0, 0.0) is None
    # A new epoch's first start is a takeover, not a restart.
    assert rules.on_event(event(ev.SCHEDULER_STARTED, epoch=8), 3626.0, 0.0) is None


# -- deduplication and the rate limit -----------------------------------------------------
def test_an_alike_alert_within_the_window_is_left_out_and_counted() -> None:
    limiter = Limiter(min_interval=300)
    assert limiter.admit(an_alert(), 0.0) is not None
    assert limiter.admit(an_alert(), 100.0) is None
    assert limiter.admit(an_alert(), 299.0) is None
    # Another node or another kind is not alike.
    assert limiter.admit(an_alert(node="b"), 100.0) is not None
    assert limiter.admit(an_alert(kind=m.FENCED), 100.0) is not None

    later = limiter.admit(an_alert(), 300.0)

    assert later is not None and later.suppressed == 2
    assert limiter.admit(an_alert(), 601.0) == an_alert()  # nothing left out meanwhile


def test_beyond_the_hourly_limit_alerts_are_dropped_until_the_hour_has_passed() -> None:
    limiter = Limiter(min_interval=0, max_per_hour=3)
    sent = [limiter.admit(an_alert(topic=str(n)), float(n)) for n in range(5)]
    assert [a is not None for a in sent] == [True, True, True, False, False]
    assert limiter.dropped == 2
    assert limiter.admit(an_alert(topic="late"), 3600.0) is not None


def test_a_test_alert_is_never_left_out() -> None:
    limiter = Limiter(min_interval=300, max_per_hour=0)
    assert limiter.admit(an_alert(kind=m.TEST), 0.0) is not None
    assert limiter.admit(an_alert(kind=m.TEST), 1.0) is not None


# -- the cluster's conditions, and who sends them --------------------------------------------
def test_no_scheduler_anywhere_is_an_alert_once_past_the_threshold_then_resolved(
    alert_settings: Settings,
) -> None:
    clock = FakeClock()
    desk = AlertDesk(alert_settings, clock)
    assert desk.on_cluster(facts(running=())) == []
    clock.advance(59)
    assert desk.on_cluster(facts(running=())) == []
    clock.advance(1)
    [alert] = desk.on_cluster(facts(running=()))
    assert alert.kind == m.NO_SCHEDULER
    assert alert.summary == "no scheduler runs anywhere in the cluster for 60s"
    clock.advance(100)
    assert desk.on_cluster(facts(running=())) == []  # once per outage

    [back] = desk.on_cluster(facts(running=("b",)))

    assert back.kind == m.RESOLVED
    assert back.summary == "resolved: a scheduler runs again on b after 160s without one"


def test_a_short_gap_is_no_alert(alert_settings: Settings) -> None:
    clock = FakeClock()
    desk = AlertDesk(alert_settings, clock)
    desk.on_cluster(facts(running=()))
    clock.advance(30)
    assert desk.on_cluster(facts(running=("b",))) == []  # no resolved without an alert


def test_an_upgrade_hold_is_no_missing_scheduler_but_an_alert_when_it_lasts(
    alert_settings: Settings,
) -> None:
    clock = FakeClock()
    desk = AlertDesk(alert_settings, clock)
    held = facts(running=(), hold="upgrade r1 on h since 2026-12-01T08:00:12Z")
    desk.on_cluster(held)
    clock.advance(599)
    assert desk.on_cluster(held) == []
    clock.advance(1)
    [alert] = desk.on_cluster(held)
    assert alert.kind == m.HOLD_TOO_LONG
    assert dict(alert.facts)["hold"] == held.hold

    [released] = desk.on_cluster(facts())

    assert released.kind == m.RESOLVED
    assert released.summary == "resolved: the upgrade hold was released after 600s"


def test_the_cluster_alerts_are_sent_by_the_active_node_only(alert_settings: Settings) -> None:
    clock = FakeClock()
    standby = AlertDesk(replace(alert_settings, node_id="b"), clock)
    active = AlertDesk(alert_settings, clock)
    for desk in (standby, active):
        desk.on_cluster(facts(active="a", running=()))
    clock.advance(60)

    assert standby.on_cluster(facts(active="a", running=())) == []
    assert [a.kind for a in active.on_cluster(facts(active="a", running=()))] == [m.NO_SCHEDULER]


def test_without_an_active_node_the_live_node_with_the_lowest_node_id_sends(
    alert_settings: Settings,
) -> None:
    assert facts(active=None, live=("b", "c")).sender == "b"
    assert facts(active="c", live=("b", "c")).sender == "c"
    assert facts(active=None, live=()).sender is None
    clock = FakeClock()
    b = AlertDesk(replace(alert_settings, node_id="b"), clock)
    c = AlertDesk(replace(alert_settings, node_id="c"), clock)
    none_active = facts(active=None, live=("b", "c"), running=())
    for desk in (b, c):
        desk.on_cluster(none_active)
    clock.advance(60)

    assert [a.kind for a in b.on_cluster(none_active)] == [m.NO_SCHEDULER]
    assert c.on_cluster(none_active) == []


def test_a_node_that_becomes_the_sender_knows_how_long_the_condition_lasted(
    alert_settings: Settings,
) -> None:
    clock = FakeClock()
    b = AlertDesk(replace(alert_settings, node_id="b"), clock)
    b.on_cluster(facts(active="a", running=()))  # a sends; b watches
    clock.advance(60)
    assert b.on_cluster(facts(active="a", running=())) == []  # fired, but a sent it
    clock.advance(5)
    # a is gone; b, now the sender, resolves the condition when the scheduler is back.
    [back] = b.on_cluster(facts(active="b", live=("b",), running=("b",)))
    assert back.kind == m.RESOLVED


def test_a_node_that_cannot_reach_the_metastore_says_so_itself_and_when_it_can_again(
    alert_settings: Settings,
) -> None:
    clock = FakeClock()
    standby = AlertDesk(replace(alert_settings, node_id="b"), clock)  # not the sender
    assert standby.on_reach(False, "metastore db1: connection refused") == []
    clock.advance(59)
    assert standby.on_reach(False, "not connected") == []
    clock.advance(1)
    [down] = standby.on_reach(False, "metastore db1: connection refused")
    assert down.kind == m.METASTORE_UNREACHABLE and down.node_id == "b"
    assert down.summary.startswith("b cannot reach the metastore for 60s")
    assert ("reason", "metastore db1: connection refused") in down.facts
    clock.advance(30)
    assert standby.on_reach(False) == []  # said once
    [back] = standby.on_reach(True)
    assert back.kind == m.RESOLVED
    assert back.summary == "resolved: b reaches the metastore again after 90s"
    assert standby.on_reach(True) == []


def test_alike_node_alerts_are_deduplicated_by_the_desk(alert_settings: Settings) -> None:
    clock = FakeClock()
    desk = AlertDesk(alert_settings, clock)
    fenced = event(ev.SCHEDULER_FENCED, "killed by the guard: lease deadline passed")
    assert len(desk.on_event(fenced)) == 1
    clock.advance(10)
    assert desk.on_event(fenced) == []
    clock.advance(300)
    [again] = desk.on_event(fenced)
    assert again.suppressed == 1


# -- retries and backoff ----------------------------------------------------------------------
class FlakyChannel:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[Alert] = []
        self.tries: list[float] = []
        self.clock: FakeClock | None = None

    @property
    def name(self) -> str:
        return "flaky"

    def send(self, alert: Alert, sender: str) -> None:
        assert self.clock is not None
        self.tries.append(self.clock.now())
        if self.failures > 0:
            self.failures -= 1
            raise SendError("connection refused")
        self.sent.append(alert)


def delivery_of(channel: FlakyChannel, backoff: Backoff, capacity: int = 10) -> Delivery:
    clock = FakeClock(start=0.0)
    channel.clock = clock
    return Delivery(channel, "a", clock.now, backoff, capacity)


def test_a_failed_send_is_retried_with_doubling_backoff_until_it_goes_through() -> None:
    channel = FlakyChannel(failures=3)
    delivery = delivery_of(channel, Backoff(first=5, cap=300, attempts=8))
    assert channel.clock is not None
    delivery.offer(an_alert())
    while not channel.sent:
        due = delivery.next_due()
        assert due is not None
        channel.clock.advance(max(0.0, due - channel.clock.now()))
        delivery.send_due()

    assert channel.tries == [0.0, 5.0, 15.0, 35.0]
    assert delivery.sent == 1
    assert delivery.next_due() is None


def test_backoff_is_capped_and_the_alert_given_up_after_its_attempts() -> None:
    backoff = Backoff(first=5, cap=20, attempts=4)
    assert [backoff.delay(n) for n in (1, 2, 3, 4, 5)] == [5, 10, 20, 20, 20]
    channel = FlakyChannel(failures=100)
    delivery = delivery_of(channel, backoff)
    assert channel.clock is not None
    delivery.offer(an_alert())
    for _ in range(10):
        due = delivery.next_due()
        if due is None:
            break
        channel.clock.advance(max(0.0, due - channel.clock.now()))
        delivery.send_due()

    assert channel.tries == [0.0, 5.0, 15.0, 35.0]
    assert delivery.given_up == 1
    assert delivery.next_due() is None


def test_a_full_channel_queue_drops_its_oldest_alert() -> None:
    channel = FlakyChannel(failures=0)
    delivery = delivery_of(channel, Backoff(), capacity=2)
    for n in range(3):
        delivery.offer(replace(an_alert(topic=str(n)), at=float(n)))

    delivery.send_due()

    assert [a.topic for a in channel.sent] == ["1", "2"]
    assert delivery.given_up == 1


def test_the_loops_listener_only_enqueues_and_drops_what_does_not_fit(
    alert_settings: Settings,
) -> None:
    clock = FakeClock()
    service = AlertService(AlertDesk(alert_settings, clock), None, [], clock, 1.0)  # type: ignore[arg-type]
    for _ in range(1005):  # the thread is not started: nothing takes from the queue
        service.on_event(event(ev.SCHEDULER_FENCED))
    assert service.dropped == 5


# -- how an alert reads -----------------------------------------------------------------------
def test_the_email_has_the_summary_as_subject_and_every_fact_in_its_body() -> None:
    alert = Alert(
        m.FAILOVER,
        m.CRITICAL,
        "failover: b took over the scheduler from a after 15.1s of silence, epoch 7",
        "b",
        7,
        1_700_000_000.0,
        (("previous", "a"),),
        suppressed=2,
    )
    message = email_message(alert, "b", "sentinel@example.com", ["ops@example.com"])
    assert message["Subject"] == (
        "[airflow-sentinel] CRITICAL: failover: b took over the scheduler from a after 15.1s "
        "of silence, epoch 7"
    )
    body = message.get_content()
    assert "\nkind:     failover\n" in body
    assert "\nprevious: a\n" in body
    assert "time:     2023-11-14T22:13:20Z" in body
    assert "2 more alert(s) like this were not sent meanwhile." in body
    assert body.rstrip().endswith("sent by b (airflow-sentinel 0.1.0)")


def test_the_webhook_body_has_a_slack_text_and_the_facts_for_tools() -> None:
    body = webhook_body(an_alert(), "a")
    assert body["text"].startswith("*[airflow-sentinel] CRITICAL: failover on a*\nkind:")
    assert body["airflow_sentinel"]["kind"] == "failover"
    assert body["airflow_sentinel"]["sender"] == "a"
    json.dumps(body)  # serialisable as it is


def test_a_summary_with_a_line_break_still_makes_a_one_line_subject() -> None:
    alert = Alert(m.STRAY, m.WARNING, "stray on a:\nline two", "a", 7, 1_700_000_000.0)
    message = email_message(alert, "a", "from@example.com", ["to@example.com"])
    assert message["Subject"] == "[airflow-sentinel] WARNING: stray on a: line two"


def test_a_channel_that_raises_something_unexpected_is_retried_not_killed() -> None:
    class Broken:
        name = "webhook https://example.com"

        def send(self, alert: Alert, sender: str) -> None:
            raise UnicodeEncodeError("ascii", "é", 0, 1, "no")

    clock = FakeClock()
    delivery = Delivery(Broken(), "a", clock.now, Backoff(first=5, cap=300, attempts=3))
    delivery.offer(an_alert())
    assert delivery.send_due() == 0
    assert delivery.waiting() == 1  # kept for its next try
