"""A hypothesis state machine over the inspect core: random interleavings of
client commands, backend replies, data-channel events and time.

The backend is well-behaved (one final reply per command, in order; a
preliminary 150 before a transfer's end), the client anything from a list of
real commands plus garbage and over-long lines. Invariants, after every step:

- no backend address or port reaches the client (a 227/229 carries the public
  address and one of our ports; a reply that can name the server never names
  the backend);
- every client command gets exactly one final reply (checked whenever nothing
  is left to happen: no reply owed by the backend, no data event owed by the
  I/O layer, no client line waiting);
- nothing is sent after Close;
- what is buffered stays within its limits (commands in flight, the line
  buffer while the core asks for more data).
"""

from __future__ import annotations

import re
from collections import deque

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ftplb.proto.commands import (
    AbortBackend,
    Close,
    CloseData,
    Cmd,
    ConnectBackendData,
    ConnectClientData,
    ListenData,
    SendBackend,
    SendClient,
)
from ftplb.proto.events import (
    BackendConnected,
    BackendData,
    ClientData,
    DataClientConnected,
    DataClosed,
    DataFailed,
    DataListenFailed,
    DataListening,
    DataOpened,
    Event,
    Resume,
    Start,
    Tick,
)
from ftplb.proto.session import MAX_IN_FLIGHT, InspectSession
from ftplb.proto.state import Forwarded, SessionSettings

CLIENT = ("198.51.100.7", 40000)
PUBLIC = "203.0.113.1"
BACKEND = "10.0.0.5"
OUR_PORTS = range(40000, 41000)
MAX_LINE = 2048

COMMANDS = [
    b"USER alice",
    b"PASS secret",
    b"PASS wrong",
    b"NOOP",
    b"PWD",
    b"TYPE I",
    b"SYST",
    b"FEAT",
    b"STAT",
    b"PASV",
    b"EPSV",
    b"EPSV 1",
    b"EPSV ALL",
    b"EPSV 3",
    b"PORT 198,51,100,7,156,64",
    b"PORT 192,0,2,1,156,64",
    b"PORT 198,51,100,7,0,21",
    b"EPRT |1|198.51.100.7|40002|",
    b"EPRT |2|::1|40002|",
    b"EPRT",
    b"RETR f",
    b"STOR f",
    b"LIST",
    b"MLSD",
    b"APPE f",
    b"SIZE f",
    b"MKD 10.0.0.5",
    b"ABOR",
    b"PASV\r",
    b"RETR a\x00b",
    b"P4SV",
    b"AUTH TLS",
    b"PROT P",
    b"SITE PASV",  # a backend that obeys it answers with its own address
]

lines = st.one_of(
    st.sampled_from(COMMANDS),
    st.binary(min_size=1, max_size=40).filter(lambda b: b"\n" not in b and b.strip() != b""),
    st.just(b"X" * (MAX_LINE + 100)),
)


def final_codes(data: bytes) -> list[int]:
    """The final replies (2xx-5xx) in one SendClient's bytes (one reply each)."""
    text = data.decode("utf-8", "surrogateescape")
    return [int(text[:3])] if text[:3].isdigit() and text[0] in "2345" else []


