"""`ftplb render nftables`: the rule groups as an `nft -f` ruleset in a table of
ftplb's own (also what the kernel data path loads, `ftplb.io.kernel`)."""

from __future__ import annotations

from ftplb.config import Config
from ftplb.render.base import RenderOptions, header
from ftplb.render.rules import ACTIVE_PORTS, interfaces, rule_groups

NFT_TABLE = "ftplb"


def nftables(config: Config, options: RenderOptions) -> str:
    groups = rule_groups(config, options)
    public = groups.public
    on = interfaces(options, into='iifname "{}"', out_of='oifname "{}"')
    lines = [
        *header(config, "nftables"),
        f"# One table of its own: `nft delete table inet {NFT_TABLE}` removes all of it.",
        "# The first two lines make `nft -f` replace an older copy instead of failing.",
        f"table inet {NFT_TABLE}",
        f"delete table inet {NFT_TABLE}",
        "",
        f"table inet {NFT_TABLE} {{",
        "    chain prerouting {",
        "        type nat hook prerouting priority dstnat; policy accept;",
    ]
    for t in groups.dnat:
        lines.append(
            f"        {on.public_in}ip daddr {public} tcp dport {t.passive}"
            f' dnat ip to {t.host} comment "{t.name}: passive range, same port"'
        )
    lines += [
        "    }",
        "",
        "    chain postrouting {",
        "        type nat hook postrouting priority srcnat; policy accept;",
    ]
    for t in groups.snat:
        lines.append(
            f"        {on.public_out}ip saddr {t.host} meta l4proto tcp snat ip to {public}"
            f' comment "{t.name}: active mode leaves from {public}"'
        )
    lines += [
        "    }",
        "",
        "    chain forward {",
        "        type filter hook forward priority filter; policy accept;",
        "        ct state established,related accept",
    ]
    for t in groups.forward:
        lines += [
            f"        {on.public_in}{on.private_out}ip daddr {t.host} tcp dport {t.passive}"
            f' ct state new accept comment "clients reach {t.name} on its passive range"',
            f"        {on.private_in}{on.public_out}ip saddr {t.host} tcp dport {ACTIVE_PORTS}"
            f' ct state new accept comment "{t.name}: active-mode connections"',
            f'        ip daddr {t.host} drop comment "nothing else reaches {t.name}"',
        ]
    lines += ["    }", "}"]
    return "\n".join(lines) + "\n"
