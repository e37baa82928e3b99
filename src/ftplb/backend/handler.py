"""A PROXY-protocol-aware pyftpdlib handler that any pyftpdlib server can adopt.

    from ftplb.backend.handler import ProxyProtocolFTPHandler

    class Handler(ProxyProtocolFTPHandler):
        authorizer = my_authorizer
        trusted_proxies = trusted_networks(["10.0.0.0/24"])

    FTPServer(("0.0.0.0", 21), Handler).serve_forever()

A connection from a trusted proxy must begin with a PROXY header (v1 or v2,
detected from its first byte); it is read before the 220 greeting, and the
address it carries becomes `remote_ip`/`remote_port`: what is logged, what
PORT is checked against, and what data connections must come from. The
socket's own peer stays in `proxy_peer`. A connection from any other address
is refused. Passive data connections from a trusted proxy carry a header too,
and pyftpdlib's foreign-address check then compares the address in it; a data
connection straight from the session's client (behind a kernel DNAT) is
accepted as pyftpdlib always would.

Headers are read with MSG_PEEK and consumed to their exact length, so a byte
that follows the header (an early command, the first bytes of an upload) is
left for pyftpdlib.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import sys
from collections.abc import Callable, Iterable
from typing import Any, cast

from pyftpdlib.handlers import FTPHandler
from pyftpdlib.handlers.ftp.dispatchers import ActiveDTP, PassiveDTP
from pyftpdlib.ioloop import AsyncChat
from pyftpdlib.log import logger

from ftplb.errors import ProtocolError
from ftplb.proto.proxy_protocol import V1_MAX_LENGTH, V2_FIXED, V2_MAX_PAYLOAD, ProxyHeader
from ftplb.proto.proxy_protocol import parse_header as parse_proxy_header

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
PEEK_SIZE = max(V1_MAX_LENGTH, V2_FIXED + V2_MAX_PAYLOAD)
RETRY_DELAY = 0.02  # a header split over segments: look again shortly


def trusted_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def is_trusted(ip: str, networks: Iterable[Network]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in networks)


def take_proxy_header(sock: socket.socket) -> ProxyHeader | None:
    """Read one PROXY header from a non-blocking socket, consuming exactly its bytes.

    None: not all of it has arrived yet. Raises ProtocolError when malformed,
    ConnectionError when the peer closed first.
    """
    try:
        data = sock.recv(PEEK_SIZE, socket.MSG_PEEK)
    except (BlockingIOError, InterruptedError):
        return None
    if not data:
        raise ConnectionError("closed before sending a PROXY header")
    parsed = parse_proxy_header(data)
    if parsed is None:
        return None
    header, length = parsed
    taken = 0
    while taken < length:  # the bytes were peeked, so they are there
        taken += len(sock.recv(length - taken))
    return header


def _describe(header: ProxyHeader, peer: tuple[str, int]) -> str:
    return f"PROXY v{header.version} from {peer[0]}:{peer[1]}"


class _HeaderWaiter(AsyncChat):  # type: ignore[misc]
    """Holds an accepted data socket until its PROXY header has been read."""

    def __init__(
        self,
        sock: socket.socket,
        addr: tuple[str, int],
        acceptor: ProxyProtocolPassiveDTP,
        timeout: float,
    ) -> None:
        self._addr = addr
        self._acceptor = acceptor
        super().__init__(sock, ioloop=acceptor.ioloop)
        self._timer = self.call_later(timeout, self._timeout)
        self.handle_read()

    def handle_read(self) -> None:
        try:
            header = take_proxy_header(self.socket)
        except (ProtocolError, OSError) as exc:
            self._fail(f"malformed PROXY header: {exc}")
            return
        if header is None:
            self.modify_ioloop_events(0)
            self.call_later(RETRY_DELAY, self._retry)
            return
        sock = self.socket
        # Hand the socket over: stop watching it without closing it.
        self.del_channel()
        self._closed = True
        for task in self._tasks:
            task.cancel()
        real = header.source or self._addr
        cmd = self._acceptor.cmd_channel
        cmd.log(f"data connection from {real[0]}:{real[1]} ({_describe(header, self._addr)})")
        self._acceptor.accept_from(sock, real)

    def _retry(self) -> None:
        if not self._closed:
            self.modify_ioloop_events(self.ioloop.READ)

    def _timeout(self) -> None:
        self._fail("no PROXY header in time")

    def _fail(self, reason: str) -> None:
        cmd = self._acceptor.cmd_channel
        cmd.log(f"data connection from {self._addr[0]}:{self._addr[1]} refused: {reason}")
        self.close()

    def handle_close(self) -> None:
        self._fail("closed before sending a PROXY header")

    def writable(self) -> bool:
        return False


class ProxyProtocolPassiveDTP(PassiveDTP):  # type: ignore[misc]
    """PassiveDTP that reads the PROXY header of a data connection from a trusted proxy."""

    def handle_accepted(self, sock: socket.socket, addr: tuple[str, int]) -> None:
        cmd = self.cmd_channel
        if not getattr(cmd, "proxy_protocol", False):
            self.accept_from(sock, addr)
            return
        if not is_trusted(addr[0], cmd.trusted_proxies):
            # Straight from the client (a kernel DNAT in front of us, say):
            # pyftpdlib's own check compares it with the session's client.
            self.accept_from(sock, addr)
            return
        _HeaderWaiter(sock, addr, self, cmd.proxy_header_timeout)

    def accept_from(self, sock: socket.socket, addr: tuple[str, int]) -> None:
        """pyftpdlib's own acceptance, foreign-address check included, for `addr`."""
        super().handle_accepted(sock, addr)
        self._fail_if_dead_on_arrival()

    def _fail_if_dead_on_arrival(self) -> None:
        """pyftpdlib drops a data connection that was reset before it was set up
        without a word, after closing its listener: the transfer command waiting
        for it would wait until the session's idle timeout. Fail it now."""
        cmd = self.cmd_channel
        if not cmd.connected or cmd.data_channel is not None:
            return
        incoming, outgoing = cmd._in_dtp_queue, cmd._out_dtp_queue
        if incoming is None and outgoing is None:
            return
        cmd._in_dtp_queue = cmd._out_dtp_queue = None
        file = incoming[0] if incoming is not None else outgoing[2]
        if file is not None and not file.closed:
            file.close()
        cmd.respond("425 The data connection was reset before the transfer began.")


