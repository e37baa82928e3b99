"""Routed mode: control connections relayed opaquely, passive ranges forwarded.

The control connection goes to the backend the policy picks, preceded by a
PROXY header when configured; ftplb never reads it, so FTPS passes through.
Every port of every backend's passive range has a listener here; a data
connection to port P goes to port P on the backend that owns P (user-space
DNAT), optionally with a PROXY header of its own.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter
from typing import Any

from ftplb.balancer.pool import Backend, Pool
from ftplb.config import Config, HostPort
from ftplb.io import kernel
from ftplb.io.proxied import Networks, front
from ftplb.io.relay import (
    Addresses,
    Endpoint,
    Relay,
    control_listener,
    enable_keepalive,
    local_address,
    peer_address,
)
from ftplb.io.sessions import Dialer, SessionCounts, SessionIds, listen, sockets_of
from ftplb.io.transparent import dial
from ftplb.logs import event
from ftplb.proto import proxy_protocol
from ftplb.shared import Shared

log = logging.getLogger("ftplb.session")

NO_BACKEND_REPLY = b"421 Service not available\r\n"
FIN_TIMEOUT = 5.0
"""Seconds a control connection's other side has to close once one side closed
(a client that sent QUIT and closed has no use for more)."""
TOO_MANY_REPLY = b"421 Too many sessions, try again later\r\n"


class Session:
    """One relayed connection (control or data) and what the log line needs."""

    __slots__ = (
        "_connect_task",
        "_local_addr",
        "backend",
        "balancer",
        "client_addr",
        "counted",
        "dialer",
        "id",
        "implicit",
        "kind",
        "port",
        "relay",
        "started",
        "started_at",
    )

    def __init__(
        self, balancer: RoutedBalancer, kind: str, backend: Backend | None, port: int = 0
    ) -> None:
        self.balancer = balancer
        self.kind = kind  # "control" or "data"
        self.backend = backend
        self.port = port
        """A data session's port (the same on the backend)."""
        self.relay = Relay(self._closed, self.client_connected)
        self.id = balancer.ids.next() if kind == "control" else 0
        self.client_addr: tuple[str, int] = ("", 0)
        self._local_addr: tuple[str, int] | None = None
        self.started = 0.0
        self.started_at = 0.0
        self.counted = False
        self.dialer: Dialer | None = None
        """A control session's way to its backend (redispatch); data sessions have none."""
        self.implicit = False
        self._connect_task: asyncio.Task[None] | None = None

    # -- the client's side

    def client_connected(self) -> None:
        """Called from the client endpoint's connection_made (reading is paused)."""
        self.started = self.balancer.loop.time()
        self.started_at = time.time()
        transport = self.relay.client.transport
        assert transport is not None
        proxied = self.relay.client.proxied
        if proxied is not None:  # accept_proxy: the header says who the client is
            self.client_addr, self._local_addr = proxied
        else:
            self.client_addr = peer_address(transport)
        self.balancer.session_opened(self)

    @property
    def local_addr(self) -> tuple[str, int]:
        """The address the client connected to; looked up only when a PROXY header needs it."""
        if self._local_addr is None:
            transport = self.relay.client.transport
            assert transport is not None
            self._local_addr = local_address(transport)
        return self._local_addr

    def refuse(self, reply: bytes, reason: str) -> None:
        transport = self.relay.client.transport
        assert transport is not None
        transport.write(reply)
        self.relay.backend_failed(reason)

    def target(self, backend: Backend, port: int) -> tuple[str, int]:
        """Where to connect: a data session to `port` on the backend's host, a
        control session to its control (or implicit-FTPS) address."""
        if self.kind == "data":
            return backend.config.address.host, port
        address = backend.config.implicit_address if self.implicit else None
        address = address or backend.config.address
        return address.host, address.port

    def connect(self, backend: Backend, port: int, preamble: bytes) -> None:
        self.backend = backend
        task = self.balancer.loop.create_task(self._connect(backend, port, preamble))
        self._connect_task = task
        # A finished task keeps its coroutine's frame: drop it (idle sessions are many).
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[None]) -> None:
        if self._connect_task is task:
            self._connect_task = None

    async def _connect(self, backend: Backend, port: int, preamble: bytes) -> None:
        if self.dialer is None:  # a data connection: its port decides the backend
            reason = await self._try(backend, port, preamble)
            if reason:
                self.relay.backend_failed(reason)
                return
        else:
            reached, reason = await self.dialer.connect(backend, self._attempt)
            self.backend = reached
            if reached is None:
                self.refuse(NO_BACKEND_REPLY, reason)
                return
            preamble = self.balancer.control_preamble(self, reached)
        if self.relay.client.closed:
            # Gone before we reached the backend: by a reset (a FIN keeps the
            # endpoint open until `start`), so the backend is reset too.
            self.relay.close("client closed", abort=True)
            return
        if self.kind == "control":
            enable_keepalive(self.relay.backend.transport)  # type: ignore[arg-type]
        if self.greets:
            preamble = b""  # sent before the greeting
        # Long data transfers: the kernel moves the bytes (io/splice.py).
        self.relay.start(preamble, splice=self.kind == "data" and self.balancer.splice)

    async def _attempt(self, backend: Backend) -> str:
        """A control connection to `backend` (the header's version is its own)."""
        return await self._try(backend, 0, self.balancer.control_preamble(self, backend))

    @property
    def greets(self) -> bool:
        """The backend speaks first (a plain control connection; with implicit
        FTPS the client does, its TLS hello)."""
        return self.kind == "control" and not self.implicit

    async def _try(self, backend: Backend, port: int, preamble: bytes) -> str:
        """Connect (and, for a control connection, wait for a 220): '' or why not."""
        config = self.balancer.config
        try:
            async with asyncio.timeout(config.balancer.connect_timeout):
                await dial(
                    self.balancer.loop,
                    lambda: self.relay.backend,
                    *self.target(backend, port),
                    self.client_addr[0] if config.balancer.source == "client" else None,
                )
        except (OSError, TimeoutError) as exc:
            return f"backend connect failed: {getattr(exc, 'strerror', None) or 'timeout'}"
        if not self.greets:
            return ""
        # The client is held (paused) until the backend greets: a frozen backend,
        # or one that greets with 421, is passed over before the client hears it.
        reason = await self._greeting(preamble, config.greeting_timeout())
        if reason:
            self.relay.replace_backend()
        return reason

    async def _greeting(self, preamble: bytes, timeout: float) -> str:
        relay = self.relay
        endpoint = relay.backend
        transport = endpoint.transport
        assert transport is not None
        if preamble:
            transport.write(preamble)  # a PROXY-aware backend greets after it
        try:
            async with asyncio.timeout(timeout):
                while True:
                    head = b"".join(endpoint.early)[:3]
                    if len(head) == 3 or endpoint.eof or endpoint.closed:
                        break
                    relay.first_bytes = self.balancer.loop.create_future()
                    transport.resume_reading()
                    await relay.first_bytes
        except TimeoutError:
            return f"no greeting within {timeout:g}s"
        finally:
            relay.first_bytes = None
        if len(head) < 3:
            return "backend closed before greeting"
        if head[:1] not in (b"1", b"2"):
            return f"backend greeted with {head.decode(errors='replace')}"
        return ""

    # -- idle timeout (control sessions)

    def start_idle_clock(self) -> None:
        self.relay.track_activity(self.balancer.loop)
        self.relay.fin_timeout = FIN_TIMEOUT

    # -- the end

    def _closed(self, relay: Relay) -> None:
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
        self.balancer.session_closed(self)

    def log_line(self) -> str:
        duration = self.balancer.loop.time() - self.started
        client = HostPort(*self.client_addr)
        backend = self.backend.name if self.backend else "-"
        extra = f" port={self.port}" if self.kind == "data" else ""
        if self.relay.spliced is not None:
            extra += " relay=splice"
        return (
            f"{self.kind} client={client} backend={backend}{extra} "
            f"bytes_up={self.relay.bytes_up} bytes_down={self.relay.bytes_down} "
            f'duration={duration:.3f}s end="{self.relay.end_reason}"'
        )


