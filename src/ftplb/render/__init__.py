"""`ftplb render`: the same cluster as configuration for other tools.

Pure functions from a Config to text: deterministic, with comments that say
why each part exists. Each kind is a function in `RENDERERS`; what kinds share
lives once: `base` (options, header, passive ranges), `rules` (the NAT and
forward rules as data, spelled by `iptables_rules` and `nft_ruleset`) and
`servers` (one loop over the backends for the per-backend kinds).
"""

from __future__ import annotations

from collections.abc import Callable

from ftplb.config import Config
from ftplb.render.base import RenderError, RenderOptions
from ftplb.render.haproxy_cfg import haproxy
from ftplb.render.iptables_rules import iptables
from ftplb.render.kubernetes import kubernetes
from ftplb.render.nft_ruleset import NFT_TABLE, nftables
from ftplb.render.servers import ftplb_backend, proftpd, pure_ftpd, vsftpd
from ftplb.render.transparent import transparent

__all__ = [
    "KINDS",
    "NFT_TABLE",
    "RENDERERS",
    "RenderError",
    "RenderOptions",
    "ftplb_backend",
    "haproxy",
    "iptables",
    "kubernetes",
    "nftables",
    "proftpd",
    "pure_ftpd",
    "render",
    "transparent",
    "vsftpd",
]

RENDERERS: dict[str, Callable[[Config, RenderOptions], str]] = {
    "haproxy": haproxy,
    "iptables": iptables,
    "nftables": nftables,
    "proftpd": proftpd,
    "vsftpd": vsftpd,
    "pure-ftpd": pure_ftpd,
    "ftplb-backend": ftplb_backend,
    "kubernetes": kubernetes,
    "transparent": transparent,
}

KINDS: tuple[str, ...] = tuple(RENDERERS)
"""Every kind, in the order `ftplb render --help` lists them."""

_ROUTED_ONLY = ("haproxy", "iptables", "nftables")
"""Kinds that describe the routed design (backends owning passive ranges)."""


def render(kind: str, config: Config, options: RenderOptions | None = None) -> str:
    if config.balancer.mode != "routed" and kind in _ROUTED_ONLY:
        raise RenderError(f'balancer.mode: {kind} renders the routed design (mode = "routed")')
    return RENDERERS[kind](config, options or RenderOptions())
