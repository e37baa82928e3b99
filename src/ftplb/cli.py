"""ftplb's command line: main(argv) -> exit code."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import sys

from ftplb import __version__, ephemeral
from ftplb.config import Config, load_config
from ftplb.errors import ConfigError
from ftplb.logs import setup_logging
from ftplb.render import KINDS, RenderError, RenderOptions, render

EXIT_CONFIG = 2


def _load(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    from ftplb.app import install_uvloop, raise_file_limit, serve

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    try:
        setup_logging(args.verbose, config.log.format, config.log.file, config.log.level)
    except OSError as exc:
        print(f"{config.path}: log.file: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CONFIG
    log = logging.getLogger("ftplb")
    limit = raise_file_limit()
    uv = install_uvloop()
    log.info("ftplb %s, %s, file limit %d", __version__, "uvloop" if uv else "asyncio", limit)
    for line in ephemeral.warnings(config):
        log.warning("%s", line.removeprefix("warning: "))
    installed = False
    if config.balancer.source == "client":
        from ftplb.io import transparent

        install = config.balancer.source_rules == "ftplb"
        lacking = transparent.missing(install)
        if lacking:
            for line in lacking:
                log.error('balancer.source = "client" needs %s', line)
            return EXIT_CONFIG
        if install:
            try:
                transparent.install()
            except transparent.TransparentError as exc:
                log.error('balancer.source = "client": %s', exc)
                return EXIT_CONFIG
            installed = True
    try:
        if config.balancer.worker_count() > 1:
            from ftplb import workers

            return workers.run(config, serve)
        return asyncio.run(serve(config))
    finally:
        if installed:
            transparent.remove()


def _told(config: Config) -> str:
    """What PASV carries, in words."""
    public = config.balancer.public_address
    told = "the address they reached" if public == "auto" else public
    for network, address in config.public_addresses:
        told += f"; {network}: " + ("the address reached" if address == "auto" else address)
    return told


def plan(config: Config) -> list[str]:
    """`ftplb check`'s description of what the balancer will do."""
    b = config.balancer
    h = config.health
    lines = [
        f"{config.path}: OK",
        f"mode {b.mode}, balance {b.balance}, send_proxy {b.send_proxy}",
        f"control: listen on {b.listen}; clients are told {_told(config)}",
        *(
            [f"PROXY headers required from {', '.join(b.accept_proxy)} (control and data)"]
            if b.accept_proxy
            else []
        ),
        *(
            [
                "source: transparent: backend connections (control and data) leave from the"
                " client's own address; "
                + (
                    "ftplb installs an nftables table 'inet ftplb_transparent' and routing"
                    " rule 18004 (removed when it stops)"
                    if b.source_rules == "ftplb"
                    else "the kernel's part is yours (`ftplb render transparent`)"
                )
                + "; the backends must route the clients' networks through this host"
            ]
            if b.source == "client"
            else []
        ),
        *(
            [
                f"cluster: node {config.cluster.node}, shared state in {config.cluster.redis}"
                " (bans, failed logins, operator changes, session counts)"
                + _forwarding_plan(config)
            ]
            if config.cluster.redis
            else []
        ),
        f"limits: max_sessions {b.max_sessions}, idle_timeout {b.idle_timeout:g}s",
        _workers_plan(config),
        f"health: {h.check} check every {h.interval:g}s, timeout {h.timeout:g}s, "
        f"rise {h.rise}, fall {h.fall}",
        "backends:",
    ]
    width = max(len(x.name) for x in config.backends)
    for be in config.backends:
        proxy = config.proxy_version(be)
        line = f"  {be.name:<{width}}  {be.address}  weight {be.weight}  proxy {proxy}"
        if b.mode == "routed" and be.passive_ports is not None:
            line += (
                f"\n  {'':<{width}}  data {b.data_host}:{be.passive_ports}"
                f" ({len(be.passive_ports)} ports) -> {be.address.host}, same port"
            )
            if be.send_proxy_data:
                line += f", PROXY {proxy if proxy != 'off' else 'v1'} on data"
        if be.discover:
            servers = ", ".join(map(str, config.discovery.nameservers)) or "the system resolver"
            line += (
                f"\n  {'':<{width}}  every A/AAAA record of {be.address.host} is a backend "
                f"({be.name}-ADDRESS), asked of {servers} every {config.discovery.interval:g}s"
            )
        lines.append(line)
    if b.mode == "routed" and b.data_path == "kernel":
        lines.append(
            "data path: kernel: an nftables table 'inet ftplb' DNATs the passive ranges to "
            f"their backends and SNATs their active-mode connections to {b.public_address}. "
            "Needs CAP_NET_ADMIN and this host as the backends' gateway (net.ipv4.ip_forward=1)"
        )
    elif b.mode == "routed":
        total = sum(len(x.passive_ports or ()) for x in config.backends)
        lines.append(f"data listeners: {total} ports on {b.data_host}")
        lines.append(
            f"backends must advertise {b.public_address} and their own range in PASV replies "
            "(ProFTPD MasqueradeAddress+PassivePorts, vsftpd pasv_address+pasv_min_port/"
            "pasv_max_port, pure-ftpd -P/-p, ftplb backend --masquerade/--passive-ports)"
        )
        if ipaddress.ip_address(b.data_host).is_unspecified:
            lines.append(
                f"warning: data listeners on {b.data_host} collide with a backend's passive "
                "sockets on the same host; set balancer.data_listen to a specific address"
            )
    else:
        lines.append(
            f"data: the balancer's own passive ports {b.data_ports} (on the address each client "
            f"reached, or data_listen); active-mode connections leave from there too"
        )
        lines.append(
            f"logins: {b.max_login_failures} failures in {b.login_failure_window:g}s ban an "
            f"address for {b.ban_time:g}s; login_timeout {b.login_timeout:g}s; "
            f"max_per_ip {b.max_per_ip or 'unlimited'}"
        )
        for user, backend in sorted(config.users.items()):
            lines.append(f"user {user} -> {backend}")
    lines.extend(ephemeral.warnings(config))
    lines.extend(_tls_plan(config))
    if config.admin.listen is not None:
        token = "token required for changes" if config.admin.token else "no token: changes open"
        lines.append(f"admin: http://{config.admin.listen}/ ({token})")
    return lines


