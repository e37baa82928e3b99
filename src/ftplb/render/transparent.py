"""`ftplb render transparent`: what the kernel needs for `source = "client"`.

ftplb connects to a backend from the client's address (IP_TRANSPARENT). The
backend answers the client's address through its gateway, this host, which
would forward the reply to the real client. The nftables rule marks packets
that belong to an existing transparent socket (`socket transparent 1`); the
routing rule sends marked packets to a table whose one route says every
address is local, so they are delivered to that socket. The same text is what
ftplb itself installs (io/transparent.py), so the two never differ.
"""

from __future__ import annotations

from ftplb.config import Config
from ftplb.render.base import RenderOptions, header

TRANSPARENT_TABLE = "ftplb_transparent"
MARK = 0x4654
"""Firewall mark, routing table and rule priority: one number ("FT"), so that
ftplb's rule is recognised as its own and nobody else's is touched."""


def transparent_nft() -> str:
    """The nftables table (replacing an older copy: the first two lines)."""
    return "\n".join(
        [
            f"table inet {TRANSPARENT_TABLE}",
            f"delete table inet {TRANSPARENT_TABLE}",
            f"table inet {TRANSPARENT_TABLE} {{",
            "    chain divert {",
            "        type filter hook prerouting priority mangle; policy accept;",
            "        # A packet for one of ftplb's transparent sockets (a backend's",
            "        # reply to the client's address) is marked for local delivery.",
            f"        meta l4proto tcp socket transparent 1 meta mark set {MARK:#x} accept",
            "    }",
            "}",
            "",
        ]
    )


def transparent_routes() -> list[list[str]]:
    """The `ip` commands that route marked packets to this host, both families."""
    out = []
    for family, everything in (("-4", "0.0.0.0/0"), ("-6", "::/0")):
        out.append(
            ["ip", family, "rule", "add", "priority", str(MARK), "fwmark", f"{MARK:#x}",
             "lookup", str(MARK)]
        )  # fmt: skip
        out.append(
            ["ip", family, "route", "replace", "local", everything, "dev", "lo", "table", str(MARK)]
        )
    return out


def transparent_removal() -> list[list[str]]:
    """The `ip` commands that remove exactly what transparent_routes added."""
    out = []
    for family in ("-4", "-6"):
        out.append(
            ["ip", family, "rule", "del", "priority", str(MARK), "fwmark", f"{MARK:#x}",
             "lookup", str(MARK)]
        )  # fmt: skip
        out.append(["ip", family, "route", "flush", "table", str(MARK)])
    return out


def transparent(config: Config, options: RenderOptions) -> str:
    lines = header(config, "transparent")
    lines += [
        '# For source = "client" with source_rules = "manual": run as root on the',
        "# balancer (the backends' gateway). ftplb installs the same itself by default.",
        "# To remove: nft delete table inet " + TRANSPARENT_TABLE + "; and the same",
        "# `ip rule` / `ip route` lines with del / flush.",
        "set -e",
        "nft -f - <<'EOF'",
        transparent_nft().rstrip("\n"),
        "EOF",
        *(" ".join(argv) for argv in transparent_routes()),
        "",
    ]
    return "\n".join(lines)
