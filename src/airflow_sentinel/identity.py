"""Who a controller is: a node_id, and the one live process that speaks for it.

A lease is held by an *instance*, not just a ``node_id``: two live controllers that share
a ``node_id`` (a cloned VM that kept its host name, one config file pushed to every node)
have different instance tokens, so neither can renew, release or take back the other's
lease. The token names the host, the boot, the PID namespace and the process (pid and
kernel start time), so a controller can tell a dead predecessor of its own, restarted on
the same boot, from a live twin somewhere else:

* same boot id and PID namespace, and that pid with that start time is gone: the
  predecessor is dead, and taking its lease back at once is safe (its guard fences its
  scheduler when the controller's pipe closes, and the new controller stops strays first);
* anything else (another host, another boot, another PID namespace, or a live process):
  the holder may still be alive, and the lease is taken only after it expired.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

# The lease after a switchover: handed to a node, not yet claimed by one of its instances.
HANDOVER = "handover"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:12]
    except OSError:
        return "noboot"


def _pid_namespace() -> str:
    try:
        return str(Path("/proc/self/ns/pid").stat().st_ino)
    except OSError:
        return "nons"


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class Instance:
    node_id: str
    host: str
    boot: str
    pid_ns: str
    pid: int
    started: int

    @classmethod
    def of_this_process(cls, node_id: str) -> Instance:
        pid = os.getpid()
        return cls(
            node_id, socket.gethostname(), _boot_id(), _pid_namespace(), pid, start_ticks(pid) or 0
        )

    @property
    def token(self) -> str:
        return f"{self.host}/{self.boot}/{self.pid_ns}/{self.pid}/{self.started}"

    def may_reclaim(self, holder_token: str | None) -> bool:
        """Whether a lease recorded for ``holder_token`` (of our node_id) is ours to take
        back without waiting: our own, handed to us, or a predecessor proven dead."""
        if holder_token in (self.token, HANDOVER):
            return True
        return self.proven_dead(holder_token)

    def proven_dead(self, token: str | None) -> bool:
        """Whether the controller of ``token`` is known to be gone: it ran on this boot, in
        this PID namespace, and no process has its pid and start time any more. Anything
        we cannot see (another host, boot or namespace, an old or unreadable token) may
        still be alive."""
        parts = (token or "").split("/")
        if len(parts) != 5 or not parts[3].isdigit():
            return False  # no token (a controller that predates them), or not one of ours
        _host, boot, pid_ns, pid, started = parts
        if (boot, pid_ns) != (self.boot, self.pid_ns):
            return False
        return str(start_ticks(int(pid))) != started  # gone, or the pid was reused


def describe_token(token: str | None) -> str:
    """An instance token as an operator reads it: host and pid."""
    if not token or token == HANDOVER:
        return token or "unknown"
    parts = token.split("/")
    return f"{parts[0]} pid {parts[3]}" if len(parts) == 5 else token
