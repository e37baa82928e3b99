"""Inspect mode's data channels: our passive listeners, active connects, the join.

A `DataChannel` pairs the client's data connection with one to the backend's
passive port and relays between them (`io.relay.Relay`). In passive mode the
client's side is accepted on a port from `data_ports`, only from the control
connection's client address; in active mode both sides are connected by us.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from asyncio.sslproto import SSLProtocol
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

from ftplb.config import PortRange
from ftplb.io import splice
from ftplb.io.relay import (
    Relay,
    armed_socket,
    client_addresses,
    disarm,
    peer_address,
    reset,
)
from ftplb.proto import proxy_protocol
from ftplb.proto.addresses import same_host

log = logging.getLogger("ftplb.data")


@dataclass(frozen=True)
class BackendTLS:
    """TLS toward the backend on a data connection (we are the TLS client)."""

    context: ssl.SSLContext
    control: ssl.SSLObject
    """The backend control connection: its session is resumed, as careful servers
    (vsftpd's require_ssl_reuse) insist. Read at connect time, after TLS 1.3 tickets."""
    hostname: str
    handshake_timeout: float


class _Resuming:
    """What asyncio's SSLProtocol needs of a context (`wrap_bio`), with a session.
    start_tls and create_connection have no `session` argument; SSLObjects
    must come from the context that made the session, so we cannot copy it."""

    def __init__(self, context: ssl.SSLContext, session: ssl.SSLSession | None) -> None:
        self.context = context
        self.session = session

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | None = None,
    ) -> ssl.SSLObject:
        return self.context.wrap_bio(
            incoming, outgoing, server_side, server_hostname, session=self.session
        )


class _TLSAccept(asyncio.Protocol):
    """A passive PROT P data connection until its TLS handshake starts."""

    def __init__(self, channel: DataChannel, client_ip: str, backend: tuple[str, int]) -> None:
        self.channel = channel
        self.client_ip = client_ip
        self.backend = backend

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.channel._tls_accepted_raw(
            cast(asyncio.Transport, transport), self.client_ip, self.backend
        )


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