def _forwarding_plan(config: Config) -> str:
    advertise = config.cluster.advertise
    if advertise is None:
        return ""
    last = advertise.port + config.balancer.worker_count() - 1
    ports = f"port {advertise.port}" if last == advertise.port else f"ports {advertise.port}-{last}"
    return (
        f"; every data port open on {config.balancer.data_host}, data connections for other"
        f" nodes' sessions forwarded to them, theirs taken on {advertise.host} {ports}"
    )


def _workers_plan(config: Config) -> str:
    b = config.balancer
    count = b.worker_count()
    how = "auto: one per core" if not b.workers else "set"
    if count == 1:
        return f"workers: 1 ({how}; one process)"
    line = f"workers: {count} ({how}), sharing the listeners (SO_REUSEPORT)"
    if b.mode == "inspect":
        slices = ", ".join(str(b.data_ports.slice(i, count)) for i in range(count))
        line += f"; data ports per worker {slices}"
    return line


def _tls_plan(config: Config) -> list[str]:
    t = config.tls
    b = config.balancer
    if b.mode == "routed":
        ignored = []
        if t.backend_tls != "off":
            ignored = [
                "warning: tls.backend_tls is for inspect mode; routed mode passes TLS through"
            ]
        if t.implicit_listen is None:
            return [
                "tls: passed through untouched (explicit AUTH TLS on the control port)",
                *ignored,
            ]
        targets = ", ".join(f"{x.name} {x.implicit_address}" for x in config.backends)
        return [f"tls: passed through; implicit FTPS on {t.implicit_listen} -> {targets}", *ignored]
    if not t.cert:
        return [
            "tls: off (AUTH TLS gets 502; set [tls] cert and key to terminate FTPS here)",
            *_backend_tls_plan(config),
        ]
    lines = [
        f"tls: terminated here with {t.cert}, TLS {t.min_version}+, handshake timeout "
        f"{t.handshake_timeout:g}s, {'required' if t.required else 'optional'}, data session "
        f"reuse {'required' if t.session_reuse else 'not required'}"
    ]
    if t.implicit_listen is not None:
        lines.append(f"tls: implicit FTPS on {t.implicit_listen}")
    return lines + _backend_tls_plan(config)


def _backend_tls_plan(config: Config) -> list[str]:
    t = config.tls
    if t.backend_tls == "off":
        return ["tls to backends: off (plain FTP)"]
    when = "always" if t.backend_tls == "on" else "when the client uses TLS"
    if not t.backend_verify:
        trust = "certificates NOT verified (backend_verify = false)"
    else:
        trust = f"certificates verified against {t.backend_ca or 'the system CAs'}"
    return [f"tls to backends: {when}, AUTH TLS + PROT P, data sessions resumed; {trust}"]


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    print("\n".join(plan(config)))
    if config.balancer.source == "client":
        from ftplb.io import transparent

        lacking = transparent.missing(config.balancer.source_rules == "ftplb")
        for line in lacking:
            print(f'{config.path}: balancer.source = "client" needs {line}', file=sys.stderr)
        if lacking:
            return EXIT_CONFIG
    return 0


