"""airflow-sentinel: exactly one Airflow scheduler across a cluster, and safe upgrades."""

__version__ = "0.1.0"