class HandingOverActiveDTP(ActiveDTP):  # type: ignore[misc]
    """ActiveDTP that lets go of its socket once it is connected.

    pyftpdlib 2.2 hands the connected socket to the data handler but keeps the
    connector as the session's `_dtp_connector`, not closed. The session's next
    PASV/PORT closes it: it unregisters its descriptor number, by then the
    descriptor of another session's listener or transfer, which then never
    hears from the event loop again (its client times out). Seen in the soak
    (bench/soak.py) at a few sessions in a hundred; upstream, pyftpdlib
    pull request 657."""

    _closed: bool
    _fileno: int | None

    def handle_connect(self) -> None:
        super().handle_connect()
        if self.cmd_channel.data_channel is not None and not self._closed:
            # The data handler owns the socket now: nothing of ours to close.
            self._closed = True
            self._fileno = None
            if self.cmd_channel._dtp_connector is self:
                self.cmd_channel._dtp_connector = None


class ProxyProtocolFTPHandler(FTPHandler):  # type: ignore[misc]
    """FTPHandler that takes the client's address from a PROXY header."""

    proxy_protocol = True
    """Expect PROXY headers (off: behave as a plain FTPHandler)."""
    trusted_proxies: tuple[Network, ...] = trusted_networks(["127.0.0.1/32"])
    """Peers that must send a header; everyone else is refused."""
    proxy_header_timeout = 10.0
    """Seconds a trusted peer has to send its header."""
    passive_dtp = ProxyProtocolPassiveDTP
    active_dtp = HandingOverActiveDTP
    remote_ip: str
    remote_port: int

    def __init__(self, conn: socket.socket, server: Any, ioloop: Any = None) -> None:
        # Set before FTPHandler.__init__, which already logs the connection.
        self._proxy_pending = self.proxy_protocol
        self._deferred_logs: list[tuple[str, Callable[..., None]]] = []
        self.proxy_peer: tuple[str, int] | None = None
        self._proxy_timer: Any = None
        self._quiet = False
        super().__init__(conn, server, ioloop)

    # -- logging waits until we know who the client is

    def log(self, msg: str, logfun: Callable[..., None] = logger.info) -> None:
        if self._proxy_pending:
            self._deferred_logs.append((msg, logfun))
        elif not self._quiet:
            super().log(msg, logfun)

    def _flush_logs(self) -> None:
        deferred, self._deferred_logs = self._deferred_logs, []
        for msg, logfun in deferred:
            super().log(msg, logfun)

    def _refuse(self, reason: str) -> None:
        peer = f"{self.remote_ip}:{self.remote_port}"
        self._proxy_pending = False
        self._deferred_logs.clear()
        logger.warning("%s refused: %s", peer, reason)
        self.close()

    # -- the header, before the greeting

    def handle(self) -> None:
        if not self._proxy_pending:
            super().handle()
            return
        if not is_trusted(self.remote_ip, self.trusted_proxies):
            self._refuse("not a trusted proxy (PROXY protocol required)")
            return
        self._proxy_timer = self.call_later(self.proxy_header_timeout, self._proxy_timeout)
        self.handle_read()  # the header may be here already

    def _proxy_timeout(self) -> None:
        if self._proxy_pending:
            self._refuse(f"no PROXY header within {self.proxy_header_timeout:g}s")

    def handle_read(self) -> None:
        if not self._proxy_pending:
            super().handle_read()
            return
        try:
            header = take_proxy_header(self.socket)
        except ProtocolError as exc:
            self._refuse(f"malformed PROXY header: {exc}")
            return
        except OSError as exc:
            self._refuse(str(exc))
            return
        if header is None:
            self.modify_ioloop_events(0)
            self.call_later(RETRY_DELAY, self._retry_read)
            return
        self._proxy_accepted(header)

    def _retry_read(self) -> None:
        if self._proxy_pending and not self._closed:
            self.modify_ioloop_events(self.ioloop.READ)

    def _proxy_accepted(self, header: ProxyHeader) -> None:
        self._proxy_pending = False
        if self._proxy_timer is not None:
            self._proxy_timer.cancel()
        if header.source is None:
            # The proxy's own connection (a health check): not worth a log line.
            self._quiet = True
            self._deferred_logs.clear()
        peer = (self.remote_ip, self.remote_port)
        if header.source is not None:
            self.proxy_peer = peer
            self.remote_ip, self.remote_port = header.source
            # FTPServer counted the proxy's address; per-IP limits need the client's.
            ip_map = self.server.ip_map
            if peer[0] in ip_map:
                ip_map.remove(peer[0])
                ip_map.append(self.remote_ip)
        self._flush_logs()
        if header.source is not None:
            self.log(f"client address from {_describe(header, peer)}")
        super().handle()


