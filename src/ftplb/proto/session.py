"""The inspect-mode control session: events in, commands out.

`InspectSession.handle(event)` takes what happened (proto/events.py) and
returns what to do (proto/commands.py). It reads the client's commands and the
backend's replies and decides what each side hears. It answers data-channel
negotiation itself: the client's PASV/EPSV gets the balancer's own listener
(after the backend has given its passive address), the client's PORT/EPRT is
checked and answered here, and toward the backend the session always uses
passive mode. Backends never see PORT; clients never see a backend address.
TLS is per side: the client's AUTH TLS/PBSZ/PROT are answered here, and with
`backend_tls` the session sends its own AUTH TLS, PBSZ 0 and PROT P to the
backend.

Replies are matched to what caused them through a queue of expectations
(`Greeting`, `Forwarded`, `OurPassive`, `BackendTLSStep`): the backend answers
in order, so its next final reply answers the oldest one.

No sockets, no asyncio, no clock: every event carries `now`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ftplb.errors import ProtocolError
from ftplb.proto import addresses, events
from ftplb.proto.commands import (
    AbortBackend,
    Close,
    CloseData,
    Cmd,
    ConnectBackend,
    ConnectBackendData,
    ConnectClientData,
    ListenData,
    Log,
    LoginResult,
    Redispatch,
    SendBackend,
    SendClient,
    StartBackendTLS,
    StartClientTLS,
    Transferred,
)
from ftplb.proto.ftp import (
    TRANSFER_COMMANDS,
    UPLOAD_COMMANDS,
    BadCommand,
    Command,
    parse_command,
    reply,
)
from ftplb.proto.lines import BadReply, LineReader, LineTooLong, Reply, ReplyReader
from ftplb.proto.state import (
    BackendTLSStep,
    Expectation,
    Forwarded,
    Greeting,
    OurPassive,
    Phase,
    SessionSettings,
    TLSState,
    TLSStep,
    Transfer,
    Wait,
)

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
class InspectSession:
    settings: SessionSettings
    user: str = ""
    logged_in: bool = False
    backend_name: str = ""
    backend_host: str = ""
    phase: Phase = Phase.NEW
    wait: Wait = Wait.NOTHING
    login_failures: int = 0
    transfers: int = 0
    data_open: int = 0
    tls: TLSState = field(default_factory=TLSState)
    _lines: LineReader = field(init=False)
    _replies: ReplyReader = field(init=False)
    _expect: deque[Expectation] = field(default_factory=deque)
    _next: Command | BadCommand | None = None
    """A client command taken from the line buffer that has to wait its turn."""
    _active_target: tuple[str, int] | None = None
    """The client's PORT/EPRT, for its next transfer."""
    _active_transfer: Command | None = None
    """An active-mode transfer command waiting for our connection to the client."""
    _client_passive_verb: str = ""
    _backend_epsv: bool | None = None
    _epsv_all: bool = False
    _started: float = 0.0
    _last_activity: float = 0.0
    _greeting_deadline: float = 0.0
    _transfer: Transfer | None = None
    _user_line: Command | None = None
    _refusal: str = ""
    """Why the client's data connection was refused: the transfer's reply becomes 522."""
    _bad_commands: int = 0
    _joining: bool = False
    """The client's passive data connection arrived; ours to the backend is on
    its way (not its TLS handshake: with PROT P the client starts its own only
    after the 150, which the backend sends once it has the command)."""

    def __post_init__(self) -> None:
        self._lines = LineReader(self.settings.max_line)
        self._replies = ReplyReader(self.settings.max_line)
        self.tls.client = self.settings.implicit_tls

    # --- the one entry point ---------------------------------------------------

    @property
    def current_transfer(self) -> Command | None:
        """The transfer command in progress (the admin API shows it)."""
        return self._transfer.command if self._transfer is not None else None

    def handle(self, event: events.Event) -> list[Cmd]:
        match event:
            case events.ClientData(data, now):
                self._last_activity = now
                self._lines.feed(data)
                return self._pump(now)
            case events.BackendData(data, now):
                self._last_activity = now
                return self._backend_data(data, now)
            case events.Resume(now):
                return self._pump(now)
            case events.Tick(now):
                return self._tick(now)
            case events.Start(now):
                return self._start(now)
            case events.BackendConnected(name, host, now):
                self.backend_name, self.backend_host = name, host
                self.phase = Phase.GREETING
                self._last_activity = now
                self._greeting_deadline = now + self.settings.greeting_timeout
                return []
            case events.BackendFailed(reason):
                self.phase = Phase.CLOSED
                return [SendClient(reply(421, "Service not available")), Close(reason)]
            case events.BackendClosed():
                return self._backend_closed()
            case events.ClientClosed():
                return self._abandoned_login() if self.phase != Phase.CLOSED else []
            case events.BackendTLSReady():
                self._expect.append(BackendTLSStep(TLSStep.PBSZ))
                return [SendBackend(b"PBSZ 0\r\n")]
            case events.BackendTLSFailed(reason):
                return self._backend_tls_failed(reason)
            case events.DataListening(port, now):
                return self._data_listening(port, now)
            case events.DataListenFailed(now):
                self.wait = Wait.NOTHING
                failed = SendClient(reply(425, "Cannot open a passive data port, try again."))
                return [failed, *self._pump(now)]
            case events.DataRefused(reason):
                # The backend's side was dropped too, so the transfer fails there:
                # its final reply becomes our 522 (one reply per command).
                self._refusal = reason
                return []
            case events.DataClientConnected(now):
                return self._data_client_connected(now)
            case events.DataClientAccepted():
                self._joining = True
                return []
            case events.DataBackendConnected(now):
                joined, self._joining = self._joining, False
                return self._pump(now) if joined else []
            case events.DataOpened(now):
                joined, self._joining = self._joining, False
                self.data_open += 1
                self._last_activity = now
                return self._pump(now) if joined else []
            case events.DataFailed(now):
                return self._data_failed(now)
            case events.DataClosed(bytes_up, bytes_down, now):
                return self._data_closed(bytes_up, bytes_down, now)
        raise TypeError(f"not an inspect-session event: {event!r}")

    # --- what the I/O layer asks between events --------------------------------

    @property
    def wants_client_data(self) -> bool:
        """False while client commands wait in the buffer: stop reading the client."""
        return self._next is None and not self._lines.has_line

    @property
    def runnable(self) -> bool:
        """Buffered client lines could be handled now (send `Resume` soon)."""
        if self.phase == Phase.CLOSED:
            return False
        item = self._peek()
        return item is not None and self._may_handle(item)

    def next_deadline(self) -> float:
        s = self.settings
        deadline = self._last_activity + s.idle_timeout
        if not self.logged_in:
            deadline = min(deadline, self._started + s.login_timeout)
        if self.phase == Phase.GREETING:
            deadline = min(deadline, self._greeting_deadline)
        return deadline

    # --- session events ----------------------------------------------------------

    def _start(self, now: float) -> list[Cmd]:
        self._started = self._last_activity = now
        if self.settings.balance_by_user:
            self.phase = Phase.AWAIT_USER
            return [SendClient(reply(220, self.settings.greeting))]
        self.phase = Phase.CONNECTING
        # Commands the client pipelines before the backend greets wait.
        self.wait = Wait.BACKEND
        self._expect.append(Greeting())
        return [ConnectBackend()]

    def _tick(self, now: float) -> list[Cmd]:
        if self.phase == Phase.CLOSED:
            return []
        s = self.settings
        if self.phase == Phase.GREETING and now >= self._greeting_deadline:
            return self._redispatch(f"no greeting within {s.greeting_timeout:g}s")
        if not self.logged_in and now - self._started >= s.login_timeout:
            self.phase = Phase.CLOSED
            return [SendClient(reply(421, "Login timeout, closing.")), Close("login timeout")]
        if self.data_open == 0 and now - self._last_activity >= s.idle_timeout:
            self.phase = Phase.CLOSED
            return [SendClient(reply(421, "Idle timeout, closing.")), Close("idle timeout")]
        return []

    def _backend_closed(self) -> list[Cmd]:
        if self.phase == Phase.CLOSED:
            return []
        if self.phase == Phase.GREETING:
            return self._redispatch("backend closed before greeting")
        # A client waiting for a reply (the backend closed in the middle of one)
        # hears why the session ends instead of a bare close.
        waiting = bool(self._expect) or self.wait != Wait.NOTHING
        notice = [SendClient(reply(421, "Backend closed the connection."))] if waiting else []
        return [*self._abandoned_login(), *notice, Close("backend closed")]

    def _abandoned_login(self) -> list[Cmd]:
        """The session ends with a PASS unanswered: a failed login. Backends delay
        their 530 (a 230 comes at once): a client that hangs up before it, or
        makes the backend hang up, would otherwise guess for free."""
        self.phase = Phase.CLOSED
        if any(isinstance(e, Forwarded) and e.command.verb == "PASS" for e in self._expect):
            self.login_failures += 1
            return [LoginResult(False, self.user)]
        return []

    def _redispatch(self, reason: str) -> list[Cmd]:
        """Forget this backend before it said anything the client heard."""
        self.phase = Phase.CONNECTING
        self.wait = Wait.BACKEND
        self._replies = ReplyReader(self.settings.max_line)
        self._expect = deque([Greeting()])
        self.backend_name = self.backend_host = ""
        return [Redispatch(reason)]

    # --- data channel events -------------------------------------------------------

    def _data_listening(self, port: int, now: float) -> list[Cmd]:
        if self._client_passive_verb == "PASV":
            answer = addresses.format_pasv_reply(self.settings.public_address, port)
        else:
            answer = addresses.format_epsv_reply(port)
        self.wait = Wait.NOTHING
        # Commands the client sent meanwhile go out after our answer.
        return [SendClient(answer), *self._pump(now)]

    def _data_client_connected(self, now: float) -> list[Cmd]:
        """Active mode: our connection to the client exists; now the backend may
        hear of the transfer."""
        command, self._active_transfer = self._active_transfer, None
        if self.wait != Wait.CLIENT_DATA or command is None:
            return []
        self._last_activity = now
        return self._ask_backend_passive(command)

    def _data_failed(self, now: float) -> list[Cmd]:
        if self._joining:
            self._joining = False
            return self._pump(now)
        if self.wait != Wait.CLIENT_DATA:
            return []
        # Active mode: the client cannot be reached. The backend never saw the
        # command, so nothing was started (or truncated) there.
        self._active_transfer = None
        self._transfer = None
        self.wait = Wait.NOTHING
        return [
            SendClient(reply(425, "Cannot open data connection.")),
            Log("active-mode data connection to the client failed"),
            *self._pump(now),
        ]

    def _data_closed(self, bytes_up: int, bytes_down: int, now: float) -> list[Cmd]:
        self.data_open = max(0, self.data_open - 1)
        self._last_activity = now
        t, self._transfer = self._transfer, None
        if t is None:
            return []
        self.transfers += 1
        upload = t.command.verb in UPLOAD_COMMANDS
        command, file, duration = t.command.verb, t.command.arg, now - t.started
        if upload:
            return [Transferred("upload", command, file, bytes_up, duration)]
        return [Transferred("download", command, file, bytes_down, duration)]

    # --- client commands ---------------------------------------------------------------

    def _peek(self) -> Command | BadCommand | None:
        """The next client command, parsed once and kept until it is handled."""
        while self._next is None:
            raw = self._lines.next()
            if raw is None:
                return None
            if isinstance(raw, LineTooLong):
                self._next = BadCommand(raw.reply, f"client line refused: {raw}")
            elif raw.strip():
                self._next = parse_command(raw)
        return self._next

    def _may_handle(self, item: Command | BadCommand) -> bool:
        if self.wait != Wait.NOTHING:
            return False
        if self._joining and isinstance(item, Command) and item.verb in TRANSFER_COMMANDS:
            # The client connected before sending it: the backend must get the
            # data connection first too, as it would directly (pyftpdlib drops
            # a transfer whose connection is late when QUIT follows at once).
            return False
        if self._answered_here(item):
            # Our own answer must not overtake the backend's to earlier commands.
            return not self._expect
        in_flight = sum(1 for e in self._expect if isinstance(e, Forwarded))
        return in_flight < MAX_IN_FLIGHT

    def _answered_here(self, item: Command | BadCommand) -> bool:
        """Commands the balancer answers (or that reset the data channel)."""
        if isinstance(item, BadCommand):
            return True
        verb = item.verb
        if verb in _TLS_VERBS or verb in _DATA_SETUP or self.phase != Phase.READY:
            return True
        if verb in ("USER", "PASS") and self.settings.tls_required and not self.tls.client:
            return True
        return verb in TRANSFER_COMMANDS and self._active_target is not None

    def _pump(self, now: float) -> list[Cmd]:
        out: list[Cmd] = []
        for _ in range(LINES_PER_EVENT):
            if self.phase == Phase.CLOSED:
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
        if verb == "QUIT" and self.phase in (Phase.AWAIT_USER, Phase.NEW):
            self.phase = Phase.CLOSED
            return [SendClient(reply(221, "Goodbye.")), Close("client quit")]
        if verb in _TLS_VERBS:
            return self._tls_command(cmd)
        if verb in ("USER", "PASS") and self.settings.tls_required and not self.tls.client:
            return [SendClient(reply(530, "TLS required: send AUTH TLS first."))]
        if self.phase == Phase.AWAIT_USER:
            return self._before_user(cmd)
        if verb == "USER":
            self.user = cmd.arg
        if verb in ("PASV", "EPSV"):
            return self._client_passive(cmd)
        if verb in ("PORT", "EPRT"):
            return self._client_active(cmd)
        if verb in TRANSFER_COMMANDS:
            self._transfer = Transfer(cmd, now)
            if self._active_target is not None:
                # Active for the client, passive toward the backend. The client
                # first: if it cannot be reached the backend never hears of the
                # transfer. A PORT serves one transfer.
                target, self._active_target = self._active_target, None
                self._active_transfer = cmd
                self.wait = Wait.CLIENT_DATA
                return [ConnectClientData(target, self.tls.private_data)]
        return self._forward(cmd)

    def _forward(self, cmd: Command) -> list[Cmd]:
        self._expect.append(Forwarded(cmd))
        if cmd.verb == "ABOR":
            return [AbortBackend()]
        return [SendBackend(cmd.line())]

    def _tls_command(self, cmd: Command) -> list[Cmd]:
        """RFC 4217, answered by the balancer: the backend never sees them."""
        tls = self.tls
        if not self.settings.tls:
            return [SendClient(reply(502, "TLS is not available on this balancer."))]
        if cmd.verb == "AUTH":
            if cmd.arg.upper() not in ("TLS", "SSL", "TLS-C", "TLS-P"):
                return [SendClient(reply(504, "AUTH type not supported; use AUTH TLS."))]
            if tls.client:
                return [SendClient(reply(503, "Already using TLS."))]
            tls.client = True
            out: list[Cmd] = [SendClient(reply(234, "AUTH TLS successful.")), StartClientTLS()]
            # What the client sent after AUTH in the clear is not read as if it came
            # over TLS (the STARTTLS command injection of CVE-2011-0411).
            dropped = self._lines.buffered
            self._lines = LineReader(self.settings.max_line)
            if dropped:
                out.append(Log(f"{dropped} bytes sent after AUTH TLS in the clear dropped"))
            if self.phase == Phase.READY and self._wants_backend_tls():
                # match: the client went TLS after the backend greeted; so does the backend.
                out.extend(self._upgrade_backend(None))
            return out
        if not tls.client:
            return [SendClient(reply(503, f"{cmd.verb} needs AUTH TLS first."))]
        if cmd.verb == "CCC":
            return [SendClient(reply(534, "CCC refused: the control connection stays encrypted."))]
        if cmd.verb == "PBSZ":
            tls.pbsz = True
            return [SendClient(reply(200, "PBSZ=0"))]
        level = cmd.arg.strip().upper()
        if not tls.pbsz:
            return [SendClient(reply(503, "PROT needs PBSZ first."))]
        if level in ("P", "C"):
            tls.private_data = level == "P"
            return [SendClient(reply(200, f"Protection level set to {level}."))]
        return [SendClient(reply(536, "Protection level not supported; use P or C."))]

    def _before_user(self, cmd: Command) -> list[Cmd]:
        if cmd.verb == "NOOP":
            return [SendClient(reply(200, "NOOP ok."))]
        if cmd.verb != "USER" or not cmd.arg:
            return [SendClient(reply(530, "Please log in with USER and PASS."))]
        self.user = cmd.arg
        self._user_line = cmd
        self.phase = Phase.CONNECTING
        self.wait = Wait.BACKEND
        self._expect.append(Greeting())
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
        self._joining = False
        self._client_passive_verb = cmd.verb
        return [CloseData(), *self._ask_backend_passive(None)]

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
                Log(f"{cmd.verb} to foreign address {host}:{port} refused (FTP bounce)", "warning"),
            ]
        if port < 1024:
            return [
                SendClient(reply(504, "Data connections go only to ports 1024 and above.")),
                Log(f"{cmd.verb} to privileged port {port} refused", "warning"),
            ]
        self._active_target = (self.settings.client[0], port)
        self._refusal = ""
        self._joining = False
        return [CloseData(), SendClient(reply(200, f"{cmd.verb} command successful."))]

    def _ask_backend_passive(self, transfer: Command | None) -> list[Cmd]:
        verb = "PASV" if self._backend_epsv is False else "EPSV"
        self.wait = Wait.PASSIVE
        self._expect.append(OurPassive(verb, transfer))
        return [SendBackend(f"{verb}\r\n".encode())]

    # --- backend replies -------------------------------------------------------------

    def _backend_data(self, data: bytes, now: float) -> list[Cmd]:
        out: list[Cmd] = []
        for r in self._replies.feed(data):
            if isinstance(r, BadReply):
                self.phase = Phase.CLOSED
                out += [
                    SendClient(reply(421, "Backend sent a malformed reply, closing.")),
                    Close(f"backend protocol error: {r}"),
                ]
                return out
            out.extend(self._on_reply(r))
            if self.phase == Phase.CLOSED:
                return out
        out.extend(self._pump(now))
        return out

    def _on_reply(self, r: Reply) -> list[Cmd]:
        expected = self._expect[0] if self._expect else None
        if r.code < 200:
            # Preliminary: the command's final reply is still to come.
            if expected is not None and not isinstance(expected, Forwarded):
                return []  # "120 ready in N minutes": wait for the final reply
            return [SendClient(self._for_client(r))]
        if expected is None:
            if r.code in _PASSIVE_REPLIES:
                return [Log(f"unsolicited {r.code} from the backend withheld", "warning")]
            # Unsolicited (a 421 before closing, say): pass it on.
            return [SendClient(self._for_client(r))]
        self._expect.popleft()
        match expected:
            case Greeting():
                return self._on_greeting(r)
            case OurPassive():
                return self._on_backend_passive(expected, r)
            case BackendTLSStep(step):
                return self._on_backend_tls_reply(step, r)
            case Forwarded(cmd):
                return self._on_forwarded_reply(cmd, r)
        raise AssertionError(expected)

    def _on_forwarded_reply(self, cmd: Command, r: Reply) -> list[Cmd]:
        if r.code in _PASSIVE_REPLIES:
            # Only our own PASV/EPSV may get one; the client's never reach the
            # backend. A backend that obeyed something else must not leak its port.
            return [
                SendClient(reply(502, "Command not implemented.")),
                Log(f"backend answered {cmd.verb} with {r.code}: withheld from the client"),
            ]
        if cmd.verb in TRANSFER_COMMANDS and self._refusal:
            refusal, self._refusal = self._refusal, ""
            self._transfer = None
            return [SendClient(reply(522, refusal)), CloseData()]
        out: list[Cmd] = [SendClient(self._for_client(r))]
        if cmd.verb in ("PASS", "USER") and r.code == 230 and not self.logged_in:
            self.logged_in = True
            out.append(LoginResult(True, self.user))
        elif cmd.verb == "PASS" and r.code not in _PASS_ACCEPTED and not self.logged_in:
            # Whatever else answers it is a failure: a server that answers a
            # pipelined QUIT before the 530 it delays (pyftpdlib) is no way out.
            self.login_failures += 1
            out.append(LoginResult(False, self.user))
        elif cmd.verb in TRANSFER_COMMANDS and r.code >= 400:
            # The transfer failed. If it never started, no data channel will
            # report it. If it did, the server gave up on it: a data connection
            # it leaves open (150, then 425 with our connect still in its
            # listen queue) would hang the client. Cut it (a reset: a failed
            # download must never look complete).
            if self.data_open == 0:
                self._transfer = None
            out.append(CloseData())
        return out

    def _on_greeting(self, r: Reply) -> list[Cmd]:
        if r.code != 220:
            return self._redispatch(f"backend greeted with {r.code}")
        self.phase = Phase.READY
        if self._wants_backend_tls():
            # The client hears the greeting (or its USER goes on) once the backend is TLS.
            return self._upgrade_backend(r)
        return self._greeted(r)

    def _wants_backend_tls(self) -> bool:
        mode = self.settings.backend_tls
        return not self.tls.backend and (mode == "on" or (mode == "match" and self.tls.client))

    def _upgrade_backend(self, greeting: Reply | None) -> list[Cmd]:
        """AUTH TLS, then (after the handshake) PBSZ 0 and PROT P toward the backend;
        the client's commands wait."""
        self.wait = Wait.BACKEND_TLS
        self.tls.greeting_after = greeting
        self._expect.append(BackendTLSStep(TLSStep.AUTH))
        return [SendBackend(b"AUTH TLS\r\n")]

    def _on_backend_tls_reply(self, step: TLSStep, r: Reply) -> list[Cmd]:
        if r.code != (234 if step == TLSStep.AUTH else 200):
            return self._backend_tls_failed(f"{step.value} answered {r.code}")
        if step == TLSStep.AUTH:
            return [StartBackendTLS()]
        if step == TLSStep.PBSZ:
            self._expect.append(BackendTLSStep(TLSStep.PROT))
            return [SendBackend(b"PROT P\r\n")]
        self.tls.backend = True
        greeting, self.tls.greeting_after = self.tls.greeting_after, None
        if greeting is not None:
            return self._greeted(greeting)
        self.wait = Wait.NOTHING
        return []

    def _backend_tls_failed(self, reason: str) -> list[Cmd]:
        self.phase = Phase.CLOSED
        return [SendClient(reply(421, "Service not available")), Close(f"backend TLS: {reason}")]

    def _greeted(self, r: Reply) -> list[Cmd]:
        self.wait = Wait.NOTHING
        if self._user_line is not None:
            # Balancing by user: the client has our greeting already; replay USER.
            cmd, self._user_line = self._user_line, None
            return self._forward(cmd)
        return [SendClient(self._for_client(r))]

    def _on_backend_passive(self, expected: OurPassive, r: Reply) -> list[Cmd]:
        try:
            if expected.verb == "EPSV" and r.code == 229:
                port = addresses.parse_epsv_reply(r.text)
            elif expected.verb == "PASV" and r.code == 227:
                # The address in a 227 is often wrong behind NAT; the backend
                # is where we reached it (what curl does by default too).
                _, port = addresses.parse_pasv_reply(r.text)
            elif expected.verb == "EPSV" and r.code >= 500 and ":" not in self.backend_host:
                # An IPv4 backend without EPSV: PASV (never toward IPv6: no address fits).
                self._backend_epsv = False
                self._expect.appendleft(OurPassive("PASV", expected.transfer))
                return [SendBackend(b"PASV\r\n")]
            else:
                raise ProtocolError(f"backend answered {expected.verb} with {r.code}")
        except ProtocolError as exc:
            self.wait = Wait.NOTHING
            fail = [Log(f"backend passive mode failed: {exc}", "warning")]
            if expected.transfer is not None:
                self._transfer = None
                return [*fail, CloseData(), SendClient(reply(425, "Cannot open data connection."))]
            return [*fail, SendClient(reply(425, "Cannot open passive connection."))]
        if expected.verb == "EPSV":
            self._backend_epsv = True
        backend = (self.backend_host, port)
        if expected.transfer is None:
            # Still waiting, until the listener is open (DataListening).
            client_ip = self.settings.client[0]
            return [ListenData(backend, client_ip, self.tls.private_data, self.tls.backend)]
        self.wait = Wait.NOTHING
        cmd = expected.transfer
        self._expect.append(Forwarded(cmd))
        return [ConnectBackendData(backend, self.tls.backend), SendBackend(cmd.line())]

    def _for_client(self, r: Reply) -> bytes:
        """The reply as the client gets it: no backend address in the replies that
        may name the server (others may hold a path that looks like an address)."""
        text = "\r\n".join(r.lines) + "\r\n"
        if self.backend_host and r.code in _SCRUBBED:
            text = addresses.hide(text, self.backend_host, self.settings.public_address)
        return text.encode("utf-8", "surrogateescape")
