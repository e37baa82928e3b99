"""The kernel half of the classic design, as data: which rules exist, whatever
the syntax. `iptables_rules` and `nft_ruleset` only spell them.

Three groups: DNAT of each backend's passive range (clients reach the public
address, the backend gets the same port), SNAT of each backend's connections
to clients (active mode must leave from the public address), and the forward
policy (clients reach a backend's passive range, a backend reaches clients'
unprivileged ports, nothing else is forwarded to it). IPv6 backends are left
out: the rules are IPv4 NAT.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftplb.config import Config, PortRange
from ftplb.render.base import RenderOptions, is_v6, passive_ranges

ACTIVE_PORTS = PortRange(1024, 65535)
"""Where a backend's active-mode connections may go: a client's PORT/EPRT port."""


@dataclass(frozen=True)
class Target:
    """One backend as the rules see it."""

    name: str
    host: str
    passive: PortRange


@dataclass(frozen=True)
class RuleGroups:
    public: str
    """The balancer's public address: DNAT matches it, SNAT rewrites to it."""
    dnat: tuple[Target, ...]
    """Passive ranges forwarded to their backends (none with --no-dnat)."""
    snat: tuple[Target, ...]
    """Backends whose outgoing connections leave from `public`."""
    forward: tuple[Target, ...]
    """Backends guarded by the forward policy."""


def rule_groups(config: Config, options: RenderOptions) -> RuleGroups:
    targets = tuple(
        Target(be.name, be.address.host, ports)
        for be, ports in passive_ranges(config)
        if not is_v6(be.address.host)
    )
    return RuleGroups(
        public=config.balancer.public_address,
        dnat=() if options.no_dnat else targets,
        snat=targets,
        forward=targets,
    )


@dataclass(frozen=True)
class Interfaces:
    """A rule's interface matches, each an empty string when the interface is
    not given (the rule then matches any), else a prefix ending in a space."""

    public_in: str
    public_out: str
    private_in: str
    private_out: str


def interfaces(options: RenderOptions, into: str, out_of: str) -> Interfaces:
    """The matches in one syntax: `into`/`out_of` are templates such as "-i {}"."""

    def match(template: str, name: str) -> str:
        return template.format(name) + " " if name else ""

    return Interfaces(
        public_in=match(into, options.public_if),
        public_out=match(out_of, options.public_if),
        private_in=match(into, options.private_if),
        private_out=match(out_of, options.private_if),
    )
