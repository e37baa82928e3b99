"""Hypothesis: PASV/EPSV/PORT/EPRT codecs round-trip; any input parses or raises
ProtocolError; and no backend address or port reaches a client through the core."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from ftplb.errors import ProtocolError
from ftplb.proto import addresses
from ftplb.proto.commands import Close, ListenData, Redispatch, SendClient
from ftplb.proto.events import (
    BackendConnected,
    BackendData,
    ClientData,
    DataListening,
    Event,
    Start,
)
from ftplb.proto.session import InspectSession
from ftplb.proto.state import SessionSettings

ports = st.integers(1, 65535)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)


@given(v4, ports)
def test_pasv_and_port_round_trip(host: str, port: int) -> None:
    reply = addresses.format_pasv_reply(host, port).decode()
    assert addresses.parse_pasv_reply(reply) == (host, port)
    assert addresses.parse_port(addresses.format_port(host, port)) == (host, port)


@given(ports)
def test_epsv_round_trip(port: int) -> None:
    assert addresses.parse_epsv_reply(addresses.format_epsv_reply(port).decode()) == port


@given(st.one_of(v4, v6), ports)
def test_eprt_round_trip(host: str, port: int) -> None:
    assert addresses.parse_eprt(addresses.format_eprt(host, port)) == (host, port)


@given(st.text(max_size=80))
def test_any_argument_parses_or_raises_with_a_reply(arg: str) -> None:
    for parse in (addresses.parse_port, addresses.parse_eprt):
        try:
            host, port = parse(arg)
        except ProtocolError as exc:
            assert exc.reply[:3] in ("501", "522")
        else:
            assert 1 <= port <= 65535 and host


@given(st.text(max_size=120))
def test_any_reply_text_parses_or_raises(text: str) -> None:
    try:
        host, port = addresses.parse_pasv_reply(text)
    except ProtocolError:
        pass
    else:
        assert 1 <= port <= 65535 and all(0 <= int(x) <= 255 for x in host.split("."))
    try:
        port = addresses.parse_epsv_reply(text)
    except ProtocolError:
        pass
    else:
        assert 1 <= port <= 65535


BACKEND = "10.0.0.1"
PUBLIC = "192.0.2.9"
OUR_PORTS = range(40000, 40100)
# Lines a client and a backend might send, to mix with arbitrary bytes: the
# passive-mode commands and replies are where addresses could slip through.
client_lines = st.sampled_from(
    [b"PASV\r\n", b"EPSV\r\n", b"PASV\r\r\n", b"USER a\r\n", b"PASS b\r\n", b"RETR f\r\n"]
)
backend_lines = st.sampled_from(
    [
        b"220 hi from 10.0.0.1\r\n",
        b"229 Entering Extended Passive Mode (|||50001|)\r\n",
        b"227 Entering Passive Mode (10,0,0,1,195,81).\r\n",
        b"211 at 10.0.0.1 (10,0,0,1,4,1)\r\n",
        b"230 in\r\n",
        b"150 go\r\n",
        b"226 done\r\n",
    ]
)


@given(
    st.lists(st.one_of(st.binary(max_size=200), client_lines), max_size=12),
    st.lists(st.one_of(st.binary(max_size=200), backend_lines), max_size=12),
)
def test_no_backend_address_or_port_reaches_the_client(
    client: list[bytes], backend: list[bytes]
) -> None:
    """Whatever arrives from either side: the core never raises, every passive
    reply the client gets names the public address and one of our own ports,
    the backend's address is never in a reply that can name a server, and
    nothing is sent after Close."""
    s = InspectSession(SessionSettings(client=("192.0.2.1", 1), public_address=PUBLIC))
    out = s.handle(Start(0)) + s.handle(BackendConnected("b", BACKEND, 0))
    listening = iter(OUR_PORTS)
    events: list[Event] = []
    for i in range(max(len(client), len(backend))):
        if i < len(client):
            events.append(ClientData(client[i], i))
        if i < len(backend):
            events.append(BackendData(backend[i], i))
    while events:
        got = s.handle(events.pop(0))
        out += got
        # The I/O layer's part: our listener opens on one of our ports; a
        # backend given up is replaced (here by one at the same address).
        if any(isinstance(c, ListenData) for c in got):
            events.insert(0, DataListening(next(listening), 0))
        if any(isinstance(c, Redispatch) for c in got):
            events.insert(0, BackendConnected("b2", BACKEND, 0))
    closed = False
    for c in out:
        assert not closed, f"{c!r} after Close"
        closed = isinstance(c, Close)
        if not isinstance(c, SendClient):
            continue
        text = c.data.decode("utf-8", "surrogateescape")
        code = text[:3]
        if code == "227":
            host, port = addresses.parse_pasv_reply(text)
            assert host == PUBLIC and port in OUR_PORTS, text
        elif code == "229":
            assert addresses.parse_epsv_reply(text) in OUR_PORTS, text
        elif code in ("211", "220", "221", "421"):
            # Dotted, or in PASV's comma form with a port (h1,h2,h3,h4,p1,p2).
            assert BACKEND not in text and not re.search(r"10,0,0,1,\d+,\d", text), text
