"""Bounded line reading and FTP reply assembly."""

from __future__ import annotations

import pytest

from ftplb.errors import ProtocolError
from ftplb.proto.lines import LineReader, Reply, ReplyReader


def test_lines_across_chunks() -> None:
    r = LineReader()
    assert r.feed(b"USER al") == []
    assert r.feed(b"ice\r\nPASS x\r\nNO") == [b"USER alice", b"PASS x"]
    assert r.feed(b"OP\n") == [b"NOOP"]


def test_over_long_line_raises_500_and_reading_goes_on() -> None:
    r = LineReader(max_line=10)
    with pytest.raises(ProtocolError) as info:
        r.feed(b"X" * 11)
    assert info.value.reply.startswith("500 ")
    assert r.feed(b"NOOP\r\n") == [b"NOOP"]


def test_over_long_line_in_one_chunk_is_dropped() -> None:
    r = LineReader(max_line=10)
    with pytest.raises(ProtocolError):
        r.feed(b"Y" * 30 + b"\r\n")
    assert r.feed(b"QUIT\r\n") == [b"QUIT"]


def test_single_and_multi_line_replies() -> None:
    r = ReplyReader()
    assert r.feed(b"220 ready\r\n") == [Reply(220, ("220 ready",))]
    assert r.feed(b"211-Features:\r\n EPSV\r\n") == []
    assert r.feed(b"211-not the end\r\n211 End\r\n") == [
        Reply(211, ("211-Features:", " EPSV", "211-not the end", "211 End"))
    ]


@pytest.mark.parametrize("bad", [b"hello\r\n", b"22 short\r\n", b"220x\r\n", b"620 no\r\n"])
def test_malformed_reply(bad: bytes) -> None:
    with pytest.raises(ProtocolError):
        ReplyReader().feed(bad)


def test_reply_line_count_is_bounded() -> None:
    r = ReplyReader(max_lines=5)
    with pytest.raises(ProtocolError):
        r.feed(b"220-a\r\n" + b" more\r\n" * 10)
