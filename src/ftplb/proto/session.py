"""The inspect-mode control session: events in, commands out.

`InspectSession` reads the client's commands and the backend's replies and
decides what each side hears. It answers data-channel negotiation itself: the
client's PASV/EPSV gets the balancer's own listener (after the backend has
given its passive address), the client's PORT/EPRT is checked and answered
here, and toward the backend the session always uses passive mode. Backends
never see PORT; clients never see a backend address. TLS is per side: the
client's AUTH TLS/PBSZ/PROT are answered here, and with `backend_tls` the
session sends its own AUTH TLS, PBSZ 0 and PROT P to the backend.

No sockets, no asyncio, no clock: every event method takes `now` where time
matters and returns the commands for the I/O layer to carry out.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field

from ftplb.errors import ProtocolError
from ftplb.proto import addresses
from ftplb.proto.ftp import TRANSFER_COMMANDS, UPLOAD_COMMANDS, Command, parse_command, reply
from ftplb.proto.lines import LineReader, Reply, ReplyReader

# --- commands for the I/O layer ------------------------------------------------


@dataclass(frozen=True)
class SendClient:
    data: bytes


@dataclass(frozen=True)
class SendBackend:
    data: bytes


@dataclass(frozen=True)
class ConnectBackend:
    """Pick a backend (by `user` when balancing by user, else by client address) and connect."""

    user: str | None = None


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
    into TLS (we are the client). Answer with `backend_tls_ready` or `backend_tls_failed`."""


@dataclass(frozen=True)
class ListenData:
    """Open a listener for the client's data connection (only `client_ip` may use it);
    join what arrives to `backend`. Answer with `data_listening` or `data_listen_failed`.
    With `tls`, the client's side is TLS (PROT P); with `backend_tls`, the backend's
    side is TLS too, resuming the backend control connection's session."""

    backend: tuple[str, int]
    client_ip: str
    tls: bool = False
    backend_tls: bool = False


@dataclass(frozen=True)
class ConnectBackendData:
    """Active mode, step 1: connect to the backend's passive address (over TLS
    with `tls`, resuming the backend control connection's session)."""

    backend: tuple[str, int]
    tls: bool = False


@dataclass(frozen=True)
class ConnectClientData:
    """Active mode, step 2 (the transfer has begun): connect to the client's PORT/EPRT target."""

    target: tuple[str, int]
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


@dataclass(frozen=True)
class Transferred:
    """A transfer ended (for the xferlog-style line and the counters)."""

    direction: str  # "upload" | "download"
    command: str
    file: str
    size: int
    duration: float


Cmd = (
    SendClient
    | SendBackend
    | ConnectBackend
    | Close
    | ListenData
    | ConnectBackendData
    | ConnectClientData
    | StartClientTLS
    | StartBackendTLS
    | CloseData
    | LoginResult
    | Log
    | Transferred
)


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
    max_line: int = 2048
    greeting: str = "ftplb ready."
    tls: bool = False
    """The balancer has a certificate: AUTH TLS, PBSZ and PROT are answered here."""
    tls_required: bool = False
    """Refuse USER before AUTH TLS."""
    implicit_tls: bool = False
    """The control connection is TLS from its first byte (port 990)."""
    backend_tls: str = "off"
    """TLS toward the backend: "off", "on", or "match" (when the client uses TLS).
    The session sends AUTH TLS, PBSZ 0 and PROT P itself; the client never sees them."""


@dataclass
class _Pending:
    """What to do with the backend's next final reply."""

    kind: str  # greeting | forward | passive | backend_auth | backend_pbsz | backend_prot
    command: Command | None = None
    purpose: str = ""  # passive: "client" or "active"
    verb: str = ""  # passive: what we sent, EPSV or PASV
    target: tuple[str, int] | None = None  # an active transfer: where the client listens


@dataclass
class _Transfer:
    command: Command
    started: float
    bytes_up: int = 0
    bytes_down: int = 0


