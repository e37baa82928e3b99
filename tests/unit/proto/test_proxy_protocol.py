"""PROXY protocol v1/v2: encoding, decoding, and every way a header can be wrong."""

from __future__ import annotations

import pytest

from ftplb.errors import ProtocolError
from ftplb.proto.proxy_protocol import (
    V2_SIGNATURE,
    ProxyHeader,
    encode,
    encode_v1,
    encode_v2,
    parse_header,
)


def test_v1_tcp4_exact_bytes() -> None:
    assert encode_v1(("192.0.2.1", 5000), ("198.51.100.2", 21)) == (
        b"PROXY TCP4 192.0.2.1 198.51.100.2 5000 21\r\n"
    )


def test_v1_tcp6_and_unknown() -> None:
    assert encode_v1(("::1", 1), ("2001:db8::2", 21)) == b"PROXY TCP6 ::1 2001:db8::2 1 21\r\n"
    assert encode_v1(None, None) == b"PROXY UNKNOWN\r\n"


def test_v1_mixed_families_are_unified() -> None:
    # A v4 client reaching a dual-stack listener shows up as ::ffff:a.b.c.d.
    assert encode_v1(("::ffff:192.0.2.1", 7), ("192.0.2.2", 21)) == (
        b"PROXY TCP4 192.0.2.1 192.0.2.2 7 21\r\n"
    )
    assert encode_v1(("2001:db8::1", 7), ("192.0.2.2", 21)) == (
        b"PROXY TCP6 2001:db8::1 ::ffff:c000:202 7 21\r\n"
    )


def test_v2_tcp4_exact_bytes() -> None:
    header = encode_v2(("192.0.2.1", 5000), ("198.51.100.2", 21))
    assert header == (
        V2_SIGNATURE
        + bytes([0x21, 0x11, 0, 12])
        + bytes([192, 0, 2, 1, 198, 51, 100, 2])
        + (5000).to_bytes(2, "big")
        + (21).to_bytes(2, "big")
    )


def test_v2_local() -> None:
    assert encode_v2(None, None) == V2_SIGNATURE + bytes([0x20, 0x00, 0, 0])
    assert parse_header(encode_v2(None, None)) == (ProxyHeader(2, family="LOCAL"), 16)


@pytest.mark.parametrize("enc", [encode_v1, encode_v2])
@pytest.mark.parametrize(
    ("src", "dst"),
    [(("10.1.2.3", 65535), ("10.0.0.1", 1)), (("2001:db8::5", 40000), ("2001:db8::1", 21))],
)
def test_round_trip_with_trailing_bytes(enc, src, dst) -> None:  # type: ignore[no-untyped-def]
    raw = enc(src, dst)
    header, length = parse_header(raw + b"USER x\r\n")  # type: ignore[misc]
    assert length == len(raw)
    assert header.source == src and header.destination == dst


def test_encode_off_is_empty() -> None:
    assert encode("off", ("1.2.3.4", 1), ("1.2.3.4", 2)) == b""


@pytest.mark.parametrize(
    "raw", [b"", b"P", b"PROXY TCP4 1.2.3.4", V2_SIGNATURE[:5], V2_SIGNATURE + b"\x21\x11\x00\x0c"]
)
def test_incomplete_needs_more(raw: bytes) -> None:
    assert parse_header(raw) is None


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\n",
        b"PROXZ TCP4",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 2\r\n",
        b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
        b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 \xff 2\r\n",
        b"PROXY " + b"9" * 120,
        V2_SIGNATURE + b"\x11\x11\x00\x0c" + b"\0" * 12,  # version 1 in a v2 frame
        V2_SIGNATURE + b"\x22\x11\x00\x0c" + b"\0" * 12,  # command 2
        V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\0" * 4,  # TCP4 too short
        V2_SIGNATURE + b"\x21\x21\x00\x10" + b"\0" * 16,  # TCP6 too short
        V2_SIGNATURE + b"\x21\x51\x00\x00",  # family 5
        V2_SIGNATURE + b"\x21\x11\x20\x00",  # 8 KiB payload
        b"\r\n\r\nX",
    ],
)
def test_malformed_raises(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_header(raw)


def test_v2_tlvs_are_read_in_order() -> None:
    raw = encode_v2(("192.0.2.1", 1), ("192.0.2.2", 2))
    tlv = b"\x04\x00\x03abc"  # PP2_TYPE_NOOP
    body_len = int.from_bytes(raw[14:16], "big") + len(tlv)
    raw = raw[:14] + body_len.to_bytes(2, "big") + raw[16:] + tlv
    header, length = parse_header(raw + b"rest")  # type: ignore[misc]
    assert length == len(raw) and header.source == ("192.0.2.1", 1)
    assert header.tlvs == ((4, b"abc"),)
    ours = encode_v2(("2001:db8::1", 1), ("2001:db8::2", 2), ((0xE0, b"x" * 40), (1, b"")))
    assert parse_header(ours) == (
        ProxyHeader(2, ("2001:db8::1", 1), ("2001:db8::2", 2), tlvs=((0xE0, b"x" * 40), (1, b""))),
        len(ours),
    )
    # A TLV longer than what is left ends the list; the header still counts.
    cut = raw[:14] + (body_len + 5).to_bytes(2, "big") + raw[16:] + tlv + b"\x05\x00\x09ab"
    assert parse_header(cut)[0].tlvs == ((4, b"abc"),)  # type: ignore[index]


def test_v2_unspec_and_unix_use_the_socket_peer() -> None:
    for family, name in ((0x00, "UNSPEC"), (0x31, "UNIX")):
        raw = V2_SIGNATURE + bytes([0x21, family, 0, 0])
        assert parse_header(raw) == (ProxyHeader(2, family=name), 16)
