"""Instance tokens: what may take a lease back at once, and what must wait for expiry."""

from __future__ import annotations

import os
from dataclasses import replace

from airflow_sentinel.identity import HANDOVER, Instance, describe_token, start_ticks
from tests.support.instances import dead, live, twin


def test_the_token_names_host_boot_namespace_pid_and_start() -> None:
    me = Instance.of_this_process("a")
    host, boot, pid_ns, pid, started = me.token.split("/")
    assert (host, pid, started) == (me.host, str(os.getpid()), str(start_ticks(os.getpid())))
    assert boot and pid_ns.isdigit()


def test_an_instance_reclaims_its_own_lease_and_a_handover() -> None:
    me = live("a")
    assert me.may_reclaim(me.token)
    assert me.may_reclaim(HANDOVER)


def test_a_dead_predecessor_on_this_boot_is_reclaimed_at_once() -> None:
    assert live("a").may_reclaim(dead("a").token)


def test_a_live_twin_or_an_unknown_holder_is_not() -> None:
    me = live("a")
    assert not me.may_reclaim(twin("a").token)
    assert not me.may_reclaim(None)  # a controller from before instance tokens
    assert not me.may_reclaim("garbage")


def test_another_boot_or_pid_namespace_is_never_judged_dead() -> None:
    me = live("a")
    gone = dead("a")
    assert not me.may_reclaim(replace(gone, boot="otherboot").token)
    assert not me.may_reclaim(replace(gone, pid_ns="1").token)


def test_a_reused_pid_does_not_look_alive() -> None:
    me = live("a")
    reused = replace(twin("a"), started=1)  # same pid as a live process, another start
    assert me.may_reclaim(reused.token)


def test_tokens_read_as_host_and_pid() -> None:
    assert describe_token(live("a").token) == f"{live('a').host} pid {os.getpid()}"
    assert describe_token(HANDOVER) == HANDOVER
    assert describe_token(None) == "unknown"