class DataChannel:
    """One data connection pair. `on_open()` when both sides are up, `on_close(up, down)` once."""

    def __init__(
        self,
        label: str,
        on_open: Callable[[], None],
        on_close: Callable[[int, int], None],
        proxy_version: str = "off",
        tls: ssl.SSLContext | None = None,
        require_reuse: bool = True,
        handshake_timeout: float = 10.0,
        on_refused: Callable[[str], None] | None = None,
        on_fail: Callable[[], None] | None = None,
        on_spliced: Callable[[], None] | None = None,
        backend_tls: BackendTLS | None = None,
        control_addresses: tuple[tuple[str, int], tuple[str, int]] | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        self.label = label
        self.proxy_version = proxy_version
        self.tls = tls
        """Set for PROT P: the client's side is TLS, with us as the TLS server."""
        self.backend_tls = backend_tls
        """Set when the backend's side is TLS too (backend_tls with PROT P)."""
        self.control_addresses = control_addresses
        """The control connection's (client, local): the PROXY header of a TLS
        backend connection made before the client's data connection exists."""
        self._header_sent = False
        self.connect_timeout = connect_timeout
        self.require_reuse = require_reuse
        self.handshake_timeout = handshake_timeout
        self._on_refused = on_refused
        self._on_fail = on_fail
        self._on_spliced = on_spliced
        """Called when a relay the kernel moved (io/splice.py) ends."""
        self._on_open = on_open
        self._on_close = on_close
        self.relay: Relay | None = None
        self.server: asyncio.Server | None = None
        self._listening: tuple[DataPorts, int] | None = None
        """The port `server` holds, to give back when it closes."""
        self.closed = False
        self.mode = "active"
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._opened = False
        self._refused: set[Relay] = set()
        self._armed: list[socket.socket] = []
        """Sockets we connected that reset when closed, until the join (`armed_socket`)."""
        self.loop = asyncio.get_running_loop()

    # -- passive: the client connects to us

    async def listen(
        self,
        host: str,
        ports: DataPorts,
        client_ip: str,
        backend: tuple[str, int],
        timeout: float,
    ) -> int:
        """Open a listener on a free port of `ports`; returns the port. Raises OSError."""
        loop = self.loop
        self.mode = "passive"
        last_error: OSError | None = None
        for _ in range(DataPorts.BIND_ATTEMPTS):
            port = ports.take()
            if port is None:
                break
            try:
                self.server = await loop.create_server(
                    lambda: self._accept_protocol(client_ip, backend),
                    host,
                    port,
                    reuse_address=True,
                    backlog=8,
                )
            except OSError as exc:
                ports.release(port)
                last_error = exc
                continue
            self._listening = (ports, port)
            if self.closed:  # closed while we were binding
                self._stop_listening()
                raise OSError("data channel closed")
            self._timer = loop.call_later(timeout, self._listen_timeout, timeout)
            return port
        raise last_error or OSError(f"all {len(ports.ports)} data ports in use")

    def _accept_protocol(self, client_ip: str, backend: tuple[str, int]) -> asyncio.Protocol:
        if self.tls is not None:
            return _TLSAccept(self, client_ip, backend)
        relay = Relay(self._relay_closed)
        relay.on_client = lambda: self._accepted(relay, client_ip, backend)
        return relay.client

    def _admit(self, transport: asyncio.Transport, client_ip: str) -> bool:
        """Only the session's client, and only once: else refuse and keep listening."""
        peer = peer_address(transport)
        if same_host(peer[0], client_ip) and self.relay is None and not self.closed:
            return True
        # PASV hijacking (or a second connection).
        log.warning(
            "%s: data connection from %s:%d refused (the session's client is %s)",
            self.label,
            peer[0],
            peer[1],
            client_ip,
        )
        transport.abort()
        return False

    def _accepted(self, relay: Relay, client_ip: str, backend: tuple[str, int]) -> None:
        transport = relay.client.transport
        assert transport is not None
        if not self._admit(transport, client_ip):
            self._refused.add(relay)
            return
        self.relay = relay
        self._stop_listening()
        self.connect_backend(backend)

    def _tls_accepted_raw(
        self, transport: asyncio.Transport, client_ip: str, backend: tuple[str, int]
    ) -> None:
        """PROT P, passive: a TCP connection from the client. Connect the backend
        while the client's handshake runs: vsftpd sends its 150 only once we are
        connected, and lftp starts its handshake only after the 150."""
        if not self._admit(transport, client_ip):
            return
        relay = self.relay = Relay(self._relay_closed)
        relay.on_client = lambda: self._handshake_done(relay)
        # TLS goes in right here: uvloop may hand us the ClientHello even on a
        # paused transport, so a start_tls task one loop turn later could miss it.
        assert self.tls is not None
        loop = self.loop
        handshake: asyncio.Future[None] = loop.create_future()
        protocol = SSLProtocol(
            loop,
            relay.client,
            self.tls,
            handshake,
            server_side=True,
            ssl_handshake_timeout=self.handshake_timeout,  # type: ignore[arg-type]
        )
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        self._stop_listening()
        self.connect_backend(backend)
        self._spawn(self._server_handshake(transport, handshake))

    async def _server_handshake(
        self, transport: asyncio.BaseTransport, handshake: asyncio.Future[None]
    ) -> None:
        """Wait for the client's handshake (the relay endpoint is made after it)."""
        await self._handshake(transport, handshake, "client data TLS handshake failed")

    async def _handshake(
        self, transport: asyncio.BaseTransport, handshake: asyncio.Future[None], failure: str
    ) -> bool:
        """Await an SSLProtocol's handshake on the raw `transport`; on failure (or
        cancellation) abort it, and close the channel unless cancelled."""
        try:
            await handshake
        except BaseException as exc:
            cast(asyncio.Transport, transport).abort()
            if not isinstance(exc, (OSError, TimeoutError, ConnectionError, ssl.SSLError)):
                raise
            log.warning("%s: %s: %s", self.label, failure, exc)
            self.close()
            return False
        return True

    def _handshake_done(self, relay: Relay) -> None:
        transport = relay.client.transport
        assert transport is not None
        if not self._tls_accepted(transport):
            transport.abort()
            self.close()
            return
        self._maybe_start()

    def _tls_accepted(self, transport: asyncio.BaseTransport) -> bool:
        """PROT P with session reuse required: the client must resume the control
        session, proving it holds its secrets (a port thief does not)."""
        if self.tls is None or not self.require_reuse:
            return True
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.session_reused:
            return True
        log.warning("%s: TLS data connection refused: control session not resumed", self.label)
        if self._on_refused is not None:
            self._on_refused(
                "Data connection refused: it must resume the control connection's TLS session."
            )
        return False

    def _listen_timeout(self, timeout: float) -> None:
        if self.relay is None and not self.closed:
            log.info("%s: no data connection within %gs", self.label, timeout)
            self.close()

    def _stop_listening(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.server is not None:
            self.server.close()
            self.server = None
        if self._listening is not None:
            ports, port = self._listening
            ports.release(port)
            self._listening = None

    # -- connections we make

    def connect_backend(self, backend: tuple[str, int]) -> None:
        if self.relay is None:
            self.relay = Relay(self._relay_closed)
        relay = self.relay
        if self.backend_tls is not None:
            self._spawn(self._connect_tls_backend(relay, backend, self.backend_tls))
        else:
            self._spawn(self._connect(lambda: relay.backend, backend, None))

    def connect_client(
        self, target: tuple[str, int], source_host: str, on_connected: Callable[[], None]
    ) -> None:
        """Active mode: connect to the client first; `on_connected()` once the TCP
        connection exists (with PROT P the client's TLS handshake may still be
        running: clients start it when they see the 150), `on_fail` if it never does."""
        if self.relay is None:
            self.relay = Relay(self._relay_closed)
        relay = self.relay
        if self.tls is None:
            self._spawn(self._connect(lambda: relay.client, target, (source_host, 0), on_connected))
        else:
            self._spawn(self._connect_tls_client(relay, target, (source_host, 0), on_connected))

    async def _connect(
        self,
        factory: Callable[[], asyncio.Protocol],
        address: tuple[str, int],
        local: tuple[str, int] | None,
        on_connected: Callable[[], None] | None = None,
    ) -> None:
        sock = await self._connect_armed(address, local)
        if sock is None:
            return
        try:
            await self.loop.create_connection(factory, sock=sock)
        except BaseException:
            sock.close()
            raise
        if on_connected is not None and not self.closed:
            on_connected()
        self._maybe_start()

    async def _connect_armed(
        self, address: tuple[str, int], local: tuple[str, int] | None
    ) -> socket.socket | None:
        """A connected socket that resets if it is dropped before the join (None
        if the connect failed, which closes the channel)."""
        try:
            sock = armed_socket(address, local)
        except OSError as exc:
            self._connect_failed(address, exc)
            return None
        connecting = asyncio.ensure_future(
            asyncio.wait_for(self.loop.sock_connect(sock, address), self.connect_timeout)
        )
        try:
            await asyncio.shield(connecting)
        except asyncio.CancelledError:
            # The channel was dropped meanwhile (the other side failed): let the
            # connect finish, so that the peer sees a reset rather than nothing
            # (a backend would otherwise wait for this connection until its
            # own timeout before failing the transfer).
            connecting.add_done_callback(lambda done: _close_after(done, sock))
            raise
        except (OSError, TimeoutError) as exc:
            sock.close()
            self._connect_failed(address, exc)
            return None
        self._armed.append(sock)
        return sock

    async def _connect_tls_client(
        self,
        relay: Relay,
        address: tuple[str, int],
        local: tuple[str, int],
        on_connected: Callable[[], None],
    ) -> None:
        """Active mode with PROT P: we connect, yet the FTP client is the TLS client.
        Connect a plain socket, then treat it as an accepted one: the handshake
        completes before the endpoint sees a byte."""
        loop = self.loop
        sock = await self._connect_armed(address, local)
        if sock is None:
            return
        if not self.closed:
            on_connected()
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: relay.client,
                sock,
                ssl=self.tls,
                ssl_handshake_timeout=self.handshake_timeout,
            )
        except BaseException as exc:
            sock.close()  # armed: a reset
            if not isinstance(exc, (OSError, TimeoutError, ssl.SSLError)):
                raise
            self._connect_failed(address, exc)
            return
        if not self._tls_accepted(transport):
            reset(transport)
            self.close()
            return
        self._maybe_start()

    def _connect_failed(self, address: tuple[str, int], exc: BaseException) -> None:
        log.warning("%s: data connect to %s:%d failed: %s", self.label, *address, exc or "timeout")
        self.close()

    async def _connect_tls_backend(
        self, relay: Relay, address: tuple[str, int], tls: BackendTLS
    ) -> None:
        """Connect, send the PROXY header in the clear, then a TLS handshake that
        resumes the backend control session; the endpoint sees only plaintext."""
        loop = self.loop
        sock = await self._connect_armed(address, None)
        if sock is None:
            return
        try:
            header = self._proxy_header()
            if header:
                await loop.sock_sendall(sock, header)
                self._header_sent = True
            handshake: asyncio.Future[None] = loop.create_future()
            protocol = SSLProtocol(
                loop,
                relay.backend,
                cast(ssl.SSLContext, _Resuming(tls.context, tls.control.session)),
                handshake,
                server_hostname=tls.hostname,
                ssl_handshake_timeout=tls.handshake_timeout,  # type: ignore[arg-type]
            )
            raw, _ = await loop.create_connection(lambda: protocol, sock=sock)
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, (OSError, TimeoutError)):
                raise
            self._connect_failed(address, exc)
            return
        if not await self._handshake(
            raw, handshake, f"TLS to backend data port {address[1]} failed"
        ):
            return
        transport = relay.backend.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if ssl_object is not None and not ssl_object.session_reused:
            log.info("%s: the backend did not resume our TLS session on its data port", self.label)
        self._maybe_start()

    def _proxy_header(self) -> bytes:
        """The backend learns the client's data-connection address (or, before that
        connection exists, the control connection's)."""
        if self.proxy_version == "off":
            return b""
        relay = self.relay
        if relay is not None and relay.client.transport is not None:
            peer, local = client_addresses(relay.client.transport)
        elif self.control_addresses is not None:
            peer, local = self.control_addresses
        else:
            return b""
        return proxy_protocol.encode(self.proxy_version, peer, local)

    def _maybe_start(self) -> None:
        relay = self.relay
        if relay is None or self.closed or self._opened or not relay.connected:
            return
        self._opened = True
        for sock in self._armed:
            disarm(sock)
        self._armed.clear()
        # Plain on both sides: past SPLICE_AFTER the kernel moves the bytes
        # (io/splice.py). Never with TLS on either side.
        plain = self.tls is None and self.backend_tls is None
        relay.start(
            b"" if self._header_sent else self._proxy_header(),
            splice=splice.wanted if plain else None,
        )
        self._on_open()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the end

    def _relay_closed(self, relay: Relay) -> None:
        if relay in self._refused:
            self._refused.discard(relay)
            return
        if relay is self.relay:
            self.closed = True
            self._stop_listening()
            if relay.spliced is not None and self._on_spliced is not None:
                self._on_spliced()
            if self._opened:
                self._on_close(relay.bytes_up, relay.bytes_down)
            elif self._on_fail is not None:
                self._on_fail()

    def close(self) -> None:
        """Drop everything; a relay in progress is aborted."""
        if self.closed and self.relay is None:
            return
        self.closed = True
        self._stop_listening()
        for task in list(self._tasks):
            task.cancel()
        if self.relay is not None:
            self.relay.close("data channel closed", abort=True)


def _close_after(connect: asyncio.Future[None], sock: socket.socket) -> None:
    """A connect nobody waits for any more ended: close (armed: a reset)."""
    if not connect.cancelled():
        connect.exception()  # retrieved: a failure here is no news to anyone
    sock.close()
