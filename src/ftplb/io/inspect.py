"""Inspect mode: the control listener, the data port pool, admission, the
choice of backend and the sessions' bookkeeping. A session itself lives in
io/control.py."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter
from typing import Any

from ftplb.balancer.dataports import DataPorts
from ftplb.balancer.pool import Backend, Pool
from ftplb.config import Config
from ftplb.io.cluster import Cluster
from ftplb.io.control import ControlSession
from ftplb.io.forward import DataForwarding
from ftplb.io.passive import PassiveListeners
from ftplb.io.proxied import Networks, front
from ftplb.io.relay import Addresses, control_listener
from ftplb.io.sessions import SessionCounts, SessionIds, listen, sockets_of
from ftplb.io.tls import backend_context, load_server_certificate, server_context, tls_protocol
from ftplb.logs import event
from ftplb.shared import Shared

log = logging.getLogger("ftplb.session")


class InspectBalancer:
    """Owns inspect mode's control listener, the data port pool and the sessions."""

    def __init__(
        self, config: Config, pool: Pool, shared: Shared | None = None, splice: bool = True
    ) -> None:
        self.config = config
        self.pool = pool
        self.shared = shared or Shared(login_ring=config.balancer.max_login_failures)
        self.splice = splice
        """Plain data channels may be handed to the kernel (io/splice.py)."""
        b = config.balancer
        # Each worker listens on its own slice: a data connection reaches the
        # worker that announced the port.
        self.ports = DataPorts(b.data_ports.slice(self.shared.worker, self.shared.workers))
        self.networks = Networks(b.accept_proxy)
        """accept_proxy: who must begin with a PROXY header (io/proxied.py)."""
        self.listeners = PassiveListeners(self.ports, self.networks)
        self.servers: list[asyncio.Server] = []
        self.sessions: set[ControlSession] = set()
        self.counts = SessionCounts(self.shared)
        self.ids = SessionIds(self.shared.worker)
        self.cluster: Cluster | None = None
        """[cluster]: bans and failed logins are shared with other nodes."""
        self.forwarding: DataForwarding | None = None
        """[cluster] advertise: data connections that reach the wrong node."""
        self.per_ip: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.logins: Counter[str] = Counter()
        self.data_connections: Counter[str] = Counter()
        self.transfers: Counter[str] = Counter()
        self.tls = server_context(config) if config.tls.cert else None
        self.backend_tls = backend_context(config) if config.tls.backend_tls != "off" else None
        self.loop = asyncio.get_running_loop()
        """Kept: asking asyncio for it costs a getpid() system call on Python 3.11."""

    @property
    def control_sessions(self) -> int:
        return self.counts.current

    async def start(self) -> None:
        config = self.config
        if self.cluster is not None and config.cluster.advertise is not None:
            # Before the control listener: the first PASV already holds its port cluster-wide.
            forwarding = DataForwarding(
                lambda: self.config, self.cluster, self.listeners, self.shared.worker, self.splice
            )
            await forwarding.start()
            self.forwarding = forwarding
        backlog = config.balancer.listen_backlog()
        self.servers.append(
            await listen(
                self.loop,
                config.balancer.listen,
                front(self._session, self.networks),
                self.shared,
                backlog,
            )
        )
        implicit = config.tls.implicit_listen
        if implicit is not None and self.tls is not None:
            # Implicit FTPS: TLS from the first byte, then the same session. With
            # accept_proxy the PROXY header comes before TLS: the TLS layer is
            # ours then (io/proxied.py hands the connection to it).
            if config.balancer.accept_proxy:
                self.servers.append(
                    await listen(
                        self.loop,
                        implicit,
                        front(self._implicit_session, self.networks),
                        self.shared,
                        backlog,
                    )
                )
            else:
                self.servers.append(
                    await listen(
                        self.loop,
                        implicit,
                        lambda: ControlSession(self, implicit=True).client,
                        self.shared,
                        backlog,
                        self.tls,
                        config.tls.handshake_timeout,
                    )
                )
            log.info("inspect mode: implicit FTPS on %s", implicit)
        for each in self.servers:
            control_listener(each)
        log.info(
            "inspect mode: control on %s, data ports %s, clients are told %s",
            config.balancer.listen,
            config.balancer.data_ports,
            config.balancer.public_address,
        )

    def _session(self, proxied: Addresses | None) -> asyncio.Protocol:
        side = ControlSession(self).client
        side.proxied = proxied
        return side

    def _implicit_session(self, proxied: Addresses | None) -> asyncio.BaseProtocol:
        """Implicit FTPS behind accept_proxy: our own TLS layer around the session."""
        assert self.tls is not None
        session = ControlSession(self, implicit=True)
        session.client.proxied = proxied
        protocol, handshake = tls_protocol(
            self.loop,
            session.client,
            self.tls,
            self.config.tls.handshake_timeout,
            server_side=True,
        )
        # A failed handshake ends it (the session was never connected); the
        # error is the client's, not news.
        handshake.add_done_callback(lambda done: done.cancelled() or done.exception())
        return protocol

    async def reloaded(self) -> None:
        """The config changed: new sessions get its [tls]. The server context is
        updated in place when it exists (the implicit listener holds it, and its
        session cache is what running sessions' data connections resume); each
        session keeps the contexts it started with."""
        self.networks.update(self.config.balancer.accept_proxy)
        t = self.config.tls
        if not t.cert:
            self.tls = None
        elif self.tls is None:
            self.tls = server_context(self.config)
        else:
            load_server_certificate(self.tls, self.config)
        self.backend_tls = backend_context(self.config) if t.backend_tls != "off" else None

    def control_sockets(self) -> list[socket.socket]:
        return sockets_of(*self.servers)

    def stop_accepting(self) -> None:
        for server in self.servers:
            server.close()
        self.servers.clear()
        if self.forwarding is not None:
            self.forwarding.stopping = True

    @property
    def in_flight(self) -> int:
        """What a stop waits for: control sessions, and the data connections
        this node relays for other nodes' sessions."""
        forwarded = len(self.forwarding.relays) if self.forwarding is not None else 0
        return self.counts.current + forwarded

    async def close(self) -> None:
        self.stop_accepting()

    def close_sessions(self) -> None:
        for session in list(self.sessions):
            session.close("balancer stopping")
        if self.forwarding is not None:
            self.forwarding.close()
        self.listeners.close()

    def stats(self) -> dict[str, Any]:
        """Counters for the admin API (admin/source.py)."""
        return {
            "sessions": self.counts.current,
            "sessions_total": self.counts.total,
            "rejected": dict(self.rejected),
            "data_connections": dict(self.data_connections),
            "logins": dict(self.logins),
            "transfers": dict(self.transfers),
            "banned": len(self.shared.logins.bans(self.loop.time())),
            # [cluster] advertise: data connections sent to / taken from other nodes.
            "cluster_data": {
                "forwarded": self.forwarding.forwarded if self.forwarding else 0,
                "joined": self.forwarding.joined if self.forwarding else 0,
            },
            # This worker's slice of data_ports: the status page's port usage.
            "data_ports": {
                "total": len(self.ports.ports),
                "in_use": self.ports.ports_in_use,
                "waiting": self.ports.taken,
                "open": sum(1 for x in self.sessions if x.data is not None and x.data.relay),
            },
        }

    # -- the operator's view (admin API)

    def session_views(self) -> list[dict[str, Any]]:
        return [s.view() for s in list(self.sessions) if s.counted and not s.closed]

    def close_session(self, session_id: int) -> bool:
        for session in list(self.sessions):
            if session.id == session_id and not session.closed:
                event(
                    log, logging.WARNING, "operator", "session %d (%s) closed by operator",
                    session_id, session.who(),
                )  # fmt: skip
                session.close("closed by operator")
                return True
        return False

    def ban_views(self) -> list[dict[str, Any]]:
        """Bans in force, every worker's (they share the table), until in epoch seconds."""
        now, wall = self.loop.time(), time.time()
        return [
            {"address": ip, "until": round(wall + until - now, 3)}
            for ip, until in self.shared.logins.bans(now)
        ]

    def lift_ban(self, ip: str) -> bool:
        """Lift a ban and forget the failures (shared: every worker at once)."""
        lifted = self.shared.logins.lift(ip)
        if self.cluster is not None:
            self.cluster.lifted(ip)  # lifted everywhere (it may be banned on another node only)
        if lifted:
            event(log, logging.WARNING, "operator", "ban of %s lifted by operator", ip)
        return lifted

    # -- admission and choice

    def admit(self, session: ControlSession) -> str:
        """'' to let the session in, else the 421 text."""
        b = self.config.balancer
        ip = session.client_addr[0]
        if self.shared.logins.banned(ip, self.loop.time()):
            self.rejected["banned"] += 1
            return "Too many failed logins from your address, try again later."
        if self.counts.full(b.max_sessions):
            self.rejected["max_sessions"] += 1
            return "Too many sessions, try again later"
        if b.max_per_ip and self._sessions_of(ip) >= b.max_per_ip:
            self.rejected["max_per_ip"] += 1
            return "Too many sessions from your address."
        self.counts.opened()
        self.per_ip[ip] += 1
        self.shared.per_ip.add(ip, 1)
        return ""

    def _sessions_of(self, ip: str) -> int:
        """Every worker's sessions from `ip`, and in a cluster the other nodes'."""
        return self.shared.per_ip.total(ip) + self.counts.elsewhere_per_ip.get(ip, 0)

    def choose(
        self, session: ControlSession, user: str | None, exclude: set[str]
    ) -> Backend | None:
        if user is not None:
            pinned = self.pool.by_name.get(self.config.users.get(user, ""))
            if pinned is not None and pinned.available and pinned.name not in exclude:
                return pinned
        key = user if user is not None and self.config.balancer.balance == "user" else None
        return self.pool.choose(session.client_addr[0], key=key, exclude=exclude)

    def login_result(self, session: ControlSession, ok: bool, user: str) -> None:
        self.logins["success" if ok else "failure"] += 1
        if ok:
            where = session.backend.name if session.backend else "-"
            log.info("%s logged in on %s", session.who(), where)
            return
        ip = session.client_addr[0]
        b = self.config.balancer
        # Counted where the bans live: every worker's failures add up (and,
        # in a cluster, every node's, in the background).
        banned = self.shared.logins.failed(
            ip, self.loop.time(), b.max_login_failures, b.login_failure_window, b.ban_time
        )
        if self.cluster is not None:
            if banned:
                self.cluster.banned(ip, time.time() + b.ban_time)
            else:
                self.cluster.failed(ip, b.max_login_failures, b.login_failure_window, b.ban_time)
        if banned:
            event(
                log,
                logging.WARNING,
                "ban",
                "client %s banned for %gs after %d failed logins",
                ip,
                b.ban_time,
                b.max_login_failures,
            )

    def retire_if_idle(self, backend: Backend) -> None:
        if self.pool.retire_if_idle(backend):
            log.info("backend %s retired", backend.name)

    def session_closed(self, session: ControlSession) -> None:
        self.sessions.discard(session)
        if session.counted:
            ip = session.client_addr[0]
            self.counts.closed()
            self.shared.per_ip.add(ip, -1)
            self.per_ip[ip] -= 1
            if self.per_ip[ip] <= 0:
                del self.per_ip[ip]
            backend = session.backend
            if backend is not None:
                self.pool.release(backend)
                self.retire_if_idle(backend)
                backend.bytes_in += session.client.bytes_read
                if session.backend_side is not None:
                    backend.bytes_out += session.backend_side.bytes_read
        log.info("%s", session.log_line())
