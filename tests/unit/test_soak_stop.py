"""Ctrl-C stops a soak at the next safe point, wherever it arrives."""

from __future__ import annotations

import logging
import os
import signal

import pytest

from airflow_sentinel.soak.runner import Interrupted, StopFlag, interruptible


class SignalsWhileLogging(logging.Handler):
    """Delivers SIGINT from inside a log call, where logging swallows exceptions."""

    def emit(self, record: logging.LogRecord) -> None:
        os.kill(os.getpid(), signal.SIGINT)


def test_a_signal_inside_a_log_call_still_stops_the_soak() -> None:
    flag = StopFlag()
    logger = logging.getLogger("test_soak_stop")
    logger.propagate = False
    logger.addHandler(SignalsWhileLogging())
    with interruptible(flag), pytest.raises(Interrupted, match="SIGINT"):
        logger.warning("fault 1: kill_controller on n1")
        flag.sleep(30)


def test_sigterm_is_named_and_a_second_signal_does_not_rename_it() -> None:
    flag = StopFlag()
    with interruptible(flag):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(Interrupted, match="SIGTERM"):
            flag.check()


def test_the_previous_handlers_come_back() -> None:
    before = signal.getsignal(signal.SIGINT)
    with interruptible(StopFlag()):
        assert signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before


def test_sleep_without_a_signal_returns() -> None:
    StopFlag().sleep(0.01)
