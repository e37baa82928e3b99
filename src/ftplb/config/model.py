"""The configuration as frozen, typed values: what `ftplb run` is given.

Reading and checking the TOML file is config/load.py's job; the field
docstrings here are the reference (docs/configuration.md says the same).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["routed", "inspect"]
Balance = Literal["leastconn", "roundrobin", "source", "random", "user"]
ProxyVersion = Literal["off", "v1", "v2"]
HealthCheck = Literal["tcp", "ftp"]
BackendTLSMode = Literal["off", "on", "match"]
DataPath = Literal["user", "kernel"]
Source = Literal["balancer", "client"]
SourceRules = Literal["ftplb", "manual"]
Discover = Literal["", "dns"]

MODES: tuple[Mode, ...] = ("routed", "inspect")
BALANCE_POLICIES: tuple[Balance, ...] = ("leastconn", "roundrobin", "source", "random", "user")
PROXY_VERSIONS: tuple[ProxyVersion, ...] = ("off", "v1", "v2")
HEALTH_CHECKS: tuple[HealthCheck, ...] = ("tcp", "ftp")
BACKEND_TLS: tuple[BackendTLSMode, ...] = ("off", "on", "match")
DATA_PATHS: tuple[DataPath, ...] = ("user", "kernel")
SOURCES: tuple[Source, ...] = ("balancer", "client")
SOURCE_RULES: tuple[SourceRules, ...] = ("ftplb", "manual")
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
    """The address clients reach; what PASV replies carry. Defaults to the host of
    `listen`. Inspect mode: "auto", the address the client's control connection
    reached (or, with `accept_proxy`, the PROXY header's destination)."""
    mode: Mode = "routed"
    """"routed" (backends own passive port ranges) or "inspect" (FTP-aware proxy)."""
    balance: Balance = "leastconn"
    """Backend choice for a new session: leastconn, roundrobin, source, random, user."""
    send_proxy: ProxyVersion = "off"
    """PROXY protocol header on backend control connections: off, v1, v2."""
    data_ports: PortRange = PortRange(40000, 40999)
    """Inspect mode: the balancer's own passive ports."""
    data_listen: str = ""
    """Address the data listeners bind to; defaults to the host of `listen`."""
    data_path: DataPath = "user"
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
    """Seconds a backend that accepted the control connection has to greet with
    220 before the session goes to another backend; 0: three health timeouts."""
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
    accept_proxy: tuple[str, ...] = ()
    """Networks (CIDR) whose connections, control and data, must begin with a
    PROXY v1/v2 header (a cloud load balancer in front); its source is the client."""
    source: Source = "balancer"
    """"client": transparent mode, connections to backends leave from the
    client's own address (IP_TRANSPARENT); the backends route back through us."""
    source_rules: SourceRules = "ftplb"
    """With source = "client": "ftplb" installs the kernel's part (an nftables
    table, a routing rule and table) and removes it; "manual": the operator did
    (`ftplb render transparent`)."""

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
    check: HealthCheck = "ftp"
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
    backend_tls: BackendTLSMode = "off"
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
    send_proxy: ProxyVersion | None = None
    """Overrides balancer.send_proxy for this backend."""
    send_proxy_data: bool = False
    """Routed mode: PROXY header on forwarded data connections."""
    weight: int = 1
    """Relative share of new sessions (0: none)."""
    implicit_address: HostPort | None = None
    """Routed mode with [tls] implicit_listen: the backend's implicit-FTPS
    address (default: its host, port 990)."""
    discover: Discover = ""
    """"dns": every A/AAAA record of the address's name is a backend, named
    NAME-ADDRESS, re-resolved every `discovery.interval` (inspect mode)."""


@dataclass(frozen=True)
class DiscoveryConfig:
    nameservers: tuple[HostPort, ...] = ()
    """DNS servers asked for `discover = "dns"` backends; empty: the system resolver."""
    interval: float = 5.0
    """Seconds between re-resolutions."""


@dataclass(frozen=True)
class ClusterConfig:
    redis: str = ""
    """redis://host:port/db of the shared state; empty: no cluster."""
    node: str = ""
    """This node's name (default: the host name)."""
    advertise: HostPort | None = None
    """Inspect mode: where other nodes forward data connections for sessions held here."""


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
    public_addresses: tuple[tuple[str, str], ...] = ()
    """Inspect mode: (client network, address told in PASV), most specific first."""
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def public_address_for(self, client_ip: str, local_ip: str) -> str:
        """What PASV tells this client: the most specific `[public_addresses]`
        network holding it, else `public_address`; "auto" is `local_ip`, the
        address it reached."""
        told = self.balancer.public_address
        if self.public_addresses:
            try:
                client = ipaddress.ip_address(client_ip)
            except ValueError:
                client = None
            if client is not None:
                if isinstance(client, ipaddress.IPv6Address) and client.ipv4_mapped:
                    client = client.ipv4_mapped
                for network, address in self.public_addresses:
                    if client in ipaddress.ip_network(network):
                        told = address
                        break
        return local_ip if told == "auto" else told

    def greeting_timeout(self) -> float:
        """How long a backend may take to greet (a frozen one is given up after it)."""
        # Three health timeouts: a frozen backend is given up within seconds,
        # one that is only slow to greet is not (ProFTPD pauses after each
        # session ends; a server doing reverse DNS takes its time).
        return self.balancer.greeting_timeout or 3 * self.health.timeout

    def proxy_version(self, backend: BackendConfig) -> ProxyVersion:
        """The PROXY protocol version sent to `backend` on its control connection."""
        return backend.send_proxy if backend.send_proxy is not None else self.balancer.send_proxy

    def data_proxy_version(self, backend: BackendConfig) -> ProxyVersion:
        """The PROXY version on `backend`'s data connections: "off" without
        send_proxy_data, else the control connection's, or v1 when that is off."""
        if not backend.send_proxy_data:
            return "off"
        version = self.proxy_version(backend)
        return version if version != "off" else "v1"
