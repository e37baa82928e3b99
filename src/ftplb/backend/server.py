"""`ftplb backend`: a ready pyftpdlib server for the pool."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from dataclasses import dataclass
from types import FrameType
from typing import Any

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.servers import FTPServer

from ftplb.backend.handler import (
    ProxyProtocolFTPHandler,
    reuse_checking_dtp,
    tls_handler_base,
    trusted_networks,
    with_reset_check,
)
from ftplb.config import HostPort, PortRange, parse_host_port, parse_ip, parse_port_range

# Full rights: list, read, write, delete, rename, mkdir, chmod, mtime.
FULL_PERMISSIONS = "elradfmwMT"


@dataclass(frozen=True)
class BackendOptions:
    listen: HostPort
    root: str
    users: tuple[tuple[str, str], ...]
    passive_ports: PortRange | None = None
    masquerade: str = ""
    proxy_protocol: bool = False
    trusted_proxies: tuple[str, ...] = ("127.0.0.1/32",)
    banner: str = "ftplb backend ready."
    login_delay: float = 3.0
    tls_cert: str = ""
    tls_key: str = ""
    tls_required: bool = False
    tls_session_reuse: bool = True


def make_server(opts: BackendOptions) -> FTPServer:
    authorizer = DummyAuthorizer()
    for name, password in opts.users:
        authorizer.add_user(name, password, opts.root, perm=FULL_PERMISSIONS)
    attrs: dict[str, Any] = {
        "authorizer": authorizer,
        "banner": opts.banner,
        "proxy_protocol": opts.proxy_protocol,
        "trusted_proxies": trusted_networks(opts.trusted_proxies),
        "passive_ports": list(opts.passive_ports) if opts.passive_ports else None,
        "masquerade_address": opts.masquerade or None,
        "auth_failed_timeout": opts.login_delay,
    }
    bases: tuple[type[Any], ...] = (ProxyProtocolFTPHandler,)
    if opts.tls_cert:
        # PROXY header first (plain text), then AUTH TLS as usual.
        bases = (ProxyProtocolFTPHandler, tls_handler_base())
        attrs.update(
            certfile=opts.tls_cert,
            keyfile=opts.tls_key or opts.tls_cert,
            tls_control_required=opts.tls_required,
            tls_data_required=opts.tls_required,
            ssl_context=None,
        )
        if opts.tls_session_reuse:
            attrs["dtp_handler"] = reuse_checking_dtp()
    handler: Any = type("BackendHandler", bases, attrs)
    handler.dtp_handler = with_reset_check(handler.dtp_handler)
    if opts.tls_cert:
        context = handler.get_ssl_context()
        # Resumption needs a session id context (TLS 1.2 cache; 1.3 tickets work anyway).
        context.set_session_id(b"ftplb-backend")
    server = FTPServer((opts.listen.host, opts.listen.port), handler)
    server.max_cons = 2048
    return server


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", required=True, metavar="HOST:PORT", help="control listener")
    p.add_argument("--root", required=True, metavar="DIR", help="directory served to every user")
    p.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="NAME:PASSWORD",
        help="a login (repeatable)",
    )
    p.add_argument("--passive-ports", metavar="A-B", help="passive port range")
    p.add_argument("--masquerade", metavar="ADDR", help="address advertised in PASV replies")
    p.add_argument(
        "--proxy-protocol",
        action="store_true",
        help="require a PROXY header (v1 or v2) from trusted proxies; refuse everyone else",
    )
    p.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="CIDR",
        help="a proxy allowed to send PROXY headers (repeatable; default 127.0.0.1)",
    )
    p.add_argument("--tls-cert", metavar="FILE", help="PEM certificate (FTPS)")
    p.add_argument("--tls-key", metavar="FILE", help="PEM key (FTPS)")
    p.add_argument("--tls-required", action="store_true", help="refuse plain-text logins and data")
    p.add_argument(
        "--no-tls-session-reuse",
        action="store_true",
        help="accept TLS data connections that do not resume the control session",
    )
    p.add_argument("--banner", default="ftplb backend ready.", help="text of the 220 greeting")
    p.add_argument(
        "--login-delay",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="pause before answering a failed login (slows password guessing; default 3)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


class UsageError(Exception):
    pass


def options_from_args(args: argparse.Namespace) -> BackendOptions:
    try:
        listen = parse_host_port(args.listen)
    except ValueError as exc:
        raise UsageError(f"--listen: {exc}") from None
    if not os.path.isdir(args.root):
        raise UsageError(f"--root: {args.root} is not a directory")
    users = []
    for spec in args.user:
        name, sep, password = spec.partition(":")
        if not sep or not name:
            raise UsageError(f"--user: {spec!r} is not NAME:PASSWORD")
        users.append((name, password))
    if not users:
        raise UsageError("--user: at least one NAME:PASSWORD is required")
    try:
        ports = parse_port_range(args.passive_ports) if args.passive_ports else None
    except ValueError as exc:
        raise UsageError(f"--passive-ports: {exc}") from None
    try:
        masquerade = parse_ip(args.masquerade) if args.masquerade else ""
    except ValueError:
        raise UsageError(f"--masquerade: {args.masquerade!r} is not an IP address") from None
    trusted = tuple(args.trusted_proxy) or ("127.0.0.1/32",)
    try:
        trusted_networks(trusted)
    except ValueError as exc:
        raise UsageError(f"--trusted-proxy: {exc}") from None
    if (args.tls_key or args.tls_required or args.no_tls_session_reuse) and not args.tls_cert:
        raise UsageError("--tls-key/--tls-required/--no-tls-session-reuse need --tls-cert")
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path and not os.access(path, os.R_OK):
            raise UsageError(f"{flag}: cannot read {path}")
    return BackendOptions(
        listen=listen,
        root=args.root,
        users=tuple(users),
        passive_ports=ports,
        masquerade=masquerade,
        proxy_protocol=args.proxy_protocol,
        trusted_proxies=trusted,
        banner=args.banner,
        login_delay=args.login_delay,
        tls_cert=args.tls_cert or "",
        tls_key=args.tls_key or "",
        tls_required=args.tls_required,
        tls_session_reuse=not args.no_tls_session_reuse,
    )


def run(args: argparse.Namespace) -> int:
    try:
        opts = options_from_args(args)
    except UsageError as exc:
        print(f"ftplb backend: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s backend %(message)s",
        stream=sys.stderr,
    )
    try:
        server = make_server(opts)
    except OSError as exc:
        print(f"ftplb backend: --listen {opts.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 2

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    logging.getLogger("pyftpdlib").info(
        "serving %s on %s%s",
        opts.root,
        opts.listen,
        " (PROXY protocol required)" if opts.proxy_protocol else "",
    )
    sys.stderr.flush()
    server.serve_forever(handle_exit=True)
    return 0
