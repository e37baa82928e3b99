"""Forwarded data connections' signatures (io/forward.py): made and checked."""

from __future__ import annotations

import ipaddress

from ftplb.io.forward import SIGNATURE_TLV, signature_refusal, signed_header
from ftplb.proto.proxy_protocol import encode_v2, parse_header

SECRET = bytes(range(32))
CLIENT, DEST = ("198.51.100.7", 40123), ("10.0.0.5", 40001)


def header(raw: bytes):  # type: ignore[no-untyped-def]
    parsed = parse_header(raw)
    assert parsed is not None and parsed[1] == len(raw)
    return parsed[0]


def test_a_signed_header_names_the_client_and_passes_within_its_age() -> None:
    h = header(signed_header(SECRET, CLIENT, DEST, 1000.0))
    assert (h.source, h.destination) == (CLIENT, DEST)
    assert signature_refusal(SECRET, h, 1000.0) == ""
    assert signature_refusal(SECRET, h, 1029.0) == ""
    assert signature_refusal(SECRET, h, 1031.0) == "a stale signature"
    assert signature_refusal(SECRET, h, 969.0) == "a stale signature"


def test_mixed_families_are_signed_as_the_receiver_reads_them() -> None:
    h = header(signed_header(SECRET, ("2001:db8::7", 1), DEST, 5.0))
    assert h.destination is not None and h.destination[1] == 40001
    assert ipaddress.IPv6Address(h.destination[0]).ipv4_mapped == ipaddress.IPv4Address(DEST[0])
    assert signature_refusal(SECRET, h, 5.0) == ""


def test_forged_unsigned_or_foreign_headers_are_refused() -> None:
    good = header(signed_header(SECRET, CLIENT, DEST, 1000.0))
    assert signature_refusal(bytes(32), good, 1000.0) == "a wrong signature"
    assert signature_refusal(None, good, 1000.0).startswith("the cluster's secret")
    assert signature_refusal(SECRET, header(encode_v2(CLIENT, DEST)), 1000.0) == "no signature"
    # The signature of one connection on another client's header.
    stolen = dict(good.tlvs)[SIGNATURE_TLV]
    forged = header(encode_v2(("198.51.100.8", 40123), DEST, ((SIGNATURE_TLV, stolen),)))
    assert signature_refusal(SECRET, forged, 1000.0) == "a wrong signature"
    short = header(encode_v2(CLIENT, DEST, ((SIGNATURE_TLV, stolen[:39]),)))
    assert signature_refusal(SECRET, short, 1000.0) == "no signature"
    local = header(encode_v2(None, None))
    assert signature_refusal(SECRET, local, 1000.0) == "a forwarded connection without addresses"
