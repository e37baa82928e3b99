"""A byte relay between two sockets, built on asyncio Protocols.

Each socket gets an `Endpoint` protocol; a `Relay` joins two of them. Bytes
read from one side are written to the other as they come. When a side's write
buffer passes `HIGH_WATER`, asyncio calls its `pause_writing` and we stop
reading from the other side until it drains below `LOW_WATER`: a slow reader
slows its sender, and memory per relay stays bounded by about HIGH_WATER plus
one read. EOF is passed on as a half-close; a reset on either side aborts both.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from typing import cast

from ftplb.io.splice import SPLICE_AFTER, SplicedPair

Addresses = tuple[tuple[str, int], tuple[str, int]]
"""(peer, local) of a connection, or a PROXY header's (source, destination)."""

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
DRAIN_TIMEOUT = 30.0
"""Seconds a closing TLS side may take to send what it still holds."""


class Side(asyncio.Protocol):
    """One socket with bounded write buffering, as every socket of ours is: past
    HIGH_WATER asyncio calls `pause_writing` and whoever writes to it must stop
    reading what it would write (the relay: the other socket; inspect mode's
    control sessions: the client and the backend) until `resume_writing`."""

    __slots__ = ("bytes_read", "proxied", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.bytes_read = 0
        self.proxied: Addresses | None = None
        """(client, destination) from the PROXY header this connection began
        with (`accept_proxy`, io/proxied.py): who the client really is."""

    def addresses(self) -> Addresses:
        """(client, local) of an accepted connection: the PROXY header's, else the socket's."""
        if self.proxied is not None:
            return self.proxied
        assert self.transport is not None
        return client_addresses(self.transport)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        self.made()

    def made(self) -> None:
        """Connected (reading may be paused here: nothing was read yet)."""


class Endpoint(Side):
    """One socket of a relay."""

    # Thousands of idle sessions: no per-instance dict.
    __slots__ = (
        "_paused_peer",
        "closed",
        "draining",
        "early",
        "eof",
        "peer",
        "relay",
        "side",
    )

    def __init__(self, relay: Relay, side: int) -> None:
        super().__init__()
        self.relay = relay
        self.side = side  # 0: the client, 1: the backend
        self.peer: Endpoint | None = None
        self.eof = False
        self.closed = False
        self.draining = False
        self.early: list[bytes] = []
        self._paused_peer = False

    # -- asyncio callbacks

    def made(self) -> None:
        self.relay.endpoint_made(self)

    def data_received(self, data: bytes) -> None:
        self.bytes_read += len(data)
        relay = self.relay
        if relay.clock is not None:
            relay.last_activity = relay.clock.time()
        peer = self.peer
        if peer is None:
            # Not started: the other side is still being connected, and the
            # PROXY header must go first. uvloop may read once after
            # connection_made despite our pause: keep the chunk, pause again;
            # `Relay.start` sends it after the header.
            self.early.append(data)
            if self.transport is not None:
                self.transport.pause_reading()
            if self.side == 1:
                relay.backend_spoke()
        elif peer.transport is not None and not peer.closed:
            if not peer.transport.is_closing():  # (TLS warns of every write after)
                peer.transport.write(data)
            if relay.splice_pending and self.bytes_read + peer.bytes_read >= SPLICE_AFTER:
                relay.try_splice()

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        reason = "client closed" if self.side == 0 else "backend closed"
        if peer is None and not self.relay.stopped:
            if self.side == 1:
                self.relay.backend_spoke()
            return True  # not started yet: `start` passes the EOF on after the early bytes
        if peer is None or peer.transport is None or peer.closed or peer.eof:
            self.relay.close(reason)
            return False
        if peer.transport.can_write_eof():
            peer.transport.write_eof()
            self.relay.half_closed(reason)
            # Keep our transport open (the other direction goes on), unless it is
            # TLS: it cannot stay half-open (asyncio closes it and warns at True).
            return self.transport is None or self.transport.get_extra_info("ssl_object") is None
        self.relay.close(reason)
        return False

    def pause_writing(self) -> None:
        # Our socket is slow: stop reading what the other side sends us.
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            peer.transport.pause_reading()
            self._paused_peer = True

    def resume_writing(self) -> None:
        if self.draining:
            if self.transport is not None and not self.transport.get_write_buffer_size():
                self.transport.close()
            return
        peer = self.peer
        if self._paused_peer and peer is not None and peer.transport is not None:
            self._paused_peer = False
            if not peer.closed:
                peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.relay.endpoint_lost(self, exc)

    # -- helpers

    def close(self, abort: bool = False) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        if transport.is_closing() and not abort:
            return  # closing already (a TLS side after close_notify: asking it more raises)
        if abort:
            reset(transport)
        elif self.draining:
            return
        elif transport.get_write_buffer_size() and not transport.can_write_eof():
            # A TLS transport closed while its socket is full drops what it still
            # holds (CPython's sslproto skips the write when paused, then closes;
            # a backend saw a 300 kB upload end at 112 kB). Close once drained.
            self.draining = True
            transport.set_write_buffer_limits(0, 0)  # resume_writing at empty
            asyncio.get_running_loop().call_later(DRAIN_TIMEOUT, self._drain_timeout)
        else:
            transport.close()

    def _drain_timeout(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.abort()


class Relay:
    """Two endpoints and what happens to them.

    Either side may connect first; each is paused until `start` joins them,
    so nothing has to be buffered while the other connection is being made.
    `on_client()` runs when the client socket is accepted, `on_close(relay)`
    once, when both sockets are gone.
    """

    __slots__ = (
        "_done",
        "_fin_timer",
        "_on_close",
        "backend",
        "client",
        "clock",
        "end_reason",
        "fin_timeout",
        "first_bytes",
        "last_activity",
        "on_client",
        "splice_pending",
        "spliced",
    )

    def __init__(
        self, on_close: Callable[[Relay], None], on_client: Callable[[], None] | None = None
    ) -> None:
        self.client = Endpoint(self, 0)
        self.backend = Endpoint(self, 1)
        # `peer` links the two for forwarding only once `start` runs.
        self.end_reason = ""
        self._on_close = on_close
        self.on_client = on_client
        self._done = False
        self.last_activity = 0.0
        self.clock: asyncio.AbstractEventLoop | None = None
        """Set by `track_activity`: the loop whose time stamps each read."""
        self.spliced: SplicedPair | None = None
        self.splice_pending = False
        """Set by `start(splice=True)`: once SPLICE_AFTER bytes have moved, the
        kernel takes over (small transfers never pay splice's setup)."""
        self.fin_timeout: float | None = None
        """Seconds the other side has to follow a half-close (control relays: a
        backend that never closes after its client did would hold the session
        until the idle timeout); None: no limit (data: an upload's end)."""
        self._fin_timer: asyncio.TimerHandle | None = None
        self.first_bytes: asyncio.Future[None] | None = None
        """Set by whoever waits for the backend to speak before `start` (a greeting)."""

    def half_closed(self, reason: str) -> None:
        """One side ended its stream and the other was told: it has `fin_timeout`."""
        if self.fin_timeout is None or self.clock is None or self._fin_timer is not None:
            return
        self._fin_timer = self.clock.call_later(
            self.fin_timeout, self.close, f"{reason}; the other side did not follow"
        )

    def backend_spoke(self) -> None:
        """Bytes (or the end) came from the backend before `start`."""
        if self.first_bytes is not None and not self.first_bytes.done():
            self.first_bytes.set_result(None)

    # -- lifecycle

    def endpoint_made(self, endpoint: Endpoint) -> None:
        # Nothing is read until both sides are there (`start`).
        assert endpoint.transport is not None
        endpoint.transport.pause_reading()
        if endpoint is self.client:
            if self.on_client is not None:
                self.on_client()
        elif self._done or self.client.closed:
            # The client left while we were connecting.
            endpoint.close()

    @property
    def stopped(self) -> bool:
        return self._done

    @property
    def connected(self) -> bool:
        """Both sockets are open."""
        return all(e.transport is not None and not e.closed for e in (self.client, self.backend))

    def start(self, preamble: bytes = b"", splice: bool = False) -> None:
        """Both sides are connected: send `preamble` (a PROXY header) to the backend, then
        relay; with `splice`, the kernel may take over a long transfer (io/splice.py)."""
        assert self.backend.transport is not None and self.client.transport is not None
        self.client.peer = self.backend
        self.backend.peer = self.client
        for side in (self.client, self.backend):
            early, side.early = side.early, []
            head = preamble if side is self.client else b""
            if head or early:
                assert side.peer is not None and side.peer.transport is not None
                side.peer.transport.write(head + b"".join(early))
        for side in (self.client, self.backend):
            if side.eof:  # it ended before we started: pass the half-close on
                assert side.peer is not None
                if side.peer.transport is not None and side.peer.transport.can_write_eof():
                    side.peer.transport.write_eof()
                    self.half_closed("client closed" if side is self.client else "backend closed")
        if self.client.eof and self.backend.eof:
            self.close("closed")
            return
        self.splice_pending = splice
        for side in (self.client, self.backend):
            if not side.closed and side.transport is not None:
                side.transport.resume_reading()

    def try_splice(self) -> None:
        """Hand both sockets to a SplicedPair if nothing is buffered in a transport
        (it would arrive out of order): else try again on a later chunk. The
        transports stay paused from then on."""
        ct, bt = self.client.transport, self.backend.transport
        if ct is None or bt is None or ct.get_write_buffer_size() or bt.get_write_buffer_size():
            return
        self.splice_pending = False
        if self.client.eof or self.backend.eof or self.client.closed or self.backend.closed:
            return
        self._splice(ct, bt)

    def _splice(self, ct: asyncio.Transport, bt: asyncio.Transport) -> None:
        if any(t.get_extra_info("ssl_object") is not None for t in (ct, bt)):
            return  # the raw sockets carry TLS records: splicing them would bypass it
        cs, bs = ct.get_extra_info("socket"), bt.get_extra_info("socket")
        if cs is None or bs is None:
            return
        # From here on the transports must not read (uvloop would even after a
        # pause made in connection_made; this one, made later, holds).
        ct.pause_reading()
        bt.pause_reading()

        def up(n: int) -> None:
            self.client.bytes_read += n

        def down(n: int) -> None:
            self.backend.bytes_read += n

        self.spliced = SplicedPair(cs, bs, up, down, self.close)

    def endpoint_lost(self, endpoint: Endpoint, exc: Exception | None) -> None:
        if endpoint is self.backend:
            self.backend_spoke()
        if self.spliced is not None:
            self.spliced.stop()
        peer = self.backend if endpoint is self.client else self.client
        if not self.end_reason:
            who = "client" if endpoint is self.client else "backend"
            self.end_reason = f"{who} reset" if exc is not None else f"{who} closed"
        if peer.transport is not None and not peer.closed:
            # A reset is passed on as a reset so the other side knows the
            # stream is incomplete; a clean close flushes what is buffered.
            # A side that ended its stream first (EOF, or TLS close_notify) and
            # then reset (curl does, over unread TLS 1.3 tickets) sent all it
            # meant to: what it sent is delivered and ended cleanly.
            peer.close(abort=exc is not None and not endpoint.eof)
        self._maybe_done()

    def close(self, reason: str, abort: bool = False) -> None:
        """Close both sides (used on timeouts and errors)."""
        if self.spliced is not None:
            self.spliced.stop()
        if not self.end_reason:
            self.end_reason = reason
        self.client.close(abort)
        self.backend.close(abort)
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self._done:
            return
        client_gone = self.client.closed or self.client.transport is None
        backend_gone = self.backend.closed or self.backend.transport is None
        if client_gone and backend_gone:
            self._done = True
            self._on_close(self)
            self._unlink()

    def _unlink(self) -> None:
        if self._fin_timer is not None:
            self._fin_timer.cancel()
            self._fin_timer = None
        self._unlink_peers()

    def _unlink_peers(self) -> None:
        """Break the reference cycles (relay and endpoints, the two peers, the
        owner's callbacks): a finished relay is then freed at once by reference
        counting. Left to the garbage collector, a busy balancer spent about a
        tenth of each session's CPU collecting them."""
        self._on_close = _ignore
        self.on_client = None
        self.splice_pending = False
        for side in (self.client, self.backend):
            side.peer = None
            if side.closed:  # no callback can come any more
                side.relay = FINISHED

    def replace_backend(self) -> None:
        """Drop the backend connection made so far (it never greeted properly)
        without touching the client: a new endpoint takes its place."""
        old = self.backend
        old.relay = FINISHED  # its loss is no concern of ours any more
        self.backend = Endpoint(self, 1)
        if old.transport is not None and not old.closed:
            reset(old.transport)

    def backend_failed(self, reason: str) -> None:
        """The backend connection could not be made."""
        self.end_reason = reason
        self.client.close(abort=False)
        self._maybe_done()

    # -- idle tracking (control connections only; data relays skip the clock)

    def track_activity(self, loop: asyncio.AbstractEventLoop) -> None:
        # The loop, not asyncio.get_running_loop() per read: on Python 3.11
        # that costs a getpid() system call each time.
        self.clock = loop
        self.last_activity = loop.time()

    # -- counters

    @property
    def bytes_up(self) -> int:
        """Client to backend."""
        return self.client.bytes_read

    @property
    def bytes_down(self) -> int:
        """Backend to client."""
        return self.backend.bytes_read


def _ignore(relay: Relay) -> None:
    pass


FINISHED = Relay(_ignore)
"""What a closed endpoint of a finished relay points to instead of it."""
FINISHED._done = True


def send(transport: asyncio.WriteTransport | None, data: bytes) -> None:
    """Write unless the transport is gone or closing (a closed TLS transport
    logs a warning for every write after its end)."""
    if transport is not None and not transport.is_closing():
        transport.write(data)


def reset(connection: asyncio.BaseTransport | socket.socket) -> None:
    """Close with a TCP reset, not a FIN: the peer must learn that the stream is
    incomplete. A plain close (what asyncio's abort() does too) ends an
    interrupted upload like a finished one, and the server keeps a truncated file.
    A socket is only armed (its owner closes it); a transport is aborted."""
    linger = struct.pack("ii", 1, 0)
    if isinstance(connection, socket.socket):
        with contextlib.suppress(OSError):
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        return
    # uvloop's transports implement the interface without subclassing it.
    try:
        sock = connection.get_extra_info("socket")
    except AttributeError:  # asyncio's TLS transport once closed has no socket to ask
        return
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    cast(asyncio.Transport, connection).abort()


def armed_socket(
    address: tuple[str, int], local: tuple[str, int] | None, transparent: bool = False
) -> socket.socket:
    """A socket to connect to `address` that resets when closed (SO_LINGER 0)
    until `disarm`: a data connection dropped before it was joined (the other
    side failed, a handshake broke) must not look like an empty, finished
    transfer to the peer. Non-blocking, bound to `local` if given (with
    `transparent`, a client's address: IP_TRANSPARENT)."""
    sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if transparent:
            make_transparent(sock)
        if local is not None:
            sock.bind(local)
    except BaseException:
        sock.close()
        raise
    return sock


IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IPV6_TRANSPARENT = 75  # linux/in6.h; Python does not name it


def make_transparent(sock: socket.socket) -> None:
    """Let `sock` bind to an address that is not ours (a client's): IP_TRANSPARENT."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_TRANSPARENT, 1)


def transparent_source(client_ip: str, host: str) -> str | None:
    """Transparent mode: the address to connect to `host` from, the client's
    own (IPv4-mapped unmapped), or None when the families differ (an IPv6
    client in front of an IPv4 backend connects from the balancer)."""
    client = _unmap((client_ip, 0))[0]
    return client if (":" in client) == (":" in host) else None


def disarm(sock: socket.socket) -> None:
    """From now on a close is an orderly one (FIN after the data)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 0, 0))


