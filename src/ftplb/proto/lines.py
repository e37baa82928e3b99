"""Bounded CRLF line reading and multi-line FTP reply assembly (RFC 959 4.2).

Both readers return what they found as values, in order: a line (or reply)
or an error value that carries the reply to send. Nothing is raised in the
middle of a chunk, so the lines before a bad one and after it are kept (h11's
style).
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_LINE = 2048
DEFAULT_MAX_REPLY_LINES = 100_000
"""A STAT of a big directory comes over the control connection: allow it."""
DEFAULT_MAX_REPLY_BYTES = 4 << 20


@dataclass(frozen=True)
class LineTooLong:
    """A line passed `limit` bytes: it is dropped up to its line feed."""

    limit: int

    @property
    def reply(self) -> bytes:
        return b"500 Line too long.\r\n"

    def __str__(self) -> str:
        return f"line longer than {self.limit} bytes"


class LineReader:
    """Splits a byte stream into lines ended by LF (CRLF or bare LF), one at a time.

    `feed` only stores; `next` takes the next complete line, a `LineTooLong`,
    or None when no complete line is buffered. A line may hold `max_line` bytes
    besides its line ending. A longer one is reported once, when it is found,
    and everything up to its LF is discarded: the rest of an over-long line is
    never read as a command. What is kept of an unfinished line is at most
    `max_line + 1` bytes; complete lines wait in the buffer until taken (the
    caller stops reading from its socket meanwhile).
    """

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._pos = 0
        self._skipping = False
        """Inside an over-long line already reported: discard up to its LF."""

    def feed(self, data: bytes) -> None:
        if self._skipping:
            end = data.find(b"\n")
            if end < 0:
                return
            self._skipping = False
            data = data[end + 1 :]
        self._buf += data

    def next(self) -> bytes | LineTooLong | None:
        buf = self._buf
        end = buf.find(b"\n", self._pos)
        if end < 0:
            self._compact()
            if self._overflowing():
                buf.clear()
                self._skipping = True
                return LineTooLong(self.max_line)
            return None
        start = self._pos
        self._pos = end + 1
        stop = end - 1 if end > start and buf[end - 1] == 0x0D else end
        if stop - start > self.max_line:
            return LineTooLong(self.max_line)
        return bytes(buf[start:stop])

    def _overflowing(self) -> bool:
        """The unfinished line is already too long: it may hold max_line bytes
        and the CR of its CRLF."""
        pending = len(self._buf) - self._pos
        return pending > self.max_line + 1 or (pending > self.max_line and self._buf[-1] != 0x0D)

    def _compact(self) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0

    @property
    def has_line(self) -> bool:
        """A complete line (or an over-long one) is waiting to be taken."""
        return self._buf.find(b"\n", self._pos) >= 0 or self._overflowing()

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def lines(self) -> list[bytes | LineTooLong]:
        """Every complete line buffered now (for readers that need no pacing)."""
        out: list[bytes | LineTooLong] = []
        while (item := self.next()) is not None:
            out.append(item)
        return out


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass(frozen=True)
class BadReply:
    """The peer's replies stopped making sense; what follows is not read."""

    reason: str

    def __str__(self) -> str:
        return self.reason


class ReplyReader:
    """Assembles FTP replies, single ('220 text') and multi-line ('220-...' to '220 ...').

    `feed` returns the replies complete so far, in order, and at most one
    `BadReply` last: after it the reader stays failed (the stream is no
    longer in step)."""

    def __init__(
        self,
        max_line: int = DEFAULT_MAX_LINE,
        max_lines: int = DEFAULT_MAX_REPLY_LINES,
        max_bytes: int = DEFAULT_MAX_REPLY_BYTES,
    ) -> None:
        self._lines = LineReader(max_line)
        self._max_lines = max_lines
        self._max_bytes = max_bytes
        self._pending: list[str] = []
        self._bytes = 0
        self._code = 0
        self.failed: BadReply | None = None

    def feed(self, data: bytes) -> list[Reply | BadReply]:
        if self.failed is not None:
            return []
        self._lines.feed(data)
        replies: list[Reply | BadReply] = []
        while (raw := self._lines.next()) is not None:
            result = self._line(raw)
            if isinstance(result, BadReply):
                self.failed = result
                replies.append(result)
                break
            if result is not None:
                replies.append(result)
        return replies

    def _line(self, raw: bytes | LineTooLong) -> Reply | BadReply | None:
        if isinstance(raw, LineTooLong):
            return BadReply(f"reply {raw}")
        # surrogateescape: non-UTF-8 bytes (file names) survive a round trip.
        line = raw.decode("utf-8", "surrogateescape")
        if not self._pending:
            code = _reply_code(line)
            if code is None:
                return BadReply(f"malformed reply line {line[:40]!r}")
            if len(line) > 3 and line[3] == "-":
                self._code = code
                self._pending.append(line)
                return None
            if len(line) == 3 or line[3] == " ":
                return Reply(code, (line,))
            return BadReply(f"malformed reply line {line[:40]!r}")
        self._pending.append(line)
        self._bytes += len(line)
        if len(self._pending) > self._max_lines:
            return BadReply(f"reply longer than {self._max_lines} lines")
        if self._bytes > self._max_bytes:
            return BadReply(f"reply longer than {self._max_bytes} bytes")
        # RFC 959: the last line starts with the first line's code and a space.
        # Some servers (glftpd) end with another code: a line that is a code
        # and a space ends the reply too (curl reads replies so), and its code
        # is the reply's.
        code = _reply_code(line)
        if code is not None and (len(line) == 3 or line[3] == " "):
            done = Reply(code, tuple(self._pending))
            self._pending = []
            self._bytes = 0
            return done
        return None


def _reply_code(line: str) -> int | None:
    head = line[:3]
    if len(head) != 3 or not head.isdigit() or not head.isascii() or head[0] not in "12345":
        return None
    return int(head)
