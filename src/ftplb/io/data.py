"""Inspect mode's data channels: our passive listeners, active connects, the join.

A `DataChannel` pairs the client's data connection with one to the backend's
passive port and relays between them (`io.relay.Relay`). In passive mode the
client's side arrives on a shared port from `data_ports` (io/passive.py hands
it over when it comes from the control connection's client address); in
active mode both sides are connected by us, the client's first. What happens
to it is told to its `DataOwner` (the control session).

Sockets we connect are armed to reset until the join (`relay.armed_socket`):
a channel dropped half-made must not look to either peer like an empty,
finished transfer.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ftplb.io.passive import PassiveListeners
from ftplb.io.relay import Addresses, Relay, armed_socket, disarm, reset, transparent_source
from ftplb.io.sessions import Tasks
from ftplb.io.tls import BackendTLS, ResumingContext, handshake_failure, tls_protocol
from ftplb.proto import proxy_protocol

log = logging.getLogger("ftplb.data")

REUSE_REFUSAL = "Data connection refused: it must resume the control connection's TLS session."


class DataOwner(Protocol):
    """What a data channel tells its control session."""

    def data_client_connected(self) -> None:
        """Active mode: our TCP connection to the client exists."""

    def data_client_accepted(self) -> None:
        """Passive mode: the client connected; the backend's side is on its way."""

    def data_backend_connected(self) -> None:
        """Our TCP connection to the backend's passive port exists."""

    def data_opened(self) -> None:
        """Both sides are connected and joined."""

    def data_closed(self, bytes_up: int, bytes_down: int) -> None:
        """The joined channel ended (once)."""

    def data_failed(self) -> None:
        """The channel ended without ever joining its two sides."""

    def data_refused(self, reason: str) -> None:
        """The client's connection was refused (its TLS session not resumed)."""

    def data_spliced(self) -> None:
        """A channel the kernel moved (io/splice.py) ended."""


@dataclass(frozen=True)
class DataSettings:
    label: str
    """Who the channel belongs to, for its log lines."""
    proxy_version: str = "off"
    """PROXY header toward the backend (send_proxy_data)."""
    control_addresses: tuple[tuple[str, int], tuple[str, int]] | None = None
    """The control connection's (client, local): the PROXY header of a backend
    connection made before the client's data connection exists."""
    tls: ssl.SSLContext | None = None
    """PROT P: the client's side is TLS, with us as the TLS server."""
    require_reuse: bool = True
    """PROT P: the client must resume the control connection's TLS session."""
    handshake_timeout: float = 10.0
    connect_timeout: float = 5.0
    splice: bool = True
    """A plain channel may be handed to the kernel past SPLICE_AFTER bytes."""
    source_ip: str = ""
    """Transparent mode: connections to the backend leave from this address
    (the client's own)."""


