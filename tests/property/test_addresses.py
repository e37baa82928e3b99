"""Hypothesis: PASV/EPSV/PORT/EPRT codecs round-trip; any input parses or raises ProtocolError."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ftplb.errors import ProtocolError
from ftplb.proto import addresses
from ftplb.proto.session import InspectSession, SessionSettings

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


@given(
    st.lists(st.binary(max_size=200), max_size=12), st.lists(st.binary(max_size=200), max_size=12)
)
def test_session_survives_any_bytes_from_either_side(
    client: list[bytes], backend: list[bytes]
) -> None:
    """Whatever arrives, the core answers with commands, never an exception."""
    s = InspectSession(SessionSettings(client=("192.0.2.1", 1), public_address="192.0.2.9"))
    s.start(0)
    s.backend_connected("b", "10.0.0.1", 0)
    for i in range(max(len(client), len(backend))):
        if i < len(client):
            s.client_data(client[i], i)
        if i < len(backend):
            s.backend_data(backend[i], i)
