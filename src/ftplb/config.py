"""TOML configuration -> frozen, validated objects.

Every error names the file, the field (``backends[1].passive_ports``) and the
reason, and unknown keys are rejected so that a typo never passes silently.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ftplb.errors import ConfigError

T = TypeVar("T")

MODES = ("routed", "inspect")
BALANCE_POLICIES = ("leastconn", "roundrobin", "source", "random", "user")
PROXY_VERSIONS = ("off", "v1", "v2")
HEALTH_CHECKS = ("tcp", "ftp")
BACKEND_TLS = ("off", "on", "match")
SOMAXCONN = "/proc/sys/net/core/somaxconn"


@dataclass(frozen=True, order=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, order=True)
class PortRange:
    first: int
    last: int

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"

    def __len__(self) -> int:
        return self.last - self.first + 1

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.first, self.last + 1))

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last

    def overlaps(self, other: PortRange) -> bool:
        return self.first <= other.last and other.first <= self.last

    def slice(self, index: int, count: int) -> PortRange:
        """Part `index` of `count` near-equal consecutive parts (workers' shares)."""
        size = len(self)
        start = self.first + size * index // count
        end = self.first + size * (index + 1) // count - 1
        return PortRange(start, end)


@dataclass(frozen=True)
class BalancerConfig:
    listen: HostPort = HostPort("0.0.0.0", 21)
    """Control-channel listener."""
    public_address: str = ""
    """The address clients reach; what PASV replies carry. Defaults to the host of `listen`."""
    mode: str = "routed"
    """"routed" (backends own passive port ranges) or "inspect" (FTP-aware proxy)."""
    balance: str = "leastconn"
    """Backend choice for a new session: leastconn, roundrobin, source, random, user."""
    send_proxy: str = "off"
    """PROXY protocol header on backend control connections: off, v1, v2."""
    data_ports: PortRange = PortRange(40000, 40999)
    """Inspect mode: the balancer's own passive ports."""
    data_listen: str = ""
    """Address the data listeners bind to; defaults to the host of `listen`."""
    data_path: str = "user"
    """Routed mode: "user" (ftplb relays passive data) or "kernel" (an nftables
    table of ftplb's own DNATs the passive ranges; needs CAP_NET_ADMIN and the
    balancer as the backends' gateway)."""
    max_sessions: int = 10000
    """Concurrent control sessions; clients beyond it get 421."""
    idle_timeout: float = 600.0
    """Seconds without traffic on a control connection (and no data connection) before closing."""
    connect_timeout: float = 5.0
    """Seconds to wait for a backend's TCP connect."""
    data_timeout: float = 30.0
    """Inspect mode: seconds a passive listener waits for the client's data connection."""
    login_timeout: float = 60.0
    """Inspect mode: seconds a client has to log in."""
    greeting_timeout: float = 0.0
    """Inspect mode: seconds a backend that accepted the connection has to greet
    with 220 before the session goes to another backend; 0: health.timeout."""
    max_per_ip: int = 0
    """Inspect mode: concurrent sessions from one client address (0: no limit)."""
    max_login_failures: int = 5
    """Inspect mode: failed logins from one address within `login_failure_window` before a ban."""
    login_failure_window: float = 300.0
    """Inspect mode: seconds over which failed logins are counted."""
    ban_time: float = 600.0
    """Inspect mode: seconds a banned address is refused (421)."""
    shutdown_timeout: float = 30.0
    """On SIGTERM: seconds sessions get to finish before they are closed."""
    workers: int = 0
    """Worker processes sharing the listeners (SO_REUSEPORT); 0 ("auto" in the
    file, the default): one per core. The kernel data path runs one."""
    backlog: int = 0
    """Listen backlog of the control and data listeners; 0: the kernel's net.core.somaxconn."""

    def worker_count(self) -> int:
        if self.workers:
            return self.workers
        if self.data_path == "kernel":
            return 1  # one nftables table, one owner; the control path is light
        return max(1, os.cpu_count() or 1)

    def listen_backlog(self) -> int:
        """`backlog`, or the kernel's ceiling (listen() silently caps at it anyway)."""
        if self.backlog:
            return self.backlog
        try:
            with open(SOMAXCONN, encoding="ascii") as f:
                return max(1, int(f.read()))
        except (OSError, ValueError):
            return 4096  # Linux's default since 5.4

    @property
    def data_host(self) -> str:
        return self.data_listen or self.listen.host


@dataclass(frozen=True)
class HealthConfig:
    check: str = "ftp"
    """"tcp" (connect) or "ftp" (a 220 greeting within `timeout`)."""
    interval: float = 2.0
    """Seconds between checks of one backend."""
    timeout: float = 1.0
    """Seconds one check may take."""
    rise: int = 2
    """Consecutive successes that bring a down backend up."""
    fall: int = 2
    """Consecutive failures that take an up backend down."""


@dataclass(frozen=True)
class TlsConfig:
    cert: str = ""
    """PEM certificate (inspect mode: TLS terminated by the balancer)."""
    key: str = ""
    """PEM private key."""
    implicit_listen: HostPort | None = None
    """Optional implicit-TLS listener."""
    required: bool = False
    """Refuse USER before AUTH TLS."""
    session_reuse: bool = True
    """Data connections must resume the control connection's TLS session."""
    backend_tls: str = "off"
    """TLS toward backends: off, on, match."""
    backend_ca: str = ""
    """CA file to verify backends."""
    backend_verify: bool = True
    """Verify backend certificates."""
    min_version: str = "1.2"
    """Lowest TLS version accepted from clients: "1.2" or "1.3"."""
    handshake_timeout: float = 10.0
    """Seconds a client has to complete a TLS handshake."""


@dataclass(frozen=True)
class AdminConfig:
    listen: HostPort | None = None
    """HTTP admin listener (off when unset)."""
    token: str = ""
    """Bearer token for state-changing calls."""
    allowed_hosts: tuple[str, ...] = ()
    """Host names (lower case) the API answers to besides IP literals and localhost."""
    insecure: bool = False
    """An admin API off loopback without a token is intended."""


@dataclass(frozen=True)
class LogConfig:
    format: str = "text"
    """"text" or "json" (one object per line)."""
    file: str = ""
    """Append to this file instead of stderr."""
    level: str = "info"
    """debug, info, warning, error."""


@dataclass(frozen=True)
class BackendConfig:
    name: str
    """Unique name, used in logs and the admin API."""
    address: HostPort
    """The backend's control-channel address."""
    passive_ports: PortRange | None = None
    """Routed mode: the passive range this backend owns and advertises."""
    send_proxy: str | None = None
    """Overrides balancer.send_proxy for this backend."""
    send_proxy_data: bool = False
    """Routed mode: PROXY header on forwarded data connections."""
    weight: int = 1
    """Relative share of new sessions (0: none)."""
    implicit_address: HostPort | None = None
    """Routed mode with [tls] implicit_listen: the backend's implicit-FTPS
    address (default: its host, port 990)."""


@dataclass(frozen=True)
class Config:
    path: str
    balancer: BalancerConfig
    health: HealthConfig
    tls: TlsConfig
    admin: AdminConfig
    backends: tuple[BackendConfig, ...] = field(default_factory=tuple)
    log: LogConfig = field(default_factory=LogConfig)
    users: dict[str, str] = field(default_factory=dict)
    """Inspect mode: user name -> backend name, pinned before any policy."""

    def greeting_timeout(self) -> float:
        """How long a backend may take to greet (a frozen one is given up after it)."""
        return self.balancer.greeting_timeout or self.health.timeout

    def proxy_version(self, backend: BackendConfig) -> str:
        """The PROXY protocol version sent to `backend` on its control connection."""
        return backend.send_proxy if backend.send_proxy is not None else self.balancer.send_proxy

    def data_proxy_version(self, backend: BackendConfig) -> str:
        """The PROXY version on `backend`'s data connections: "off" without
        send_proxy_data, else the control connection's, or v1 when that is off."""
        if not backend.send_proxy_data:
            return "off"
        version = self.proxy_version(backend)
        return version if version != "off" else "v1"


# --- parsing helpers ---------------------------------------------------------

# Used with fullmatch: `$` would also match before a final newline. [0-9], not
# \d: \d (and str.isdigit) take any Unicode digit, and int() reads them.
_PORT = re.compile(r"[0-9]{1,5}")
_PORT_RANGE = re.compile(r"[ \t]*([0-9]{1,5})[ \t]*(?:-[ \t]*([0-9]{1,5})[ \t]*)?")
_HOSTNAME = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9][A-Za-z0-9-]{0,62}(\.[A-Za-z0-9-]{1,63})*")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SCOPE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def parse_ip(text: str) -> str:
    """A literal IPv4 or IPv6 address, normalised; ValueError otherwise."""
    address = ipaddress.ip_address(text.strip("[]"))
    # ipaddress takes any text after '%' as an IPv6 scope id (a newline too).
    scope = getattr(address, "scope_id", None)
    if scope is not None and not _SCOPE_ID.fullmatch(scope):
        raise ValueError(f"{text!r} does not appear to be an IPv4 or IPv6 address")
    return str(address)


