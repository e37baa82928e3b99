"""Bounded line reading and FTP reply assembly: results and errors as values."""

from __future__ import annotations

import pytest

from ftplb.proto.lines import BadReply, LineReader, LineTooLong, Reply, ReplyReader


def lines(r: LineReader, data: bytes) -> list[bytes | LineTooLong]:
    r.feed(data)
    return r.lines()


def test_lines_across_chunks() -> None:
    r = LineReader()
    assert lines(r, b"USER al") == []
    assert lines(r, b"ice\r\nPASS x\r\nNO") == [b"USER alice", b"PASS x"]
    assert lines(r, b"OP\n") == [b"NOOP"]


def test_lines_are_taken_one_at_a_time() -> None:
    r = LineReader()
    r.feed(b"A\r\nB\r\n")
    assert r.has_line and r.next() == b"A"
    assert r.has_line and r.next() == b"B"
    assert not r.has_line and r.next() is None


def test_over_long_line_is_reported_once_and_dropped_to_its_line_feed() -> None:
    r = LineReader(max_line=10)
    assert lines(r, b"X" * 11) == [LineTooLong(10)]
    assert r.buffered == 0
    # The rest of that line, whatever its content, is never a line of its own.
    assert lines(r, b"HELP SITE") == []
    assert lines(r, b"\r\nNOOP\r\n") == [b"NOOP"]


def test_over_long_line_in_one_chunk_keeps_its_neighbours() -> None:
    r = LineReader(max_line=10)
    assert lines(r, b"NOOP\r\n" + b"Y" * 30 + b"\r\nQUIT\r\n") == [
        b"NOOP",
        LineTooLong(10),
        b"QUIT",
    ]


def test_a_line_of_exactly_the_limit_is_fine() -> None:
    r = LineReader(max_line=10)
    assert lines(r, b"Z" * 10 + b"\r") == []
    assert lines(r, b"\n") == [b"Z" * 10]


def test_single_and_multi_line_replies() -> None:
    r = ReplyReader()
    assert r.feed(b"220 ready\r\n") == [Reply(220, ("220 ready",))]
    assert r.feed(b"211-Features:\r\n EPSV\r\n") == []
    assert r.feed(b"211-not the end\r\n211 End\r\n") == [
        Reply(211, ("211-Features:", " EPSV", "211-not the end", "211 End"))
    ]


@pytest.mark.parametrize("bad", [b"hello\r\n", b"22 short\r\n", b"220x\r\n", b"620 no\r\n"])
def test_malformed_reply_comes_after_the_good_ones(bad: bytes) -> None:
    r = ReplyReader()
    out = r.feed(b"200 fine\r\n" + bad + b"200 never read\r\n")
    assert out[0] == Reply(200, ("200 fine",))
    assert len(out) == 2 and isinstance(out[1], BadReply)
    assert r.feed(b"200 later\r\n") == []  # out of step for good


def test_reply_line_count_is_bounded() -> None:
    r = ReplyReader(max_lines=5)
    out = r.feed(b"220-a\r\n" + b" more\r\n" * 10)
    assert out == [BadReply("reply longer than 5 lines")]


def test_over_long_reply_line() -> None:
    r = ReplyReader(max_line=10)
    assert r.feed(b"220 " + b"x" * 20 + b"\r\n") == [BadReply("reply line longer than 10 bytes")]


def test_a_multi_line_reply_may_end_with_another_code() -> None:
    # glftpd ends some replies with another code than it began with.
    r = ReplyReader()
    assert r.feed(b"200-Command Successful.\r\n 1 line\r\n250 End\r\n") == [
        Reply(250, ("200-Command Successful.", " 1 line", "250 End"))
    ]


def test_a_thousand_line_reply_and_the_byte_bound() -> None:
    body = b"".join(b" file %d\r\n" % i for i in range(998))
    assert len(ReplyReader().feed(b"213-status\r\n" + body + b"213 End\r\n")[0].lines) == 1000
    out = ReplyReader(max_bytes=100).feed(b"213-x\r\n" + b" " + b"y" * 200 + b"\r\n")
    assert out == [BadReply("reply longer than 100 bytes")]