def cmd_backend(args: argparse.Namespace) -> int:
    from ftplb.backend.server import run

    return run(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from ftplb.demo import run_demo

    return run_demo(verbose=args.verbose)


def cmd_render(args: argparse.Namespace) -> int:

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    options = RenderOptions(
        public_if=args.public_if or "",
        private_if=args.private_if or "",
        backend=args.backend or "",
        root=args.root,
        control_only=args.control_only,
        no_dnat=args.no_dnat,
        image=args.image or "",
        replicas=args.replicas,
    )
    try:
        sys.stdout.write(render(args.kind, config, options))
    except RenderError as exc:
        print(f"{config.path}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from ftplb.admin.client import AdminClient, AdminError, print_status

    try:
        client = AdminClient.from_args(args)
        print_status(client.status(), client.backends())
    except AdminError as exc:
        print(f"ftplb {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    from ftplb.admin.client import AdminClient, AdminError, run_top

    try:
        client = AdminClient.from_args(args)
    except AdminError as exc:
        print(f"ftplb top: {exc}", file=sys.stderr)
        return 1
    run_top(client, args.interval)
    return 0


def cmd_backend_action(args: argparse.Namespace) -> int:
    from ftplb.admin.client import AdminClient, AdminError

    try:
        client = AdminClient.from_args(args)
        b = client.action(args.name, args.command)
    except AdminError as exc:
        print(f"ftplb {args.command}: {exc}", file=sys.stderr)
        return 1
    print(f"{b['name']}: {b['state']} ({b['sessions']['current']} sessions open)")
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number from 1 to 100")
    return value


def build_parser() -> argparse.ArgumentParser:
    from ftplb.backend.server import add_arguments as backend_arguments

    parser = argparse.ArgumentParser(prog="ftplb", description="An FTP load balancer.")
    parser.add_argument("--version", action="version", version=f"ftplb {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the balancer in the foreground")
    p.add_argument("-c", "--config", required=True, metavar="FILE")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="validate a configuration and print the plan")
    p.add_argument("-c", "--config", required=True, metavar="FILE")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("backend", help="a ready FTP server for the pool (pyftpdlib)")
    backend_arguments(p)
    p.set_defaults(func=cmd_backend)

    p = sub.add_parser("demo", help="three backends and a balancer on loopback")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("render", help="the cluster as configuration for other tools")
    p.add_argument("kind", choices=KINDS)
    p.add_argument("-c", "--config", required=True, metavar="FILE")
    p.add_argument("--public-if", metavar="IF", help="interface clients arrive on (NAT rules)")
    p.add_argument("--private-if", metavar="IF", help="interface toward the backends (NAT rules)")
    p.add_argument("--backend", metavar="NAME", help="per-backend kinds: only this backend")
    p.add_argument("--root", default="/srv/ftp", help="ftplb-backend: directory to serve")
    p.add_argument(
        "--control-only",
        action="store_true",
        help="haproxy: no passive-range frontends (the kernel forwards data)",
    )
    p.add_argument(
        "--no-dnat",
        action="store_true",
        help="iptables/nftables: SNAT and forward policy only (a user-space data path)",
    )
    p.add_argument("--image", help="kubernetes: the container image (default: ftplb:VERSION)")
    p.add_argument(
        "--replicas", type=_positive, default=1, help="kubernetes: Deployment replicas (default 1)"
    )
    p.set_defaults(func=cmd_render)

    def admin_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--admin",
            metavar="URL",
            help="the admin API (default: [admin] listen from -c, else http://127.0.0.1:9021)",
        )
        p.add_argument("-c", "--config", metavar="FILE", help="read [admin] listen and token here")
        p.add_argument(
            "--token", help="bearer token (default: [admin] token from -c, or $FTPLB_TOKEN)"
        )

    p = sub.add_parser("status", help="the pool as the running balancer sees it")
    admin_options(p)
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("top", help="who is connected, who is banned, what changed; refreshing")
    admin_options(p)
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    p.set_defaults(func=cmd_top)
    for action, text in (
        ("drain", "no new sessions for a backend; current ones finish"),
        ("enable", "undo drain/disable"),
        ("disable", "maintenance: no new sessions, shown as MAINT"),
    ):
        p = sub.add_parser(action, help=text)
        p.add_argument("name", help="backend name")
        admin_options(p)
        p.set_defaults(func=cmd_backend_action)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return code
