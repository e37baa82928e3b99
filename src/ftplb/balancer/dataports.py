"""Inspect mode's own passive ports, shared between clients.

A data connection is matched by (port, client address), so one port serves
many sessions at once as long as their clients' addresses differ: 20 ports
serve any number of clients (a cloud load balancer or a Kubernetes Service
then needs 1 + 20 ports, not thousands). A client address holds at most one
pending passive request per port, and sessions from one address get
different ports: the address check stays as strict as with a port per
session.
"""

from __future__ import annotations

import ipaddress
from collections import Counter

from ftplb.config import PortRange


def client_key(ip: str) -> str:
    """The form an address is matched in (an IPv4-mapped IPv6 address is IPv4)."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


class DataPorts:
    """Which (port, client address) pairs are announced and not yet connected or
    given up. Ports are handed out round-robin, skipping ports this client
    already waits on and ports a listen could not bind (`unusable`)."""

    BIND_ATTEMPTS = 64
    """Ports a listen tries before giving up (others may be taken by other
    programs, or by outgoing connections if the range overlaps the kernel's
    ephemeral ports: `ftplb check` warns of that)."""

    def __init__(self, ports: PortRange) -> None:
        self.ports = ports
        self._next = ports.first
        self._pending: set[tuple[int, str]] = set()
        self._per_port: Counter[int] = Counter()

    def take(self, client: str, skip: frozenset[int] = frozenset()) -> int | None:
        """A port `client` waits on nowhere yet, now announced to it; None if it
        waits on every port (or the rest are in `skip`)."""
        key = client_key(client)
        first, span = self.ports.first, len(self.ports)
        for i in range(span):
            port = first + (self._next - first + i) % span
            if port in skip or (port, key) in self._pending:
                continue
            self._pending.add((port, key))
            self._per_port[port] += 1
            self._next = port + 1 if port < self.ports.last else first
            return port
        return None

    def release(self, port: int, client: str) -> bool:
        """`client` no longer waits on `port`. True when nobody does any more
        (its listener may close)."""
        key = client_key(client)
        if (port, key) not in self._pending:
            return self._per_port[port] == 0
        self._pending.discard((port, key))
        self._per_port[port] -= 1
        if self._per_port[port] <= 0:
            del self._per_port[port]
            return True
        return False

    def waits(self, port: int, client: str) -> bool:
        return (port, client_key(client)) in self._pending

    def waiting_on(self, port: int) -> int:
        return self._per_port[port]

    @property
    def taken(self) -> int:
        """Pending requests (several may share a port)."""
        return len(self._pending)

    @property
    def ports_in_use(self) -> int:
        return len(self._per_port)