class DataChannel:
    """One data connection pair and what becomes of it."""

    def __init__(self, owner: DataOwner, settings: DataSettings) -> None:
        self.owner = owner
        self.settings = settings
        self.label = settings.label
        self.tls = settings.tls
        self.backend_tls: BackendTLS | None = None
        """Set when the backend's side is TLS too (backend_tls with PROT P)."""
        self.relay: Relay | None = None
        self._listening: tuple[PassiveListeners, int, str] | None = None
        """Where we wait for the client: (listeners, port, client address)."""
        self._backend_address: tuple[str, int] | None = None
        """Passive mode: the backend's data port, connected once the client is here."""
        self.closed = False
        self.mode = "active"
        self.loop = asyncio.get_running_loop()
        self._tasks = Tasks(self.loop)
        self._timer: asyncio.TimerHandle | None = None
        self._opened = False
        self._header_sent = False
        self._armed: list[socket.socket] = []
        """Sockets we connected that reset when closed, until the join."""

    # -- passive: the client connects to us

    async def listen(
        self,
        host: str,
        listeners: PassiveListeners,
        client_ip: str,
        backend: tuple[str, int],
        timeout: float,
    ) -> int:
        """Wait for `client_ip` on a shared port on `host`; returns the port.
        Raises OSError."""
        self.mode = "passive"
        self._backend_address = backend
        port = await listeners.announce(host, client_ip, self)
        self._listening = (listeners, port, client_ip)
        if self.closed:  # closed while the port was opening
            self._stop_listening()
            raise OSError("data channel closed")
        self._timer = self.loop.call_later(timeout, self._listen_timeout, timeout)
        return port

    def data_arrived(self, transport: asyncio.Transport, proxied: Addresses | None) -> None:
        """Our client connected to our port (io/passive.py matched it): only once,
        since we stop waiting at once. `proxied`: its PROXY header's addresses."""
        self._stop_listening()
        backend = self._backend_address
        if self.closed or self.relay is not None or backend is None:
            transport.abort()
            return
        if self.tls is not None:
            self._tls_accepted_raw(transport, backend, proxied)
            return
        relay = self.relay = Relay(self._relay_closed)
        relay.client.proxied = proxied
        relay.on_client = lambda: self._accepted(backend)
        transport.set_protocol(relay.client)
        relay.client.connection_made(transport)

    def _accepted(self, backend: tuple[str, int]) -> None:
        self.connect_backend(backend)
        self.owner.data_client_accepted()

    def _tls_accepted_raw(
        self, transport: asyncio.Transport, backend: tuple[str, int], proxied: Addresses | None
    ) -> None:
        """PROT P, passive: a TCP connection from the client. Connect the backend
        while the client's handshake runs: vsftpd sends its 150 only once we are
        connected, and lftp starts its handshake only after the 150."""
        relay = self.relay = Relay(self._relay_closed)
        relay.client.proxied = proxied
        relay.on_client = lambda: self._handshake_done(relay)
        assert self.tls is not None
        protocol, handshake = tls_protocol(
            self.loop, relay.client, self.tls, self.settings.handshake_timeout, server_side=True
        )
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        self.connect_backend(backend)
        self.owner.data_client_accepted()
        self._tasks.spawn(self._handshake(transport, handshake, "client data TLS handshake"))

    async def _handshake(
        self, transport: asyncio.BaseTransport, handshake: asyncio.Future[None], what: str
    ) -> bool:
        """The handshake of a `tls_protocol`; a failure closes the channel."""
        error = await handshake_failure(transport, handshake)
        if error is None:
            return True
        log.warning("%s: %s failed: %s", self.label, what, error)
        self.close()
        return False

    def _handshake_done(self, relay: Relay) -> None:
        transport = relay.client.transport
        assert transport is not None
        if not self._tls_accepted(transport):
            reset(transport)
            self.close()
            return
        self._maybe_start()

    def _tls_accepted(self, transport: asyncio.BaseTransport) -> bool:
        """PROT P with session reuse required: the client must resume the control
        session, proving it holds its secrets (a port thief does not)."""
        if self.tls is None or not self.settings.require_reuse:
            return True
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.session_reused:
            return True
        log.warning("%s: TLS data connection refused: control session not resumed", self.label)
        self.owner.data_refused(REUSE_REFUSAL)
        return False

    def _listen_timeout(self, timeout: float) -> None:
        if self.relay is None and not self.closed:
            log.info("%s: no data connection within %gs", self.label, timeout)
            self.close()

    def _stop_listening(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._listening is not None:
            listeners, port, client_ip = self._listening
            listeners.withdraw(port, client_ip, self)
            self._listening = None

    # -- connections we make

    def connect_backend(self, backend: tuple[str, int]) -> None:
        relay = self._relay()
        if self.backend_tls is not None:
            self._tasks.spawn(self._connect_tls_backend(relay, backend, self.backend_tls))
        else:
            self._tasks.spawn(self._connect(lambda: relay.backend, backend, self._source(backend)))

    def connect_client(self, target: tuple[str, int], source_host: str) -> None:
        """Active mode: connect to the client first; the owner hears
        `data_client_connected` once the TCP connection exists (with PROT P the
        client's TLS handshake may still be running: clients start it when they
        see the 150), or `data_failed` if it never does."""
        relay = self._relay()
        local = (source_host, 0)
        if self.tls is None:
            self._tasks.spawn(self._connect(lambda: relay.client, target, local, True))
        else:
            self._tasks.spawn(self._connect_tls_client(relay, target, local))

    def _relay(self) -> Relay:
        if self.relay is None:
            self.relay = Relay(self._relay_closed)
        return self.relay

    async def _connect(
        self,
        factory: Callable[[], asyncio.Protocol],
        address: tuple[str, int],
        local: tuple[str, int] | None,
        to_client: bool = False,
    ) -> None:
        sock = await self._connect_armed(address, local, to_client)
        if sock is None:
            return
        try:
            await self.loop.create_connection(factory, sock=sock)
        except BaseException:
            sock.close()
            raise
        if not self.closed:
            if to_client:
                self.owner.data_client_connected()
            else:
                self.owner.data_backend_connected()
        self._maybe_start()

    def _source(self, backend: tuple[str, int]) -> tuple[str, int] | None:
        """Transparent mode: the client's address, to bind a backend connection to."""
        if not self.settings.source_ip:
            return None
        source = transparent_source(self.settings.source_ip, backend[0])
        return (source, 0) if source else None

    async def _connect_armed(
        self, address: tuple[str, int], local: tuple[str, int] | None, to_client: bool = False
    ) -> socket.socket | None:
        """A connected socket that resets if it is dropped before the join (None
        if the connect failed, which closes the channel)."""
        try:
            sock = armed_socket(address, local, transparent=local is not None and not to_client)
        except OSError as exc:
            self._connect_failed(address, exc)
            return None
        connecting = asyncio.ensure_future(
            asyncio.wait_for(self.loop.sock_connect(sock, address), self.settings.connect_timeout)
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
        self, relay: Relay, address: tuple[str, int], local: tuple[str, int]
    ) -> None:
        """Active mode with PROT P: we connect, yet the FTP client is the TLS client.
        Connect a plain socket, then treat it as an accepted one: the handshake
        completes before the endpoint sees a byte."""
        sock = await self._connect_armed(address, local, to_client=True)
        if sock is None:
            return
        if not self.closed:
            self.owner.data_client_connected()
        try:
            transport, _ = await self.loop.connect_accepted_socket(
                lambda: relay.client,
                sock,
                ssl=self.tls,
                ssl_handshake_timeout=self.settings.handshake_timeout,
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
        sock = await self._connect_armed(address, self._source(address))
        if sock is None:
            return
        if not self.closed:
            self.owner.data_backend_connected()
        try:
            header = self._proxy_header()
            if header:
                await self.loop.sock_sendall(sock, header)
                self._header_sent = True
            context = ResumingContext(tls.context, tls.control.session)
            protocol, handshake = tls_protocol(
                self.loop, relay.backend, context, tls.handshake_timeout, hostname=tls.hostname
            )
            raw, _ = await self.loop.create_connection(lambda: protocol, sock=sock)
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, OSError):
                raise
            self._connect_failed(address, exc)
            return
        if not await self._handshake(raw, handshake, f"TLS to backend data port {address[1]}"):
            return
        transport = relay.backend.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if ssl_object is not None and not ssl_object.session_reused:
            log.info("%s: the backend did not resume our TLS session on its data port", self.label)
        self._maybe_start()

    def _proxy_header(self) -> bytes:
        """The backend learns the client's data-connection address (or, before that
        connection exists, the control connection's)."""
        version = self.settings.proxy_version
        if version == "off":
            return b""
        relay = self.relay
        if relay is not None and relay.client.transport is not None:
            peer, local = relay.client.addresses()
        elif self.settings.control_addresses is not None:
            peer, local = self.settings.control_addresses
        else:
            return b""
        return proxy_protocol.encode(version, peer, local)

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
            splice=plain and self.settings.splice,
        )
        self.owner.data_opened()

    # -- the end

    def _relay_closed(self, relay: Relay) -> None:
        if relay is self.relay:
            self.closed = True
            self._stop_listening()
            if relay.spliced is not None:
                self.owner.data_spliced()
            if self._opened:
                self.owner.data_closed(relay.bytes_up, relay.bytes_down)
            else:
                self.owner.data_failed()

    def close(self) -> None:
        """Drop everything; a relay in progress is aborted."""
        if self.closed and self.relay is None:
            return
        self.closed = True
        self._stop_listening()
        self._tasks.cancel()
        if self.relay is not None:
            self.relay.close("data channel closed", abort=True)


def _close_after(connect: asyncio.Future[None], sock: socket.socket) -> None:
    """A connect nobody waits for any more ended: close (armed: a reset)."""
    if not connect.cancelled():
        connect.exception()  # retrieved: a failure here is no news to anyone
    sock.close()
