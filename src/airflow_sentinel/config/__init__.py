"""Configuration: defaults < airflow.cfg [sentinel] < AIRFLOW__SENTINEL__* < command-line flags."""

from airflow_sentinel.config.loader import load_settings
from airflow_sentinel.config.settings import KEYS, Settings

__all__ = ["KEYS", "Settings", "load_settings"]
