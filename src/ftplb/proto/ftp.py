"""FTP commands and replies as values: parse client lines, format replies."""

from __future__ import annotations

import re
from dataclasses import dataclass

IAC = 0xFF
# Telnet commands that take an option byte (WILL, WONT, DO, DONT).
_IAC_WITH_OPTION = {0xFB, 0xFC, 0xFD, 0xFE}

# Commands that open a data connection.
TRANSFER_COMMANDS = frozenset({"RETR", "STOR", "STOU", "APPE", "LIST", "NLST", "MLSD"})
UPLOAD_COMMANDS = frozenset({"STOR", "STOU", "APPE"})


@dataclass(frozen=True)
class Command:
    verb: str
    """Upper-cased command name."""
    arg: str
    """Everything after the first space, as sent (may be empty)."""

    def line(self) -> bytes:
        text = f"{self.verb} {self.arg}" if self.arg else self.verb
        # surrogateescape: a non-UTF-8 file name goes out as it came in.
        return text.encode("utf-8", "surrogateescape") + b"\r\n"


def strip_telnet(line: bytes) -> bytes:
    """Remove Telnet IAC sequences (RFC 854) from a command line; IAC IAC is a literal 0xFF.

    Clients send `IAC IP IAC DM` (as urgent data) before ABOR.
    """
    if IAC not in line:
        return line
    out = bytearray()
    i = 0
    n = len(line)
    while i < n:
        b = line[i]
        if b != IAC:
            out.append(b)
            i += 1
            continue
        nxt = line[i + 1] if i + 1 < n else None
        if nxt == IAC:
            out.append(IAC)
            i += 2
        elif nxt in _IAC_WITH_OPTION:
            i += 3
        else:
            i += 2
    return bytes(out)


@dataclass(frozen=True)
class BadCommand:
    """A client line that is refused before anyone reads it as a command."""

    reply: bytes
    reason: str


_VERB = re.compile(r"[A-Za-z]{1,16}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def parse_command(line: bytes) -> Command | BadCommand:
    """A client command line (without its LF), or why it is refused.

    A verb is identified as servers do (case-insensitive, trailing whitespace
    ignored), and a line that still holds a control byte (CR, NUL, TAB, ...)
    is refused here: a backend that strips what we did not would obey a
    command we never recognised (`PASV\\r` reached vsftpd as PASV). An odd
    but clean verb is the backend's to refuse."""
    text = strip_telnet(line).decode("utf-8", "surrogateescape")
    # A Synch sent as urgent data can leave a bare DM byte (0xF2) in front.
    text = text.lstrip("\x00\udcf2 ").rstrip("\r")
    verb, _, arg = text.partition(" ")
    if _CONTROL.search(text):
        return BadCommand(
            reply(500, "Control characters are not allowed in commands."),
            f"command with a control character refused: {text[:40]!r}",
        )
    if not _VERB.fullmatch(verb):
        return BadCommand(
            reply(500, "Syntax error, command unrecognized."),
            f"malformed command refused: {text[:40]!r}",
        )
    return Command(verb.upper(), arg)


def reply(code: int, text: str) -> bytes:
    """One reply; text with newlines becomes a multi-line reply."""
    lines = text.split("\n")
    if len(lines) == 1:
        return f"{code} {text}\r\n".encode()
    body = [f"{code}-{lines[0]}"] + [f" {x}" for x in lines[1:-1]] + [f"{code} {lines[-1]}"]
    return ("\r\n".join(body) + "\r\n").encode()
