"""Backends found by DNS (`discover = "dns"`): a configured entry is a
template, and every address its name resolves to is a backend of its own.

Pure: the lookups happen in io/discovery.py; this turns their answers into the
backend list the pool is updated with (added ones are health-checked before
they get sessions, vanished ones drain: `Pool.update`)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from ftplb.config import BackendConfig, HostPort


def discovered_name(template: str, address: str) -> str:
    """`NAME-ADDRESS`, as logs, metrics and the admin API show it."""
    return f"{template}-{address}"


def expand(
    backends: Iterable[BackendConfig], found: Mapping[str, Sequence[str]]
) -> tuple[BackendConfig, ...]:
    """The configured backends with each template replaced by one backend per
    address `found` for it (none yet: none), in address order."""
    out: list[BackendConfig] = []
    for b in backends:
        if not b.discover:
            out.append(b)
            continue
        for address in sorted(set(found.get(b.name, ())), key=_order):
            out.append(
                replace(
                    b,
                    name=discovered_name(b.name, address),
                    address=HostPort(address, b.address.port),
                    discover="",
                )
            )
    return tuple(out)


def _order(address: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(address)
    return ip.version, int(ip)
