"""Data-connection addresses: PASV 227, EPSV 229, PORT and EPRT (RFC 959, RFC 2428).

Parsers are strict and raise ProtocolError carrying the reply to send.
"""

from __future__ import annotations

import ipaddress
import re

from ftplb.errors import ProtocolError

_PASV_NUMBERS = re.compile(r"(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3})")
_PORT_ARG = re.compile(r"^\s*(\d{1,3}(?:\s*,\s*\d{1,3}){5})\s*$")
_EPSV_REPLY = re.compile(r"\((.)\1\1(\d{1,5})\1\)")


def _port_from(p1: int, p2: int, reply: str) -> int:
    if p1 > 255 or p2 > 255:
        raise ProtocolError("port byte above 255", reply)
    port = p1 * 256 + p2
    if port == 0:
        raise ProtocolError("port 0", reply)
    return port


def _host_from(numbers: list[int], reply: str) -> str:
    if any(n > 255 for n in numbers):
        raise ProtocolError("address byte above 255", reply)
    return ".".join(map(str, numbers))


def parse_pasv_reply(text: str) -> tuple[str, int]:
    """(host, port) from a 227 reply's text: '227 Entering Passive Mode (h1,h2,h3,h4,p1,p2).'"""
    m = _PASV_NUMBERS.search(text)
    if not m:
        raise ProtocolError(f"no address in PASV reply {text[:80]!r}", "")
    nums = [int(x) for x in m.groups()]
    return _host_from(nums[:4], ""), _port_from(nums[4], nums[5], "")


def format_pasv_reply(host: str, port: int) -> bytes:
    ip = ipaddress.IPv4Address(host)
    h = str(ip).replace(".", ",")
    return f"227 Entering Passive Mode ({h},{port >> 8},{port & 0xFF}).\r\n".encode()


def parse_epsv_reply(text: str) -> int:
    """The port from a 229 reply: '229 Entering Extended Passive Mode (|||port|)'."""
    m = _EPSV_REPLY.search(text)
    if not m:
        raise ProtocolError(f"no port in EPSV reply {text[:80]!r}", "")
    port = int(m.group(2))
    if not 1 <= port <= 65535:
        raise ProtocolError(f"bad port in EPSV reply {text[:80]!r}", "")
    return port


def format_epsv_reply(port: int) -> bytes:
    return f"229 Entering Extended Passive Mode (|||{port}|)\r\n".encode()


def parse_port(arg: str) -> tuple[str, int]:
    """PORT h1,h2,h3,h4,p1,p2 -> (host, port)."""
    bad = "501 Syntax error in PORT: expected h1,h2,h3,h4,p1,p2."
    m = _PORT_ARG.match(arg)
    if not m:
        raise ProtocolError(f"malformed PORT {arg[:60]!r}", bad)
    nums = [int(x) for x in re.split(r"\s*,\s*", m.group(1))]
    return _host_from(nums[:4], bad), _port_from(nums[4], nums[5], bad)


def format_port(host: str, port: int) -> str:
    octets = str(ipaddress.IPv4Address(host)).split(".")
    return ",".join([*octets, str(port >> 8), str(port & 0xFF)])


def parse_eprt(arg: str) -> tuple[str, int]:
    """EPRT |proto|addr|port| -> (host, port); any printable delimiter (RFC 2428)."""
    bad = "501 Syntax error in EPRT: expected |proto|address|port|."
    if len(arg) < 2 or not (33 <= ord(arg[0]) <= 126):
        raise ProtocolError(f"malformed EPRT {arg[:60]!r}", bad)
    d = arg[0]
    parts = arg.split(d)
    if len(parts) != 5 or parts[0] or parts[4]:
        raise ProtocolError(f"malformed EPRT {arg[:60]!r}", bad)
    proto, addr, port_text = parts[1], parts[2], parts[3]
    if proto not in ("1", "2"):
        raise ProtocolError(
            f"EPRT network protocol {proto[:10]!r}",
            "522 Network protocol not supported, use (1,2).",
        )
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise ProtocolError(f"bad EPRT address {addr[:60]!r}", bad) from None
    if ip.version != (4 if proto == "1" else 6):
        raise ProtocolError(f"EPRT address {addr} is not protocol {proto}", bad)
    if not port_text.isdigit() or not port_text.isascii() or not 1 <= int(port_text) <= 65535:
        raise ProtocolError(f"bad EPRT port {port_text[:10]!r}", bad)
    return str(ip), int(port_text)


def format_eprt(host: str, port: int) -> str:
    ip = ipaddress.ip_address(host)
    return f"|{1 if ip.version == 4 else 2}|{ip}|{port}|"


def same_host(a: str, b: str) -> bool:
    """Equal addresses, with IPv4-mapped IPv6 taken as IPv4."""
    try:
        x, y = ipaddress.ip_address(a), ipaddress.ip_address(b)
    except ValueError:
        return False
    if isinstance(x, ipaddress.IPv6Address) and x.ipv4_mapped:
        x = x.ipv4_mapped
    if isinstance(y, ipaddress.IPv6Address) and y.ipv4_mapped:
        y = y.ipv4_mapped
    return x == y


def hide(text: str, host: str, public: str) -> str:
    """`text` with the address `host` replaced by `public`, dotted and in PASV's
    comma form with a port after it (h1,h2,h3,h4,p1,p2); never inside a longer
    number (10.0.0.5 is not hidden in 10.0.0.55)."""
    text = re.sub(rf"(?<![\d.:]){re.escape(host)}(?![\d])", public, text)
    if "." in host and "." in public:
        commas = host.replace(".", ",")
        text = re.sub(rf"(?<![\d,]){re.escape(commas)}(?=,\d)", public.replace(".", ","), text)
    return text
