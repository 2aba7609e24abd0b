"""systemd: the notify protocol (READY, STATUS, WATCHDOG, STOPPING, RELOADING) spoken from
the control loop, and a unit for this node (`airflow-sentinel systemd-unit`)."""

from __future__ import annotations

from airflow_sentinel.systemd.service import start_notify
from airflow_sentinel.systemd.unit import systemd_unit

__all__ = ["start_notify", "systemd_unit"]
