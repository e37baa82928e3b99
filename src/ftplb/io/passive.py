"""Inspect mode's passive listeners, shared between sessions.

One listener per data port in use (per local address), open while at least
one session waits on it. A connection is handed to the session that waits
on that port for that client address (balancer/dataports.py); anyone else
is refused and logged, as a PASV hijack would be.

In a cluster with `advertise` (io/forward.py) every port of the slice stays
open, each (port, client address) announced is claimed cluster-wide first,
and a connection nobody waits for here is offered to the cluster, which
forwards it to the node that announced it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Protocol, cast

from ftplb.balancer.dataports import DataPorts, client_key
from ftplb.io.proxied import Networks, front
from ftplb.io.relay import Addresses, local_address, peer_address

log = logging.getLogger("ftplb.data")

BACKLOG = 256
"""Per shared port: many clients may connect to one port at the same moment."""


class Waiter(Protocol):
    """A session's data channel waiting for its client's connection."""

    label: str

    def data_arrived(self, transport: asyncio.Transport, proxied: Addresses | None) -> None:
        """The client connected: the transport is the waiter's from now on
        (`proxied`: the addresses of the PROXY header it began with)."""


class ClusterPorts(Protocol):
    """[cluster] advertise: the cluster's view of the data ports (io/forward.py)."""

    host: str
    """Where every port of the slice listens (for good: another node's client may come)."""

    async def claim(self, port: int, client: str) -> bool:
        """Hold (port, client) cluster-wide; False when another node does."""

    def release(self, port: int, client: str) -> None: ...

    def forward(
        self, transport: asyncio.Transport, port: int, client: tuple[str, int], local: str
    ) -> bool:
        """Take a connection nobody waits for here; False: nobody will."""


class PassiveListeners:
    """The listeners of one process's share of `data_ports`."""

    def __init__(self, ports: DataPorts, networks: Networks) -> None:
        self.ports = ports
        self.networks = networks
        self.cluster: ClusterPorts | None = None
        self.loop = asyncio.get_running_loop()
        self._servers: dict[tuple[str, int], asyncio.Server] = {}
        self._opening: dict[tuple[str, int], asyncio.Future[None]] = {}
        self._users: Counter[tuple[str, int]] = Counter()
        self._waiting: dict[tuple[int, str], tuple[str, Waiter]] = {}
        self.refused = 0
        """Connections nobody waited for (hijack attempts, late or second connections)."""

    async def announce(self, host: str, client_ip: str, waiter: Waiter) -> int:
        """A port on `host` where `waiter` now waits for `client_ip`. Raises OSError."""
        key = client_key(client_ip)
        cluster = self.cluster
        if cluster is not None:
            host = cluster.host
        unusable: set[int] = set()
        last_error: OSError | None = None
        for _ in range(DataPorts.BIND_ATTEMPTS):
            port = self.ports.take(key, frozenset(unusable))
            if port is None:
                break
            self._waiting[(port, key)] = (host, waiter)
            self._users[(host, port)] += 1
            try:
                await self._open(host, port)
                if cluster is not None and not await cluster.claim(port, key):
                    raise OSError(f"port {port} is announced to {client_ip} by another node")
            except OSError as exc:
                self.withdraw(port, key, waiter)
                unusable.add(port)
                last_error = exc
                continue
            if self._waiting.get((port, key)) != (host, waiter):
                raise OSError("withdrawn while the port was opening")
            return port
        raise last_error or OSError(f"every data port is in use for {client_ip}")

    async def open_all(self, host: str) -> None:
        """Listen on every port of the slice for good (a cluster's data ports:
        another node's client may come to any). A port that cannot be bound
        now is logged and tried again when it is announced."""
        failed: list[str] = []
        for port in self.ports.ports:
            self._users[(host, port)] += 1  # held by the cluster: never closed
            try:
                await self._open(host, port)
            except OSError as exc:
                failed.append(f"{port} ({exc.strerror or exc})")
        if failed:
            log.warning(
                "data ports not open on %s: %s%s",
                host, ", ".join(failed[:10]), " ..." if len(failed) > 10 else "",
            )  # fmt: skip

    async def _open(self, host: str, port: int) -> None:
        at = (host, port)
        if at in self._servers:
            return
        opening = self._opening.get(at)
        if opening is not None:
            await asyncio.shield(opening)
            return
        opening = self._opening[at] = self.loop.create_future()
        try:
            server = await self.loop.create_server(
                front(lambda proxied: _Arrival(self, host, port, proxied), self.networks),
                host,
                port,
                reuse_address=True,
                backlog=BACKLOG,
            )
        except OSError as exc:
            opening.set_exception(exc)
            opening.exception()  # whoever else waited has it; no "never retrieved"
            raise
        finally:
            del self._opening[at]
        if self._users[at] > 0:
            self._servers[at] = server
        else:  # everyone gave up while it opened
            server.close()
            del self._users[at]
        if not opening.done():
            opening.set_result(None)

    def withdraw(self, port: int, client_ip: str, waiter: Waiter) -> None:
        """`waiter` no longer waits (connected, timed out or gone)."""
        key = client_key(client_ip)
        entry = self._waiting.get((port, key))
        if entry is None or entry[1] is not waiter:
            return
        host = entry[0]
        del self._waiting[(port, key)]
        self.ports.release(port, key)
        if self.cluster is not None:
            self.cluster.release(port, key)
        at = (host, port)
        self._users[at] -= 1
        if self._users[at] <= 0:
            del self._users[at]
            server = self._servers.pop(at, None)
            if server is not None:
                server.close()

    def arrived(
        self,
        host: str,
        port: int,
        transport: asyncio.Transport,
        proxied: Addresses | None,
        forwarded: bool = False,
    ) -> bool:
        """A connection to `port` on `host` (`forwarded`: by another node of
        the cluster, which has read it from a shared port of its own). True
        when a session (or the cluster) took it."""
        peer = proxied[0] if proxied is not None else peer_address(transport)
        entry = self._waiting.get((port, client_key(peer[0])))
        if entry is None and not forwarded and self.cluster is not None:
            local = proxied[1][0] if proxied is not None else local_address(transport)[0]
            if self.cluster.forward(transport, port, peer, local):
                return True  # it refuses the connection itself if no node waits for it
        if entry is None or (entry[0] != host and not forwarded):
            self.refuse(transport, port, peer)
            return False
        entry[1].data_arrived(transport, proxied)
        return True

    def refuse(self, transport: asyncio.Transport, port: int, peer: tuple[str, int]) -> None:
        self.refused += 1
        log.warning(
            "data connection from %s:%d to port %d refused: no session of that client waits on it",
            peer[0],
            peer[1],
            port,
        )
        transport.abort()

    @property
    def open_ports(self) -> int:
        return len(self._servers)

    def close(self) -> None:
        for server in self._servers.values():
            server.close()
        self._servers.clear()


class _Arrival(asyncio.Protocol):
    """A new connection to a shared port, until it is handed to its session."""

    __slots__ = ("host", "listeners", "port", "proxied")

    def __init__(
        self, listeners: PassiveListeners, host: str, port: int, proxied: Addresses | None
    ) -> None:
        self.listeners = listeners
        self.host = host
        self.port = port
        self.proxied = proxied

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.listeners.arrived(
            self.host, self.port, cast(asyncio.Transport, transport), self.proxied
        )
