"""Hypothesis: codecs round-trip; any bytes parse or raise ProtocolError, whole or byte by byte."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from ftplb.errors import ProtocolError
from ftplb.proto.lines import BadReply, LineReader, LineTooLong, Reply, ReplyReader
from ftplb.proto.proxy_protocol import V2_SIGNATURE, encode_v1, encode_v2, parse_header

ports = st.integers(0, 65535)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str).filter(lambda a: ipaddress.IPv6Address(a).ipv4_mapped is None)
endpoints = st.one_of(
    st.tuples(st.tuples(v4, ports), st.tuples(v4, ports)),
    st.tuples(st.tuples(v6, ports), st.tuples(v6, ports)),
)
# Inputs that look like headers often enough to reach deep branches.
header_like = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda tail: b"PROXY " + tail, st.binary(max_size=120)),
    st.builds(lambda tail: V2_SIGNATURE + tail, st.binary(max_size=80)),
    # Complete headers, and what follows them on the connection.
    st.builds(
        lambda ends, encode, tail: encode(*ends) + tail,
        endpoints,
        st.sampled_from([encode_v1, encode_v2]),
        st.binary(max_size=20),
    ),
)


@given(endpoints, st.sampled_from([encode_v1, encode_v2]), st.binary(max_size=64))
def test_proxy_round_trip(ends, encode, trailer) -> None:  # type: ignore[no-untyped-def]
    src, dst = ends
    raw = encode(src, dst)
    parsed = parse_header(raw + trailer)
    assert parsed is not None
    header, length = parsed
    assert length == len(raw)
    assert header.source == src and header.destination == dst


@given(header_like)
@settings(max_examples=500)
def test_proxy_any_bytes_parse_or_raise_whole_or_byte_by_byte(data: bytes) -> None:
    def outcome(buf: bytes) -> object:
        try:
            return parse_header(buf)
        except ProtocolError:
            return "error"

    whole = outcome(data)
    # Fed one byte at a time (as a peeking reader sees it): once a prefix is
    # complete or wrong, every longer prefix says the same, the whole included.
    settled: object = None
    settled_at = len(data)
    for i in range(1, len(data)):
        result = outcome(data[:i])
        if settled is not None:
            assert result == settled
        elif result is not None:
            settled, settled_at = result, i
    if settled is not None:
        assert whole == settled
    if isinstance(whole, tuple):
        # A header is recognised when its last byte arrives: not from fewer bytes.
        assert whole[1] == settled_at
    else:
        assert whole in (None, "error")


@given(st.lists(st.binary(max_size=50), max_size=20), st.integers(8, 64))
def test_line_reader_never_holds_more_than_its_limit(chunks: list[bytes], limit: int) -> None:
    reader = LineReader(max_line=limit)
    for chunk in chunks:
        reader.feed(chunk)
        for line in reader.lines():
            assert isinstance(line, LineTooLong) or len(line) <= limit
        assert reader.buffered <= limit + 1


@given(st.binary(max_size=300), st.integers(4, 40))
def test_line_reader_same_lines_whole_or_byte_by_byte(data: bytes, limit: int) -> None:
    def run(pieces: list[bytes]) -> list[bytes | LineTooLong]:
        reader = LineReader(max_line=limit)
        out: list[bytes | LineTooLong] = []
        for piece in pieces:
            reader.feed(piece)
            out.extend(reader.lines())
        return out

    whole = run([data])
    # The same lines and the same errors, in the same order, however it arrives.
    assert run([data[i : i + 1] for i in range(len(data))]) == whole


@given(st.binary(max_size=300))
def test_reply_reader_same_replies_whole_or_byte_by_byte(data: bytes) -> None:
    def run(pieces: list[bytes]) -> list[Reply | BadReply]:
        reader = ReplyReader(max_line=100, max_lines=10)
        out: list[Reply | BadReply] = []
        for piece in pieces:
            out.extend(reader.feed(piece))
        return out

    whole = run([data])
    assert run([data[i : i + 1] for i in range(len(data))]) == whole
    assert all(not isinstance(r, BadReply) for r in whole[:-1])  # an error ends the stream