def tls_handler_base() -> type[Any]:
    """pyftpdlib's TLS handler (needs pyOpenSSL), or ImportError saying so."""
    try:
        from pyftpdlib.handlers import TLS_FTPHandler
    except ImportError:  # pragma: no cover - pyOpenSSL is a dependency
        raise ImportError("FTPS needs pyOpenSSL (pip install pyopenssl)") from None
    return cast(type[Any], TLS_FTPHandler)


def reuse_checking_dtp() -> type[Any]:
    """A TLS data-connection handler that refuses a TLS session that is not resumed.

    A client that resumes the control connection's session proves it holds
    that session's secrets: a third party who grabbed the data port cannot.
    (vsftpd's require_ssl_reuse, AWS Transfer's "enforced" reuse.)
    """
    from OpenSSL._util import lib as openssl
    from pyftpdlib.handlers import TLS_DTPHandler

    class ReuseCheckingDTPHandler(TLS_DTPHandler):  # type: ignore[misc]
        def handle_ssl_established(self) -> None:
            if not openssl.SSL_session_reused(self.socket._ssl):
                self.cmd_channel.respond(
                    "522 Data connection refused: it must resume the control connection's"
                    " TLS session."
                )
                self.cmd_channel.log("data connection refused: TLS session not reused")
                self.close()
                return
            super().handle_ssl_established()

    return ReuseCheckingDTPHandler


class ResetFailsUpload:
    """Mixed into `ftplb backend`'s data-connection handlers. pyftpdlib takes a
    reset data connection for its end: an upload cut off by a crashed client
    (or a reset that a balancer passes on) was kept as complete, with a 226. A
    reset during an upload is a failed transfer: 426, logged as incomplete."""

    receive: bool
    transfer_finished: bool
    _closed: bool
    _resp: tuple[str, Callable[[str], None]] | None

    def handle_close(self) -> None:
        # A reset reaches handle_close from inside recv()'s `except` clause.
        if self.receive and not self._closed and _is_reset(sys.exc_info()[1]):
            self.transfer_finished = False
            self._resp = ("426 Connection reset during the upload; transfer aborted.", logger.info)
            self.close()  # type: ignore[attr-defined]
            return
        super().handle_close()  # type: ignore[misc]


def _is_reset(exc: BaseException | None) -> bool:
    if isinstance(exc, ConnectionResetError):
        return True
    # pyOpenSSL reports a reset under TLS as SysCallError(errno, text).
    args: tuple[Any, ...] = getattr(exc, "args", ())
    return type(exc).__name__ == "SysCallError" and bool(args) and args[0] == errno.ECONNRESET


def with_reset_check(dtp: type[Any]) -> type[Any]:
    """`dtp` (a pyftpdlib DTPHandler class) failing uploads that end in a reset."""
    return type(f"ResetChecking{dtp.__name__}", (ResetFailsUpload, dtp), {})
