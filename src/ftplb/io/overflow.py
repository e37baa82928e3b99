"""Listen-queue overflows: connections the kernel dropped before we could accept them.

A client whose connection overflowed a listen queue may wait for a greeting
that never comes (its handshake looked complete to it). The kernel counts
these per network namespace (TcpExt ListenOverflows in /proc/net/netstat);
we read that counter now and then and say so, with how full our own control
listeners' queues are (TCP_INFO on a listening socket: the queue in
tcpi_unacked, its limit in tcpi_sacked).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable, Iterable

from ftplb.config import HostPort

log = logging.getLogger("ftplb")

NETSTAT = "/proc/net/netstat"
INTERVAL = 5.0


def listen_overflows(path: str = NETSTAT) -> int | None:
    """The namespace's TcpExt ListenOverflows counter, or None if unreadable."""
    try:
        with open(path, encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            value = table.get("ListenOverflows")
            return int(value) if value is not None else None
    return None


def queue_fill(sock: socket.socket) -> tuple[int, int] | None:
    """(connections waiting to be accepted, the queue's limit) of a listening socket."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
    except OSError:
        return None
    unacked, sacked = struct.unpack_from("II", info, 24)
    return unacked, sacked


class OverflowWatch:
    """Logs, every INTERVAL seconds, how many connections the kernel dropped for
    full listen queues since the last look (none: no line)."""

    def __init__(self, listeners: Callable[[], Iterable[socket.socket]]) -> None:
        self._listeners = listeners
        self._last = listen_overflows()
        self._timer: asyncio.TimerHandle | None = None
        self.dropped = 0
        """Overflows seen since start (all of this network namespace's listeners)."""

    def start(self) -> None:
        if self._last is not None:
            self._timer = asyncio.get_running_loop().call_later(INTERVAL, self._look)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _look(self) -> None:
        now = listen_overflows()
        if now is not None and self._last is not None and now > self._last:
            self.dropped += now - self._last
            fills = [
                f"{HostPort(*sock.getsockname()[:2])} {fill[0]}/{fill[1]}"
                for sock in self._listeners()
                if (fill := queue_fill(sock)) is not None
            ]
            log.warning(
                "%d connection attempts dropped by the kernel: a listen queue overflowed "
                "(control queues now: %s); raise balancer.backlog and net.core.somaxconn",
                now - self._last,
                ", ".join(fills) or "-",
            )
        self._last = now
        self._timer = asyncio.get_running_loop().call_later(INTERVAL, self._look)
