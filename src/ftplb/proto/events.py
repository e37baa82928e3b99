"""What happens to an inspect session, as values: `InspectSession.handle(event)`.

Every event carries `now` (seconds of the I/O layer's monotonic clock): the
core never reads a clock, so tests drive time by hand.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Start:
    """The client's control connection was accepted (and admitted)."""

    now: float


@dataclass(frozen=True)
class ClientData:
    data: bytes
    now: float


@dataclass(frozen=True)
class Resume:
    """Come back for client lines left waiting (the core said `runnable`)."""

    now: float


@dataclass(frozen=True)
class ClientClosed:
    now: float


@dataclass(frozen=True)
class BackendConnected:
    name: str
    host: str
    now: float


@dataclass(frozen=True)
class BackendFailed:
    """No backend could be reached (or none is left)."""

    reason: str
    now: float


@dataclass(frozen=True)
class BackendData:
    data: bytes
    now: float


@dataclass(frozen=True)
class BackendClosed:
    now: float


@dataclass(frozen=True)
class BackendTLSReady:
    now: float


@dataclass(frozen=True)
class BackendTLSFailed:
    reason: str
    now: float


@dataclass(frozen=True)
class DataListening:
    """Our listener for the client's passive connection is open on `port`."""

    port: int
    now: float


@dataclass(frozen=True)
class DataListenFailed:
    now: float


@dataclass(frozen=True)
class DataClientConnected:
    """Active mode: our TCP connection to the client exists."""

    now: float


@dataclass(frozen=True)
class DataClientAccepted:
    """Passive mode: the client connected to our listener; the backend's side
    is being connected."""

    now: float


@dataclass(frozen=True)
class DataBackendConnected:
    """Our data connection to the backend's passive port exists (its TLS, if
    any, may still be on its way)."""

    now: float


@dataclass(frozen=True)
class DataRefused:
    """The client's data connection was refused (a TLS session not resumed, say)."""

    reason: str
    now: float


@dataclass(frozen=True)
class DataOpened:
    """Both sides of the data channel are connected and joined."""

    now: float


@dataclass(frozen=True)
class DataFailed:
    """A data channel ended without ever joining its two sides."""

    now: float


@dataclass(frozen=True)
class DataClosed:
    """A data channel ended: `bytes_up` client->backend, `bytes_down` backend->client."""

    bytes_up: int
    bytes_down: int
    now: float


@dataclass(frozen=True)
class Tick:
    """The deadline the core gave (`next_deadline`) has come."""

    now: float


Event = (
    Start
    | ClientData
    | Resume
    | ClientClosed
    | BackendConnected
    | BackendFailed
    | BackendData
    | BackendClosed
    | BackendTLSReady
    | BackendTLSFailed
    | DataListening
    | DataListenFailed
    | DataClientConnected
    | DataClientAccepted
    | DataBackendConnected
    | DataRefused
    | DataOpened
    | DataFailed
    | DataClosed
    | Tick
)
