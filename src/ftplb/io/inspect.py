"""Inspect mode: runs proto/session.py against real sockets.

Each client control connection gets a `ControlSession`: two small Protocols
(client side, backend side) feed bytes to an `InspectSession` and carry out
the commands it returns. Data channels live in io/data.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections import Counter
from typing import Any, cast

from ftplb.balancer.pool import Backend, Pool
from ftplb.config import Config, HostPort
from ftplb.io.data import BackendTLS, DataChannel, DataPorts
from ftplb.io.relay import (
    HIGH_WATER,
    LOW_WATER,
    client_addresses,
    control_listener,
    enable_keepalive,
)
from ftplb.proto import proxy_protocol
from ftplb.proto.ftp import reply
from ftplb.proto.session import (
    Close,
    CloseData,
    Cmd,
    ConnectBackend,
    ConnectBackendData,
    ConnectClientData,
    InspectSession,
    ListenData,
    Log,
    LoginResult,
    Redispatch,
    SendBackend,
    SendClient,
    SessionSettings,
    StartBackendTLS,
    StartClientTLS,
    Transferred,
)
from ftplb.shared import Shared

log = logging.getLogger("ftplb.session")


class _Side(asyncio.Protocol):
    """One control socket; passes events to its ControlSession."""

    def __init__(self, session: ControlSession, is_client: bool) -> None:
        self.session = session
        self.is_client = is_client
        self.transport: asyncio.Transport | None = None
        self.bytes_read = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        if self.is_client:
            self.session.client_connected()
        else:
            self.session.backend_made(self)

    def data_received(self, data: bytes) -> None:
        self.bytes_read += len(data)
        if self.is_client:
            self.session.client_data(data)
        else:
            self.session.backend_data(data)

    def eof_received(self) -> bool:
        return False  # a half-closed control connection is a closed one

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.side_lost(self, exc)

    # A slow reader on this side: stop reading what would be written to it.
    def pause_writing(self) -> None:
        self.session.write_paused(self, True)

    def resume_writing(self) -> None:
        self.session.write_paused(self, False)


class ControlSession:
    def __init__(self, balancer: InspectBalancer, implicit: bool = False) -> None:
        self.balancer = balancer
        self.implicit = implicit
        self.client = _Side(self, True)
        self.backend_side: _Side | None = None
        self.backend: Backend | None = None
        self.backend_ssl: ssl.SSLObject | None = None
        """The backend control connection's TLS, once `backend_tls` has started it."""
        self.backend_context: ssl.SSLContext | None = None
        """The client context that made `backend_ssl`: only it can resume that session."""
        self.core: InspectSession | None = None
        self.client_addr: tuple[str, int] = ("", 0)
        self.local_addr: tuple[str, int] = ("", 0)
        self.data: DataChannel | None = None
        self.started = 0.0
        balancer.sessions.add(self)
        self.end_reason = ""
        self.closed = False
        self.counted = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._tried: set[str] = set()
        self._user: str | None = None
        self.tls: ssl.SSLContext | None = None
        """The server context this session started with: its data connections
        resume sessions of its cache, whatever a reload changes meanwhile."""
        self._client_full = False
        """The client does not read its replies: its write buffer is full."""
        self._backend_full = False
        self._client_reading = True
        self._tls_starting = False
        self._resume_soon = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.balancer.loop

    def other(self, side: _Side) -> _Side | None:
        return self.backend_side if side is self.client else self.client

    # -- events from the sockets

    def client_connected(self) -> None:
        transport = self.client.transport
        assert transport is not None
        self.started = self.loop.time()
        self.client_addr, self.local_addr = client_addresses(transport)
        refusal = self.balancer.admit(self)
        if refusal:
            transport.write(reply(421, refusal))
            self.close(refusal)
            return
        self.counted = True
        b = self.balancer.config.balancer
        self.tls = self.balancer.tls
        self.core = InspectSession(
            SessionSettings(
                client=self.client_addr,
                public_address=b.public_address,
                # Pinned users need the name before the choice, whatever the policy.
                balance_by_user=b.balance == "user" or bool(self.balancer.config.users),
                login_timeout=b.login_timeout,
                idle_timeout=b.idle_timeout,
                greeting_timeout=self.balancer.config.greeting_timeout(),
                tls=self.tls is not None,
                tls_required=self.balancer.config.tls.required,
                implicit_tls=self.implicit,
                backend_tls=self.balancer.config.tls.backend_tls,
            )
        )
        self.run(self.core.start(self.loop.time()))

    def client_data(self, data: bytes) -> None:
        if self.core is not None and not self.closed:
            self.run(self.core.client_data(data, self.loop.time()))

    def backend_data(self, data: bytes) -> None:
        if self.core is not None and not self.closed:
            self.run(self.core.backend_data(data, self.loop.time()))

    def side_lost(self, side: _Side, exc: Exception | None) -> None:
        if self.closed or (side is not self.client and side is not self.backend_side):
            return  # a backend we gave up on (redispatch)
        if side is self.client:
            if self.core is not None:
                self.run(self.core.client_closed())
            self.close("client reset" if exc else "client closed")
        elif self.core is not None:
            self.run(self.core.backend_closed())
        else:
            self.close("backend closed")

    def write_paused(self, side: _Side, paused: bool) -> None:
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

    # -- carrying out the core's commands

    def run(self, commands: list[Cmd]) -> None:
        for cmd in commands:
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
        if self.core is not None and not self.closed:
            self.run(self.core.resume(self.loop.time()))

    def _do(self, cmd: Cmd) -> None:
        match cmd:
            case SendClient(data):
                if self.client.transport is not None:
                    self.client.transport.write(data)
            case SendBackend(data):
                if self.backend_side is not None and self.backend_side.transport is not None:
                    self.backend_side.transport.write(data)
            case ConnectBackend(user):
                self._connect_backend(user)
            case Redispatch(reason):
                self._redispatch(reason)
            case Close(reason):
                self.close(reason)
            case ListenData(backend, client_ip, tls, backend_tls):
                self._listen(backend, client_ip, tls, backend_tls)
            case ConnectClientData(target, tls):
                channel = self._new_channel(tls)
                channel.connect_client(target, self._source_host(), self._data_client_connected)
            case ConnectBackendData(backend, backend_tls):
                if self.data is not None:
                    if backend_tls:
                        self.data.backend_tls = self._backend_data_tls()
                    self.data.connect_backend(backend)
            case StartClientTLS():
                # Nothing more may reach the FTP parser: the next bytes are the
                # ClientHello, for the TLS layer that start_tls puts in between.
                if self.client.transport is not None:
                    self.client.transport.pause_reading()
                self._tls_starting = True
                self._spawn(self._start_tls())
            case StartBackendTLS():
                if self.backend_side is not None and self.backend_side.transport is not None:
                    self.backend_side.transport.pause_reading()
                self._spawn(self._start_backend_tls())
            case CloseData():
                self._close_data()
            case LoginResult(ok, user):
                self.balancer.login_result(self, ok, user)
            case Log(message):
                log.info("%s %s", self.who(), message)
            case Transferred(direction, command, file, size, duration):
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

    # -- backend control connection

    def _connect_backend(self, user: str | None) -> None:
        self._user = user
        backend = self.balancer.choose(self, user)
        if backend is None:
            self.balancer.rejected["no_backend"] += 1
            assert self.core is not None
            self.run(self.core.backend_failed("no healthy backend"))
            return
        self._assign(backend)
        self._spawn(self._connect(backend))

    def _assign(self, backend: Backend) -> None:
        self.backend = backend
        self._tried.add(backend.name)
        backend.sessions += 1
        backend.sessions_total += 1

    def _unassign(self, reason: str) -> Backend | None:
        """The current backend failed before the client heard from it: the next one."""
        backend = self.backend
        if backend is not None:
            log.warning("backend %s: %s; redispatching", backend.name, reason)
            backend.sessions -= 1
            backend.connect_failures_total += 1
            self.balancer.retire_if_idle(backend)
        self.backend = None
        return self.balancer.choose(self, self._user, exclude=self._tried)

    def _redispatch(self, reason: str) -> None:
        """The backend connected but never greeted with 220: try another one."""
        side, self.backend_side = self.backend_side, None
        if side is not None and side.transport is not None:
            side.transport.abort()
        self.backend_ssl = None
        other = self._unassign(reason)
        if other is None:
            self.run(self._core().backend_failed(reason))
            return
        self._assign(other)
        self._spawn(self._connect(other))

    async def _connect(self, backend: Backend) -> None:
        timeout = self.balancer.config.balancer.connect_timeout
        while True:
            side = _Side(self, False)
            try:
                async with asyncio.timeout(timeout):
                    await self.loop.create_connection(
                        lambda side=side: side,  # type: ignore[misc]
                        backend.config.address.host,
                        backend.config.address.port,
                    )
                break
            except (OSError, TimeoutError) as exc:
                reason = f"backend connect failed: {getattr(exc, 'strerror', None) or 'timeout'}"
            other = self._unassign(reason)
            if other is None or self.closed:
                if self.core is not None and not self.closed:
                    self.run(self.core.backend_failed(reason))
                return
            backend = other
            self._assign(backend)
        if self.closed and side.transport is not None:
            side.transport.close()

    def backend_made(self, side: _Side) -> None:
        """The backend connection is up. Runs in connection_made, before any
        byte from the backend can arrive (and before `_connect` resumes)."""
        if self.closed:
            return
        self.backend_side = side
        assert side.transport is not None and self.backend is not None
        enable_keepalive(side.transport)
        version = self.balancer.config.proxy_version(self.backend.config)
        header = proxy_protocol.encode(version, self.client_addr, self.local_addr)
        if header:
            side.transport.write(header)
        peer = side.transport.get_extra_info("peername")
        assert self.core is not None
        self.run(self.core.backend_connected(self.backend.name, peer[0], self.loop.time()))

    # -- data channels

    def _new_channel(self, tls: bool = False, backend_tls: bool = False) -> DataChannel:
        self._close_data()
        label = f"{self.who()} backend={self.backend.name if self.backend else '-'}"
        version = "off"
        if self.backend is not None and self.backend.config.send_proxy_data:
            version = self.balancer.config.proxy_version(self.backend.config)
            version = version if version != "off" else "v1"
        t = self.balancer.config.tls
        channel = DataChannel(
            label,
            self._data_opened,
            self._data_closed,
            version,
            tls=self.tls if tls else None,
            require_reuse=t.session_reuse,
            handshake_timeout=t.handshake_timeout,
            on_refused=self._data_refused,
            on_fail=self._data_failed,
            on_spliced=self.balancer.data_spliced,
            backend_tls=self._backend_data_tls() if backend_tls else None,
            control_addresses=(self.client_addr, self.local_addr),
            connect_timeout=self.balancer.config.balancer.connect_timeout,
        )
        self.data = channel
        return channel

    def _backend_data_tls(self) -> BackendTLS | None:
        context = self.backend_context
        if context is None or self.backend_ssl is None or self.backend is None:
            return None
        return BackendTLS(
            context,
            self.backend_ssl,
            self.backend.config.address.host,
            self.balancer.config.tls.handshake_timeout,
        )

    async def _start_backend_tls(self) -> None:
        """The backend said 234: we become its TLS client, verifying its certificate."""
        side = self.backend_side
        context = self.balancer.backend_tls
        assert side is not None and side.transport is not None and self.backend is not None
        if context is None:  # backend_tls is off: the core never asks
            self.run(self._core().backend_tls_failed("no TLS client context"))
            return
        try:
            secured = await self.loop.start_tls(
                side.transport,
                side,
                context,
                server_hostname=self.backend.config.address.host,
                ssl_handshake_timeout=self.balancer.config.tls.handshake_timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            reason = str(exc) or type(exc).__name__
            log.warning("%s: TLS to backend %s failed: %s", self.who(), self.backend.name, reason)
            if not self.closed:
                self.run(self._core().backend_tls_failed(f"handshake failed: {reason}"))
            return
        if secured is None or self.closed:
            return
        side.transport = secured
        self.backend_ssl = secured.get_extra_info("ssl_object")
        self.backend_context = context
        self.run(self._core().backend_tls_ready())

    def _core(self) -> InspectSession:
        assert self.core is not None
        return self.core

    def _data_client_connected(self) -> None:
        if self.core is not None and not self.closed:
            self.run(self.core.data_client_connected(self.loop.time()))

    def _data_failed(self) -> None:
        if self.core is not None and not self.closed:
            self.run(self.core.data_failed())

    def _data_refused(self, reason: str) -> None:
        if self.core is not None and not self.closed:
            self.run(self.core.data_refused(reason))

    async def _start_tls(self) -> None:
        """AUTH TLS answered: the client's control connection becomes TLS, we the server."""
        transport = self.client.transport
        context = self.tls
        assert transport is not None and context is not None
        try:
            secured = await self.loop.start_tls(
                transport,
                self.client,
                context,
                server_side=True,
                ssl_handshake_timeout=self.balancer.config.tls.handshake_timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            log.warning("%s: TLS handshake failed: %s", self.who(), exc or type(exc).__name__)
            self.close("TLS handshake failed")
            return
        if secured is None:
            self.close("TLS handshake failed")
            return
        self.client.transport = secured
        self._tls_starting = False
        self._client_reading = True  # the TLS transport reads from the start
        self._pace_client()

    def _listen(
        self, backend: tuple[str, int], client_ip: str, tls: bool, backend_tls: bool
    ) -> None:
        channel = self._new_channel(tls, backend_tls)
        b = self.balancer.config.balancer

        async def go() -> None:
            try:
                port = await channel.listen(
                    self._source_host(), self.balancer.ports, client_ip, backend, b.data_timeout
                )
            except OSError as exc:
                log.warning("%s: cannot open a data port: %s", self.who(), exc)
                if self.core is not None and not self.closed:
                    self.run(self.core.data_listen_failed())
                return
            if self.core is not None and not self.closed:
                self.run(self.core.data_listening(port))

        self._spawn(go())

    def _data_opened(self) -> None:
        if self.data is not None:
            direction = "inbound" if self.data.mode == "passive" else "outbound"
            self.balancer.data_connections[direction] += 1
        if self.core is not None and not self.closed:
            self.run(self.core.data_opened(self.loop.time()))

    def _data_closed(self, up: int, down: int) -> None:
        if self.backend is not None:
            self.backend.bytes_in += up
            self.backend.bytes_out += down
        if self.core is not None and not self.closed:
            self.run(self.core.data_closed(up, down, self.loop.time()))

    def _close_data(self) -> None:
        if self.data is not None:
            self.data.close()
            self.data = None

    # -- timers, tasks, the end

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
        if self.core is not None and not self.closed:
            self.run(self.core.tick(self.loop.time()))

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.end_reason = reason
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        # A transfer in progress may outlive the control connection briefly;
        # dropping it is what a server does when its control connection dies.
        self._close_data()
        if self.client.transport is not None:
            self.client.transport.close()
        if self.backend_side is not None and self.backend_side.transport is not None:
            self.backend_side.transport.close()
        self.balancer.session_closed(self)

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


class InspectBalancer:
    """Owns inspect mode's control listener, the data port pool and the sessions."""

    def __init__(self, config: Config, pool: Pool, shared: Shared | None = None) -> None:
        self.config = config
        self.pool = pool
        self.shared = shared or Shared(login_ring=config.balancer.max_login_failures)
        b = config.balancer
        # Each worker listens on its own slice: a data connection reaches the
        # worker that announced the port.
        self.ports = DataPorts(b.data_ports.slice(self.shared.worker, self.shared.workers))
        self.servers: list[asyncio.Server] = []
        self.sessions: set[ControlSession] = set()
        self.control_sessions = 0
        self.sessions_total = 0
        self.per_ip: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.logins: Counter[str] = Counter()
        self.data_connections: Counter[str] = Counter()
        self.transfers: Counter[str] = Counter()
        self.tls = server_context(config) if config.tls.cert else None
        self.backend_tls = backend_context(config) if config.tls.backend_tls != "off" else None
        self.loop = asyncio.get_running_loop()
        """Kept: asking asyncio for it costs a getpid() system call on Python 3.11."""

    async def start(self) -> None:
        loop = self.loop
        listen = self.config.balancer.listen
        reuse_port = self.shared.workers > 1  # each worker binds; the kernel spreads
        server = await loop.create_server(
            self._factory,
            listen.host,
            listen.port,
            reuse_address=True,
            reuse_port=reuse_port,
            backlog=self.config.balancer.listen_backlog(),
        )
        self.servers.append(server)
        implicit = self.config.tls.implicit_listen
        if implicit is not None and self.tls is not None:
            # Implicit FTPS: TLS from the first byte, then the same session.
            self.servers.append(
                await loop.create_server(
                    lambda: ControlSession(self, implicit=True).client,
                    implicit.host,
                    implicit.port,
                    reuse_address=True,
                    reuse_port=reuse_port,
                    backlog=self.config.balancer.listen_backlog(),
                    ssl=self.tls,
                    ssl_handshake_timeout=self.config.tls.handshake_timeout,
                )
            )
            log.info("inspect mode: implicit FTPS on %s", implicit)
        for each in self.servers:
            control_listener(each, oob_inline=True)  # ABOR arrives as urgent data
        log.info(
            "inspect mode: control on %s, data ports %s, clients are told %s",
            listen,
            self.config.balancer.data_ports,
            self.config.balancer.public_address,
        )

    def _factory(self) -> asyncio.Protocol:
        return ControlSession(self).client

    async def reloaded(self) -> None:
        """The config changed: new sessions get its [tls]. The server context is
        updated in place when it exists (the implicit listener holds it, and its
        session cache is what running sessions' data connections resume); each
        session keeps the contexts it started with."""
        t = self.config.tls
        if not t.cert:
            self.tls = None
        elif self.tls is None:
            self.tls = server_context(self.config)
        else:
            load_server_certificate(self.tls, self.config)
        self.backend_tls = backend_context(self.config) if t.backend_tls != "off" else None

    def control_sockets(self) -> list[socket.socket]:
        return [sock for server in self.servers for sock in server.sockets]

    def stop_accepting(self) -> None:
        for server in self.servers:
            server.close()
        self.servers.clear()

    async def close(self) -> None:
        self.stop_accepting()

    def close_sessions(self) -> None:
        for session in list(self.sessions):
            session.close("balancer stopping")

    # -- admission and choice

    def admit(self, session: ControlSession) -> str:
        """'' to let the session in, else the 421 text."""
        b = self.config.balancer
        ip = session.client_addr[0]
        now = self.loop.time()
        if self.shared.logins.banned(ip, now):
            self.rejected["banned"] += 1
            return "Too many failed logins from your address, try again later."
        if self.shared.sessions.total("") >= b.max_sessions:
            self.rejected["max_sessions"] += 1
            return "Too many sessions, try again later"
        if b.max_per_ip and self.shared.per_ip.total(ip) >= b.max_per_ip:
            self.rejected["max_per_ip"] += 1
            return "Too many sessions from your address."
        self.control_sessions += 1
        self.sessions_total += 1
        self.per_ip[ip] += 1
        self.shared.sessions.add("", 1)
        self.shared.per_ip.add(ip, 1)
        return ""

    def choose(
        self, session: ControlSession, user: str | None, exclude: set[str] | None = None
    ) -> Backend | None:
        exclude = exclude or set()
        if user is not None:
            pinned = self.pool.by_name.get(self.config.users.get(user, ""))
            if pinned is not None and pinned.available and pinned.name not in exclude:
                return pinned
        key = user if user is not None and self.config.balancer.balance == "user" else None
        return self.pool.choose(session.client_addr[0], key=key, exclude=exclude)

    def data_spliced(self) -> None:
        self.data_connections["spliced"] += 1

    def login_result(self, session: ControlSession, ok: bool, user: str) -> None:
        self.logins["success" if ok else "failure"] += 1
        if ok:
            where = session.backend.name if session.backend else "-"
            log.info("%s logged in on %s", session.who(), where)
            return
        ip = session.client_addr[0]
        b = self.config.balancer
        # Counted where the bans live: every worker's failures add up.
        if self.shared.logins.failed(
            ip, self.loop.time(), b.max_login_failures, b.login_failure_window, b.ban_time
        ):
            log.warning(
                "client %s banned for %gs after %d failed logins",
                ip,
                self.config.balancer.ban_time,
                self.config.balancer.max_login_failures,
            )

    def retire_if_idle(self, backend: Backend) -> None:
        """A backend removed by reload goes once its last session has."""
        if backend.retired and backend.sessions == 0 and backend in self.pool.retired:
            self.pool.retired.remove(backend)
            log.info("backend %s retired", backend.name)

    def session_closed(self, session: ControlSession) -> None:
        self.sessions.discard(session)
        if session.counted:
            ip = session.client_addr[0]
            self.control_sessions -= 1
            self.shared.sessions.add("", -1)
            self.shared.per_ip.add(ip, -1)
            self.per_ip[ip] -= 1
            if self.per_ip[ip] <= 0:
                del self.per_ip[ip]
            if session.backend is not None:
                session.backend.sessions -= 1
                self.retire_if_idle(session.backend)
                session.backend.bytes_in += session.client.bytes_read
                if session.backend_side is not None:
                    session.backend.bytes_out += session.backend_side.bytes_read
        log.info("%s", session.log_line())


def _family(host: str) -> int:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return 0


def server_context(config: Config) -> ssl.SSLContext:
    """The balancer's TLS server context, shared by control and data connections
    (one context: its session cache lets data connections resume the control one)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    load_server_certificate(context, config)
    return context


def load_server_certificate(context: ssl.SSLContext, config: Config) -> None:
    """The certificate, key and lowest version of [tls]; again on reload (a renewed
    certificate at the same path is read then)."""
    t = config.tls
    context.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if t.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    context.load_cert_chain(t.cert, t.key or None)


def backend_context(config: Config) -> ssl.SSLContext:
    """The balancer as a TLS client of its backends (one context: its sessions
    are what the data connections resume)."""
    t = config.tls
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not t.backend_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif t.backend_ca:
        context.load_verify_locations(cafile=t.backend_ca)
    else:
        context.load_default_certs()
    return context
