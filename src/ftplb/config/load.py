"""TOML file -> `Config`: every section read, checked and cross-checked.

Every error names the file, the field (``backends[1].passive_ports``) and the
reason, and unknown keys are rejected so that a typo never passes silently.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any

from ftplb.config.model import (
    BACKEND_TLS,
    BALANCE_POLICIES,
    DATA_PATHS,
    HEALTH_CHECKS,
    MODES,
    PROXY_VERSIONS,
    SOURCE_RULES,
    SOURCES,
    AdminConfig,
    BackendConfig,
    BalancerConfig,
    ClusterConfig,
    Config,
    DiscoveryConfig,
    HealthConfig,
    HostPort,
    LogConfig,
    PortRange,
    TlsConfig,
)
from ftplb.config.values import (
    BACKEND_NAME,
    HOSTNAME,
    Table,
    is_ip,
    parse_host_port,
    parse_ip,
    parse_port_range,
)
from ftplb.errors import ConfigError


def load_config(path: str | Path) -> Config:
    """Read and validate a configuration file; raises ConfigError."""
    file = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(file, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(file, "", "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, "", f"not valid TOML: {exc}") from None
    except RecursionError:
        # tomllib parses nested arrays and inline tables recursively.
        raise ConfigError(file, "", "not valid TOML: nested too deeply") from None
    return parse_config(data, file)


def parse_config(data: dict[str, Any], file: str = "<config>") -> Config:
    top = Table(file, "", data)
    balancer = _parse_balancer(Table(file, "balancer", top.get("balancer", dict, {})))
    health = _parse_health(Table(file, "health", top.get("health", dict, {})))
    tls = _parse_tls(Table(file, "tls", top.get("tls", dict, {})))
    admin = _parse_admin(Table(file, "admin", top.get("admin", dict, {})))
    backends = _parse_backends(file, top.get("backends", list, []), balancer)
    if tls.implicit_listen is not None and balancer.mode == "routed":
        # Implicit FTPS is relayed like the explicit kind, to each backend's own port.
        backends = tuple(
            b
            if b.implicit_address is not None
            else dataclasses.replace(b, implicit_address=HostPort(b.address.host, 990))
            for b in backends
        )
    users = _parse_users(Table(file, "users", top.get("users", dict, {})), backends, balancer)
    log = _parse_log(Table(file, "log", top.get("log", dict, {})))
    public_addresses = _parse_public_addresses(
        Table(file, "public_addresses", top.get("public_addresses", dict, {})), balancer
    )
    discovery = _parse_discovery(Table(file, "discovery", top.get("discovery", dict, {})))
    cluster = _parse_cluster(
        Table(file, "cluster", top.get("cluster", dict, {})), balancer, tls, admin
    )
    top.finish()
    _check_listeners(file, balancer, tls, admin, backends)
    return Config(
        file,
        balancer,
        health,
        tls,
        admin,
        backends,
        log,
        users,
        public_addresses,
        discovery,
        cluster,
    )


def _may_collide(a: str, b: str) -> bool:
    """Whether listeners on hosts `a` and `b` can want the same port: the same
    address, or a wildcard of the same family (asyncio binds IPv6 sockets with
    IPV6_V6ONLY, so [::] and 0.0.0.0 are two separate sockets)."""
    ia, ib = ipaddress.ip_address(a), ipaddress.ip_address(b)
    if ia.version != ib.version:
        return False
    return ia == ib or ia.is_unspecified or ib.is_unspecified


def _check_listeners(
    file: str,
    balancer: BalancerConfig,
    tls: TlsConfig,
    admin: AdminConfig,
    backends: tuple[BackendConfig, ...],
) -> None:
    """Listeners of different sections that would fight over a port."""
    data_host = balancer.data_host
    # Each data range, with how the error names it.
    ranges: list[tuple[str, PortRange]] = []
    if balancer.mode == "inspect":
        ranges.append(("balancer.data_ports", balancer.data_ports))
        listen = balancer.listen
        if _may_collide(listen.host, data_host) and listen.port in balancer.data_ports:
            raise ConfigError(
                file,
                "balancer.data_ports",
                f"{balancer.data_ports} contains the control port {listen.port} (listen {listen})",
            )
    else:
        ranges += [
            (f"backends[{i}].passive_ports", b.passive_ports)
            for i, b in enumerate(backends)
            if b.passive_ports is not None
        ]
    for field_name, at in (
        ("tls.implicit_listen", tls.implicit_listen),
        ("admin.listen", admin.listen),
    ):
        if at is None or not _may_collide(at.host, data_host):
            continue
        for name, ports in ranges:
            if at.port in ports:
                raise ConfigError(
                    file,
                    field_name,
                    f"{at}: port {at.port} is inside {name} ({ports}) on {data_host}",
                )


def _parse_log(t: Table) -> LogConfig:
    d = LogConfig()
    cfg = LogConfig(
        format=t.choice("format", ("text", "json"), d.format),
        file=t.path("file", d.file),
        level=t.choice("level", ("debug", "info", "warning", "error"), d.level),
    )
    if cfg.file:
        # Found here, `check` reports it too, not only `run` when it opens the file.
        directory = os.path.dirname(cfg.file) or "."
        if os.path.isdir(cfg.file):
            raise t.error("file", f"{cfg.file} is a directory")
        if not os.path.isdir(directory):
            raise t.error("file", f"directory {directory} does not exist")
    t.finish()
    return cfg


def _parse_users(
    t: Table, backends: tuple[BackendConfig, ...], balancer: BalancerConfig
) -> dict[str, str]:
    names = {b.name for b in backends}
    users: dict[str, str] = {}
    for user in t.data:
        backend = t.get(user, str, "")
        if backend not in names:
            raise t.error(user, f"{backend!r} is not the name of a backend")
        users[user] = backend
    if users and balancer.mode != "inspect":
        raise ConfigError(t.file, "users", 'needs mode = "inspect" (routed mode never sees USER)')
    return users


def _parse_balancer(t: Table) -> BalancerConfig:
    d = BalancerConfig()
    listen = t.parsed("listen", parse_host_port, d.listen)
    public = t.get("public_address", str, "")
    if public == "auto":
        if t.data.get("mode", d.mode) != "inspect":
            raise t.error(
                "public_address",
                '"auto" needs mode = "inspect" (routed backends announce their own address)',
            )
    elif public:
        public = t.parsed("public_address", parse_ip, "")
    if not public:
        if ipaddress.ip_address(listen.host).is_unspecified:
            # Backends masquerade as this and inspect mode advertises it: a
            # wildcard cannot be either.
            mode = t.data.get("mode", d.mode)
            if mode == "inspect":
                raise t.error("public_address", f"required when listen is {listen}")
        public = listen.host
    cfg = BalancerConfig(
        listen=listen,
        public_address=public,
        mode=t.choice("mode", MODES, d.mode),
        balance=t.choice("balance", BALANCE_POLICIES, d.balance),
        send_proxy=t.choice("send_proxy", PROXY_VERSIONS, d.send_proxy),
        data_ports=t.parsed("data_ports", parse_port_range, d.data_ports),
        data_listen=t.parsed("data_listen", parse_ip, ""),
        data_path=t.choice("data_path", DATA_PATHS, d.data_path),
        max_sessions=t.number("max_sessions", d.max_sessions, low=1, high=1e7, integer=True),
        idle_timeout=t.number("idle_timeout", d.idle_timeout, low=1, high=86400 * 7),
        connect_timeout=t.number("connect_timeout", d.connect_timeout, low=0.1, high=300),
        data_timeout=t.number("data_timeout", d.data_timeout, low=0.1, high=3600),
        login_timeout=t.number("login_timeout", d.login_timeout, low=0.1, high=3600),
        greeting_timeout=t.number("greeting_timeout", d.greeting_timeout, low=0, high=600),
        max_per_ip=t.number("max_per_ip", d.max_per_ip, low=0, high=1e7, integer=True),
        max_login_failures=t.number(
            "max_login_failures", d.max_login_failures, low=0, high=1000, integer=True
        ),
        login_failure_window=t.number(
            "login_failure_window", d.login_failure_window, low=1, high=86400 * 7
        ),
        ban_time=t.number("ban_time", d.ban_time, low=0, high=86400 * 365),
        shutdown_timeout=t.number("shutdown_timeout", d.shutdown_timeout, low=0, high=86400),
        workers=_workers(t),
        backlog=t.number("backlog", d.backlog, low=0, high=1_000_000, integer=True),
        accept_proxy=_networks(t, "accept_proxy"),
        source=t.choice("source", SOURCES, d.source),
        source_rules=t.choice("source_rules", SOURCE_RULES, d.source_rules),
    )
    if cfg.data_listen and _family(cfg.data_listen) != _family(listen.host):
        # Clients reach listen; a data listener of the other family is never
        # reachable for them (inspect mode would quietly never use it).
        raise t.error(
            "data_listen",
            f"{cfg.data_listen} is {_family(cfg.data_listen)} but listen ({listen}) is "
            f"{_family(listen.host)}",
        )
    if cfg.data_path == "kernel" and cfg.workers > 1:
        raise t.error("workers", 'the kernel data path runs one worker; use 1 or "auto"')
    if cfg.mode == "inspect" and len(cfg.data_ports) < cfg.worker_count():
        raise t.error("data_ports", f"fewer ports than workers ({cfg.worker_count()})")
    if cfg.data_path == "kernel" and cfg.mode != "routed":
        raise t.error("data_path", '"kernel" is for mode = "routed"')
    if cfg.balance == "user" and cfg.mode != "inspect":
        raise t.error("balance", '"user" needs mode = "inspect" (routed mode never sees USER)')
    t.finish()
    return cfg


def _networks(t: Table, key: str) -> tuple[str, ...]:
    """A list of networks in CIDR notation (a bare address is its /32 or /128)."""
    items = t.get(key, list, [])
    networks: list[str] = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise t.error(f"{key}[{i}]", f'expected a network such as "10.0.0.0/8", got {item!r}')
        networks.append(_network(t, f"{key}[{i}]", item))
    return tuple(networks)


def _network(t: Table, key: str, text: str) -> str:
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        raise t.error(key, f"{text!r} is not a network (CIDR, such as 10.0.0.0/8)") from None


def _parse_public_addresses(t: Table, balancer: BalancerConfig) -> tuple[tuple[str, str], ...]:
    """Client network -> the address PASV tells it; the most specific first."""
    if t.data and balancer.mode != "inspect":
        raise ConfigError(t.file, "public_addresses", 'needs mode = "inspect"')
    pairs: list[tuple[str, str]] = []
    for key in t.data:
        network = _network(t, key, key)
        value = t.get(key, str, "")
        if value != "auto":
            try:
                value = parse_ip(value)
            except ValueError:
                raise t.error(key, f'{value!r} is not an IP address (or "auto")') from None
        pairs.append((network, value))
    pairs.sort(key=lambda pair: -ipaddress.ip_network(pair[0]).prefixlen)
    return tuple(pairs)


def _parse_cluster(
    t: Table, balancer: BalancerConfig, tls: TlsConfig, admin: AdminConfig
) -> ClusterConfig:
    url = t.get("redis", str, "")
    if url:
        parts = urllib.parse.urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        db = parts.path.strip("/")
        if (
            parts.scheme not in ("redis", "rediss", "unix")
            or (parts.scheme != "unix" and not parts.hostname)
            or port == -1
            or (db and not (db.isascii() and db.isdigit()))
        ):
            raise t.error(
                "redis", f"{url!r} is not a Redis URL (redis://host:port/db, rediss://, unix://)"
            )
    node = t.get("node", str, "") or socket.gethostname()
    if not BACKEND_NAME.fullmatch(node):
        raise t.error("node", f"{node!r}: use letters, digits, '.', '_' and '-' (at most 64)")
    advertise = t.parsed("advertise", parse_host_port, None)
    cfg = ClusterConfig(redis=url, node=node, advertise=advertise)
    t.finish()
    if advertise is None:
        return cfg
    if not url:
        raise t.error("advertise", "needs redis (the other nodes find it there)")
    if balancer.mode != "inspect":
        raise t.error(
            "advertise",
            "only inspect mode forwards data connections between nodes (routed mode "
            "needs none: a data port leads to the same backend on every node)",
        )
    if ipaddress.ip_address(advertise.host).is_unspecified:
        raise t.error(
            "advertise", f"{advertise}: other nodes connect here; name this node's own address"
        )
    last = advertise.port + balancer.worker_count() - 1
    if last > 65535:
        raise t.error(
            "advertise", f"{advertise}: worker w listens on port + w, and {last} is past 65535"
        )
    others = [
        (name, at)
        for name, at in (
            ("the control port", balancer.listen),
            ("tls.implicit_listen", tls.implicit_listen),
            ("admin.listen", admin.listen),
        )
        if at is not None and _may_collide(advertise.host, at.host)
    ]
    for port in range(advertise.port, last + 1):
        if _may_collide(advertise.host, balancer.data_host) and port in balancer.data_ports:
            raise t.error("advertise", f"{advertise}: port {port} is inside balancer.data_ports")
        for name, at in others:
            if port == at.port:
                raise t.error("advertise", f"{advertise}: port {port} is {name} ({at})")
    return cfg


def _parse_discovery(t: Table) -> DiscoveryConfig:
    d = DiscoveryConfig()
    servers = t.get("nameservers", list, [])
    nameservers: list[HostPort] = []
    for i, item in enumerate(servers):
        key = f"nameservers[{i}]"
        if not isinstance(item, str):
            raise t.error(key, f'expected an address such as "10.0.0.10:53", got {item!r}')
        try:
            nameservers.append(HostPort(parse_ip(item), 53))
        except ValueError:
            try:
                nameservers.append(parse_host_port(item))
            except ValueError as exc:
                raise t.error(key, f"{exc} (an IP address, optionally with :port)") from None
    cfg = DiscoveryConfig(
        nameservers=tuple(nameservers),
        interval=t.number("interval", d.interval, low=0.5, high=86400),
    )
    t.finish()
    return cfg


def _family(host: str) -> str:
    return f"IPv{ipaddress.ip_address(host).version}"


def _workers(t: Table) -> int:
    """A number, or "auto" (0): one per core."""
    value = t.get("workers", (int, str), "auto")
    if isinstance(value, str):
        if value != "auto":
            raise t.error("workers", f'expected a number or "auto", got {value!r}')
        return 0
    if not 1 <= value <= 256:
        raise t.error("workers", f"{value} is out of range (1 to 256)")
    return value


def _parse_health(t: Table) -> HealthConfig:
    d = HealthConfig()
    cfg = HealthConfig(
        check=t.choice("check", HEALTH_CHECKS, d.check),
        interval=t.number("interval", d.interval, low=0.05, high=3600),
        timeout=t.number("timeout", d.timeout, low=0.05, high=600),
        rise=t.number("rise", d.rise, low=1, high=100, integer=True),
        fall=t.number("fall", d.fall, low=1, high=100, integer=True),
    )
    t.finish()
    return cfg


def _parse_tls(t: Table) -> TlsConfig:
    d = TlsConfig()
    cfg = TlsConfig(
        cert=t.path("cert", d.cert),
        key=t.path("key", d.key),
        implicit_listen=t.parsed("implicit_listen", parse_host_port, None),
        required=t.get("required", bool, d.required),
        session_reuse=t.get("session_reuse", bool, d.session_reuse),
        backend_tls=t.choice("backend_tls", BACKEND_TLS, d.backend_tls),
        backend_ca=t.path("backend_ca", d.backend_ca),
        backend_verify=t.get("backend_verify", bool, d.backend_verify),
        min_version=t.choice("min_version", ("1.2", "1.3"), d.min_version),
        handshake_timeout=t.number("handshake_timeout", d.handshake_timeout, low=0.1, high=600),
    )
    if cfg.key and not cfg.cert:
        raise t.error("cert", "required when key is set")
    if cfg.required and not cfg.cert:
        raise t.error("cert", "required when required = true")
    if cfg.cert:
        _check_certificate(t, cfg.cert, cfg.key)
    if cfg.backend_ca:
        _check_ca(t, cfg.backend_ca)
    t.finish()
    return cfg


def _check_certificate(t: Table, cert: str, key: str) -> None:
    """Load the pair now, so that a bad file fails `check` and start-up, not a client."""
    import ssl

    for field_name, path in (("cert", cert), ("key", key)):
        if path and not os.access(path, os.R_OK):
            raise t.error(field_name, f"cannot read {path}")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key or None)
    except (ssl.SSLError, OSError) as exc:
        raise t.error("cert", f"{cert}: not a usable certificate and key ({exc})") from None


def _check_ca(t: Table, path: str) -> None:
    import ssl

    if not os.access(path, os.R_OK):
        raise t.error("backend_ca", f"cannot read {path}")
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, OSError) as exc:
        raise t.error("backend_ca", f"{path}: not a usable CA file ({exc})") from None


def _parse_admin(t: Table) -> AdminConfig:
    hosts = []
    for host in t.get("allowed_hosts", list, []):
        if not isinstance(host, str) or not HOSTNAME.fullmatch(host):
            raise t.error("allowed_hosts", f"{host!r} is not a host name")
        hosts.append(host.lower())
    cfg = AdminConfig(
        listen=t.parsed("listen", parse_host_port, None),
        token=t.get("token", str, ""),
        allowed_hosts=tuple(hosts),
        insecure=t.get("insecure", bool, False),
    )
    if cfg.listen is not None and not cfg.token and not cfg.insecure:
        address = ipaddress.ip_address(cfg.listen.host)
        mapped = getattr(address, "ipv4_mapped", None)
        if not (address.is_loopback or (mapped is not None and mapped.is_loopback)):
            # Anyone who reaches it could drain the pool and reload.
            raise t.error(
                "token",
                f"required when listen ({cfg.listen}) is not a loopback address "
                "(or insecure = true for an open admin API)",
            )
    t.finish()
    return cfg


def _parse_backends(
    file: str, items: list[Any], balancer: BalancerConfig
) -> tuple[BackendConfig, ...]:
    if not items:
        raise ConfigError(file, "backends", "at least one [[backends]] entry is required")
    backends: list[BackendConfig] = []
    for i, item in enumerate(items):
        t = Table(file, f"backends[{i}]", item)
        if "name" not in t.data:
            raise t.error("name", "required")
        if "address" not in t.data:
            raise t.error("address", "required")
        name = t.get("name", str, "")
        if not BACKEND_NAME.fullmatch(name):
            raise t.error("name", f"{name!r}: use letters, digits, '.', '_' and '-' (at most 64)")
        b = BackendConfig(
            name=name,
            address=t.parsed("address", lambda s: parse_host_port(s, allow_hostname=True), None),  # type: ignore[arg-type]
            passive_ports=t.parsed("passive_ports", parse_port_range, None),
            send_proxy=t.choice("send_proxy", PROXY_VERSIONS, "off")
            if "send_proxy" in t.data
            else None,
            send_proxy_data=t.get("send_proxy_data", bool, False),
            weight=t.number("weight", 1, low=0, high=256, integer=True),
            implicit_address=t.parsed(
                "implicit_address", lambda s: parse_host_port(s, allow_hostname=True), None
            ),
            discover=t.choice("discover", ("dns",), "dns") if "discover" in t.data else "",
        )
        if b.discover:
            if balancer.mode != "inspect":
                raise t.error(
                    "discover", 'needs mode = "inspect" (routed backends each own a range)'
                )
            if is_ip(b.address.host):
                raise t.error(
                    "discover", f"{b.address.host} is an IP address: discovery needs a host name"
                )
        t.finish()
        for j, other in enumerate(backends):
            if other.name == b.name:
                raise t.error("name", f"{b.name!r} is already the name of backends[{j}]")
            if other.address == b.address:
                raise t.error("address", f"{b.address} is already backends[{j}] ({other.name})")
        if balancer.mode == "routed":
            if b.passive_ports is None:
                raise t.error("passive_ports", 'required in mode = "routed"')
            for j, other in enumerate(backends):
                assert other.passive_ports is not None
                if b.passive_ports.overlaps(other.passive_ports):
                    raise t.error(
                        "passive_ports",
                        f"{b.passive_ports} overlaps backends[{j}] ({other.passive_ports})",
                    )
            if balancer.listen.port in b.passive_ports:
                raise t.error(
                    "passive_ports",
                    f"{b.passive_ports} contains the control port {balancer.listen.port}",
                )
        backends.append(b)
    return tuple(backends)
