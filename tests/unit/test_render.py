"""`ftplb render`: golden files for review, and the pieces the renderers share.
Each tool's own check of the output: tests/integration/test_render_tools.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftplb.config import PortRange, load_config, parse_config
from ftplb.render import KINDS, RENDERERS, RenderError, RenderOptions, render
from ftplb.render.rules import RuleGroups, Target, interfaces, rule_groups

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
SAMPLE = "tests/golden/ftplb.toml"  # relative: the path is part of the output
OPTIONS = RenderOptions(public_if="eth0", private_if="eth1")


def rendered(kind: str, **options: str) -> str:
    cfg = load_config(ROOT / SAMPLE)
    cfg = type(cfg)(**{**cfg.__dict__, "path": SAMPLE})
    return render(kind, cfg, RenderOptions(**{**OPTIONS.__dict__, **options}))


# kubernetes renders inspect mode: its golden file is contrib/kubernetes/ftplb.yaml
# (tests/integration/test_render_kubernetes.py).
@pytest.mark.parametrize("kind", sorted(k for k in RENDERERS if k != "kubernetes"))
def test_golden(kind: str) -> None:
    """Regenerate with: for k in ...; do ftplb render $k -c tests/golden/ftplb.toml
    --public-if eth0 --private-if eth1 > tests/golden/$k.txt; done (and review the diff)."""
    assert rendered(kind) == (GOLDEN / f"{kind}.txt").read_text()


def test_refusals() -> None:
    with pytest.raises(RenderError, match="--backend: no backend named"):
        rendered("vsftpd", backend="nope")
    cfg = load_config(ROOT / SAMPLE)
    inspect = type(cfg)(
        **{
            **cfg.__dict__,
            "balancer": type(cfg.balancer)(**{**cfg.balancer.__dict__, "mode": "inspect"}),
        }
    )
    with pytest.raises(RenderError, match="routed design"):
        render("haproxy", inspect)


def test_kinds_in_the_order_the_cli_lists_them() -> None:
    assert KINDS == (
        "haproxy",
        "iptables",
        "nftables",
        "proftpd",
        "vsftpd",
        "pure-ftpd",
        "ftplb-backend",
        "kubernetes",
        "transparent",
    )
    assert tuple(RENDERERS) == KINDS


def test_rule_groups_leave_out_ipv6_backends_and_dnat_on_request() -> None:
    config = parse_config(
        {
            "balancer": {"listen": "198.18.0.2:21", "public_address": "198.18.0.9"},
            "backends": [
                {"name": "a", "address": "198.18.1.1:21", "passive_ports": "30000-30009"},
                {"name": "six", "address": "[2001:db8::1]:21", "passive_ports": "30010-30019"},
                {"name": "b", "address": "198.18.1.2:2121", "passive_ports": "30020-30029"},
            ],
        }
    )
    targets = (
        Target("a", "198.18.1.1", PortRange(30000, 30009)),
        Target("b", "198.18.1.2", PortRange(30020, 30029)),
    )
    assert rule_groups(config, RenderOptions()) == RuleGroups(
        public="198.18.0.9", dnat=targets, snat=targets, forward=targets
    )
    assert rule_groups(config, RenderOptions(no_dnat=True)) == RuleGroups(
        public="198.18.0.9", dnat=(), snat=targets, forward=targets
    )


def test_interface_matches_are_empty_unless_given() -> None:
    both = interfaces(RenderOptions(public_if="eth0", private_if="eth1"), "-i {}", "-o {}")
    assert (both.public_in, both.public_out, both.private_in, both.private_out) == (
        "-i eth0 ",
        "-o eth0 ",
        "-i eth1 ",
        "-o eth1 ",
    )
    public_only = interfaces(RenderOptions(public_if="wan"), 'iifname "{}"', 'oifname "{}"')
    assert (
        public_only.public_in,
        public_only.public_out,
        public_only.private_in,
        public_only.private_out,
    ) == ('iifname "wan" ', 'oifname "wan" ', "", "")
