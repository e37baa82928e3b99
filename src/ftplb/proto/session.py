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
from ftplb.proto.ftp import (
    TRANSFER_COMMANDS,
    UPLOAD_COMMANDS,
    BadCommand,
    Command,
    parse_command,
    reply,
)
from ftplb.proto.lines import BadReply, LineReader, LineTooLong, Reply, ReplyReader

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
class ConnectClientData:
    """Active mode, step 1: connect to the client's PORT/EPRT target (a new data
    channel; with `tls` the client's side is TLS, the client its TLS client).
    Answer with `data_client_connected` once the TCP connection exists, or
    `data_failed`. The backend hears of the transfer only after that: an upload
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
class Redispatch:
    """The backend never greeted properly: drop its connection (without a word to
    the client, who has heard nothing from it) and connect another backend, or
    answer `backend_failed` if none is left. Then `backend_connected` again."""

    reason: str


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
    | Redispatch
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
    backend_tls: str = "off"
    """TLS toward the backend: "off", "on", or "match" (when the client uses TLS).
    The session sends AUTH TLS, PBSZ 0 and PROT P itself; the client never sees them."""


MAX_IN_FLIGHT = 16
"""Client commands sent to the backend and not yet answered. More wait in the
line buffer, and the I/O layer stops reading the client (`wants_client_data`):
a client that never reads its replies holds kernel buffers, not our memory."""

LINES_PER_EVENT = 64
"""Client lines handled per event; the I/O layer comes back for the rest on a
later loop turn (`runnable`), so one busy session cannot starve the others."""

_TLS_VERBS = frozenset({"AUTH", "PBSZ", "PROT", "CCC"})
_DATA_SETUP = frozenset({"PASV", "EPSV", "PORT", "EPRT"})
_SCRUBBED = frozenset({211, 220, 221, 421})
"""Replies that may name the server's own address (ProFTPD's greeting, a STAT
answer). Others are passed on untouched: a path may look like an address."""
_PASSIVE_REPLIES = frozenset({227, 228, 229})
_PASS_ACCEPTED = frozenset({202, 230, 332})
"""Replies to PASS that are not a failed login (230 in, 202 already in, 332 ACCT next)."""


@dataclass
class _Pending:
    """What to do with the backend's next final reply."""

    kind: str  # greeting | forward | passive | backend_auth | backend_pbsz | backend_prot
    command: Command | None = None
    purpose: str = ""  # passive: "client" or "active"
    verb: str = ""  # passive: what we sent, EPSV or PASV


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
    _next: Command | BadCommand | None = None
    """A client command taken from the line buffer that has to wait its turn."""
    _blocked: str = ""
    _active_target: tuple[str, int] | None = None
    _client_passive_verb: str = ""
    _active_command: Command | None = None
    """An active-mode transfer command waiting for our connection to the client."""
    _backend_epsv: bool | None = None
    _epsv_all: bool = False
    _started: float = 0.0
    _last_activity: float = 0.0
    _greeting_deadline: float = 0.0
    _transfer: _Transfer | None = None
    _user_line: Command | None = None
    client_tls: bool = False
    prot_private: bool = False
    backend_tls: bool = False
    """The backend control connection is TLS, with PROT P: data to it is TLS too."""
    _pbsz: bool = False
    _greeting_after_tls: Reply | None = None
    _refusal: str = ""
    _bad_commands: int = 0

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
        self._greeting_deadline = now + self.settings.greeting_timeout
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
        if self.phase == "greeting":
            return self._redispatch("backend closed before greeting")
        return [*self._abandoned_login(), Close("backend closed")]

    def _abandoned_login(self) -> list[Cmd]:
        """The session ends with a PASS unanswered: a failed login. Backends delay
        their 530 (a 230 comes at once): a client that hangs up before it, or
        makes the backend hang up, would otherwise guess for free."""
        self.phase = "closed"
        if any(p.command is not None and p.command.verb == "PASS" for p in self._pending):
            self.login_failures += 1
            return [LoginResult(False, self.user)]
        return []

    def client_closed(self) -> list[Cmd]:
        """The client went away (see `_abandoned_login`)."""
        if self.phase == "closed":
            return []
        return self._abandoned_login()

    def client_data(self, data: bytes, now: float) -> list[Cmd]:
        self._last_activity = now
        self._client_lines.feed(data)
        return self._pump(now)

    def resume(self, now: float) -> list[Cmd]:
        """Go on with client lines left waiting (see `runnable`)."""
        return self._pump(now)

    @property
    def wants_client_data(self) -> bool:
        """False while client commands wait in the buffer: stop reading the client."""
        return self._next is None and not self._client_lines.has_line

    @property
    def runnable(self) -> bool:
        """Buffered client lines could be handled now (call `resume` soon)."""
        if self.phase == "closed":
            return False
        item = self._peek()
        return item is not None and self._may_handle(item)

    def backend_data(self, data: bytes, now: float) -> list[Cmd]:
        self._last_activity = now
        out: list[Cmd] = []
        for r in self._replies.feed(data):
            if isinstance(r, BadReply):
                self.phase = "closed"
                out += [
                    SendClient(reply(421, "Backend sent a malformed reply, closing.")),
                    Close(f"backend protocol error: {r}"),
                ]
                return out
            out.extend(self._on_reply(r, now))
            if self.phase == "closed":
                return out
        out.extend(self._pump(now))
        return out

    def data_listening(self, port: int) -> list[Cmd]:
        """Our listener for the client's passive connection is open on `port`."""
        if self._client_passive_verb == "PASV":
            answer = addresses.format_pasv_reply(self.settings.public_address, port)
        else:
            answer = addresses.format_epsv_reply(port)
        self._unblock()
        # Commands the client sent meanwhile go out after our answer.
        return [SendClient(answer), *self._pump(self._last_activity)]

    def data_listen_failed(self) -> list[Cmd]:
        self._unblock()
        failed = SendClient(reply(425, "Cannot open a passive data port, try again."))
        return [failed, *self._pump(self._last_activity)]

    def data_refused(self, reason: str) -> list[Cmd]:
        """The client's data connection was refused (a TLS session not resumed, say).
        The backend's side was dropped too, so the transfer fails there: its final
        reply becomes our 522 (one reply per command, whenever the client sent it)."""
        self._refusal = reason
        return []

    def data_client_connected(self, now: float) -> list[Cmd]:
        """Active mode: our connection to the client exists; now the backend may
        hear of the transfer."""
        if self._blocked != "client_data" or self._active_command is None:
            return []
        self._last_activity = now
        return self._ask_backend_passive("active")

    def data_opened(self, now: float) -> list[Cmd]:
        self.data_open += 1
        self._last_activity = now
        return []

    def data_failed(self) -> list[Cmd]:
        """A data channel ended without ever joining its two sides."""
        if self._blocked == "client_data":
            # Active mode: the client cannot be reached. The backend never saw
            # the command, so nothing was started (or truncated) there.
            self._active_command = None
            self._transfer = None
            self._unblock()
            return [
                SendClient(reply(425, "Cannot open data connection.")),
                Log("active-mode data connection to the client failed"),
                *self._pump(self._last_activity),
            ]
        return []

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

    def tick(self, now: float) -> list[Cmd]:
        if self.phase == "closed":
            return []
        s = self.settings
        if self.phase == "greeting" and now >= self._greeting_deadline:
            return self._redispatch(f"no greeting within {s.greeting_timeout:g}s")
        if not self.logged_in and now - self._started >= s.login_timeout:
            self.phase = "closed"
            return [SendClient(reply(421, "Login timeout, closing.")), Close("login timeout")]
        if self.data_open == 0 and now - self._last_activity >= s.idle_timeout:
            self.phase = "closed"
            return [SendClient(reply(421, "Idle timeout, closing.")), Close("idle timeout")]
        return []

    def next_deadline(self) -> float:
        s = self.settings
        deadline = self._last_activity + s.idle_timeout
        if not self.logged_in:
            deadline = min(deadline, self._started + s.login_timeout)
        if self.phase == "greeting":
            deadline = min(deadline, self._greeting_deadline)
        return deadline

    # --- client commands -------------------------------------------------------

    def _peek(self) -> Command | BadCommand | None:
        """The next client command, parsed once and kept until it is handled."""
        while self._next is None:
            raw = self._client_lines.next()
            if raw is None:
                return None
            if isinstance(raw, LineTooLong):
                self._next = BadCommand(raw.reply, f"client line refused: {raw}")
            elif raw.strip():
                self._next = parse_command(raw)
        return self._next

    def _may_handle(self, item: Command | BadCommand) -> bool:
        if self._blocked:
            return False
        if self._answered_here(item):
            # Our own answer must not overtake the backend's to earlier commands.
            return not self._pending
        in_flight = sum(1 for p in self._pending if p.kind == "forward")
        return in_flight < MAX_IN_FLIGHT

    def _answered_here(self, item: Command | BadCommand) -> bool:
        """Commands the balancer answers (or that reset the data channel)."""
        if isinstance(item, BadCommand):
            return True
        verb = item.verb
        if verb in _TLS_VERBS or verb in _DATA_SETUP or self.phase != "ready":
            return True
        if verb in ("USER", "PASS") and self.settings.tls_required and not self.client_tls:
            return True
        return verb in TRANSFER_COMMANDS and self._active_target is not None

    def _pump(self, now: float) -> list[Cmd]:
        out: list[Cmd] = []
        for _ in range(LINES_PER_EVENT):
            if self.phase == "closed":
                break
            item = self._peek()
            if item is None or not self._may_handle(item):
                break
            self._next = None
            if isinstance(item, BadCommand):
                out.append(SendClient(item.reply))
                self._bad_commands += 1
                if self._bad_commands <= 3:  # a flood of them is not a flood of log lines
                    out.append(Log(item.reason))
            else:
                out.extend(self._on_command(item, now))
        return out

    def _on_command(self, cmd: Command, now: float) -> list[Cmd]:
        verb = cmd.verb
        if verb == "QUIT" and self.phase in ("await_user", "new"):
            self.phase = "closed"
            return [SendClient(reply(221, "Goodbye.")), Close("client quit")]
        if verb in _TLS_VERBS:
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
                # Active for the client, passive toward the backend. The client
                # first: if it cannot be reached the backend never hears of the
                # transfer. A PORT serves one transfer.
                target, self._active_target = self._active_target, None
                self._active_command = cmd
                self._blocked = "client_data"
                return [ConnectClientData(target, self.prot_private)]
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
            # What the client sent after AUTH in the clear is not read as if it came
            # over TLS (the STARTTLS command injection of CVE-2011-0411).
            dropped = self._client_lines.buffered
            self._client_lines = LineReader(self.settings.max_line)
            if dropped:
                out.append(Log(f"{dropped} bytes sent after AUTH TLS in the clear dropped"))
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

    def _redispatch(self, reason: str) -> list[Cmd]:
        """Forget this backend before it said anything the client heard."""
        self.phase = "connecting"
        self._blocked = "backend"
        self._replies = ReplyReader(self.settings.max_line)
        self._pending = deque([_Pending("greeting")])
        self.backend_name = self.backend_host = ""
        return [Redispatch(reason)]

    def _on_reply(self, r: Reply, now: float) -> list[Cmd]:
        pending = self._pending[0] if self._pending else None
        if r.code < 200:
            # Preliminary: the command's final reply is still to come.
            if pending is not None and pending.kind != "forward":
                return []  # "120 ready in N minutes": wait for the final reply
            return [SendClient(self._for_client(r))]
        if pending is None:
            # Unsolicited (a 421 before closing, say): pass it on.
            return [SendClient(self._for_client(r))]
        self._pending.popleft()
        if pending.kind == "greeting":
            return self._on_greeting(r)
        if pending.kind == "passive":
            return self._on_backend_passive(pending, r)
        if pending.kind.startswith("backend_"):
            return self._on_backend_tls_reply(pending, r)
        cmd = pending.command
        if r.code in _PASSIVE_REPLIES:
            # Only our own PASV/EPSV may get one; the client's never reach the
            # backend. A backend that obeyed something else must not leak its port.
            verb = cmd.verb if cmd is not None else "?"
            return [
                SendClient(reply(502, "Command not implemented.")),
                Log(f"backend answered {verb} with {r.code}: withheld from the client"),
            ]
        out: list[Cmd] = [SendClient(self._for_client(r))]
        if cmd is not None and cmd.verb in TRANSFER_COMMANDS and self._refusal:
            out = [SendClient(reply(522, self._refusal)), CloseData()]
            self._refusal = ""
            self._transfer = None
            return out
        if cmd is not None:
            out.extend(self._after_reply(cmd, r))
        return out

    def _on_greeting(self, r: Reply) -> list[Cmd]:
        if r.code != 220:
            return self._redispatch(f"backend greeted with {r.code}")
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
        return [SendClient(self._for_client(r))]

    def _after_reply(self, cmd: Command, r: Reply) -> list[Cmd]:
        if cmd.verb in ("PASS", "USER") and r.code == 230 and not self.logged_in:
            self.logged_in = True
            return [LoginResult(True, self.user)]
        if cmd.verb == "PASS" and r.code not in _PASS_ACCEPTED and not self.logged_in:
            # Whatever else answers it is a failure: a server that answers a
            # pipelined QUIT before the 530 it delays (pyftpdlib) is no way out.
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
                self._active_command = None
                self._transfer = None
                return [*fail, CloseData(), SendClient(reply(425, "Cannot open data connection."))]
            return [*fail, SendClient(reply(425, "Cannot open passive connection."))]
        if pending.verb == "EPSV":
            self._backend_epsv = True
        backend = (self.backend_host, port)
        if pending.purpose == "client":
            # Stay blocked until the listener is open (data_listening).
            client_ip = self.settings.client[0]
            return [ListenData(backend, client_ip, self.prot_private, self.backend_tls)]
        cmd, self._active_command = self._active_command, None
        self._unblock()
        assert cmd is not None
        self._pending.append(_Pending("forward", cmd))
        return [ConnectBackendData(backend, self.backend_tls), SendBackend(cmd.line())]

    def _for_client(self, r: Reply) -> bytes:
        """The reply as the client gets it: no backend address in the replies that
        may carry one (in dotted and in PASV's comma form)."""
        text = "\r\n".join(r.lines) + "\r\n"
        host = self.backend_host
        if host and r.code in _SCRUBBED:
            public = self.settings.public_address
            pattern = rf"(?<![\d.:]){re.escape(host)}(?![\d])"
            text = re.sub(pattern, public, text)
            if "." in host and "." in public:
                commas = host.replace(".", ",")
                pattern = rf"(?<![\d,]){re.escape(commas)}(?=,\d)"
                text = re.sub(pattern, public.replace(".", ","), text)
        return text.encode("utf-8", "surrogateescape")