@dataclass
class InspectSession:
    settings: SessionSettings
    user: str = ""
    logged_in: bool = False
    backend_name: str = ""
    backend_host: str = ""
    phase: str = "new"  # new | await_user | connecting | greeting | ready | closed
    login_failures: int = 0
    transfers: int = 0
    data_open: int = 0
    _client_lines: LineReader = field(init=False)
    _replies: ReplyReader = field(init=False)
    _pending: deque[_Pending] = field(default_factory=deque)
    _queue: deque[Command] = field(default_factory=deque)
    _blocked: str = ""
    _active_target: tuple[str, int] | None = None
    _client_passive_verb: str = ""
    _held_transfer: tuple[Command, tuple[str, int]] | None = None
    _backend_epsv: bool | None = None
    _epsv_all: bool = False
    _started: float = 0.0
    _last_activity: float = 0.0
    _transfer: _Transfer | None = None
    _client_connecting: bool = False
    _held: list[Cmd] = field(default_factory=list)
    _user_line: Command | None = None
    client_tls: bool = False
    prot_private: bool = False
    backend_tls: bool = False
    """The backend control connection is TLS, with PROT P: data to it is TLS too."""
    _pbsz: bool = False
    _greeting_after_tls: Reply | None = None
    _refusal: str = ""

    def __post_init__(self) -> None:
        self._client_lines = LineReader(self.settings.max_line)
        self._replies = ReplyReader(self.settings.max_line)
        self.client_tls = self.settings.implicit_tls

    # --- events ----------------------------------------------------------------

    def start(self, now: float) -> list[Cmd]:
        self._started = self._last_activity = now
        if self.settings.balance_by_user:
            self.phase = "await_user"
            return [SendClient(reply(220, self.settings.greeting))]
        self.phase = "connecting"
        # Commands the client pipelines before the backend greets wait.
        self._blocked = "backend"
        self._pending.append(_Pending("greeting"))
        return [ConnectBackend()]

    def backend_connected(self, name: str, host: str, now: float) -> list[Cmd]:
        self.backend_name = name
        self.backend_host = host
        self.phase = "greeting"
        self._last_activity = now
        return []

    def backend_failed(self, reason: str) -> list[Cmd]:
        self.phase = "closed"
        return [SendClient(reply(421, "Service not available")), Close(reason)]

    def backend_tls_ready(self) -> list[Cmd]:
        """Our TLS handshake with the backend is done: protect its data channel too."""
        self._pending.append(_Pending("backend_pbsz"))
        return [SendBackend(b"PBSZ 0\r\n")]

    def backend_tls_failed(self, reason: str) -> list[Cmd]:
        self.phase = "closed"
        return [SendClient(reply(421, "Service not available")), Close(f"backend TLS: {reason}")]

    def backend_closed(self) -> list[Cmd]:
        if self.phase == "closed":
            return []
        self.phase = "closed"
        return [Close("backend closed")]

    def client_data(self, data: bytes, now: float) -> list[Cmd]:
        self._last_activity = now
        out: list[Cmd] = []
        try:
            lines = self._client_lines.feed(data)
        except ProtocolError as exc:
            # The over-long line is dropped; the session goes on.
            out.append(SendClient(f"{exc.reply}\r\n".encode()))
            out.append(Log(f"client line refused: {exc}"))
            return out
        for raw in lines:
            if not raw.strip():
                continue
            self._queue.append(parse_command(raw))
        out.extend(self._drain_queue(now))
        return out

    def backend_data(self, data: bytes, now: float) -> list[Cmd]:
        self._last_activity = now
        try:
            replies = self._replies.feed(data)
        except ProtocolError as exc:
            self.phase = "closed"
            return [
                SendClient(reply(421, "Backend sent a malformed reply, closing.")),
                Close(f"backend protocol error: {exc}"),
            ]
        out: list[Cmd] = []
        for r in replies:
            out.extend(self._queue_behind_held(self._on_reply(r, now)))
        out.extend(self._drain_queue(now))
        return out

    def _queue_behind_held(self, cmds: list[Cmd]) -> list[Cmd]:
        """While a transfer's final reply is held, later replies wait behind it."""
        if not self._held:
            return cmds
        self._held.extend(c for c in cmds if isinstance(c, SendClient))
        return [c for c in cmds if not isinstance(c, SendClient)]

    def data_listening(self, port: int) -> list[Cmd]:
        """Our listener for the client's passive connection is open on `port`."""
        if self._client_passive_verb == "PASV":
            answer = addresses.format_pasv_reply(self.settings.public_address, port)
        else:
            answer = addresses.format_epsv_reply(port)
        self._unblock()
        # Commands the client sent meanwhile go out after our answer.
        return [SendClient(answer), *self._drain_queue(self._last_activity)]

    def data_listen_failed(self) -> list[Cmd]:
        self._unblock()
        failed = SendClient(reply(425, "Cannot open a passive data port, try again."))
        return [failed, *self._drain_queue(self._last_activity)]

    def data_refused(self, reason: str) -> list[Cmd]:
        """The client's data connection was refused (a TLS session not resumed, say).
        The backend's side was dropped too, so the transfer fails there: its final
        reply becomes our 522 (one reply per command, whenever the client sent it)."""
        self._refusal = reason
        return []

    def data_opened(self, now: float) -> list[Cmd]:
        self.data_open += 1
        self._client_connecting = False
        self._last_activity = now
        return self._release()

    def data_failed(self) -> list[Cmd]:
        """A data channel ended without ever joining its two sides."""
        self._client_connecting = False
        return self._release()

    def data_closed(self, bytes_up: int, bytes_down: int, now: float) -> list[Cmd]:
        """A data channel ended: `bytes_up` client->backend, `bytes_down` backend->client."""
        self.data_open = max(0, self.data_open - 1)
        self._last_activity = now
        out: list[Cmd] = []
        t = self._transfer
        if t is not None:
            self._transfer = None
            self.transfers += 1
            upload = t.command.verb in UPLOAD_COMMANDS
            direction = "upload" if upload else "download"
            size = bytes_up if upload else bytes_down
            out.append(Transferred(direction, t.command.verb, t.command.arg, size, now - t.started))
        return out

    def _release(self) -> list[Cmd]:
        """The client's data connection exists (or never will): the final reply may go."""
        if self._client_connecting:
            return []
        held, self._held = self._held, []
        return held

    def tick(self, now: float) -> list[Cmd]:
        if self.phase == "closed":
            return []
        s = self.settings
        if not self.logged_in and now - self._started >= s.login_timeout:
            self.phase = "closed"
            return [SendClient(reply(421, "Login timeout, closing.")), Close("login timeout")]
        if self.data_open == 0 and now - self._last_activity >= s.idle_timeout:
            self.phase = "closed"
            return [SendClient(reply(421, "Idle timeout, closing.")), Close("idle timeout")]
        return []

    def next_deadline(self) -> float:
        s = self.settings
        idle = self._last_activity + s.idle_timeout
        if not self.logged_in:
            return min(idle, self._started + s.login_timeout)
        return idle

    # --- client commands -------------------------------------------------------

    def _drain_queue(self, now: float) -> list[Cmd]:
        out: list[Cmd] = []
        while self._queue and not self._blocked and self.phase != "closed":
            out.extend(self._on_command(self._queue.popleft(), now))
        return out

    def _on_command(self, cmd: Command, now: float) -> list[Cmd]:
        verb = cmd.verb
        if verb == "QUIT" and self.phase in ("await_user", "new"):
            self.phase = "closed"
            return [SendClient(reply(221, "Goodbye.")), Close("client quit")]
        if verb in ("AUTH", "PBSZ", "PROT", "CCC"):
            return self._tls_command(cmd)
        if verb in ("USER", "PASS") and self.settings.tls_required and not self.client_tls:
            return [SendClient(reply(530, "TLS required: send AUTH TLS first."))]
        if self.phase == "await_user":
            return self._before_user(cmd)
        if verb == "USER":
            self.user = cmd.arg
        if verb in ("PASV", "EPSV"):
            return self._client_passive(cmd)
        if verb in ("PORT", "EPRT"):
            return self._client_active(cmd)
        if verb in TRANSFER_COMMANDS:
            self._transfer = _Transfer(cmd, now)
            if self._active_target is not None:
                # Active for the client, passive toward the backend. A PORT
                # serves one transfer: the client sends a new one for the next.
                self._held_transfer = (cmd, self._active_target)
                self._active_target = None
                return self._ask_backend_passive("active")
        return self._forward(cmd)

    def _forward(self, cmd: Command) -> list[Cmd]:
        self._pending.append(_Pending("forward", cmd))
        return [SendBackend(cmd.line())]

    def _tls_command(self, cmd: Command) -> list[Cmd]:
        """RFC 4217, answered by the balancer: the backend never sees them."""
        if not self.settings.tls:
            return [SendClient(reply(502, "TLS is not available on this balancer."))]
        if cmd.verb == "AUTH":
            if cmd.arg.upper() not in ("TLS", "SSL", "TLS-C", "TLS-P"):
                return [SendClient(reply(504, "AUTH type not supported; use AUTH TLS."))]
            if self.client_tls:
                return [SendClient(reply(503, "Already using TLS."))]
            self.client_tls = True
            out: list[Cmd] = [SendClient(reply(234, "AUTH TLS successful.")), StartClientTLS()]
            if self.phase == "ready" and self._wants_backend_tls():
                # match: the client went TLS after the backend greeted; so does the backend.
                out.extend(self._upgrade_backend(None))
            return out
        if not self.client_tls:
            return [SendClient(reply(503, f"{cmd.verb} needs AUTH TLS first."))]
        if cmd.verb == "CCC":
            return [SendClient(reply(534, "CCC refused: the control connection stays encrypted."))]
        if cmd.verb == "PBSZ":
            self._pbsz = True
            return [SendClient(reply(200, "PBSZ=0"))]
        level = cmd.arg.strip().upper()
        if not self._pbsz:
            return [SendClient(reply(503, "PROT needs PBSZ first."))]
        if level in ("P", "C"):
            self.prot_private = level == "P"
            return [SendClient(reply(200, f"Protection level set to {level}."))]
        return [SendClient(reply(536, "Protection level not supported; use P or C."))]

    def _before_user(self, cmd: Command) -> list[Cmd]:
        if cmd.verb == "NOOP":
            return [SendClient(reply(200, "NOOP ok."))]
        if cmd.verb != "USER" or not cmd.arg:
            return [SendClient(reply(530, "Please log in with USER and PASS."))]
        self.user = cmd.arg
        self._user_line = cmd
        self.phase = "connecting"
        self._blocked = "backend"
        self._pending.append(_Pending("greeting"))
        return [ConnectBackend(user=cmd.arg)]

    def _client_passive(self, cmd: Command) -> list[Cmd]:
        if cmd.verb == "EPSV" and cmd.arg.upper() == "ALL":
            self._epsv_all = True
            return [SendClient(reply(200, "EPSV ALL ok."))]
        if cmd.verb == "EPSV" and cmd.arg and cmd.arg not in ("1", "2"):
            return [SendClient(reply(522, "Network protocol not supported, use (1,2)."))]
        if cmd.verb == "PASV":
            if self._epsv_all:
                return [SendClient(reply(501, "PASV not allowed after EPSV ALL."))]
            if ":" in self.settings.public_address or ":" in self.settings.client[0]:
                return [SendClient(reply(425, "PASV is IPv4 only here; use EPSV."))]
        self._active_target = None
        self._refusal = ""
        self._client_passive_verb = cmd.verb
        return [CloseData(), *self._ask_backend_passive("client")]

    def _client_active(self, cmd: Command) -> list[Cmd]:
        if self._epsv_all:
            return [SendClient(reply(501, f"{cmd.verb} not allowed after EPSV ALL."))]
        try:
            if cmd.verb == "PORT":
                target = addresses.parse_port(cmd.arg)
            else:
                target = addresses.parse_eprt(cmd.arg)
        except ProtocolError as exc:
            return [SendClient(f"{exc.reply}\r\n".encode())]
        host, port = target
        # RFC 2577: no bounce to third parties, no privileged ports.
        if not addresses.same_host(host, self.settings.client[0]):
            return [
                SendClient(reply(504, "Data connections go only to your own address.")),
                Log(f"{cmd.verb} to foreign address {host}:{port} refused (FTP bounce)"),
            ]
        if port < 1024:
            return [
                SendClient(reply(504, "Data connections go only to ports 1024 and above.")),
                Log(f"{cmd.verb} to privileged port {port} refused"),
            ]
        self._active_target = (self.settings.client[0], port)
        self._refusal = ""
        return [CloseData(), SendClient(reply(200, f"{cmd.verb} command successful."))]

    def _ask_backend_passive(self, purpose: str) -> list[Cmd]:
        verb = "PASV" if self._backend_epsv is False else "EPSV"
        self._blocked = "passive"
        self._pending.append(_Pending("passive", purpose=purpose, verb=verb))
        return [SendBackend(f"{verb}\r\n".encode())]

    def _unblock(self) -> None:
        self._blocked = ""

    # --- backend replies -------------------------------------------------------

    def _on_reply(self, r: Reply, now: float) -> list[Cmd]:
        pending = self._pending[0] if self._pending else None
        if r.code < 200:
            # Preliminary: the command's final reply is still to come.
            out: list[Cmd] = []
            if pending is not None and pending.kind != "forward":
                return out  # "120 ready in N minutes": wait for the final reply
            if pending is not None and pending.target is not None:
                out.append(ConnectClientData(pending.target, self.prot_private))
                pending.target = None
                self._client_connecting = True
            out.append(SendClient(self._scrub(r)))
            return out
        if pending is None:
            # Unsolicited (a 421 before closing, say): pass it on.
            return [SendClient(self._scrub(r))]
        self._pending.popleft()
        if pending.kind == "greeting":
            return self._on_greeting(r)
        if pending.kind == "passive":
            return self._on_backend_passive(pending, r)
        if pending.kind.startswith("backend_"):
            return self._on_backend_tls_reply(pending, r)
        out = [SendClient(self._scrub(r))]
        cmd = pending.command
        if cmd is not None and cmd.verb in TRANSFER_COMMANDS and self._refusal:
            out = [SendClient(reply(522, self._refusal)), CloseData()]
            self._refusal = ""
            self._transfer = None
            return out
        if cmd is not None:
            out.extend(self._after_reply(cmd, r))
            if cmd.verb in TRANSFER_COMMANDS and self._client_connecting:
                # Active mode: a fast backend can finish (226) before our connection
                # to the client exists; a client then sees the end of a transfer
                # whose data connection never came. It hears it once we are connected.
                self._held.extend(out)
                return []
        return out

    def _on_greeting(self, r: Reply) -> list[Cmd]:
        if r.code != 220:
            self.phase = "closed"
            return [
                SendClient(reply(421, "Service not available")),
                Close(f"backend greeted with {r.code}"),
            ]
        self.phase = "ready"
        if self._wants_backend_tls():
            # The client hears the greeting (or its USER goes on) once the backend is TLS.
            return self._upgrade_backend(r)
        return self._greeted(r)

    def _wants_backend_tls(self) -> bool:
        mode = self.settings.backend_tls
        return not self.backend_tls and (mode == "on" or (mode == "match" and self.client_tls))

    def _upgrade_backend(self, greeting: Reply | None) -> list[Cmd]:
        """AUTH TLS, then (after the handshake) PBSZ 0 and PROT P toward the backend;
        the client's commands wait."""
        self._blocked = "backend_tls"
        self._greeting_after_tls = greeting
        self._pending.append(_Pending("backend_auth"))
        return [SendBackend(b"AUTH TLS\r\n")]

    def _on_backend_tls_reply(self, pending: _Pending, r: Reply) -> list[Cmd]:
        expected = 234 if pending.kind == "backend_auth" else 200
        if r.code != expected:
            verb = {"backend_auth": "AUTH TLS", "backend_pbsz": "PBSZ", "backend_prot": "PROT"}
            return self.backend_tls_failed(f"{verb[pending.kind]} answered {r.code}")
        if pending.kind == "backend_auth":
            return [StartBackendTLS()]
        if pending.kind == "backend_pbsz":
            self._pending.append(_Pending("backend_prot"))
            return [SendBackend(b"PROT P\r\n")]
        self.backend_tls = True
        greeting, self._greeting_after_tls = self._greeting_after_tls, None
        if greeting is not None:
            return self._greeted(greeting)
        self._unblock()
        return []

    def _greeted(self, r: Reply) -> list[Cmd]:
        self._unblock()
        if self._user_line is not None:
            # Balancing by user: the client has our greeting already; replay USER.
            cmd, self._user_line = self._user_line, None
            return self._forward(cmd)
        return [SendClient(self._scrub(r))]

    def _after_reply(self, cmd: Command, r: Reply) -> list[Cmd]:
        if cmd.verb in ("PASS", "USER") and r.code == 230 and not self.logged_in:
            self.logged_in = True
            return [LoginResult(True, self.user)]
        if cmd.verb == "PASS" and r.code == 530:
            self.login_failures += 1
            return [LoginResult(False, self.user)]
        if cmd.verb in TRANSFER_COMMANDS and r.code >= 400 and self.data_open == 0:
            # The transfer never started: no data channel will report it.
            self._transfer = None
            return [CloseData()]
        return []

    def _on_backend_passive(self, pending: _Pending, r: Reply) -> list[Cmd]:
        try:
            if pending.verb == "EPSV" and r.code == 229:
                port = addresses.parse_epsv_reply(r.text)
            elif pending.verb == "PASV" and r.code == 227:
                # The address in a 227 is often wrong behind NAT; the backend
                # is where we reached it (what curl does by default too).
                _, port = addresses.parse_pasv_reply(r.text)
            elif pending.verb == "EPSV" and r.code >= 500:
                self._backend_epsv = False
                self._pending.appendleft(_Pending("passive", purpose=pending.purpose, verb="PASV"))
                return [SendBackend(b"PASV\r\n")]
            else:
                raise ProtocolError(f"backend answered {pending.verb} with {r.code}")
        except ProtocolError as exc:
            self._unblock()
            fail = [Log(f"backend passive mode failed: {exc}")]
            if pending.purpose == "active":
                self._held_transfer = None
                self._transfer = None
                return [*fail, SendClient(reply(425, "Cannot open data connection."))]
            return [*fail, SendClient(reply(425, "Cannot open passive connection."))]
        if pending.verb == "EPSV":
            self._backend_epsv = True
        backend = (self.backend_host, port)
        if pending.purpose == "client":
            # Stay blocked until the listener is open (data_listening).
            client_ip = self.settings.client[0]
            return [ListenData(backend, client_ip, self.prot_private, self.backend_tls)]
        held, self._held_transfer = self._held_transfer, None
        self._unblock()
        assert held is not None
        cmd, target = held
        self._pending.append(_Pending("forward", cmd, target=target))
        return [ConnectBackendData(backend, self.backend_tls), SendBackend(cmd.line())]

    def _scrub(self, r: Reply) -> bytes:
        """The reply as the client gets it: no backend address in it."""
        text = "\r\n".join(r.lines) + "\r\n"
        host = self.backend_host
        if host and host in text:
            pattern = rf"(?<![\d.:]){re.escape(host)}(?![\d])"
            text = re.sub(pattern, self.settings.public_address, text)
        return text.encode("utf-8", "surrogateescape")
