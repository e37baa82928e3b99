"""What an inspect session remembers: its settings, where it is, and what the
backend's next final reply answers (proto/session.py acts on them)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ftplb.config.model import BackendTLSMode
from ftplb.proto.ftp import Command
from ftplb.proto.lines import Reply


@dataclass(frozen=True)
class SessionSettings:
    client: tuple[str, int]
    """The client's address as seen on the control connection."""
    public_address: str
    """What PASV replies carry."""
    balance_by_user: bool = False
    """Greet the client ourselves and pick the backend after USER."""
    login_timeout: float = 60.0
    idle_timeout: float = 600.0
    greeting_timeout: float = 10.0
    """Seconds a connected backend has to greet; then another backend is tried."""
    max_line: int = 2048
    greeting: str = "ftplb ready."
    tls: bool = False
    """The balancer has a certificate: AUTH TLS, PBSZ and PROT are answered here."""
    tls_required: bool = False
    """Refuse USER before AUTH TLS."""
    implicit_tls: bool = False
    """The control connection is TLS from its first byte (port 990)."""
    backend_tls: BackendTLSMode = "off"
    """TLS toward the backend: "off", "on", or "match" (when the client uses TLS).
    The session sends AUTH TLS, PBSZ 0 and PROT P itself; the client never sees them."""


class Phase(Enum):
    NEW = "new"
    AWAIT_USER = "await user"
    """Balancing by user: we greeted; the backend is chosen after USER."""
    CONNECTING = "connecting"
    GREETING = "greeting"
    """Connected; the backend's 220 is still to come."""
    READY = "ready"
    CLOSED = "closed"


class Wait(Enum):
    """What the client's next commands wait for (they stay in the line buffer)."""

    NOTHING = "nothing"
    BACKEND = "backend"
    """A backend to connect and greet."""
    PASSIVE = "passive"
    """The backend's answer to our EPSV/PASV (and, for the client's, our listener)."""
    CLIENT_DATA = "client data"
    """Active mode: our connection to the client."""
    BACKEND_TLS = "backend TLS"
    """Our AUTH TLS, handshake, PBSZ and PROT toward the backend."""


class TLSStep(Enum):
    AUTH = "AUTH TLS"
    PBSZ = "PBSZ"
    PROT = "PROT"


# --- what the backend's next final reply answers ----------------------------


@dataclass(frozen=True)
class Greeting:
    pass


@dataclass(frozen=True)
class Forwarded:
    command: Command


@dataclass(frozen=True)
class OurPassive:
    """Our own EPSV or PASV: for the client's PASV/EPSV (`transfer` None), or to
    carry an active-mode transfer (`transfer`, sent once the address is known)."""

    verb: str
    transfer: Command | None = None


@dataclass(frozen=True)
class BackendTLSStep:
    step: TLSStep


Expectation = Greeting | Forwarded | OurPassive | BackendTLSStep


@dataclass
class TLSState:
    client: bool = False
    """The client's control connection is TLS."""
    pbsz: bool = False
    private_data: bool = False
    """PROT P: the client's data connections are TLS."""
    backend: bool = False
    """The backend control connection is TLS, with PROT P: data to it is TLS too."""
    greeting_after: Reply | None = None
    """The backend's greeting, held until its TLS is up (backend_tls = "on")."""


@dataclass
class Transfer:
    command: Command
    started: float
