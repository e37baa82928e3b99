"""`accept_proxy`: connections from a load balancer in front begin with a PROXY
header, and its source is the client from then on.

A listener's protocol factory is wrapped (`front`): a connection from an
`accept_proxy` network first meets a `ProxyDoor`, which reads the header
(v1 or v2, TLVs skipped) within HEADER_TIMEOUT, then hands the connection to
the real protocol with the header's addresses, and the bytes after the header
with it. A LOCAL header (the load balancer's own health check) is a
connection from the load balancer itself. A missing, malformed or late
header closes the connection, with a log line. Connections from any other
network go straight to the real protocol.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Iterable
from typing import cast

from ftplb.errors import ProtocolError
from ftplb.io.relay import Addresses, peer_address
from ftplb.proto.proxy_protocol import (
    V1_MAX_LENGTH,
    V2_FIXED,
    V2_MAX_PAYLOAD,
    ProxyHeader,
    parse_header,
)

log = logging.getLogger("ftplb.session")

HEADER_TIMEOUT = 5.0
"""Seconds a connection from an accept_proxy network has to send its header
(a load balancer sends it at once; a slowloris gets no longer)."""
MAX_HEADER = max(V1_MAX_LENGTH, V2_FIXED + V2_MAX_PAYLOAD)

Make = Callable[[Addresses | None], asyncio.BaseProtocol]
"""Builds the real protocol of a connection, given the PROXY header's
(client, destination), or None: the socket's own addresses count."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Networks:
    """The accept_proxy networks, checked per connection."""

    def __init__(self, cidrs: Iterable[str] = ()) -> None:
        self.networks: tuple[Network, ...] = ()
        self.update(cidrs)

    def update(self, cidrs: Iterable[str]) -> None:
        """A reload: connections accepted from now on follow the new list."""
        self.networks = tuple(ipaddress.ip_network(c) for c in cidrs)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, ip: object) -> bool:
        if not isinstance(ip, str):
            return False
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.networks)


Check = Callable[[ProxyHeader], str]
"""More that a header must prove (the cluster's forward port: its signature):
'' if it does, else why not."""


def front(
    make: Make, networks: Networks, check: Check | None = None
) -> Callable[[], asyncio.BaseProtocol]:
    """A listener's protocol factory: `make(None)` itself while there are no
    accept_proxy networks, else a door per connection."""

    def factory() -> asyncio.BaseProtocol:
        return ProxyDoor(make, networks, check) if networks.networks else make(None)

    return factory


class ProxyDoor(asyncio.Protocol):
    """A new connection until its PROXY header (if it owes one) has been read."""

    __slots__ = ("buffer", "check", "make", "networks", "peer", "timer", "transport")

    def __init__(self, make: Make, networks: Networks, check: Check | None = None) -> None:
        self.make = make
        self.networks = networks
        self.check = check
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.timer: asyncio.TimerHandle | None = None
        self.peer: tuple[str, int] = ("", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.peer = peer_address(transport)
        if self.peer[0] not in self.networks:
            self._hand_over(None, b"")
            return
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(HEADER_TIMEOUT, self._refuse, "no PROXY header in time")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            parsed = parse_header(bytes(self.buffer))
        except ProtocolError as exc:
            self._refuse(f"malformed PROXY header: {exc}")
            return
        if parsed is None:
            if len(self.buffer) > MAX_HEADER:
                self._refuse("PROXY header too long")
            return
        header, length = parsed
        if header.family in ("UDP", "UNIX"):
            self._refuse(f"PROXY header for a {header.family} connection: not an FTP client")
            return
        refusal = self.check(header) if self.check is not None else ""
        if refusal:
            self._refuse(refusal)
            return
        addresses = (
            (header.source, header.destination)
            if header.source is not None and header.destination is not None
            else None
        )
        self._hand_over(addresses, bytes(self.buffer[length:]))

    def eof_received(self) -> bool:
        self._refuse("closed before its PROXY header")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _refuse(self, reason: str) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        log.warning("connection from %s:%d closed: %s", *self.peer, reason)
        if self.transport is not None:
            self.transport.abort()
            self.transport = None

    def _hand_over(self, addresses: Addresses | None, rest: bytes) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        transport = self.transport
        assert transport is not None
        self.transport = None
        protocol = self.make(addresses)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if rest and not transport.is_closing():
            # To whoever holds the connection now (it may have been handed on).
            feed(transport.get_protocol(), rest)


def feed(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """Deliver bytes already read to a protocol, as the event loop would."""
    if isinstance(protocol, asyncio.BufferedProtocol):
        view = memoryview(data)
        while view:
            buf = memoryview(protocol.get_buffer(len(view)))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            protocol.buffer_updated(n)
            view = view[n:]
    else:
        cast(asyncio.Protocol, protocol).data_received(data)
