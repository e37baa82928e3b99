"""Bounded CRLF line reading and multi-line FTP reply assembly (RFC 959 4.2)."""

from __future__ import annotations

from dataclasses import dataclass

from ftplb.errors import ProtocolError

DEFAULT_MAX_LINE = 2048
DEFAULT_MAX_REPLY_LINES = 1000


class LineReader:
    """Splits a byte stream into lines ended by LF (CRLF or bare LF).

    A line may hold `max_line` bytes besides its line ending; a longer one raises
    ProtocolError (the caller decides whether to answer 500 or to close) and is
    dropped, so at most `max_line + 1` bytes are ever buffered.
    """

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        self.max_line = max_line
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        lines: list[bytes] = []
        start = 0
        while True:
            end = self._buf.find(b"\n", start)
            if end < 0:
                break
            stop = end - 1 if end > start and self._buf[end - 1] == 0x0D else end
            if stop - start > self.max_line:
                del self._buf[: end + 1]
                raise ProtocolError(f"line longer than {self.max_line} bytes", "500 Line too long.")
            lines.append(bytes(self._buf[start:stop]))
            start = end + 1
        del self._buf[:start]
        # An unfinished line may hold max_line bytes and the CR of its CRLF.
        pending = len(self._buf)
        if pending > self.max_line + 1 or (pending > self.max_line and self._buf[-1] != 0x0D):
            self._buf.clear()
            raise ProtocolError(f"line longer than {self.max_line} bytes", "500 Line too long.")
        return lines


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


class ReplyReader:
    """Assembles FTP replies, single ('220 text') and multi-line ('220-...' to '220 ...')."""

    def __init__(
        self, max_line: int = DEFAULT_MAX_LINE, max_lines: int = DEFAULT_MAX_REPLY_LINES
    ) -> None:
        self._lines = LineReader(max_line)
        self._max_lines = max_lines
        self._pending: list[str] = []
        self._code = 0

    def feed(self, data: bytes) -> list[Reply]:
        replies: list[Reply] = []
        for raw in self._lines.feed(data):
            # surrogateescape: non-UTF-8 bytes (file names) survive a round trip.
            line = raw.decode("utf-8", "surrogateescape")
            if not self._pending:
                code = _reply_code(line)
                if len(line) > 3 and line[3] == "-":
                    self._code = code
                    self._pending.append(line)
                elif len(line) == 3 or line[3] == " ":
                    replies.append(Reply(code, (line,)))
                else:
                    raise ProtocolError(f"malformed reply line {line[:40]!r}")
                continue
            self._pending.append(line)
            if len(self._pending) > self._max_lines:
                raise ProtocolError(f"reply longer than {self._max_lines} lines")
            if line.startswith(f"{self._code} ") or line == str(self._code):
                replies.append(Reply(self._code, tuple(self._pending)))
                self._pending = []
        return replies


def _reply_code(line: str) -> int:
    head = line[:3]
    if len(head) != 3 or not head.isdigit() or not head.isascii() or head[0] not in "12345":
        raise ProtocolError(f"malformed reply line {line[:40]!r}")
    return int(head)