class RoutedBalancer:
    """Owns the listeners of routed mode and the sessions on them."""

    def __init__(
        self, config: Config, pool: Pool, shared: Shared | None = None, splice: bool = True
    ) -> None:
        self.config = config
        self.pool = pool
        self.shared = shared or Shared()
        self.splice = splice
        """Data connections may be handed to the kernel past 1 MiB (io/splice.py)."""
        self.control_server: asyncio.Server | None = None
        self.implicit_server: asyncio.Server | None = None
        self.data_servers: dict[Backend, list[asyncio.Server]] = {}
        """Each backend's passive-port listeners (by the backend itself: a retired
        one and a new one of the same name are two)."""
        self._sweeper: asyncio.TimerHandle | None = None
        self.counts = SessionCounts(self.shared)
        self.ids = SessionIds(self.shared.worker)
        self.networks = Networks(config.balancer.accept_proxy)
        """accept_proxy: who must begin with a PROXY header (io/proxied.py)."""
        self.rejected: Counter[str] = Counter()
        self.data_connections: Counter[str] = Counter()
        # (client ip, backend name) -> open data connections: a control session
        # whose client is moving data to its backend is not idle.
        self._data_by_client: Counter[tuple[str, str]] = Counter()
        self._sessions: set[Session] = set()
        self._backlog = config.balancer.listen_backlog()
        self.loop = asyncio.get_running_loop()
        """Kept: asking asyncio for it costs a getpid() system call on Python 3.11."""

    @property
    def control_sessions(self) -> int:
        return self.counts.current

    @property
    def in_flight(self) -> int:
        """What a stop waits for (data sessions end with their control sessions)."""
        return self.control_sessions

    def stats(self) -> dict[str, Any]:
        """Counters for the admin API (admin/source.py)."""
        return {
            "sessions": self.counts.current,
            "sessions_total": self.counts.total,
            "rejected": dict(self.rejected),
            "data_connections": dict(self.data_connections),
        }

    # -- listeners

    async def start(self) -> None:
        loop = self.loop
        listen = self.config.balancer.listen
        if self.kernel:
            await kernel.install(self.config)
        try:
            self.control_server = await self._listen(loop, listen, self._control_factory())
            control_listener(self.control_server)
        except OSError:
            if self.kernel:
                await kernel.remove()
            raise
        implicit = self.config.tls.implicit_listen
        if implicit is not None:
            # Implicit FTPS (port 990): the same opaque relay, to each backend's implicit port.
            self.implicit_server = await self._listen(loop, implicit, self._implicit_factory())
            control_listener(self.implicit_server)
            log.info("routed mode: implicit FTPS on %s", implicit)
        for backend in self.pool.backends:
            await self.open_data_listeners(backend)
        ports = sum(len(v) for v in self.data_servers.values())
        self._sweep_idle()
        log.info(
            "routed mode: control on %s, %d data ports on %s",
            listen,
            ports,
            self.config.balancer.data_host,
        )

    async def open_data_listeners(self, backend: Backend) -> None:
        """A listener on every port of the backend's passive range (user-space data path)."""
        if self.kernel:
            return
        loop = asyncio.get_running_loop()
        ports = backend.config.passive_ports
        assert ports is not None
        servers = self.data_servers.setdefault(backend, [])
        try:
            for port in ports:
                at = HostPort(self.config.balancer.data_host, port)
                servers.append(await self._listen(loop, at, self._data_factory(backend, port)))
        except OSError:
            self.close_data_listeners(backend)
            raise

    def close_data_listeners(self, backend: Backend) -> None:
        for server in self.data_servers.pop(backend, []):
            server.close()

    async def _listen(self, loop: asyncio.AbstractEventLoop, at: HostPort, factory: Any) -> Any:
        return await listen(loop, at, factory, self.shared, self._backlog)

    def _control_factory(self) -> Any:
        return front(lambda proxied: self._session("control", None, 0, proxied), self.networks)

    def _implicit_factory(self) -> Any:
        return front(
            lambda proxied: self._session("control", None, 0, proxied, implicit=True),
            self.networks,
        )

    def _data_factory(self, backend: Backend, port: int) -> Any:
        return front(lambda proxied: self._session("data", backend, port, proxied), self.networks)

    def _session(
        self,
        kind: str,
        backend: Backend | None,
        port: int,
        proxied: Addresses | None,
        implicit: bool = False,
    ) -> Endpoint:
        session = Session(self, kind, backend, port)
        session.implicit = implicit
        self._sessions.add(session)
        session.relay.client.proxied = proxied
        return session.relay.client

    def _sweep_idle(self) -> None:
        """Close idle control sessions. One timer for all of them (a timer per
        session would cost memory on every idle connection); it runs four
        times per idle_timeout, at most every 5 s, so a session ends between
        1 and 1.25 idle_timeouts after its last byte."""
        loop = asyncio.get_running_loop()
        timeout = self.config.balancer.idle_timeout
        now = loop.time()
        for session in list(self._sessions):
            if (
                session.kind == "control"
                and session.counted
                and now - session.relay.last_activity >= timeout
                and not self.has_data_connection(session)
            ):
                session.relay.close("idle timeout")
        self._sweeper = loop.call_later(min(timeout / 4, 5.0), self._sweep_idle)

    def control_sockets(self) -> list[socket.socket]:
        return sockets_of(self.control_server, self.implicit_server)

    def stop_accepting(self) -> None:
        """No new sessions; data listeners stay for the sessions in progress."""
        for server in (self.control_server, self.implicit_server):
            if server is not None:
                server.close()
        self.control_server = self.implicit_server = None

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.stop_accepting()
        for backend in list(self.data_servers):
            for server in self.data_servers.pop(backend):
                server.close()
        if self.kernel:
            try:
                await kernel.remove()
            except kernel.KernelDataPathError as exc:
                log.error("%s", exc)

    async def reloaded(self) -> None:
        """The config changed: accept_proxy applies to new connections, the
        kernel's table follows."""
        self.networks.update(self.config.balancer.accept_proxy)
        if self.kernel:
            await kernel.install(self.config)

    @property
    def spliced_total(self) -> int:
        """Data connections the kernel moved (io/splice.py)."""
        return self.data_connections["spliced"]

    @property
    def kernel(self) -> bool:
        return self.config.balancer.data_path == "kernel"

    # -- the operator's view (admin API)

    def session_views(self) -> list[dict[str, Any]]:
        """Control sessions; a data connection open beside one is its transfer
        (routed mode never reads commands: direction from the bytes, no file)."""
        data: dict[tuple[str, str], Session] = {}
        for s in self._sessions:
            if s.kind == "data" and s.backend is not None:
                data[(s.client_addr[0], s.backend.name)] = s
        views = []
        for s in list(self._sessions):
            if s.kind != "control" or not s.counted:
                continue
            backend = s.dialer.backend if s.dialer is not None else None
            transfer = None
            moving = data.get((s.client_addr[0], backend.name)) if backend else None
            if moving is not None:
                up, down = moving.relay.client.bytes_read, moving.relay.backend.bytes_read
                direction = "upload" if up > down else "download"
                transfer = {"direction": direction, "bytes": up + down, "file": None}
            views.append(
                {
                    "id": s.id,
                    "client": str(HostPort(*s.client_addr)),
                    "backend": backend.name if backend is not None else None,
                    "user": None,
                    "started": round(s.started_at, 3),
                    "bytes_in": s.relay.client.bytes_read,
                    "bytes_out": s.relay.backend.bytes_read,
                    "transfer": transfer,
                }
            )
        return views

    def close_session(self, session_id: int) -> bool:
        """Close a control session and its client's data connections to its backend."""
        for s in list(self._sessions):
            if s.kind == "control" and s.id == session_id and s.counted:
                backend = s.dialer.backend if s.dialer is not None else None
                client = HostPort(*s.client_addr)
                event(
                    log, logging.WARNING, "operator", "session %d (client=%s) closed by operator",
                    session_id, client,
                )  # fmt: skip
                for d in list(self._sessions):
                    if (
                        d.kind == "data"
                        and d.client_addr[0] == s.client_addr[0]
                        and (backend is not None and d.backend is backend)
                    ):
                        d.relay.close("closed by operator", abort=True)
                s.relay.close("closed by operator", abort=True)
                return True
        return False

    def ban_views(self) -> list[dict[str, Any]]:
        return []  # routed mode never sees a login

    def lift_ban(self, ip: str) -> bool:
        return False

    def close_sessions(self) -> None:
        for session in list(self._sessions):
            session.relay.close("balancer stopping", abort=True)

    def retire_when_idle(self, backend: Backend) -> None:
        """A backend removed by reload: its listeners go when its last session does."""
        if self.pool.retire_if_idle(backend, busy=self._has_data(backend)):
            self.close_data_listeners(backend)
            log.info("backend %s retired", backend.name)

    def _has_data(self, backend: Backend) -> bool:
        return any(name == backend.name for _, name in self._data_by_client)

    # -- sessions

    def session_opened(self, session: Session) -> None:
        client_ip = session.client_addr[0]
        if session.kind == "data":
            backend = session.backend
            assert backend is not None
            backend.data_connections_total += 1
            self.data_connections["inbound"] += 1
            self._data_by_client[(client_ip, backend.name)] += 1
            self.shared.data_by_client.add(f"{client_ip}|{backend.name}", 1)
            version = self.config.data_proxy_version(backend.config)
            header = b""
            if version != "off":
                header = proxy_protocol.encode(version, session.client_addr, session.local_addr)
            session.connect(backend, session.port, header)
            return

        if self.counts.full(self.config.balancer.max_sessions):
            self.rejected["max_sessions"] += 1
            session.refuse(TOO_MANY_REPLY, "max_sessions reached")
            return
        dialer = session.dialer = Dialer(
            self.pool, lambda tried: self.pool.choose(client_ip, exclude=tried)
        )
        backend = dialer.first()
        if backend is None:
            self.rejected["no_backend"] += 1
            session.refuse(NO_BACKEND_REPLY, "no healthy backend")
            return
        session.counted = True
        self.counts.opened()
        session.backend = backend
        session.connect(backend, 0, b"")  # its header is made per attempt
        session.start_idle_clock()

    def control_preamble(self, session: Session, backend: Backend) -> bytes:
        version = self.config.proxy_version(backend.config)
        return proxy_protocol.encode(version, session.client_addr, session.local_addr)

    def session_closed(self, session: Session) -> None:
        self._sessions.discard(session)
        if session.relay.spliced is not None:
            self.data_connections["spliced"] += 1
        backend = session.backend
        if backend is not None:
            backend.bytes_in += session.relay.bytes_up
            backend.bytes_out += session.relay.bytes_down
        if session.kind == "data" and backend is not None:
            key = (session.client_addr[0], backend.name)
            self._data_by_client[key] -= 1
            if self._data_by_client[key] <= 0:
                del self._data_by_client[key]
            self.shared.data_by_client.add(f"{key[0]}|{key[1]}", -1)
        if session.counted:
            self.counts.closed()
            if backend is not None:
                self.pool.release(backend)
        if backend is not None and backend.retired:
            self.retire_when_idle(backend)
        log.info("%s", session.log_line())

    def has_data_connection(self, session: Session) -> bool:
        if session.backend is None:
            return False
        # Any worker may carry the data connection: ask the shared counters.
        return (
            self.shared.data_by_client.total(f"{session.client_addr[0]}|{session.backend.name}") > 0
        )