class InspectCore(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.s = InspectSession(
            SessionSettings(client=CLIENT, public_address=PUBLIC, login_timeout=1e9)
        )
        self.now = 0.0
        self.closed = False
        self.sent_after_close: list[Cmd] = []
        self.commands = 0  # complete client lines
        self.finals = 0  # final replies the client got
        self.backend_owes: deque[bytes] = deque()  # lines the backend has to answer
        self.transfer_open = False  # a 150 went out; the 226 waits for the data
        self.listen: ListenData | None = None
        self.client_connect: ConnectClientData | None = None
        self.backend_connect: ConnectBackendData | None = None
        self.data_open = False
        self.passive_ready = False  # our listener is open: the client may connect
        self.ports = iter(OUR_PORTS)
        self.feed(Start(0))
        self.feed(BackendConnected("ftp1", BACKEND, 0))
        self.feed(BackendData(b"220 hi from 10.0.0.5\r\n", 0))
        self.finals = 0  # the greeting answers no command

    # -- driving the core

    def feed(self, event: Event) -> None:
        for cmd in self.s.handle(event):
            if self.closed:
                self.sent_after_close.append(cmd)
                continue
            match cmd:
                case SendClient(data):
                    self.check_reply(data)
                    # A 421 announces the end (a timeout), it answers no command.
                    self.finals += len([c for c in final_codes(data) if c != 421])
                case SendBackend(data):
                    self.backend_owes.append(data.rstrip(b"\r\n"))
                case AbortBackend():
                    self.backend_owes.append(b"ABOR")
                case ListenData():
                    self.listen = cmd
                case ConnectClientData():
                    self.client_connect = cmd
                case ConnectBackendData():
                    self.backend_connect = cmd
                case CloseData():
                    self.backend_connect = None
                    self.client_connect = None
                    self.data_open = False
                    self.passive_ready = False
                case Close():
                    self.closed = True

    def check_reply(self, data: bytes) -> None:
        text = data.decode("utf-8", "surrogateescape")
        code = text[:3]
        if code == "227":
            numbers = [int(x) for x in re.findall(r"\d+", text[3:])][-6:]
            host = ".".join(map(str, numbers[:4]))
            assert host == PUBLIC and numbers[4] * 256 + numbers[5] in OUR_PORTS, text
        elif code == "229":
            port = int(text.split("|||")[1].split("|")[0])
            assert port in OUR_PORTS, text
        elif code in ("211", "220", "221", "421"):
            assert BACKEND not in text, text

    # -- the client

    @precondition(lambda self: not self.closed)
    @rule(line=lines, split=st.booleans())
    def client_sends(self, line: bytes, split: bool) -> None:
        self.commands += 1
        data = line + b"\r\n"
        if split and len(data) > 2:
            half = len(data) // 2
            self.feed(ClientData(data[:half], self.now))
            self.feed(ClientData(data[half:], self.now))
        else:
            self.feed(ClientData(data, self.now))

    @precondition(lambda self: not self.closed and self.s.runnable)
    @rule()
    def io_resumes(self) -> None:
        self.feed(Resume(self.now))

    # -- the backend: one final reply per command, in order

    @precondition(lambda self: not self.closed and bool(self.backend_owes))
    @rule(ok=st.booleans())
    def backend_answers(self, ok: bool) -> None:
        line = self.backend_owes[0]
        verb = line.split(b" ")[0].upper()
        if verb in (b"RETR", b"STOR", b"LIST", b"MLSD", b"APPE", b"NLST", b"STOU"):
            if not self.transfer_open:
                if not ok:
                    self.backend_owes.popleft()
                    self.feed(BackendData(b"550 No such file.\r\n", self.now))
                    return
                self.transfer_open = True
                self.feed(BackendData(b"150 Opening data connection.\r\n", self.now))
                return
            if self.data_open or self.backend_connect is not None or self.passive_ready:
                return  # the 226 comes when the data connection ends
            self.transfer_open = False
            self.backend_owes.popleft()
            self.feed(BackendData(b"425 No data connection.\r\n", self.now))
            return
        self.backend_owes.popleft()
        reply = {
            b"EPSV": b"229 Entering Extended Passive Mode (|||50001|)",
            b"PASV": b"227 Entering Passive Mode (10,0,0,5,195,81).",
            b"USER": b"331 Password please.",
            b"PASS": b"230 Logged in." if ok else b"530 Login incorrect.",
            b"STAT": b"211-Status of 10.0.0.5\r\n connected\r\n211 End",
            b"MKD": b'257 "/10.0.0.5" created.',
            b"SITE": b"227 Entering Passive Mode (10,0,0,5,195,82).",
        }.get(verb, b"200 OK." if ok else b"500 Unknown command.")
        if verb in (b"EPSV", b"PASV") and not ok:
            reply = b"500 Not here."
        self.feed(BackendData(reply + b"\r\n", self.now))

    # -- the I/O layer's data channels

    @precondition(lambda self: not self.closed and self.listen is not None)
    @rule(ok=st.booleans())
    def listener_opens(self, ok: bool) -> None:
        listen, self.listen = self.listen, None
        assert listen is not None and listen.backend[0] == BACKEND
        if ok:
            self.passive_ready = True
            self.feed(DataListening(next(self.ports), self.now))
        else:
            self.feed(DataListenFailed(self.now))

    @precondition(lambda self: not self.closed and self.client_connect is not None)
    @rule(ok=st.booleans())
    def client_connect_ends(self, ok: bool) -> None:
        self.client_connect = None
        self.feed(DataClientConnected(self.now) if ok else DataFailed(self.now))

    @precondition(
        lambda self: not self.closed and (self.backend_connect is not None or self.passive_ready)
    )
    @rule()
    def data_joins(self) -> None:
        self.backend_connect = None
        self.passive_ready = False
        self.data_open = True
        self.feed(DataOpened(self.now))

    @precondition(lambda self: not self.closed and self.data_open)
    @rule(size=st.integers(0, 10**6))
    def data_ends(self, size: int) -> None:
        self.data_open = False
        self.feed(DataClosed(size, size, self.now))
        if self.transfer_open and self.backend_owes:
            self.transfer_open = False
            self.backend_owes.popleft()
            self.feed(BackendData(b"226 Transfer complete.\r\n", self.now))

    # -- time

    @rule(seconds=st.floats(0, 1000))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        if not self.closed and self.now >= self.s.next_deadline():
            self.feed(Tick(self.now))

    # -- invariants

    @invariant()
    def nothing_after_close(self) -> None:
        assert not self.sent_after_close, self.sent_after_close

    @invariant()
    def bounded(self) -> None:
        in_flight = sum(1 for e in self.s._expect if isinstance(e, Forwarded))
        assert in_flight <= MAX_IN_FLIGHT
        if self.s.wants_client_data:
            assert self.s._lines.buffered <= MAX_LINE + 1

    @invariant()
    def one_final_reply_per_command(self) -> None:
        assert self.finals <= self.commands, (self.finals, self.commands)
        quiet = not (
            self.closed
            or self.backend_owes
            or self.listen
            or self.client_connect
            or self.backend_connect
            or self.passive_ready
            or self.data_open
            or self.s.runnable
            or not self.s.wants_client_data
        )
        if quiet:
            assert self.finals == self.commands, (self.finals, self.commands)


InspectCore.TestCase.settings = settings(max_examples=500, stateful_step_count=60, deadline=None)
test_inspect_core = InspectCore.TestCase
