"""What the inspect core asks the I/O layer to do: one frozen value per action.

`InspectSession.handle(event)` returns a list of these, in the order they must
be carried out. None of them is a request for information: what the I/O layer
learns comes back as an event (proto/events.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class SendClient:
    data: bytes


@dataclass(frozen=True)
class SendBackend:
    data: bytes


@dataclass(frozen=True)
class AbortBackend:
    """Send the backend ABOR as RFC 959 asks: Telnet IP, then the Synch (IAC DM
    as urgent data), then the command. Servers that watch the control
    connection only for urgent data during a transfer (ProFTPD, vsftpd's
    async ABOR) see it; the others skip the Telnet bytes."""


@dataclass(frozen=True)
class ConnectBackend:
    """Pick a backend (by `user` when balancing by user, else by client address)
    and connect; answer with `BackendConnected` or `BackendFailed`."""

    user: str | None = None


@dataclass(frozen=True)
class Redispatch:
    """The backend never greeted properly: drop its connection (without a word to
    the client, who has heard nothing from it) and connect another backend
    (`BackendConnected` again), or answer `BackendFailed` if none is left."""

    reason: str


@dataclass(frozen=True)
class Close:
    """Flush what is queued for the client, then close every connection."""

    reason: str


@dataclass(frozen=True)
class StartClientTLS:
    """The 234 is queued: turn the client's control connection into TLS (we are the server)."""


@dataclass(frozen=True)
class StartBackendTLS:
    """The backend said 234 to our AUTH TLS: turn the backend control connection
    into TLS (we are the client). Answer with `BackendTLSReady` or `BackendTLSFailed`."""


@dataclass(frozen=True)
class ListenData:
    """Open a listener for the client's data connection (only `client_ip` may use it)
    and join what arrives to `backend`. Answer with `DataListening` or
    `DataListenFailed`. With `tls`, the client's side is TLS (PROT P); with
    `backend_tls`, the backend's side is TLS too, resuming the backend control
    connection's session."""

    backend: tuple[str, int]
    client_ip: str
    tls: bool = False
    backend_tls: bool = False


@dataclass(frozen=True)
class ConnectClientData:
    """Active mode, step 1: connect to the client's PORT/EPRT target (a new data
    channel; with `tls` the client's side is TLS, the client its TLS client).
    Answer with `DataClientConnected` once the TCP connection exists, or
    `DataFailed`. The backend hears of the transfer only after that: an upload
    whose data connection cannot be made must never reach it."""

    target: tuple[str, int]
    tls: bool = False


@dataclass(frozen=True)
class ConnectBackendData:
    """Active mode, step 2: connect the same channel to the backend's passive
    address (over TLS with `tls`, resuming the backend control connection's session)."""

    backend: tuple[str, int]
    tls: bool = False


@dataclass(frozen=True)
class CloseData:
    """Drop the current data channel and any listener."""


@dataclass(frozen=True)
class LoginResult:
    ok: bool
    user: str


@dataclass(frozen=True)
class Log:
    message: str
    level: Literal["info", "warning"] = "info"


@dataclass(frozen=True)
class Transferred:
    """A transfer ended (for the xferlog-style line and the counters)."""

    direction: Literal["upload", "download"]
    command: str
    file: str
    size: int
    duration: float


Cmd = (
    SendClient
    | SendBackend
    | AbortBackend
    | ConnectBackend
    | Redispatch
    | Close
    | StartClientTLS
    | StartBackendTLS
    | ListenData
    | ConnectClientData
    | ConnectBackendData
    | CloseData
    | LoginResult
    | Log
    | Transferred
)
