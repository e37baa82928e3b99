"""`ftplb render iptables`: the rule groups as `iptables-restore --noflush` input."""

from __future__ import annotations

from ftplb.config import Config, PortRange
from ftplb.render.base import RenderOptions, header
from ftplb.render.rules import ACTIVE_PORTS, interfaces, rule_groups


def iptables(config: Config, options: RenderOptions) -> str:
    groups = rule_groups(config, options)
    public = groups.public
    on = interfaces(options, into="-i {}", out_of="-o {}")
    lines = [
        *header(config, "iptables"),
        "# Load with `iptables-restore --noflush < FILE`: rules live in chains of",
        "# their own (FTPLB-*), so they can be flushed without touching the rest.",
        "*nat",
        ":FTPLB-DNAT - [0:0]",
        ":FTPLB-SNAT - [0:0]",
        "-A PREROUTING -j FTPLB-DNAT",
        "-A POSTROUTING -j FTPLB-SNAT",
    ]
    for t in groups.dnat:
        lines += [
            f"# {t.name}: its passive range, to it, same port (it advertises {public}).",
            f"-A FTPLB-DNAT {on.public_in}-d {public}/32 -p tcp -m tcp --dport {_ports(t.passive)}"
            f" -j DNAT --to-destination {t.host}",
        ]
    for t in groups.snat:
        lines += [
            f"# {t.name}: active-mode connections to clients leave from {public}.",
            f"-A FTPLB-SNAT {on.public_out}-s {t.host}/32 -p tcp -j SNAT --to-source {public}",
        ]
    lines += [
        "COMMIT",
        "*filter",
        ":FTPLB-FORWARD - [0:0]",
        "-A FORWARD -j FTPLB-FORWARD",
        "-A FTPLB-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    ]
    for t in groups.forward:
        lines += [
            f"# Clients may reach {t.name} on its passive range (after DNAT) and nothing else.",
            f"-A FTPLB-FORWARD {on.public_in}{on.private_out}-d {t.host}/32 -p tcp -m tcp"
            f" --dport {_ports(t.passive)} -m conntrack --ctstate NEW -j ACCEPT",
            f"-A FTPLB-FORWARD {on.private_in}{on.public_out}-s {t.host}/32 -p tcp -m tcp"
            f" --dport {_ports(ACTIVE_PORTS)} -m conntrack --ctstate NEW -j ACCEPT",
            f"-A FTPLB-FORWARD -d {t.host}/32 -j DROP",
        ]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _ports(ports: PortRange) -> str:
    return f"{ports.first}:{ports.last}"