def parse_port_range(text: str) -> PortRange:
    """'A-B' or 'A' with 1 <= A <= B <= 65535; ValueError otherwise."""
    m = _PORT_RANGE.fullmatch(text)
    if not m:
        raise ValueError(f"{text!r} is not a port range like 30000-30099")
    first = int(m.group(1))
    last = int(m.group(2) or first)
    if not 1 <= first <= 65535 or not 1 <= last <= 65535:
        raise ValueError(f"{text}: ports must be between 1 and 65535")
    if first > last:
        raise ValueError(f"{text}: the first port is above the last")
    return PortRange(first, last)


def parse_host_port(text: str, *, allow_hostname: bool = False) -> HostPort:
    """'1.2.3.4:21', '[::1]:21' (or 'name:21' when allowed); ValueError otherwise."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r} is not [IPv6]:PORT")
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"{text!r} is not HOST:PORT (write IPv6 as [addr]:port)")
    if not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: port must be between 1 and 65535")
    try:
        host = parse_ip(host)
    except ValueError:
        if not (allow_hostname and _HOSTNAME.fullmatch(host)):
            kind = "an IP address or host name" if allow_hostname else "an IP address"
            raise ValueError(f"{text!r}: {host!r} is not {kind}") from None
    return HostPort(host, int(port))


class _Table:
    """One TOML table being read: tracks the keys used to reject the rest."""

    def __init__(self, file: str, prefix: str, data: object) -> None:
        self.file = file
        self.prefix = prefix
        if not isinstance(data, dict):
            raise ConfigError(file, prefix, "must be a table")
        self.data: dict[str, Any] = data
        self.seen: set[str] = set()

    def error(self, key: str, reason: str) -> ConfigError:
        return ConfigError(self.file, f"{self.prefix}.{key}" if self.prefix else key, reason)

    def get(self, key: str, kind: type[T] | tuple[type, ...], default: T) -> T:
        self.seen.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python; TOML keeps them apart, so do we.
        if isinstance(value, bool) and bool not in kinds:
            raise self.error(key, f"expected {_kind_name(kinds)}, got {value!r}")
        if not isinstance(value, kinds):
            raise self.error(key, f"expected {_kind_name(kinds)}, got {value!r}")
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        return value  # type: ignore[no-any-return]

    def parsed(self, key: str, parse: Callable[[str], T], default: T) -> T:
        text = self.get(key, str, None)
        if text is None:
            return default
        try:
            return parse(text)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def path(self, key: str, default: str) -> str:
        """A file name; a NUL in it would make os.access() and open() raise ValueError."""
        value = self.get(key, str, default)
        if "\0" in value:
            raise self.error(key, f"{value!r} contains a NUL character")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(key, str, default)
        if value not in choices:
            raise self.error(key, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def number(
        self, key: str, default: float, *, low: float, high: float, integer: bool = False
    ) -> Any:
        value = self.get(key, int if integer else (int, float), default)
        if not low <= value <= high:
            raise self.error(key, f"{value} is out of range ({low:g} to {high:g})")
        return value

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise self.error(unknown[0], "unknown key")


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list",
        dict: "a table",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds if not (k is int and float in kinds))


# --- the file ----------------------------------------------------------------


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
    top = _Table(file, "", data)
    balancer = _parse_balancer(_Table(file, "balancer", top.get("balancer", dict, {})))
    health = _parse_health(_Table(file, "health", top.get("health", dict, {})))
    tls = _parse_tls(_Table(file, "tls", top.get("tls", dict, {})))
    admin = _parse_admin(_Table(file, "admin", top.get("admin", dict, {})))
    backends = _parse_backends(file, top.get("backends", list, []), balancer)
    if tls.implicit_listen is not None and balancer.mode == "routed":
        # Implicit FTPS is relayed like the explicit kind, to each backend's own port.
        backends = tuple(
            b
            if b.implicit_address is not None
            else dataclasses.replace(b, implicit_address=HostPort(b.address.host, 990))
            for b in backends
        )
    users = _parse_users(_Table(file, "users", top.get("users", dict, {})), backends, balancer)
    log = _parse_log(_Table(file, "log", top.get("log", dict, {})))
    top.finish()
    _check_listeners(file, balancer, tls, admin, backends)
    return Config(file, balancer, health, tls, admin, backends, log, users)


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


def _parse_log(t: _Table) -> LogConfig:
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
    t: _Table, backends: tuple[BackendConfig, ...], balancer: BalancerConfig
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


def _parse_balancer(t: _Table) -> BalancerConfig:
    d = BalancerConfig()
    listen = t.parsed("listen", parse_host_port, d.listen)
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
        data_path=t.choice("data_path", ("user", "kernel"), d.data_path),
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


def _family(host: str) -> str:
    return f"IPv{ipaddress.ip_address(host).version}"


def _workers(t: _Table) -> int:
    """A number, or "auto" (0): one per core."""
    value = t.get("workers", (int, str), "auto")
    if isinstance(value, str):
        if value != "auto":
            raise t.error("workers", f'expected a number or "auto", got {value!r}')
        return 0
    if not 1 <= value <= 256:
        raise t.error("workers", f"{value} is out of range (1 to 256)")
    return value


def _parse_health(t: _Table) -> HealthConfig:
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


def _parse_tls(t: _Table) -> TlsConfig:
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


def _check_certificate(t: _Table, cert: str, key: str) -> None:
    """Load the pair now, so that a bad file fails `check` and start-up, not a client."""
    import ssl

    for field_name, path in (("cert", cert), ("key", key)):
        if path and not os.access(path, os.R_OK):
            raise t.error(field_name, f"cannot read {path}")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key or None)
    except (ssl.SSLError, OSError) as exc:
        raise t.error("cert", f"{cert}: not a usable certificate and key ({exc})") from None


def _check_ca(t: _Table, path: str) -> None:
    import ssl

    if not os.access(path, os.R_OK):
        raise t.error("backend_ca", f"cannot read {path}")
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, OSError) as exc:
        raise t.error("backend_ca", f"{path}: not a usable CA file ({exc})") from None


def _parse_admin(t: _Table) -> AdminConfig:
    hosts = []
    for host in t.get("allowed_hosts", list, []):
        if not isinstance(host, str) or not _HOSTNAME.fullmatch(host):
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
        t = _Table(file, f"backends[{i}]", item)
        if "name" not in t.data:
            raise t.error("name", "required")
        if "address" not in t.data:
            raise t.error("address", "required")
        name = t.get("name", str, "")
        if not _NAME.fullmatch(name):
            raise t.error("name", f"{name!r}: use letters, digits, '.', '_' and '-' (at most 64)")
        b = BackendConfig(
            name=name,
            address=t.parsed("address", lambda s: parse_host_port(s, allow_hostname=True), None),  # type: ignore[arg-type]
            passive_ports=t.parsed("passive_ports", parse_port_range, None),
            send_proxy=t.choice("send_proxy", PROXY_VERSIONS, "")
            if "send_proxy" in t.data
            else None,
            send_proxy_data=t.get("send_proxy_data", bool, False),
            weight=t.number("weight", 1, low=0, high=256, integer=True),
            implicit_address=t.parsed(
                "implicit_address", lambda s: parse_host_port(s, allow_hostname=True), None
            ),
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
