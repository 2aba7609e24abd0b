"""`airflow-sentinel doctor`."""

from __future__ import annotations

import click


@click.command()
def doctor() -> None:
    """Compare every live node's setup and check this one."""
    raise click.ClickException("not available yet")
