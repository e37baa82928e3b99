"""[cluster] advertise: data connections that reach the wrong node (inspect mode).

Behind one address shared by several nodes (ECMP, anycast, a Kubernetes
Service without session affinity) a client's data connection may reach node B
while its session lives on node A. With the same `data_ports` on every node:

- A announces a (port, client address) only once it holds it cluster-wide
  (io/cluster.py `claim_data`), naming where this worker takes forwarded
  connections: the `advertise` host, its port plus the worker's index.
- B, where nobody waits for the connection, looks the pair up and forwards
  the connection there, from its own `advertise` address, beginning with a
  PROXY v2 header: the client's address and port, and the address and data
  port the client reached.
- A accepts connections on its forward port only from the nodes' `advertise`
  addresses, reads the header, and hands the connection to its passive
  listeners as if it had arrived on that port: the client-address check
  applies as to any other connection.

Routed mode needs none of this: a data port leads to the same backend on
every node.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from ftplb.balancer.dataports import client_key
from ftplb.config import Config, HostPort
from ftplb.io.cluster import Cluster
from ftplb.io.passive import BACKLOG, PassiveListeners
from ftplb.io.proxied import front
from ftplb.io.relay import Addresses, Relay, armed_socket, disarm, peer_address
from ftplb.io.sessions import Tasks
from ftplb.proto.proxy_protocol import encode_v2

log = logging.getLogger("ftplb.data")


class DataForwarding:
    """One worker's part: its claims, its forward port, the connections it
    forwards to other nodes (io/passive.py's ClusterPorts)."""

    def __init__(
        self,
        config: Config,
        cluster: Cluster,
        listeners: PassiveListeners,
        worker: int,
        splice: bool,
    ) -> None:
        advertise = config.cluster.advertise
        assert advertise is not None
        b = config.balancer
        self.cluster = cluster
        self.listeners = listeners
        self.host = b.data_host
        self.source = advertise.host
        """Forwarded connections leave from here: the address the others accept."""
        self.at = HostPort(advertise.host, advertise.port + worker)
        self.ttl = b.data_timeout + 5.0
        self.connect_timeout = b.connect_timeout
        self.splice = splice
        self.forwarded = 0
        """Connections that reached this node for another's session, sent on."""
        self.joined = 0
        """Connections another node forwarded here, joined to their session."""
        self.server: asyncio.Server | None = None
        self.relays: set[Relay] = set()
        self.loop = asyncio.get_running_loop()
        self._tasks = Tasks(self.loop)

    async def start(self) -> None:
        self.server = await self.loop.create_server(
            front(self._from_peer, self.cluster.peers),
            self.at.host,
            self.at.port,
            reuse_address=True,
            backlog=BACKLOG,
        )
        await self.listeners.open_all(self.host)
        self.listeners.cluster = self
        log.info(
            "cluster: data ports %s open on %s; other nodes forward here to %s",
            self.listeners.ports.ports, self.host, self.at,
        )  # fmt: skip

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        self._tasks.cancel()
        for relay in list(self.relays):
            relay.close("balancer stopping", abort=True)

    # -- as the node that announced the port

    async def claim(self, port: int, client: str) -> bool:
        return await self.cluster.claim_data(port, client, str(self.at), self.ttl)

    def release(self, port: int, client: str) -> None:
        self.cluster.release_data(port, client, str(self.at))

    def _from_peer(self, proxied: Addresses | None) -> asyncio.Protocol:
        return _Forwarded(self, proxied)

    def joined_from_peer(self, transport: asyncio.Transport, proxied: Addresses | None) -> None:
        if proxied is None:  # not a cluster node, or a header without addresses
            peer = peer_address(transport)
            log.warning(
                "connection to the cluster's forward port %s from %s:%d refused: "
                "not a node of the cluster", self.at, *peer,
            )  # fmt: skip
            transport.abort()
            return
        port = proxied[1][1]
        if self.listeners.arrived(self.host, port, transport, proxied, forwarded=True):
            self.joined += 1

    # -- as the node the client reached

    def forward(
        self, transport: asyncio.Transport, port: int, client: tuple[str, int], local: str
    ) -> bool:
        if not self.cluster.connected:
            return False  # nobody can say who waits for it: refused at once
        # The relay's side takes the connection now: what the client sends
        # while we look for its node (it may have its 150 already) is kept.
        relay = Relay(self._ended)
        self.relays.add(relay)
        transport.set_protocol(relay.client)
        relay.client.connection_made(transport)  # (paused until the join)
        self._tasks.spawn(self._forward(relay, transport, port, client, local))
        return True

    async def _forward(
        self,
        relay: Relay,
        transport: asyncio.Transport,
        port: int,
        client: tuple[str, int],
        local: str,
    ) -> None:
        owner = await self.cluster.data_owner(port, client_key(client[0]))
        if relay.stopped:
            return  # the client left meanwhile
        if owner is None or owner == (self.at.host, self.at.port):
            self.listeners.refuse(transport, port, client)
            return
        try:
            sock = armed_socket(owner, (self.source, 0))
        except OSError as exc:
            self._failed(relay, owner, exc)
            return
        try:
            await asyncio.wait_for(self.loop.sock_connect(sock, owner), self.connect_timeout)
            await self.loop.create_connection(lambda: relay.backend, sock=sock)
        except (OSError, TimeoutError) as exc:
            sock.close()  # armed: a reset
            self._failed(relay, owner, exc)
            return
        disarm(sock)
        if relay.stopped:
            return  # the client left meanwhile (the relay closed the rest)
        # PROT P too: the bytes are TLS records for the node that holds the session.
        relay.start(encode_v2(client, (local, port)), splice=self.splice)
        self.forwarded += 1
        log.info(
            "data connection from %s:%d to port %d forwarded to the node at %s:%d",
            *client, port, *owner,
        )  # fmt: skip

    def _ended(self, relay: Relay) -> None:
        self.relays.discard(relay)
        log.debug(
            "forwarded data connection ended (%s): %d bytes up, %d down",
            relay.end_reason, relay.bytes_up, relay.bytes_down,
        )  # fmt: skip

    def _failed(self, relay: Relay, owner: tuple[str, int], exc: BaseException) -> None:
        log.warning(
            "data connection for the node at %s:%d not forwarded: %s",
            *owner, str(exc) or type(exc).__name__,
        )  # fmt: skip
        relay.close("owner unreachable", abort=True)


class _Forwarded(asyncio.Protocol):
    """A connection to the forward port, once its PROXY header is read."""

    __slots__ = ("forwarding", "proxied")

    def __init__(self, forwarding: DataForwarding, proxied: Addresses | None) -> None:
        self.forwarding = forwarding
        self.proxied = proxied

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.forwarding.joined_from_peer(cast(asyncio.Transport, transport), self.proxied)
