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
- A accepts a connection on its forward port only if its PROXY header is
  signed with the cluster's secret (an address check would lag: a node
  learns the others' addresses from their heartbeats, a second late), and
  hands it to its passive listeners as if it had arrived on that port: the
  client-address check applies as to any other connection.

Routed mode needs none of this: a data port leads to the same backend on
every node.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from typing import cast

from ftplb.balancer.dataports import client_key
from ftplb.config import Config, HostPort
from ftplb.io.cluster import Cluster
from ftplb.io.passive import BACKLOG, PassiveListeners
from ftplb.io.proxied import Networks, front
from ftplb.io.relay import (
    Addresses,
    Relay,
    armed_socket,
    disarm,
    enable_keepalive,
)
from ftplb.io.sessions import Tasks
from ftplb.proto.proxy_protocol import ProxyHeader, encode_v2, parse_header

log = logging.getLogger("ftplb.data")

SIGNATURE_TLV = 0xE0
"""PROXY v2 TLV (the spec's first custom type) on a forwarded connection: when
it was sent (ms, 8 bytes) and an HMAC-SHA256 over that and the header's
addresses, keyed with the cluster's secret. The forward port trusts only
headers that carry one: whoever lacks the secret (any program on a node's
host included) cannot claim to be a node."""
ANYONE = Networks(["0.0.0.0/0", "::/0"])
"""The forward port's door reads a header from every connection (and the
signature decides)."""
SIGNATURE_AGE = 30.0
"""Seconds a signature stays good (clocks of the nodes may differ a little)."""
MAX_LOOKUPS = 256
"""Owner lookups in flight; connections beyond are refused (a flood of
connections to the data ports must not become a flood of Redis reads)."""


def _mac(secret: bytes, sent: int, source: tuple[str, int], dest: tuple[str, int]) -> bytes:
    text = f"{sent} {source[0]} {source[1]} {dest[0]} {dest[1]}".encode()
    return hmac.new(secret, text, hashlib.sha256).digest()


def signed_header(
    secret: bytes, client: tuple[str, int], dest: tuple[str, int], now: float
) -> bytes:
    """The PROXY v2 header a forwarded connection begins with."""
    # Signed as the receiver will read the addresses (v4 in v6 and the like).
    parsed = parse_header(encode_v2(client, dest))
    assert parsed is not None and parsed[0].source and parsed[0].destination
    sent = int(now * 1000)
    mac = _mac(secret, sent, parsed[0].source, parsed[0].destination)
    return encode_v2(client, dest, ((SIGNATURE_TLV, sent.to_bytes(8, "big") + mac),))


def signature_refusal(secret: bytes | None, header: ProxyHeader, now: float) -> str:
    """'' when `header` was signed with `secret` lately, else why it is refused."""
    if secret is None:
        return "the cluster's secret is not known yet (Redis unreachable)"
    if header.source is None or header.destination is None:
        return "a forwarded connection without addresses"
    for kind, value in header.tlvs:
        if kind == SIGNATURE_TLV and len(value) == 40:
            sent = int.from_bytes(value[:8], "big")
            if abs(now - sent / 1000) > SIGNATURE_AGE:
                return "a stale signature"
            mac = _mac(secret, sent, header.source, header.destination)
            return "" if hmac.compare_digest(mac, value[8:]) else "a wrong signature"
    return "no signature"


class DataForwarding:
    """One worker's part: its claims, its forward port, the connections it
    forwards to other nodes (io/passive.py's ClusterPorts)."""

    def __init__(
        self,
        config: Callable[[], Config],
        cluster: Cluster,
        listeners: PassiveListeners,
        worker: int,
        splice: bool,
    ) -> None:
        self.config = config
        """The config in force (reloads change data_timeout, connect_timeout)."""
        advertise = config().cluster.advertise
        assert advertise is not None
        self.cluster = cluster
        self.listeners = listeners
        self.host = config().balancer.data_host
        self.source = advertise.host
        """Forwarded connections leave from here (the address a firewall lets through)."""
        self.at = HostPort(advertise.host, advertise.port + worker)
        self.splice = splice
        self.stopping = False
        """The balancer stops: forwarded connections in flight finish, no new ones."""
        self.forwarded = 0
        """Connections that reached this node for another's session, sent on."""
        self.joined = 0
        """Connections another node forwarded here, joined to their session."""
        self.server: asyncio.Server | None = None
        self.relays: set[Relay] = set()
        """Forwarded connections this node relays (a stopping node lets them end)."""
        self.loop = asyncio.get_running_loop()
        self._tasks = Tasks(self.loop)
        self._claims: dict[tuple[int, str], str] = {}
        self._lookups = 0

    async def start(self) -> None:
        self.server = await self.loop.create_server(
            front(self._from_peer, ANYONE, self._check),
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
        value = self._claims[(port, client)] = self.cluster.claim_value(str(self.at))
        ttl = self.config().balancer.data_timeout + 5.0
        held = await self.cluster.claim_data(port, client, value, ttl)
        if self._claims.get((port, client)) != value:
            self.cluster.release_data(port, client, value)  # given up while claiming
        elif not held:
            del self._claims[(port, client)]
        return held

    def release(self, port: int, client: str) -> None:
        value = self._claims.pop((port, client), None)
        if value is not None:
            self.cluster.release_data(port, client, value)

    def _check(self, header: ProxyHeader) -> str:
        return signature_refusal(self.cluster.secret, header, time.time())

    def _from_peer(self, proxied: Addresses | None) -> asyncio.Protocol:
        return _Forwarded(self, proxied)

    def joined_from_peer(self, transport: asyncio.Transport, proxied: Addresses | None) -> None:
        if proxied is None:  # (the signature check lets no such header through)
            transport.abort()
            return
        port = proxied[1][1]
        if self.listeners.arrived(self.host, port, transport, proxied, forwarded=True):
            self.joined += 1

    # -- as the node the client reached

    def forward(
        self, transport: asyncio.Transport, port: int, client: tuple[str, int], local: str
    ) -> bool:
        if not self.cluster.connected or self.stopping or self._lookups >= MAX_LOOKUPS:
            return False  # refused at once (nobody can say who waits, or we are leaving)
        self._lookups += 1
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
        try:
            owner = await self.cluster.data_owner(port, client_key(client[0]))
        finally:
            self._lookups -= 1
        secret = self.cluster.secret
        if relay.stopped:
            return  # the client left meanwhile
        if owner is None or owner == (self.at.host, self.at.port) or secret is None:
            self.listeners.refuse(transport, port, client)
            return
        try:
            sock = armed_socket(owner, (self.source, 0))
        except OSError as exc:
            self._failed(relay, owner, exc)
            return
        try:
            timeout = self.config().balancer.connect_timeout
            await asyncio.wait_for(self.loop.sock_connect(sock, owner), timeout)
            await self.loop.create_connection(lambda: relay.backend, sock=sock)
        except (OSError, TimeoutError) as exc:
            sock.close()  # armed: a reset
            self._failed(relay, owner, exc)
            return
        except BaseException:  # cancelled: the balancer stops
            sock.close()
            raise
        disarm(sock)
        if relay.stopped or relay.client.closed:
            return  # the client left meanwhile (the relay closes the rest)
        for side in (relay.client, relay.backend):
            if side.transport is not None:
                enable_keepalive(side.transport)  # a node gone silent is found
        # PROT P too: the bytes are TLS records for the node that holds the session.
        relay.start(signed_header(secret, client, (local, port), time.time()), self.splice)
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
