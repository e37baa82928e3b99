"""The routed relay in-process against asyncio peers: early bytes, half-close, resets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from ftplb.balancer.pool import Pool
from ftplb.config import parse_config
from ftplb.io import relay as relay_module
from ftplb.io import splice
from ftplb.io.routed import RoutedBalancer
from ftplb.proto.proxy_protocol import parse_header
from tests.cluster import free_ports

LOOPS = pytest.mark.parametrize("loop", ["asyncio", "uvloop"])


def run(coro: Coroutine[Any, Any, None], loop: str) -> None:
    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(coro)


async def run_with_backend(
    handler, proxy: str = "off", send_proxy_data: bool = False, splice: bool = True
):  # type: ignore[no-untyped-def]
    control = free_ports(1)
    passive = free_ports(2)
    backend = await asyncio.start_server(handler, "127.0.1.1", 0)
    port = backend.sockets[0].getsockname()[1]
    config = parse_config(
        {
            "balancer": {"listen": f"127.0.0.1:{control}", "send_proxy": proxy},
            "backends": [
                {
                    "name": "b",
                    "address": f"127.0.1.1:{port}",
                    "passive_ports": f"{passive}-{passive + 1}",
                    "send_proxy_data": send_proxy_data,
                }
            ],
        }
    )
    pool = Pool(config.backends, "leastconn")
    pool.backends[0].up = True
    balancer = RoutedBalancer(config, pool, splice=splice)
    await balancer.start()
    return backend, balancer, control, passive


async def shutdown(backend: asyncio.Server, balancer: RoutedBalancer) -> None:
    await balancer.close()
    balancer.close_sessions()
    backend.close()
    await backend.wait_closed()
    await asyncio.sleep(0.05)


@LOOPS
@pytest.mark.parametrize("kind", ["control", "data"])
def test_bytes_sent_before_the_backend_connects_arrive_in_order(loop: str, kind: str) -> None:
    greeting = b"220 hi\r\n" if kind == "control" else b""

    async def main() -> None:
        async def echo_after_eof(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            writer.write(greeting)  # a control connection's backend speaks first
            data = await reader.read()  # to EOF: the client's half-close reached us
            writer.write(data[::-1])
            await writer.drain()
            writer.close()

        backend, balancer, control, passive = await run_with_backend(echo_after_eof)
        recorder = await asyncio.start_server(echo_after_eof, "127.0.1.1", passive)
        try:
            port = control if kind == "control" else passive
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            payload = bytes(range(256)) * 4000
            writer.write(payload)  # at once, before the balancer's backend connect completes
            writer.write_eof()
            answer = await asyncio.wait_for(reader.read(), 10)
            assert answer == greeting + payload[::-1]
            writer.close()
        finally:
            recorder.close()
            await recorder.wait_closed()
            await shutdown(backend, balancer)

    run(main(), loop)


@LOOPS
def test_data_connection_carries_the_proxy_header_first(loop: str) -> None:
    async def main() -> None:
        got: asyncio.Queue[bytes] = asyncio.Queue()

        async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await got.put(await reader.read())
            writer.close()

        backend, balancer, _, passive = await run_with_backend(record, "v2", send_proxy_data=True)
        # The data listener forwards to the same port on the backend: point the
        # backend's range at our recorder by listening there too.
        recorder = await asyncio.start_server(record, "127.0.1.1", passive)
        try:
            # Many times: the client's first bytes race the backend connection,
            # and the header must still come first (it once did not).
            for n in range(20):
                _reader, writer = await asyncio.open_connection(
                    "127.0.0.1", passive, local_addr=("127.0.0.33", 0)
                )
                body = b"file body %d" % n
                writer.write(body)
                writer.write_eof()
                data = await asyncio.wait_for(got.get(), 10)
                parsed = parse_header(data)
                assert parsed is not None, data[:40]
                header, length = parsed
                assert header.version == 2
                assert header.source is not None and header.source[0] == "127.0.0.33"
                assert header.destination == ("127.0.0.1", passive)
                assert data[length:] == body
                writer.close()
        finally:
            recorder.close()
            await recorder.wait_closed()
            await shutdown(backend, balancer)

    run(main(), loop)


@LOOPS
def test_backend_reset_resets_the_client(loop: str) -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 hi\r\n")
        await reader.read(1)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()

    async def main() -> None:
        backend, balancer, control, _ = await run_with_backend(reset)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", control)
            assert await asyncio.wait_for(reader.readline(), 10) == b"220 hi\r\n"
            writer.write(b"x")
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
            await asyncio.sleep(0.1)
            assert balancer.control_sessions == 0
            assert pool_sessions(balancer) == 0
        finally:
            await shutdown(backend, balancer)

    run(main(), loop)


def pool_sessions(balancer: RoutedBalancer) -> int:
    return balancer.pool.sessions


async def data_through_balancer(handler, client, splice: bool = True, rcvbuf: int = 0):  # type: ignore[no-untyped-def]
    """Run `client(reader, writer)` against a passive port whose backend side is
    `handler` (with `rcvbuf`, its sockets' receive buffers are that small)."""
    backend, balancer, _, passive = await run_with_backend(handler, splice=splice)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if rcvbuf:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    listener.bind(("127.0.1.1", passive))
    recorder = await asyncio.start_server(handler, sock=listener)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", passive)
        await client(reader, writer)
        writer.close()
        for _ in range(100):
            if not balancer._sessions:
                break
            await asyncio.sleep(0.02)
        return balancer
    finally:
        recorder.close()
        await recorder.wait_closed()
        await shutdown(backend, balancer)


BIG = bytes(range(256)) * (32 * 1024)  # 8 MiB


@LOOPS
@pytest.mark.parametrize("mode", ["1", "0"])
def test_download_and_upload_with_half_close(loop: str, mode: str) -> None:
    # Spliced (the default past 1 MiB) and on the Protocol relay (FTPLB_SPLICE=0).
    wanted = splice.enabled({"FTPLB_SPLICE": mode})
    spliced = int(mode == "1")

    async def main() -> None:
        async def download(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(BIG)
            await writer.drain()
            writer.close()

        async def read_all(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            assert await asyncio.wait_for(reader.read(), 20) == BIG

        balancer = await data_through_balancer(download, read_all, wanted)
        assert balancer.spliced_total == spliced
        assert balancer.pool.backends[0].bytes_out >= len(BIG)

        async def upload(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            data = await reader.read()  # to the client's half-close
            writer.write(b"got %d" % len(data) if data == BIG else b"corrupt")
            await writer.drain()
            writer.close()

        async def send_all(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(BIG)
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 20) == b"got %d" % len(BIG)

        balancer = await data_through_balancer(upload, send_all, wanted)
        assert balancer.spliced_total == spliced

    run(main(), loop)


@LOOPS
def test_spliced_backend_reset_reaches_the_client(
    loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay_module, "SPLICE_AFTER", 0)  # spliced before the reset

    async def main() -> None:
        async def reset_midway(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            import socket
            import struct

            writer.write(BIG[:1_000_000])
            await writer.drain()
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()

        async def read_short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := await asyncio.wait_for(reader.read(65536), 20):
                    got += chunk
            assert len(got) < len(BIG)  # never a clean, complete-looking end

        balancer = await data_through_balancer(reset_midway, read_short)
        assert not balancer._sessions
        assert balancer.spliced_total == 1

    run(main(), loop)


@LOOPS
@pytest.mark.parametrize("ended_first", [True, False])
def test_an_upload_that_ends_then_resets_arrives_whole(loop: str, ended_first: bool) -> None:
    """A client that half-closes its upload and then resets sent everything: the
    backend gets it all and a clean end. One that resets without ending its
    stream is cut: the backend sees a reset, never a clean end."""
    payload = bytes(range(256)) * 2000  # under SPLICE_AFTER: the Protocol relay

    async def main() -> None:
        outcome: asyncio.Queue[tuple[bytes, str]] = asyncio.Queue()

        async def receiver(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.transport.pause_reading()
            await asyncio.sleep(0.5)  # a slow backend: the end and the reset come first
            writer.transport.resume_reading()
            got = b""
            try:
                while chunk := await reader.read(65536):
                    got += chunk
                ending = "eof"
            except ConnectionResetError:
                ending = "reset"
            await outcome.put((got, ending))
            writer.close()

        async def send_then_reset(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            writer.write(payload)
            await writer.drain()
            if ended_first:
                writer.write_eof()
            await asyncio.sleep(0.2)  # everything relayed by now
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()

        # The backend takes little at a time: the relay still holds bytes for it
        # when the client's end and reset arrive.
        await data_through_balancer(receiver, send_then_reset, splice=False, rcvbuf=4096)
        got, ending = await asyncio.wait_for(outcome.get(), 10)
        if ended_first:
            assert (got == payload, ending) == (True, "eof")
        else:  # cut short: what arrived is a prefix, and it ends in a reset
            assert payload.startswith(got) and ending == "reset"

    run(main(), loop)


def test_splice_unless_turned_off() -> None:
    for mode, wanted in (("auto", True), ("1", True), ("0", False)):
        assert splice.enabled({"FTPLB_SPLICE": mode}) is wanted
    assert splice.enabled({}) is True


@LOOPS
def test_tls_side_closes_only_after_sending_everything(loop: str, tmp_path: Path) -> None:
    """A client's upload ends (EOF) while the TLS backend is slow to read: the
    relay must not close the TLS side before it has sent what it holds (TLS
    cannot half-close, and a TLS transport closed while full drops its queue)."""
    import ssl

    from ftplb.io.relay import Relay
    from tests.cluster import make_cert

    cert, key = make_cert(tmp_path, "slow", ips=("127.0.1.1",))
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cert)
    payload = bytes(range(256)) * 600  # 150 kB: all read, EOF too, while the TLS side is full

    async def main() -> None:
        received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def slow_tls_server(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            await asyncio.sleep(0.5)  # let every buffer on the way fill up
            received.set_result(await reader.read())
            writer.close()

        import socket

        listener = socket.create_server(("127.0.1.1", 0))
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # inherited on accept
        tls_server = await asyncio.start_server(slow_tls_server, sock=listener, ssl=server_ctx)
        tls_port = tls_server.sockets[0].getsockname()[1]
        loop_ = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop_.create_future()
        relay = Relay(lambda r: done.done() or done.set_result(None))

        async def joined() -> None:
            import socket

            sock = socket.socket()
            # Small buffers: the upload cannot all sit in the kernel, the TLS
            # transport has to hold some of it when the EOF comes.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
            sock.setblocking(False)
            await loop_.sock_connect(sock, ("127.0.1.1", tls_port))
            await loop_.create_connection(
                lambda: relay.backend, sock=sock, ssl=client_ctx, server_hostname="127.0.1.1"
            )
            relay.start()

        relay.on_client = lambda: asyncio.ensure_future(joined())
        front = await loop_.create_server(lambda: relay.client, "127.0.0.1", 0)
        front_port = front.sockets[0].getsockname()[1]
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", front_port)
            writer.write(payload)
            await writer.drain()
            writer.write_eof()  # the upload is over: the relay closes the TLS side
            got = await asyncio.wait_for(received, 30)
            assert len(got) == len(payload) and got == payload
            await asyncio.wait_for(done, 10)
            writer.close()
        finally:
            front.close()
            tls_server.close()

    run(main(), loop)


@LOOPS
def test_a_backend_that_never_follows_a_client_close_is_closed(
    loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client sent QUIT and closed its side; a backend that keeps its side
    # open would otherwise hold the session (and its slot) until the idle timeout.
    from ftplb.io import routed

    monkeypatch.setattr(routed, "FIN_TIMEOUT", 0.3)

    async def main() -> None:
        release = asyncio.Event()

        async def linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"220 hi\r\n")
            assert await reader.read() == b"QUIT\r\n"  # to the client's half-close
            await release.wait()  # and never close our side
            writer.close()

        backend, balancer, control, _ = await run_with_backend(linger)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", control)
            assert await asyncio.wait_for(reader.readline(), 10) == b"220 hi\r\n"
            writer.write(b"QUIT\r\n")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
            assert balancer.counts.current == 0
        finally:
            release.set()
            await shutdown(backend, balancer)

    run(main(), loop)


@LOOPS
def test_a_closed_tls_transport_is_reset_and_written_to_quietly(
    loop: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # asyncio's TLS transport, once closed, raised from get_extra_info(): an
    # ABOR that reset such a data connection killed the session's control
    # connection (seen in the soak), and each later write logged a warning.
    import ssl

    from ftplb.io.relay import reset, send
    from tests.cluster import make_cert

    cert, key = make_cert(tmp_path, "closed", ips=("127.0.1.1",))
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cert)

    async def main() -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                await reader.read()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.1.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            _reader, writer = await asyncio.open_connection(
                "127.0.1.1", port, ssl=client_ctx, server_hostname="127.0.1.1"
            )
            transport = writer.transport
            transport.abort()
            await asyncio.sleep(0.1)  # connection_lost: the TLS protocol is gone
            reset(transport)
            for _ in range(10):
                send(transport, b"late")  # type: ignore[arg-type]
        finally:
            server.close()
            await server.wait_closed()

    with caplog.at_level("WARNING", logger="asyncio"):
        run(main(), loop)
    assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text
