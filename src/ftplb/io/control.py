"""One inspect-mode session against real sockets: a `ControlSide` per control
socket turns what happens into events (proto/events.py) for the session's core
(proto/session.py) and `ControlSession` carries out the commands that come back
(proto/commands.py). Data channels: io/data.py; TLS: io/tls.py."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import ssl
import time
from collections import Counter
from typing import Any, Protocol

from ftplb.balancer.pool import Backend, Pool
from ftplb.config import Config, HostPort
from ftplb.io.data import DataChannel, DataSettings
from ftplb.io.passive import PassiveListeners
from ftplb.io.relay import Side, enable_keepalive, send
from ftplb.io.sessions import TRANSFER_DIRECTIONS, Dialer, SessionIds, Tasks
from ftplb.io.tls import BackendTLS, upgrade
from ftplb.io.transparent import dial
from ftplb.proto import commands, events, proxy_protocol
from ftplb.proto.ftp import reply
from ftplb.proto.session import InspectSession
from ftplb.proto.state import SessionSettings

log = logging.getLogger("ftplb.session")
LEVELS = {"info": logging.INFO, "warning": logging.WARNING}


class Host(Protocol):
    """What a session needs of its balancer (io/inspect.py's InspectBalancer)."""

    config: Config
    pool: Pool
    loop: asyncio.AbstractEventLoop
    tls: ssl.SSLContext | None
    backend_tls: ssl.SSLContext | None
    listeners: PassiveListeners
    splice: bool
    sessions: set[ControlSession]
    ids: SessionIds
    rejected: Counter[str]
    data_connections: Counter[str]
    transfers: Counter[str]

    def admit(self, session: ControlSession) -> str: ...

    def choose(
        self, session: ControlSession, user: str | None, exclude: set[str]
    ) -> Backend | None: ...

    def login_result(self, session: ControlSession, ok: bool, user: str) -> None: ...

    def session_closed(self, session: ControlSession) -> None: ...


class ControlSide(Side):
    """One control socket (the client's or the backend's) of a ControlSession."""

    __slots__ = ("is_client", "session")

    def __init__(self, session: ControlSession, is_client: bool) -> None:
        super().__init__()
        self.session = session
        self.is_client = is_client

    def made(self) -> None:
        if self.is_client:
            self.session.client_connected()
        else:
            self.session.backend_made(self)

    def data_received(self, data: bytes) -> None:
        self.bytes_read += len(data)
        session = self.session
        if self.is_client:
            session.event(events.ClientData(data, session.loop.time()))
        elif self is session.backend_side:
            session.event(events.BackendData(data, session.loop.time()))

    def eof_received(self) -> bool:
        return False  # a half-closed control connection is a closed one

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.side_lost(self, exc)

    def pause_writing(self) -> None:
        self.session.write_paused(self, True)

    def resume_writing(self) -> None:
        self.session.write_paused(self, False)


class ControlSession:
    """One inspect-mode session: its sockets, its core, its data channel."""

    def __init__(self, balancer: Host, implicit: bool = False) -> None:
        self.balancer = balancer
        self.loop = balancer.loop
        """Kept: asking asyncio for it costs a getpid() system call on Python 3.11."""
        self.implicit = implicit
        self.client = ControlSide(self, True)
        self.backend_side: ControlSide | None = None
        self.dialer = Dialer(balancer.pool, self._choose)
        self.backend_ssl: ssl.SSLObject | None = None
        """The backend control connection's TLS, once `backend_tls` has started it."""
        self.backend_context: ssl.SSLContext | None = None
        """The client context that made `backend_ssl`: only it can resume that session."""
        self.tls: ssl.SSLContext | None = None
        """The server context this session started with: its data connections
        resume sessions of its cache, whatever a reload changes meanwhile."""
        self.core: InspectSession | None = None
        self.client_addr: tuple[str, int] = ("", 0)
        self.local_addr: tuple[str, int] = ("", 0)
        self.data: DataChannel | None = None
        self.id = balancer.ids.next()
        self.started = 0.0
        self.started_at = 0.0
        """Wall clock (the admin API's `started`)."""
        self.data_bytes = [0, 0]
        """Bytes of finished data connections, (from the client, to the client)."""
        self.end_reason = ""
        self.closed = False
        self.counted = False
        self._user: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._tasks = Tasks(self.loop)
        self._client_full = False
        """The client does not read its replies: its write buffer is full."""
        self._backend_full = False
        self._client_reading = True
        self._tls_starting = False
        self._resume_soon = False

    @property
    def backend(self) -> Backend | None:
        return self.dialer.backend

    # -- events from the sockets

    def client_connected(self) -> None:
        # Known from here on, not before: a session whose implicit-TLS handshake
        # fails is never connected, and nothing would ever take it out.
        self.balancer.sessions.add(self)
        self.started = self.loop.time()
        self.started_at = time.time()
        self.client_addr, self.local_addr = self.client.addresses()
        transport = self.client.transport
        assert transport is not None
        refusal = self.balancer.admit(self)
        if refusal:
            transport.write(reply(421, refusal))
            self.close(refusal)
            return
        self.counted = True
        config = self.balancer.config
        b = config.balancer
        self.tls = self.balancer.tls
        self.core = InspectSession(
            SessionSettings(
                client=self.client_addr,
                public_address=config.public_address_for(self.client_addr[0], self.local_addr[0]),
                # Pinned users need the name before the choice, whatever the policy.
                balance_by_user=b.balance == "user" or bool(config.users),
                login_timeout=b.login_timeout,
                idle_timeout=b.idle_timeout,
                greeting_timeout=config.greeting_timeout(),
                tls=self.tls is not None,
                tls_required=config.tls.required,
                implicit_tls=self.implicit,
                backend_tls=config.tls.backend_tls,
            )
        )
        self.event(events.Start(self.started))

    def side_lost(self, side: ControlSide, exc: Exception | None) -> None:
        if self.closed or (side is not self.client and side is not self.backend_side):
            return  # a backend we gave up on (redispatch)
        if side is self.client:
            if self.core is not None:
                self.event(events.ClientClosed(self.loop.time()))
            self.close("client reset" if exc else "client closed")
        elif self.core is not None:
            self.event(events.BackendClosed(self.loop.time()))
        else:
            self.close("backend closed")

    def write_paused(self, side: ControlSide, paused: bool) -> None:
        """A side's write buffer passed its high-water mark (or drained). What
        would be written there is not read meanwhile: a client that never reads
        its replies stops both its own commands and the backend's replies."""
        if side is self.client:
            self._client_full = paused
            other = self.backend_side
            if other is not None and other.transport is not None and not self.closed:
                if paused:
                    other.transport.pause_reading()
                else:
                    other.transport.resume_reading()
        else:
            self._backend_full = paused
        self._pace_client()

    # -- the core

    def event(self, event: events.Event) -> None:
        """Give the core an event and carry out what it answers."""
        if self.core is None or self.closed:
            return
        for cmd in self.core.handle(event):
            if self.closed:
                return
            self._do(cmd)
        self._arm_timer()
        self._pace_client()

    def _pace_client(self) -> None:
        """Read the client only while the core has room for its commands and its
        replies are being read; come back soon for lines the core left waiting."""
        core = self.core
        transport = self.client.transport
        if self.closed or core is None or transport is None or self._tls_starting:
            return
        want = core.wants_client_data and not self._client_full and not self._backend_full
        if want != self._client_reading:
            self._client_reading = want
            if want:
                transport.resume_reading()
            else:
                transport.pause_reading()
        if not self._resume_soon and not self._client_full and core.runnable:
            self._resume_soon = True
            self.loop.call_soon(self._resume)

    def _resume(self) -> None:
        self._resume_soon = False
        self.event(events.Resume(self.loop.time()))

    def _do(self, cmd: commands.Cmd) -> None:
        match cmd:
            case commands.SendClient(data):
                send(self.client.transport, data)
            case commands.SendBackend(data):
                if self.backend_side is not None:
                    send(self.backend_side.transport, data)
            case commands.AbortBackend():
                self._abort_backend()
            case commands.ConnectBackend(user):
                self._user = user
                self._connect(self.dialer.first())
            case commands.Redispatch(reason):
                self._drop_backend()
                self._connect(self.dialer.next(reason))
            case commands.Close(reason):
                self.close(reason)
            case commands.ListenData(backend, client_ip, tls, backend_tls):
                self._listen(backend, client_ip, tls, backend_tls)
            case commands.ConnectClientData(target, tls):
                self._new_channel(tls).connect_client(target, self._source_host())
            case commands.ConnectBackendData(backend, backend_tls):
                if self.data is not None:
                    if backend_tls:
                        self.data.backend_tls = self._backend_data_tls()
                    self.data.connect_backend(backend)
            case commands.StartClientTLS():
                # Nothing more may reach the FTP parser: the next bytes are the
                # ClientHello, for the TLS layer that start_tls puts in between.
                if self.client.transport is not None:
                    self.client.transport.pause_reading()
                self._tls_starting = True
                self._tasks.spawn(self._start_client_tls())
            case commands.StartBackendTLS():
                if self.backend_side is not None and self.backend_side.transport is not None:
                    self.backend_side.transport.pause_reading()
                self._tasks.spawn(self._start_backend_tls())
            case commands.CloseData():
                self._close_data()
            case commands.LoginResult(ok, user):
                self.balancer.login_result(self, ok, user)
            case commands.Log(message, level):
                log.log(LEVELS[level], "%s %s", self.who(), message)
            case commands.Transferred(direction, command, file, size, duration):
                self.balancer.transfers[direction] += 1
                name = file.replace('"', "'")
                where = self.backend.name if self.backend else "-"
                log.info(
                    '%s transfer backend=%s %s %s file="%s" bytes=%d duration=%.3fs',
                    self.who(),
                    where,
                    direction,
                    command,
                    name,
                    size,
                    duration,
                )

    def who(self) -> str:
        user = self.core.user if self.core is not None and self.core.user else "-"
        return f"client={HostPort(*self.client_addr)} user={user}"

    def _source_host(self) -> str:
        """Where our data listeners bind and active-mode connections leave from:
        data_listen when it fits the client's family, else where the client reached us."""
        data_listen = self.balancer.config.balancer.data_listen
        if data_listen and _family(data_listen) == _family(self.client_addr[0]):
            return data_listen
        return self.local_addr[0]

    # -- the backend control connection

    def _choose(self, exclude: set[str]) -> Backend | None:
        return self.balancer.choose(self, self._user, exclude)

    def _connect(self, backend: Backend | None) -> None:
        if backend is None:
            if not self.dialer.tried:
                self.balancer.rejected["no_backend"] += 1
            self.event(events.BackendFailed("no healthy backend", self.loop.time()))
            return
        self._tasks.spawn(self._dial(backend))

    async def _dial(self, first: Backend) -> None:
        backend, reason = await self.dialer.connect(first, self._open_backend)
        if backend is None and not self.closed:
            self.event(events.BackendFailed(reason, self.loop.time()))

    async def _open_backend(self, backend: Backend) -> str:
        """One connection attempt: '' when connected (`backend_made` ran)."""
        side = ControlSide(self, False)
        transparent = self.balancer.config.balancer.source == "client"
        try:
            async with asyncio.timeout(self.balancer.config.balancer.connect_timeout):
                await dial(
                    self.loop,
                    lambda: side,
                    backend.config.address.host,
                    backend.config.address.port,
                    self.client_addr[0] if transparent else None,
                )
        except (OSError, TimeoutError) as exc:
            return f"backend connect failed: {getattr(exc, 'strerror', None) or 'timeout'}"
        if self.closed and side.transport is not None:
            side.transport.close()
        return ""

    def backend_made(self, side: ControlSide) -> None:
        """The backend connection is up. Runs in connection_made, before any
        byte from the backend can arrive (and before `_open_backend` resumes)."""
        backend = self.backend
        if self.closed or backend is None:
            return
        self.backend_side = side
        assert side.transport is not None
        enable_keepalive(side.transport)
        version = self.balancer.config.proxy_version(backend.config)
        header = proxy_protocol.encode(version, self.client_addr, self.local_addr)
        if header:
            side.transport.write(header)
        peer = side.transport.get_extra_info("peername")
        self.event(events.BackendConnected(backend.name, peer[0], self.loop.time()))

    def _abort_backend(self) -> None:
        """ABOR with Telnet IP and Synch before it (RFC 959 4.1.3): the DM byte
        goes as urgent data, on a duplicate of the socket (transports cannot
        send urgent data). Only while nothing waits in the transport, or the
        bytes would overtake it, and never over TLS (it would cut a record)."""
        side = self.backend_side
        if side is None or side.transport is None:
            return
        transport = side.transport
        sock = transport.get_extra_info("socket")
        if sock is not None and self.backend_ssl is None and not transport.get_write_buffer_size():
            with contextlib.suppress(OSError):
                dup = socket.socket(fileno=os.dup(sock.fileno()))
                try:
                    dup.send(b"\xff\xf4\xff")  # IAC IP IAC
                    dup.send(b"\xf2", socket.MSG_OOB)  # DM: the urgent byte
                finally:
                    dup.close()
        transport.write(b"ABOR\r\n")

    def _drop_backend(self) -> None:
        """The backend never greeted properly: its connection goes (redispatch)."""
        side, self.backend_side = self.backend_side, None
        if side is not None and side.transport is not None:
            side.transport.abort()
        self.backend_ssl = self.backend_context = None

    async def _start_backend_tls(self) -> None:
        """The backend said 234: we become its TLS client, verifying its certificate."""
        side = self.backend_side
        context = self.balancer.backend_tls
        backend = self.backend
        assert side is not None and side.transport is not None and backend is not None
        if context is None:  # backend_tls is off: the core never asks
            self.event(events.BackendTLSFailed("no TLS client context", self.loop.time()))
            return
        secured = await upgrade(
            self.loop,
            side.transport,
            side,
            context,
            self.balancer.config.tls.handshake_timeout,
            hostname=backend.config.address.host,
        )
        if isinstance(secured, str):
            log.warning("%s: TLS to backend %s failed: %s", self.who(), backend.name, secured)
            self.event(events.BackendTLSFailed(f"handshake failed: {secured}", self.loop.time()))
            return
        if self.closed:
            return
        side.transport = secured
        self.backend_ssl = secured.get_extra_info("ssl_object")
        self.backend_context = context
        self.event(events.BackendTLSReady(self.loop.time()))

    async def _start_client_tls(self) -> None:
        """AUTH TLS answered: the client's control connection becomes TLS, we the server."""
        transport = self.client.transport
        assert transport is not None and self.tls is not None
        secured = await upgrade(
            self.loop,
            transport,
            self.client,
            self.tls,
            self.balancer.config.tls.handshake_timeout,
            server_side=True,
        )
        if isinstance(secured, str):
            log.warning("%s: TLS handshake failed: %s", self.who(), secured)
            self.close("TLS handshake failed")
            return
        self.client.transport = secured
        self._tls_starting = False
        self._client_reading = True  # the TLS transport reads from the start
        self._pace_client()

    # -- data channels (this session is their DataOwner)

    def _new_channel(self, tls: bool = False, backend_tls: bool = False) -> DataChannel:
        self._close_data()
        config = self.balancer.config
        backend = self.backend
        settings = DataSettings(
            label=f"{self.who()} backend={backend.name if backend else '-'}",
            proxy_version=config.data_proxy_version(backend.config) if backend else "off",
            control_addresses=(self.client_addr, self.local_addr),
            tls=self.tls if tls else None,
            require_reuse=config.tls.session_reuse,
            handshake_timeout=config.tls.handshake_timeout,
            connect_timeout=config.balancer.connect_timeout,
            splice=self.balancer.splice,
            source_ip=self.client_addr[0] if config.balancer.source == "client" else "",
        )
        channel = DataChannel(self, settings)
        if backend_tls:
            channel.backend_tls = self._backend_data_tls()
        self.data = channel
        return channel

    def _backend_data_tls(self) -> BackendTLS | None:
        context, backend = self.backend_context, self.backend
        if context is None or self.backend_ssl is None or backend is None:
            return None
        timeout = self.balancer.config.tls.handshake_timeout
        return BackendTLS(context, self.backend_ssl, backend.config.address.host, timeout)

    def _listen(
        self, backend: tuple[str, int], client_ip: str, tls: bool, backend_tls: bool
    ) -> None:
        channel = self._new_channel(tls, backend_tls)
        b = self.balancer.config.balancer

        async def go() -> None:
            try:
                port = await channel.listen(
                    self._source_host(), self.balancer.listeners, client_ip, backend, b.data_timeout
                )
            except OSError as exc:
                log.warning("%s: cannot open a data port: %s", self.who(), exc)
                self.event(events.DataListenFailed(self.loop.time()))
                return
            self.event(events.DataListening(port, self.loop.time()))

        self._tasks.spawn(go())

    def data_client_connected(self) -> None:
        self.event(events.DataClientConnected(self.loop.time()))

    def data_client_accepted(self) -> None:
        self.event(events.DataClientAccepted(self.loop.time()))

    def data_backend_connected(self) -> None:
        self.event(events.DataBackendConnected(self.loop.time()))

    def data_opened(self) -> None:
        if self.data is not None:
            direction = "inbound" if self.data.mode == "passive" else "outbound"
            self.balancer.data_connections[direction] += 1
        self.event(events.DataOpened(self.loop.time()))

    def data_closed(self, bytes_up: int, bytes_down: int) -> None:
        self.data_bytes[0] += bytes_up
        self.data_bytes[1] += bytes_down
        if self.backend is not None:
            self.backend.bytes_in += bytes_up
            self.backend.bytes_out += bytes_down
        self.event(events.DataClosed(bytes_up, bytes_down, self.loop.time()))

    def data_failed(self) -> None:
        self.event(events.DataFailed(self.loop.time()))

    def data_refused(self, reason: str) -> None:
        self.event(events.DataRefused(reason, self.loop.time()))

    def data_spliced(self) -> None:
        self.balancer.data_connections["spliced"] += 1

    def _close_data(self) -> None:
        if self.data is not None:
            self.data.close()
            self.data = None

    # -- timers, the end

    def _arm_timer(self) -> None:
        if self.core is None or self.closed:
            return
        deadline = self.core.next_deadline()
        if self._timer is not None and self._timer_at <= deadline:
            return  # it fires first and re-arms (uvloop's handles have no when())
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.event(events.Tick(self.loop.time()))

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.end_reason = reason
        if self._timer is not None:
            self._timer.cancel()
        self._tasks.cancel()
        # A transfer in progress may outlive the control connection briefly;
        # dropping it is what a server does when its control connection dies.
        self._close_data()
        if self.client.transport is not None:
            self.client.transport.close()
        if self.backend_side is not None and self.backend_side.transport is not None:
            self.backend_side.transport.close()
        self.balancer.session_closed(self)

    def view(self) -> dict[str, Any]:
        """The session as `GET /api/sessions` shows it."""
        core = self.core
        transfer = None
        command = core.current_transfer if core is not None else None
        if command is not None:
            relay = self.data.relay if self.data is not None else None
            moved = relay.client.bytes_read + relay.backend.bytes_read if relay else 0
            transfer = {
                "direction": TRANSFER_DIRECTIONS.get(command.verb, "listing"),
                "bytes": moved,
                "file": command.arg or None,
            }
        down = self.backend_side.bytes_read if self.backend_side is not None else 0
        return {
            "id": self.id,
            "client": str(HostPort(*self.client_addr)),
            "backend": self.backend.name if self.backend is not None else None,
            "user": core.user if core is not None and core.logged_in else None,
            "started": round(self.started_at, 3),
            "bytes_in": self.client.bytes_read + self.data_bytes[0],
            "bytes_out": down + self.data_bytes[1],
            "transfer": transfer,
        }

    def log_line(self) -> str:
        duration = self.loop.time() - self.started
        core = self.core
        backend = self.backend.name if self.backend else "-"
        up = self.client.bytes_read
        down = self.backend_side.bytes_read if self.backend_side else 0
        transfers = core.transfers if core else 0
        return (
            f"control {self.who()} backend={backend} bytes_up={up} bytes_down={down} "
            f'transfers={transfers} duration={duration:.3f}s end="{self.end_reason}"'
        )


def _family(host: str) -> int:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return 0
