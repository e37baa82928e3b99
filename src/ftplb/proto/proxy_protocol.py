"""PROXY protocol v1 (text) and v2 (binary), HAProxy's specification.

Pure functions: `encode_v1`/`encode_v2` build headers, `parse_header` reads one
from the start of a buffer. A receiver can peek at the socket, call
`parse_header`, and then consume exactly the header's length, so no byte that
follows the header is ever read by mistake.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import TypeAlias

from ftplb.errors import ProtocolError

IP: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107  # the spec's worst case, CRLF included
V2_MAX_PAYLOAD = 4096  # addresses plus TLVs; the spec allows more, nobody sends it
V2_FIXED = 16

_V2_CMD_LOCAL = 0x20
_V2_CMD_PROXY = 0x21
_V2_AF_UNSPEC = 0x00
_V2_TCP4 = 0x11
_V2_TCP6 = 0x21


@dataclass(frozen=True)
class ProxyHeader:
    """What a PROXY header says. `source` is None for v2 LOCAL and v1 UNKNOWN:
    the connection is the proxy's own (a health check), use the socket's peer."""

    version: int
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None
    family: str = ""
    """v2 without addresses: "LOCAL", "UNSPEC", "UDP" or "UNIX" (a receiver that
    serves TCP clients only may refuse the last two); else ""."""
    tlvs: tuple[tuple[int, bytes], ...] = ()
    """v2: the (type, value) pairs after the addresses, in order."""


def encode_v1(source: tuple[str, int] | None, destination: tuple[str, int] | None) -> bytes:
    """'PROXY TCP4 src dst sport dport\\r\\n', or 'PROXY UNKNOWN\\r\\n' without addresses."""
    if source is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    src = ipaddress.ip_address(source[0])
    dst = ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        src, dst = _same_family(src, dst)
    family = "TCP4" if src.version == 4 else "TCP6"
    line = f"PROXY {family} {src} {dst} {source[1]} {destination[1]}\r\n"
    return line.encode("ascii")


def encode_v2(
    source: tuple[str, int] | None,
    destination: tuple[str, int] | None,
    tlvs: tuple[tuple[int, bytes], ...] = (),
) -> bytes:
    """A v2 PROXY header (with `tlvs`, (type, value) pairs), or a v2 LOCAL
    header without addresses."""
    if source is None or destination is None:
        return V2_SIGNATURE + struct.pack("!BBH", _V2_CMD_LOCAL, _V2_AF_UNSPEC, 0)
    src = ipaddress.ip_address(source[0])
    dst = ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        src, dst = _same_family(src, dst)
    family = _V2_TCP4 if src.version == 4 else _V2_TCP6
    body = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    body += b"".join(struct.pack("!BH", kind, len(value)) + value for kind, value in tlvs)
    return V2_SIGNATURE + struct.pack("!BBH", _V2_CMD_PROXY, family, len(body)) + body


def encode(
    version: str, source: tuple[str, int] | None, destination: tuple[str, int] | None
) -> bytes:
    """The header for a config value "v1" / "v2"; b"" for "off"."""
    if version == "v1":
        return encode_v1(source, destination)
    if version == "v2":
        return encode_v2(source, destination)
    return b""


def _same_family(
    src: ipaddress.IPv4Address | ipaddress.IPv6Address,
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> tuple[
    ipaddress.IPv4Address | ipaddress.IPv6Address, ipaddress.IPv4Address | ipaddress.IPv6Address
]:
    """Both addresses in one family: unmap ::ffff:a.b.c.d, else map v4 into v6."""
    src4 = src.ipv4_mapped if isinstance(src, ipaddress.IPv6Address) else src
    dst4 = dst.ipv4_mapped if isinstance(dst, ipaddress.IPv6Address) else dst
    if src4 is not None and dst4 is not None:
        return src4, dst4
    as6 = [ipaddress.IPv6Address("::ffff:" + str(a)) if a.version == 4 else a for a in (src, dst)]
    return as6[0], as6[1]


def parse_header(buf: bytes) -> tuple[ProxyHeader, int] | None:
    """Parse a PROXY header at the start of `buf`.

    Returns (header, length) when complete, None when more bytes are needed,
    and raises ProtocolError when `buf` cannot start a valid header.
    """
    if not buf:
        return None
    if buf[0] == V2_SIGNATURE[0]:
        return _parse_v2(buf)
    if buf[0] == V1_PREFIX[0]:
        return _parse_v1(buf)
    raise ProtocolError("not a PROXY protocol header")


def _parse_v1(buf: bytes) -> tuple[ProxyHeader, int] | None:
    probe = buf[: len(V1_PREFIX)]
    if not V1_PREFIX.startswith(probe):
        raise ProtocolError("not a PROXY protocol header")
    end = buf.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if len(buf) >= V1_MAX_LENGTH:
            raise ProtocolError("PROXY v1 header longer than 107 bytes")
        if b"\n" in buf or b"\r" in buf[:-1]:
            raise ProtocolError("PROXY v1 header not ended by CRLF")
        return None
    try:
        line = buf[:end].decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("PROXY v1 header is not ASCII") from None
    parts = line.split(" ")
    if len(parts) < 2 or parts[0] != "PROXY":
        raise ProtocolError("malformed PROXY v1 header")
    if parts[1] == "UNKNOWN":
        return ProxyHeader(1), end + 2
    if parts[1] not in ("TCP4", "TCP6") or len(parts) != 6:
        raise ProtocolError("malformed PROXY v1 header")
    _, family, src, dst, sport, dport = parts
    version = 4 if family == "TCP4" else 6
    src_ip = _v1_address(src, version)
    dst_ip = _v1_address(dst, version)
    return ProxyHeader(1, (src_ip, _v1_port(sport)), (dst_ip, _v1_port(dport))), end + 2


def _v1_address(text: str, version: int) -> str:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise ProtocolError(f"bad address in PROXY v1 header: {text!r}") from None
    if ip.version != version:
        raise ProtocolError(f"address {text} does not match the PROXY v1 family")
    return str(ip)


def _v1_port(text: str) -> int:
    # The spec forbids leading zeros and signs; int() would accept them.
    if not text.isdigit() or not text.isascii() or (len(text) > 1 and text[0] == "0"):
        raise ProtocolError(f"bad port in PROXY v1 header: {text!r}")
    port = int(text)
    if port > 65535:
        raise ProtocolError(f"bad port in PROXY v1 header: {text!r}")
    return port


def _parse_v2(buf: bytes) -> tuple[ProxyHeader, int] | None:
    probe = buf[: len(V2_SIGNATURE)]
    if not V2_SIGNATURE.startswith(probe):
        raise ProtocolError("not a PROXY protocol header")
    if len(buf) < V2_FIXED:
        return None
    ver_cmd, family, length = struct.unpack_from("!BBH", buf, 12)
    if ver_cmd >> 4 != 2:
        raise ProtocolError(f"PROXY v2 header with version {ver_cmd >> 4}")
    if ver_cmd not in (_V2_CMD_LOCAL, _V2_CMD_PROXY):
        raise ProtocolError(f"PROXY v2 header with command {ver_cmd & 0xF}")
    if length > V2_MAX_PAYLOAD:
        raise ProtocolError(f"PROXY v2 header of {length} bytes is too long")
    total = V2_FIXED + length
    if len(buf) < total:
        return None
    body = buf[V2_FIXED:total]
    if ver_cmd == _V2_CMD_LOCAL:
        return ProxyHeader(2, family="LOCAL"), total
    if family == _V2_TCP4:
        if length < 12:
            raise ProtocolError("PROXY v2 TCP4 header too short")
        src = str(ipaddress.IPv4Address(body[0:4]))
        dst = str(ipaddress.IPv4Address(body[4:8]))
        sport, dport = struct.unpack_from("!HH", body, 8)
        rest = body[12:]
    elif family == _V2_TCP6:
        if length < 36:
            raise ProtocolError("PROXY v2 TCP6 header too short")
        src = str(ipaddress.IPv6Address(body[0:16]))
        dst = str(ipaddress.IPv6Address(body[16:32]))
        sport, dport = struct.unpack_from("!HH", body, 32)
        rest = body[36:]
    elif family >> 4 in (0, 1, 2, 3) and family & 0xF in (0, 1, 2):
        # UNSPEC, UDP or UNIX: the spec says accept and use the real peer.
        kind = "UNIX" if family >> 4 == 3 else "UDP" if family & 0xF == 2 else "UNSPEC"
        return ProxyHeader(2, family=kind), total
    else:
        raise ProtocolError(f"PROXY v2 header with unknown family 0x{family:02x}")
    return ProxyHeader(2, (src, sport), (dst, dport), tlvs=_tlvs(rest)), total


def _tlvs(rest: bytes) -> tuple[tuple[int, bytes], ...]:
    """The TLVs after the addresses; a malformed one ends the list (the spec
    lets a receiver ignore what it does not understand)."""
    out: list[tuple[int, bytes]] = []
    at = 0
    while at + 3 <= len(rest):
        kind, length = struct.unpack_from("!BH", rest, at)
        if at + 3 + length > len(rest):
            break
        out.append((kind, rest[at + 3 : at + 3 + length]))
        at += 3 + length
    return tuple(out)
