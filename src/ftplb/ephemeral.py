"""Do the ports the balancer listens on lie in the kernel's ephemeral range?

Every outgoing connection (to a backend, a health check, a client in active
mode) takes a local port from `net.ipv4.ip_local_port_range`. A data port in
that range can be held by one of them at the moment a passive request needs
it: that request then binds another port, and a busy balancer whose range is
all ephemeral can answer 425 or refuse a routed data connection. Linux keeps
ports listed in `net.ipv4.ip_local_reserved_ports` out of its choice.
"""

from __future__ import annotations

from pathlib import Path

from ftplb.config import Config, PortRange

PROC = Path("/proc/sys/net/ipv4")


def ephemeral_range(proc: Path = PROC) -> PortRange | None:
    """The kernel's range for outgoing connections; None where it cannot be read."""
    try:
        low, high = (proc / "ip_local_port_range").read_text().split()
    except (OSError, ValueError):
        return None
    return PortRange(int(low), int(high))


def reserved_ports(proc: Path = PROC) -> set[int]:
    """`ip_local_reserved_ports` ("8080,40000-40999"): never chosen for outgoing connections."""
    try:
        text = (proc / "ip_local_reserved_ports").read_text().strip()
    except OSError:
        return set()
    ports: set[int] = set()
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        ports.update(range(int(low), int(high or low) + 1))
    return ports


def listened_ranges(config: Config) -> list[tuple[str, PortRange]]:
    """(what, range) of every data port range the balancer binds."""
    b = config.balancer
    if b.mode == "inspect":
        return [("balancer.data_ports", b.data_ports)]
    if b.data_path == "kernel":
        return []  # the kernel DNATs the ranges: nothing listens on them here
    return [
        (f"backend {x.name} passive_ports", x.passive_ports)
        for x in config.backends
        if x.passive_ports is not None
    ]


def warnings(config: Config, proc: Path = PROC) -> list[str]:
    """A line per listened range that outgoing connections may take ports from,
    and one telling how to reserve them all."""
    ephemeral = ephemeral_range(proc)
    if ephemeral is None:
        return []
    reserved = reserved_ports(proc)
    lines = []
    exposed_ranges = []
    for what, ports in listened_ranges(config):
        exposed = sum(1 for p in ports if p in ephemeral and p not in reserved)
        if exposed:
            exposed_ranges.append(str(ports))
            lines.append(
                f"warning: {what} {ports}: {exposed} of its ports are in the kernel's "
                f"ephemeral range {ephemeral} (net.ipv4.ip_local_port_range); outgoing "
                "connections may hold them when a transfer needs them"
            )
    if lines:
        lines.append(
            "warning: reserve them (add any ports already reserved): sysctl -w "
            f"net.ipv4.ip_local_reserved_ports={','.join(exposed_ranges)}, and the same in "
            "/etc/sysctl.d/ to keep it"
        )
    return lines
