"""The backends' own settings (proftpd, vsftpd, pure-ftpd, ftplb-backend).

Routed mode needs every backend to listen where the balancer expects it and to
advertise the balancer's public address with its own passive range. One loop
(`each_backend`) picks the backends and lays the text out; each kind only
says, in `*_lines`, how its server spells that for one backend.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from ftplb.config import BackendConfig, Config
from ftplb.render.base import RenderError, RenderOptions, header, is_v6

BackendLines = Callable[[Config, RenderOptions, BackendConfig], list[str]]
"""One backend's lines in one kind's syntax."""


def each_backend(
    config: Config,
    options: RenderOptions,
    kind: str,
    lines_of: BackendLines,
    *,
    file_per_backend: bool = True,
) -> str:
    """`lines_of` for each selected backend (all, or `--backend`). A configuration
    file per backend, each with its header, separated by a blank line; or, for
    commands (`file_per_backend=False`), one header over them all."""
    blocks = [lines_of(config, options, be) for be in _selected(config, options)]
    if file_per_backend:
        return "\n".join("\n".join([*header(config, kind), *block]) + "\n" for block in blocks)
    return "\n".join([*header(config, kind), *(line for block in blocks for line in block)]) + "\n"


def _selected(config: Config, options: RenderOptions) -> list[BackendConfig]:
    if not options.backend:
        return list(config.backends)
    chosen = [b for b in config.backends if b.name == options.backend]
    if not chosen:
        raise RenderError(f"--backend: no backend named {options.backend!r}")
    return chosen


def proftpd(config: Config, options: RenderOptions) -> str:
    return each_backend(config, options, "proftpd", proftpd_lines)


def vsftpd(config: Config, options: RenderOptions) -> str:
    return each_backend(config, options, "vsftpd", vsftpd_lines)


def pure_ftpd(config: Config, options: RenderOptions) -> str:
    return each_backend(config, options, "pure-ftpd", pure_ftpd_lines)


def ftplb_backend(config: Config, options: RenderOptions) -> str:
    return each_backend(
        config, options, "ftplb-backend", ftplb_backend_lines, file_per_backend=False
    )


def proftpd_lines(config: Config, options: RenderOptions, be: BackendConfig) -> list[str]:
    public = config.balancer.public_address
    ports = be.passive_ports
    version = config.proxy_version(be)
    lines = [
        f"# ProFTPD for backend {be.name}: listen where the balancer expects it,",
        f"# advertise the balancer's address ({public}) and this backend's own range.",
        'ServerName "ftp"',
        "ServerType standalone",
        f"DefaultAddress {be.address.host}",
        f"Port {be.address.port}",
        "SocketBindTight on",
        f"MasqueradeAddress {public}",
    ]
    if ports is not None:
        lines.append(f"PassivePorts {ports.first} {ports.last}")
    if version != "off":
        lines += [
            "# The balancer sends a PROXY header: log and check the real client.",
            "# (mod_proxy_protocol is not packaged by Debian; build it or use ftplb backend.)",
            "<IfModule mod_proxy_protocol.c>",
            "  ProxyProtocolEngine on",
            f"  ProxyProtocolVersion {'haproxyV1' if version == 'v1' else 'haproxyV2'}",
            "</IfModule>",
        ]
    return lines


def vsftpd_lines(config: Config, options: RenderOptions, be: BackendConfig) -> list[str]:
    ports = be.passive_ports
    lines = [
        f"# vsftpd for backend {be.name} (vsftpd cannot read PROXY headers: send_proxy off).",
        "listen=YES",
        f"listen_address={be.address.host}",
        f"listen_port={be.address.port}",
        "pasv_enable=YES",
        "# PASV replies carry the balancer's address and this backend's own range.",
        f"pasv_address={config.balancer.public_address}",
    ]
    if ports is not None:
        lines += [f"pasv_min_port={ports.first}", f"pasv_max_port={ports.last}"]
    if config.balancer.data_path == "kernel":
        lines += [
            "# With a kernel DNAT data path vsftpd sees control connections from the",
            "# balancer and data connections from the clients; without PROXY support it",
            "# cannot tell they belong together, so its same-address check must go.",
            "pasv_promiscuous=YES",
        ]
    else:
        lines += [
            "# ftplb relays control and data, both from the balancer: keep the check.",
            "# (HAProxy + iptables/nftables DNAT instead needs pasv_promiscuous=YES.)",
            "pasv_promiscuous=NO",
        ]
    return [
        *lines,
        "# PORT names the client, while the control connection comes from the",
        "# balancer: without PROXY support vsftpd must accept that for active mode.",
        "port_promiscuous=YES",
    ]


def pure_ftpd_lines(config: Config, options: RenderOptions, be: BackendConfig) -> list[str]:
    public = config.balancer.public_address
    ports = be.passive_ports
    bind = f"{be.address.host},{be.address.port}"
    p = f" -p {ports.first}:{ports.last}" if ports else ""
    lines = [
        f"# pure-ftpd for backend {be.name} (no PROXY protocol support: send_proxy off).",
        f"pure-ftpd -S {bind} -P {public}{p}",
        "# The same with Debian's pure-ftpd-wrapper (/etc/pure-ftpd/conf/):",
        f"#   echo '{bind}' > /etc/pure-ftpd/conf/Bind",
        f"#   echo '{public}' > /etc/pure-ftpd/conf/ForcePassiveIP",
    ]
    if ports:
        lines.append(
            f"#   echo '{ports.first} {ports.last}' > /etc/pure-ftpd/conf/PassivePortRange"
        )
    return lines


def ftplb_backend_lines(config: Config, options: RenderOptions, be: BackendConfig) -> list[str]:
    public = config.balancer.public_address
    args = [
        "ftplb backend",
        f"--listen {be.address}",
        f"--root {options.root}",
        "--user NAME:PASSWORD",
        f"--masquerade {public}",
    ]
    if be.passive_ports is not None:
        args.append(f"--passive-ports {be.passive_ports}")
    if config.proxy_version(be) != "off" or be.send_proxy_data:
        # Trust the balancer's data address, or its public one when that is a wildcard.
        trusted = config.balancer.data_host
        if ipaddress.ip_address(trusted).is_unspecified:
            trusted = public
        args += [
            "--proxy-protocol",
            f"--trusted-proxy {trusted}/{128 if is_v6(trusted) else 32}",
        ]
    return [f"# {be.name}", " \\\n    ".join(args)]
