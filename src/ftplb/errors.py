"""The two kinds of mistakes ftplb reports: the operator's and the peer's."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration file is wrong: names the file, the field and the reason."""

    def __init__(self, file: str, field: str, reason: str) -> None:
        self.file = file
        self.field = field
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.file}: {self.field}" if self.field else self.file
        return f"{where}: {self.reason}"


class ProtocolError(Exception):
    """A peer sent bytes that do not parse.

    `reply` is what to answer (an FTP reply line without CRLF), or "" when the
    only sensible answer is to close the connection.
    """

    def __init__(self, message: str, reply: str = "") -> None:
        self.reply = reply
        super().__init__(message)
