"""One exception root. `UserError` subclasses end as one line on stderr and exit code 2;
`MetastoreError` ones (a store that cannot be reached is the environment, not a mistake
in the command) as one line and exit code 1, which a service manager restarts."""

from __future__ import annotations


class SentinelError(Exception):
    """Root of every error this package raises on purpose."""


class UserError(SentinelError):
    """A mistake the operator can fix: bad configuration, bad flag, wrong command for the state."""


class ConfigError(UserError):
    """One or more configuration problems, each naming the key and what is accepted."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class MetastoreError(SentinelError):
    """The metastore could not be reached or answered with an error.

    Losing a race is never this error: backends return ``None``/``False`` for that.
    """


class MetastoreUnavailable(MetastoreError, UserError):
    """Raised at start-up or by a command when the metastore cannot be reached.

    The message names the host and never the password. It ends with exit code 1: a
    metastore that is down at boot comes back, and systemd restarts a controller that
    exited 1 (not one that exited 2).
    """


class NodeIdConflict(UserError):
    """Another live controller already uses this node_id."""
