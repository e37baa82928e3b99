"""Inspect mode's own passive ports: which are free to announce."""

from __future__ import annotations

from ftplb.config import PortRange


class DataPorts:
    """Hands out ports of `data_ports` round-robin. A port is ours from `take`
    until `release`: concurrent sessions never try to bind the same port (under
    load they used to, and a burst of them could run out of candidates and
    answer 425 with most of the range free)."""

    BIND_ATTEMPTS = 64
    """Ports a listen tries before giving up (others may be taken by other
    programs, or by outgoing connections if the range overlaps the kernel's
    ephemeral ports: `ftplb check` warns of that)."""

    def __init__(self, ports: PortRange) -> None:
        self.ports = ports
        self._next = ports.first
        self._taken: set[int] = set()

    def take(self) -> int | None:
        """The next port no listener of ours holds, now ours; None if all are taken."""
        first, span = self.ports.first, len(self.ports)
        for i in range(span):
            port = first + (self._next - first + i) % span
            if port not in self._taken:
                self._taken.add(port)
                self._next = port + 1 if port < self.ports.last else first
                return port
        return None

    def release(self, port: int) -> None:
        self._taken.discard(port)

    @property
    def taken(self) -> int:
        return len(self._taken)
