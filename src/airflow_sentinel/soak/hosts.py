"""Test hosts: one network namespace per node, on a bridge of their own.

Names carry the soak's pid (``snk<pid>...``), so a later soak can tell leftovers of a
soak that was killed (its pid is gone) from those of one still running, and remove
them. Every address is in 10.213.X.0/24 on that private bridge; nothing is routed
anywhere else. The cut drops packets with nftables inside the node's own namespace,
so the node sees silence, as in a real partition, not a polite error.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from airflow_sentinel.errors import UserError
from airflow_sentinel.soak import freezer

log = logging.getLogger(__name__)
PREFIX = "snk"
_NAME = re.compile(rf"^{PREFIX}(\d+)")
CUT_TABLE = "sentinel_soak_cut"
# Held from choosing a subnet until the bridge carries it: soaks started together
# would otherwise pick the same free subnet and route each other's packets.
SUBNET_LOCK = Path("/run/lock/airflow-sentinel-soak-subnet.lock")


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    command = ["ip", *args] if netns is None else ["ip", "-n", netns, *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")
    return done.stdout


def in_netns(netns: str, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, *command],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def preflight() -> None:
    """One-line reasons why this machine cannot host a soak, before anything is made."""
    if os.geteuid() != 0:
        raise UserError("the soak needs root: it creates network namespaces and a bridge")
    for tool, package in (("ip", "iproute2"), ("nft", "nftables"), ("unshare", "util-linux")):
        if subprocess.run(["which", tool], capture_output=True, check=False).returncode:
            raise UserError(f"the soak needs `{tool}` (Debian package {package})")


@dataclass
class Host:
    name: str  # also its host name and node id
    netns: str
    address: str

    def cut(self, peer: str) -> None:
        """Drop every packet between this host and ``peer``, both ways."""
        rules = (
            f"table inet {CUT_TABLE} {{\n"
            f"  chain out {{ type filter hook output priority 0; ip daddr {peer} drop; }}\n"
            f"  chain in {{ type filter hook input priority 0; ip saddr {peer} drop; }}\n"
            "}\n"
        )
        done = subprocess.run(
            ["ip", "netns", "exec", self.netns, "nft", "-f", "-"],
            input=rules,
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        if done.returncode:
            raise RuntimeError(f"cutting {self.name} off: {done.stderr.strip()}")

    def heal(self) -> None:
        done = in_netns(self.netns, "nft", "delete", "table", "inet", CUT_TABLE)
        if done.returncode and "No such file" not in done.stderr:
            raise RuntimeError(f"healing {self.name}: {done.stderr.strip()}")

    def command(self, *argv: str) -> list[str]:
        """``argv`` run on this host: in its namespace, under its own host name."""
        script = 'hostname "$0" && exec "$@"'
        return [
            "ip", "netns", "exec", self.netns,
            "unshare", "--uts", "--", "sh", "-c", script, self.name, *argv,
        ]  # fmt: skip


@dataclass
class Network:
    """A bridge in the root namespace (the metastore side) and ``count`` hosts."""

    count: int
    owner: int = field(default_factory=os.getpid)
    hosts: list[Host] = field(default_factory=list)
    spare: Host | None = None  # a host with no node of its own: where clones appear
    subnet: ipaddress.IPv4Network | None = None

    @property
    def bridge(self) -> str:
        return f"{PREFIX}{self.owner}b"

    @property
    def gateway(self) -> str:
        """The metastore side: the bridge's own address in the root namespace."""
        assert self.subnet is not None
        return str(self.subnet.network_address + 1)

    def create(self) -> Network:
        with subnet_lock():
            self.subnet = free_subnet()
            prefix = self.subnet.prefixlen
            ip("link", "add", "name", self.bridge, "type", "bridge")
            ip("addr", "add", f"{self.gateway}/{prefix}", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for index in range(1, self.count + 1):
            self.hosts.append(self._add_host(index, prefix))
        self.spare = self._add_host(self.count + 1, prefix)
        return self

    def _add_host(self, index: int, prefix: int) -> Host:
        assert self.subnet is not None
        netns = f"{PREFIX}{self.owner}-n{index}"
        outside, inside = f"{PREFIX}{self.owner}v{index}", f"{PREFIX}{self.owner}p{index}"
        address = str(self.subnet.network_address + 10 + index)
        ip("netns", "add", netns)
        ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        ip("link", "set", inside, "netns", netns)
        ip("link", "set", outside, "master", self.bridge)
        ip("link", "set", outside, "up")
        ip("link", "set", inside, "name", "eth0", netns=netns)
        ip("addr", "add", f"{address}/{prefix}", "dev", "eth0", netns=netns)
        ip("link", "set", "eth0", "up", netns=netns)
        ip("link", "set", "lo", "up", netns=netns)
        return Host(f"n{index}", netns, address)

    def destroy(self) -> None:
        remove_owned_by(self.owner)


@contextlib.contextmanager
def subnet_lock(path: Path = SUBNET_LOCK) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def free_subnet() -> ipaddress.IPv4Network:
    used = ip("-4", "-o", "addr", "show")
    for third in range(0, 256):
        net = ipaddress.IPv4Network(f"10.213.{third}.0/24")
        if f" 10.213.{third}." not in used:
            return net
    raise RuntimeError("no free subnet in 10.213.0.0/16 for the soak's bridge")


def _namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def _links() -> list[str]:
    names = []
    for line in ip("-o", "link", "show").splitlines():
        name = line.split(":", 2)[1].strip().split("@")[0]
        names.append(name)
    return names


def remove_owned_by(owner: int) -> None:
    """Kill what runs in ``owner``'s namespaces, then delete them, its links and its
    freezer cgroups (thawed first: a frozen process does not die)."""
    freezer.thaw_owned_by(owner)
    for netns in _namespaces():
        if _owner(netns) == owner:
            for pid in ip("netns", "pids", netns, check=False).split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            ip("netns", "del", netns, check=False)
    for link in _links():
        if _owner(link) == owner:
            ip("link", "del", link, check=False)
    freezer.remove_owned_by(owner)


def remove_leftovers() -> list[int]:
    """Remove the namespaces and links of soaks whose process is gone; return their pids."""
    owners = {_owner(name) for name in [*_namespaces(), *_links()]} - {None}
    owners |= set(freezer.owners())
    dead = sorted(o for o in owners if o is not None and not _alive(o))
    for owner in dead:
        log.info("removing the leftovers of soak %d, which is gone", owner)
        remove_owned_by(owner)
    return dead


def _owner(name: str) -> int | None:
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
