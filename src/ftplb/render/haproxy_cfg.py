"""`ftplb render haproxy`: the classic design's haproxy.cfg.

HAProxy balances the control connections; one frontend per backend forwards
that backend's passive range to the same port on it, which is what routed
mode does in user space.
"""

from __future__ import annotations

from ftplb.config import Config
from ftplb.render.base import RenderError, RenderOptions, header, is_v6, passive_ranges

_BALANCE = {
    "leastconn": "leastconn",
    "roundrobin": "roundrobin",
    "source": "source",
    "random": "random",
}
"""ftplb's policies that HAProxy has under the same meaning ("user" has none)."""


def haproxy(config: Config, options: RenderOptions) -> str:
    b = config.balancer
    h = config.health
    if b.balance not in _BALANCE:
        raise RenderError(f'balancer.balance: HAProxy cannot balance by "{b.balance}"')
    idle = f"{b.idle_timeout:g}s"
    lines = [
        *header(config, "haproxy"),
        "# The classic design: HAProxy balances the control connections, and one",
        "# frontend per backend forwards that backend's passive port range to the",
        "# same port on it (it advertises the public address and its own range).",
        "",
        "global",
        "    log stdout format raw local0",
        "    # No global maxconn: HAProxy derives it from the file limit it gets.",
        "",
        "defaults",
        "    mode tcp",
        "    log global",
        "    option tcplog",
        f"    timeout connect {b.connect_timeout:g}s",
        "    # The control connection is silent for the whole length of a transfer:",
        "    # a short client/server timeout would cut sessions before the 226.",
        f"    timeout client {idle}",
        f"    timeout server {idle}",
        "",
        "frontend ftp_control",
        f"    bind {b.listen}",
        f"    maxconn {b.max_sessions}",
        "    default_backend ftp_control",
        "",
        "backend ftp_control",
        f"    balance {_BALANCE[b.balance]}",
    ]
    if h.check == "ftp":
        lines += [
            "    # FTP-aware check: a backend is up when it greets with 220. check-send-proxy",
            "    # on the servers sends the PROXY header first, or a backend that expects",
            "    # one would wait for it and never greet (the implicit connect honours it;",
            "    # an explicit `tcp-check connect` would not).",
            "    option tcp-check",
            "    tcp-check expect rstring ^220",
            "    tcp-check send QUIT\\r\\n",
        ]
    lines += [
        f"    timeout check {_ms(h.timeout)}",
        f"    default-server inter {_ms(h.interval)} rise {h.rise} fall {h.fall}",
    ]
    for be in config.backends:
        proxy = _send_proxy(config.proxy_version(be))
        extra = f" {proxy} check-send-proxy" if proxy else ""
        lines.append(f"    server {be.name} {be.address} check weight {be.weight}{extra}")
    for be, ports in [] if options.control_only else passive_ranges(config):
        data_proxy = ""
        if be.send_proxy_data:
            version = config.proxy_version(be)
            data_proxy = " " + _send_proxy(version if version != "off" else "v1")
        lines += [
            "",
            f"# {be.name} advertises {b.public_address} and ports {ports}: forward them to it.",
            f"frontend ftp_passive_{be.name}",
            f"    bind {_bind_host(b.data_host)}:{ports.first}-{ports.last}",
            f"    default_backend ftp_passive_{be.name}",
            "",
            f"backend ftp_passive_{be.name}",
            "    # No port on the server: the one the client connected to is used.",
            f"    server {be.name} {_bind_host(be.address.host)}{data_proxy}",
        ]
    return "\n".join(lines) + "\n"


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def _bind_host(host: str) -> str:
    """HAProxy appends a port range after the host: an IPv6 literal needs brackets."""
    return f"[{host}]" if is_v6(host) else host


def _send_proxy(version: str) -> str:
    return {"v1": "send-proxy", "v2": "send-proxy-v2"}.get(version, "")
