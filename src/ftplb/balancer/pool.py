"""The backends as the balancer sees them: health, drain flag, counters."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from ftplb.balancer.policies import Policy, make_policy
from ftplb.config import BackendConfig


@dataclass(eq=False)
class Backend:
    """One backend's live state. Counters only grow; `sessions` is the current count."""

    config: BackendConfig
    up: bool = False
    checked: bool = False
    draining: bool = False
    sessions: int = 0
    sessions_total: int = 0
    bytes_in: int = 0
    """Bytes from clients to this backend (control and data)."""
    bytes_out: int = 0
    """Bytes from this backend to clients (control and data)."""
    data_connections_total: int = 0
    check_failures_total: int = 0
    connect_failures_total: int = 0
    last_check: str = "not checked yet"
    last_change: float = 0.0
    weight: int = field(default=0)

    def __post_init__(self) -> None:
        self.weight = self.config.weight

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def available(self) -> bool:
        """May take a new session."""
        return self.up and not self.draining and self.weight > 0


class Pool:
    """The backends, in configuration order, and the policy that picks among them."""

    def __init__(self, backends: Iterable[BackendConfig], policy: str) -> None:
        self.backends = [Backend(b) for b in backends]
        self.by_name = {b.name: b for b in self.backends}
        self.policy: Policy = make_policy(policy)

    def choose(
        self, client_ip: str, key: str | None = None, exclude: Collection[str] = ()
    ) -> Backend | None:
        """The backend for a new session from `client_ip`, or None if none is available."""
        candidates = [b for b in self.backends if b.available and b.name not in exclude]
        if not candidates:
            return None
        return self.policy.choose(candidates, key if key is not None else client_ip)

    def passive_port_owner(self, port: int) -> Backend | None:
        """Routed mode: the backend whose passive range contains `port`."""
        for b in self.backends:
            if b.config.passive_ports is not None and port in b.config.passive_ports:
                return b
        return None

    @property
    def sessions(self) -> int:
        return sum(b.sessions for b in self.backends)