def peer_address(transport: asyncio.BaseTransport) -> tuple[str, int]:
    """The remote address of a connection, IPv4-mapped IPv6 unmapped."""
    return _unmap(transport.get_extra_info("peername"))


def local_address(transport: asyncio.BaseTransport) -> tuple[str, int]:
    """The local address of a connection, IPv4-mapped IPv6 unmapped."""
    return _unmap(transport.get_extra_info("sockname"))


def client_addresses(transport: asyncio.BaseTransport) -> Addresses:
    """(peer, local) addresses of an accepted connection."""
    return peer_address(transport), local_address(transport)


def _unmap(addr: tuple[str, int] | tuple[str, int, int, int]) -> tuple[str, int]:
    host = addr[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, addr[1]


def control_listener(server: asyncio.Server) -> None:
    """Options of a control listener that its accepted sockets inherit (Linux):
    keepalive (dead peers are found eventually), and urgent data kept in the
    stream: clients send ABOR (or its Telnet Synch) as urgent data, and without
    SO_OOBINLINE the kernel takes the urgent byte out of the stream, so the
    command's last byte would never be read, nor relayed in routed mode (ftplib's
    ABOR then reached the backend without its line end). Set once here, not per
    connection."""
    for sock in server.sockets:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)


def enable_keepalive(transport: asyncio.BaseTransport) -> None:
    """TCP keepalive on a long-lived control socket we connect (to a backend)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
