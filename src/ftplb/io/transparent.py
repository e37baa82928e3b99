"""Transparent mode (`source = "client"`): backend connections leave from the
client's own address, so that any unmodified FTP server logs the client and
keeps its own address checks (vsftpd's pasv_promiscuous=NO) on.

`connect_from` makes such a socket (IP_TRANSPARENT, bound to the client's
address and an ephemeral port). `install`/`remove` set up and take down the
kernel's part, which render/transparent.py spells (an nftables table of its own
and one routing rule and table, marked with ftplb's number); `missing` says
what this host lacks for it, before anything is touched.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
from collections.abc import Callable

from ftplb.io.relay import make_transparent, transparent_source
from ftplb.render.transparent import (
    TRANSPARENT_TABLE,
    transparent_nft,
    transparent_removal,
    transparent_routes,
)

log = logging.getLogger("ftplb.transparent")

CAP_NET_ADMIN = 12


class TransparentError(Exception):
    """The host cannot do transparent mode as configured (exit 2)."""


async def connect_from(
    loop: asyncio.AbstractEventLoop, host: str, port: int, client_ip: str
) -> socket.socket | None:
    """A socket connected to host:port from the client's address
    (IP_TRANSPARENT), or None when the backend has no address of the client's
    family (an IPv6 client in front of an IPv4 backend: connect as usual)."""
    source = transparent_source(client_ip, "::" if ":" in client_ip else "0.0.0.0")
    assert source is not None
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    try:
        infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return None
    if not infos:
        return None
    address = infos[0][4]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        make_transparent(sock)
        sock.bind((source, 0))
        await loop.sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


async def dial(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], asyncio.BaseProtocol],
    host: str,
    port: int,
    client_ip: str | None,
) -> None:
    """`loop.create_connection(factory, host, port)`, from `client_ip` when
    given (transparent mode) and the backend has an address of its family."""
    if client_ip:
        sock = await connect_from(loop, host, port, client_ip)
        if sock is not None:
            try:
                await loop.create_connection(factory, sock=sock)
            except BaseException:
                sock.close()
                raise
            return
    await loop.create_connection(factory, host, port)


# -- the host ------------------------------------------------------------------------


def _capabilities() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def _sysctl(name: str) -> str:
    try:
        with open(f"/proc/sys/{name.replace('.', '/')}", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def missing(install: bool) -> list[str]:
    """What this host lacks for transparent mode, one sentence each (none: ready)."""
    out = []
    if not _capabilities() & (1 << CAP_NET_ADMIN):
        out.append(
            "CAP_NET_ADMIN (run as root, or give it: AmbientCapabilities=CAP_NET_ADMIN"
            " in the systemd unit): binding to a client's address needs it"
            + (", and so do the nftables table and the routing rule" if install else "")
        )
    if _sysctl("net.ipv4.ip_forward") != "1":
        out.append(
            "net.ipv4.ip_forward = 1 (the backends route through this host: their"
            " traffic to anyone but ftplb is forwarded)"
        )
    if install:
        for tool in ("nft", "ip"):
            if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
                out.append(f"the `{tool}` command (Debian: nftables, iproute2)")
    return out


def _run(argv: list[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
    tool = shutil.which(argv[0]) or f"/usr/sbin/{argv[0]}"
    return subprocess.run(
        [tool, *argv[1:]], input=input, capture_output=True, text=True, timeout=30
    )


def install() -> None:
    """Load the table and the rule, replacing any left by a crashed ftplb. All
    or nothing: a failure removes what was done and raises."""
    remove(quiet=True)
    done = _run(["nft", "-f", "-"], input=transparent_nft())
    if done.returncode != 0:
        raise TransparentError(f"nft -f: {done.stderr.strip()}")
    for argv in transparent_routes():
        done = _run(argv)
        if done.returncode != 0:
            remove(quiet=True)
            raise TransparentError(f"{' '.join(argv)}: {done.stderr.strip()}")
    log.info(
        "transparent mode: nftables table inet %s and routing rule %s loaded",
        TRANSPARENT_TABLE,
        transparent_routes()[0][4],
    )


def remove(quiet: bool = False) -> None:
    """Take down exactly what install() set up (what is not there is skipped)."""
    table = f"inet {TRANSPARENT_TABLE}"
    _run(["nft", "-f", "-"], input=f"table {table}\ndelete table {table}\n")
    for argv in transparent_removal():
        # A rule is deleted only while one of ours is there (never another's).
        while _run(argv).returncode == 0 and "rule" in argv:
            pass
    if not quiet:
        log.info("transparent mode: nftables table and routing rule removed")
