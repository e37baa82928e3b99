"""The backends as the balancer sees them: health, drain flag, counters."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from ftplb.balancer.policies import Policy, make_policy
from ftplb.config import BackendConfig
from ftplb.shared import SharedCounters


@dataclass(eq=False)
class Backend:
    """One backend's live state. Counters only grow; `sessions` is the current count."""

    config: BackendConfig
    up: bool = False
    checked: bool = False
    draining: bool = False
    """Operator's drain: no new sessions, current ones finish, checks go on."""
    disabled: bool = False
    """Operator's maintenance: like drain, and shown as MAINT."""
    retired: bool = False
    """Removed by a reload: kept until its last session ends."""
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
    shared: SharedCounters | None = None
    """With several workers: `sessions` and `sessions_total` of all of them
    (kept by `Pool.assign` and `Pool.release`)."""
    remote: int = 0
    """Sessions other ftplb nodes hold on it ([cluster]: their last heartbeats)."""

    def __post_init__(self) -> None:
        self.weight = self.config.weight

    def health_changed(self, up: bool, now: float) -> None:
        """A check (ours or worker 0's) decided: `up` since `now` (wall clock)."""
        self.up = up
        self.checked = True
        self.last_change = now

    @property
    def load(self) -> int:
        """Current sessions, all workers (and, in a cluster, all nodes)."""
        if self.shared is None:
            return self.sessions + self.remote
        return self.shared.total(f"sessions|{self.name}") + self.remote

    @property
    def picks(self) -> int:
        """Sessions given to this backend so far by the other workers too (0 with
        one worker): with it leastconn's ties rotate across workers."""
        if self.shared is None:
            return 0
        return self.shared.total(f"sessions_total|{self.name}")

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def available(self) -> bool:
        """May take a new session."""
        return self.up and not (self.draining or self.disabled or self.retired) and self.weight > 0

    @property
    def state(self) -> str:
        """UP, DOWN, DRAIN, MAINT or RETIRED, as the status page shows it."""
        if self.retired:
            return "RETIRED"
        if self.disabled:
            return "MAINT"
        if self.draining:
            return "DRAIN"
        return "UP" if self.up else "DOWN"


class Pool:
    """The backends, in configuration order, and the policy that picks among them."""

    def __init__(
        self,
        backends: Iterable[BackendConfig],
        policy: str,
        shared: SharedCounters | None = None,
    ) -> None:
        self.shared = shared
        self.backends = [Backend(b, shared=shared) for b in backends]
        self.by_name = {b.name: b for b in self.backends}
        self.policy_name = policy
        self.policy: Policy = make_policy(policy, shared is not None)
        self.retired: list[Backend] = []

    def update(
        self, configs: Iterable[BackendConfig], policy: str
    ) -> tuple[list[Backend], list[Backend]]:
        """Apply a reloaded backend list. Returns (added, retired).

        A backend whose name stays keeps its state, counters and sessions; a
        changed address or passive range makes it a new backend (the old one
        retires and drains). A backend removed earlier and still draining comes
        back as itself (its sessions and, in routed mode, its listeners go on):
        a new one beside it would fight it for its passive ports."""
        added: list[Backend] = []
        retired: list[Backend] = []
        new_list: list[Backend] = []
        draining = {b.name: b for b in self.retired}
        for cfg in configs:
            old = self.by_name.get(cfg.name) or draining.get(cfg.name)
            if old is not None and (
                old.config.address == cfg.address and old.config.passive_ports == cfg.passive_ports
            ):
                if old.retired:
                    old.retired = False
                    self.retired.remove(old)
                old.config = cfg
                old.weight = cfg.weight
                new_list.append(old)
            else:
                b = Backend(cfg, shared=self.shared)
                added.append(b)
                new_list.append(b)
        kept = {id(b) for b in new_list}
        for old in self.backends:
            if id(old) not in kept:
                old.retired = True
                retired.append(old)
        self.retired.extend(retired)
        self.backends = new_list
        self.by_name = {b.name: b for b in new_list}
        if policy != self.policy_name:
            self.policy_name = policy
            self.policy = make_policy(policy, self.shared is not None)
        return added, retired

    # -- session bookkeeping: every session on a backend is assigned and released here

    def assign(self, backend: Backend) -> None:
        """A session goes to `backend` (all workers' counts follow: leastconn)."""
        backend.sessions += 1
        backend.sessions_total += 1
        if self.shared is not None:
            self.shared.add(f"sessions|{backend.name}", 1)
            self.shared.add(f"sessions_total|{backend.name}", 1)

    def release(self, backend: Backend, connect_failed: bool = False) -> None:
        """A session of `backend` ended (or never got connected: `connect_failed`)."""
        backend.sessions -= 1
        if connect_failed:
            backend.connect_failures_total += 1
        if self.shared is not None:
            self.shared.add(f"sessions|{backend.name}", -1)

    def retire_if_idle(self, backend: Backend, busy: bool = False) -> bool:
        """A backend removed by reload leaves once its last session has (and
        nothing else is `busy` on it). True when it left now."""
        if backend.retired and backend.sessions == 0 and not busy and backend in self.retired:
            self.retired.remove(backend)
            return True
        return False

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
        for b in [*self.backends, *self.retired]:
            if b.config.passive_ports is not None and port in b.config.passive_ports:
                return b
        return None

    @property
    def sessions(self) -> int:
        return sum(b.sessions for b in self.backends)
