"""TLS in one place: the contexts, resuming a session on a data connection, and
handshakes that report failure as a value.

The balancer is the TLS server of its clients (one server context: its
session cache is what data connections resume) and, with `backend_tls`, the
TLS client of its backends (one client context: the control connection's
session is resumed on every data connection, as vsftpd's require_ssl_reuse
insists). asyncio's start_tls and create_connection cannot pass a session, so
`ResumingContext` stands in for the context and adds it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from asyncio.sslproto import SSLProtocol
from dataclasses import dataclass
from typing import cast

from ftplb.config import Config

log = logging.getLogger("ftplb.session")

TLS_ERRORS = (OSError, ssl.SSLError, TimeoutError, ConnectionError)


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


@dataclass(frozen=True)
class BackendTLS:
    """TLS toward the backend on a data connection (we are the TLS client)."""

    context: ssl.SSLContext
    control: ssl.SSLObject
    """The backend control connection: its session is resumed. Read at connect
    time, after the TLS 1.3 tickets have arrived."""
    hostname: str
    handshake_timeout: float


class ResumingContext:
    """What asyncio's SSLProtocol needs of a context (`wrap_bio`), with a session.
    SSLObjects must come from the context that made the session, so the real
    context makes them."""

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


def tls_protocol(
    loop: asyncio.AbstractEventLoop,
    app: asyncio.Protocol,
    context: ssl.SSLContext | ResumingContext,
    timeout: float,
    *,
    server_side: bool = False,
    hostname: str | None = None,
) -> tuple[SSLProtocol, asyncio.Future[None]]:
    """asyncio's own TLS layer around `app`, and the future of its handshake.
    Put in place at once (in connection_made): uvloop may hand over the first
    bytes even on a paused transport, so a start_tls a turn later could miss them."""
    handshake: asyncio.Future[None] = loop.create_future()
    protocol = SSLProtocol(
        loop,
        app,
        cast(ssl.SSLContext, context),
        handshake,
        server_side=server_side,
        server_hostname=hostname,
        ssl_handshake_timeout=timeout,  # type: ignore[arg-type]
    )
    return protocol, handshake


async def handshake_failure(
    transport: asyncio.BaseTransport, handshake: asyncio.Future[None]
) -> BaseException | None:
    """Await `handshake` (of a `tls_protocol` on the raw `transport`): None when it
    succeeded, else the error, with the transport aborted. Cancellation aborts
    it too and is passed on."""
    try:
        await handshake
    except BaseException as exc:
        cast(asyncio.Transport, transport).abort()
        if not isinstance(exc, TLS_ERRORS):
            raise
        return exc
    return None


async def upgrade(
    loop: asyncio.AbstractEventLoop,
    transport: asyncio.Transport,
    app: asyncio.Protocol,
    context: ssl.SSLContext,
    timeout: float,
    *,
    server_side: bool = False,
    hostname: str | None = None,
) -> asyncio.Transport | str:
    """A control connection turned into TLS (start_tls), or why it failed."""
    try:
        secured = await loop.start_tls(
            transport,
            app,
            context,
            server_side=server_side,
            server_hostname=hostname,
            ssl_handshake_timeout=timeout,
        )
    except TLS_ERRORS as exc:
        return str(exc) or type(exc).__name__
    if secured is None:
        return "the connection closed during the handshake"
    return secured
