"""Routed data connections moved by the kernel: os.splice between the sockets.

A `Relay` whose two sides are connected hands its sockets over here once the
PROXY header and any early bytes are written: each direction is socket ->
pipe -> socket with `os.splice`, driven by the loop's add_reader/add_writer, so
the bytes never enter Python. Backpressure is the same idea as the Protocol
relay's: while the destination cannot take the pipe's bytes, the source is not
read, so memory per connection is bounded by the pipe.

When (bench/splice.py and bench/transfer.py, docs/performance.md): with 8 or
32 concurrent streams splice moved about 1.2x the bytes at 0.6x the CPU per
GiB; a lone stream moved as fast or a little faster (0.9x to 1.3x across
runs, noise included) at 0.6-0.7x the CPU. So a data connection is spliced
once it has moved SPLICE_AFTER bytes. `FTPLB_SPLICE` in the environment:
`auto` or `1` (that), `0` (never: the Protocol relay, which also carries
every control connection and inspect mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Callable, Mapping

PIPE_SIZE = 256 * 1024
"""Per direction; the same bound as the Protocol relay's HIGH_WATER. Pipes
beyond a user's pipe-user-pages-soft keep the default 64 KiB."""
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

SPLICE_AFTER = 1024 * 1024
"""Bytes a data connection moves through the Protocol relay before the kernel
may take over: a directory listing or a small file never pays for two pipes."""


def enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """FTPLB_SPLICE: `auto` or `1` (splice a data connection that has moved
    SPLICE_AFTER bytes), `0` (never). Read once, when the balancer starts."""
    return hasattr(os, "splice") and environ.get("FTPLB_SPLICE", "auto") != "0"


ERROR_CHECK = 1.0
"""Seconds between SO_ERROR checks. libuv (uvloop) answers a socket error
(EPOLLERR, a reset) on an add_reader/add_writer descriptor by dropping the
watcher without calling back; a reset would otherwise go unnoticed."""


class _Direction:
    """src -> pipe -> dst. `on_end(error)` once: None at EOF (dst is half-closed)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        src: socket.socket,
        dst: socket.socket,
        count: Callable[[int], None],
        on_end: Callable[[OSError | None], None],
    ) -> None:
        self.loop = loop
        self.src = src.fileno()
        self.dst = dst.fileno()
        self.dst_socket = dst
        self.count = count
        self.on_end = on_end
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.w, F_SETPIPE_SZ, PIPE_SIZE)
        self.pending = 0
        self.reading = False
        self.writing = False
        self.ended = False

    def start(self) -> None:
        self._read_on()

    def _read_on(self) -> None:
        if not self.reading and not self.ended:
            self.loop.add_reader(self.src, self._readable)
            self.reading = True

    def _read_off(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.src)
            self.reading = False

    def _readable(self) -> None:
        try:
            n = os.splice(self.src, self.w, PIPE_SIZE, flags=os.SPLICE_F_MOVE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._end(exc)
            return
        if n == 0:  # EOF: pass the half-close on once the pipe is empty
            self._read_off()
            self._flush()
            if not self.pending and not self.ended:
                with contextlib.suppress(OSError):
                    self.dst_socket.shutdown(socket.SHUT_WR)
                self._end(None)
            return
        self.count(n)
        self.pending += n
        self._flush()

    def _flush(self) -> None:
        while self.pending:
            try:
                self.pending -= os.splice(self.r, self.dst, self.pending, flags=os.SPLICE_F_MOVE)
            except BlockingIOError:
                # The destination is full: stop reading until it drains.
                self._read_off()
                if not self.writing:
                    self.loop.add_writer(self.dst, self._writable)
                    self.writing = True
                return
            except OSError as exc:
                self._end(exc)
                return

    def _writable(self) -> None:
        self._flush()
        if self.pending or self.ended:
            return
        self.loop.remove_writer(self.dst)
        self.writing = False
        self._read_on()

    def _end(self, error: OSError | None) -> None:
        if self.ended:
            return
        self.ended = True
        self.on_end(error)

    def stop(self) -> None:
        self.ended = True
        self._read_off()
        if self.writing:
            self.loop.remove_writer(self.dst)
            self.writing = False
        for fd in (self.r, self.w):
            with contextlib.suppress(OSError):
                os.close(fd)


class SplicedPair:
    """Both directions of one relay. `on_done(reason, abort)` once, when both
    ended (EOF each way) or either failed; the caller then closes the transports."""

    def __init__(
        self,
        client: socket.socket,
        backend: socket.socket,
        count_up: Callable[[int], None],
        count_down: Callable[[int], None],
        on_done: Callable[[str, bool], None],
    ) -> None:
        loop = asyncio.get_running_loop()
        # Our own descriptors for the transports' sockets: the transports stay
        # paused and untouched until the end, then close the sockets themselves.
        c = socket.socket(fileno=os.dup(client.fileno()))
        b = socket.socket(fileno=os.dup(backend.fileno()))
        self.sockets = (c, b)
        self.on_done = on_done
        self.ended = 0
        self.finished = False
        self.up = _Direction(loop, c, b, count_up, lambda e: self._ended("client", e))
        self.down = _Direction(loop, b, c, count_down, lambda e: self._ended("backend", e))
        self.loop = loop
        self.timer = loop.call_later(ERROR_CHECK, self._check)
        self.up.start()
        self.down.start()

    def _check(self) -> None:
        for sock, direction in ((self.sockets[0], self.up), (self.sockets[1], self.down)):
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                direction._end(OSError(code, os.strerror(code)))
                return
        if not self.finished:
            self.timer = self.loop.call_later(ERROR_CHECK, self._check)

    def _ended(self, who: str, error: OSError | None) -> None:
        if self.finished:
            return
        if error is not None:
            reset = error.errno in (errno.ECONNRESET, errno.EPIPE)
            self._finish(f"{who} reset" if reset else f"{who} error: {error.strerror}", True)
            return
        self.ended += 1
        if self.ended == 2:
            self._finish("closed", False)

    def _finish(self, reason: str, abort: bool) -> None:
        self.stop()
        self.on_done(reason, abort)

    def stop(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.timer.cancel()
        self.up.stop()
        self.down.stop()
        for sock in self.sockets:
            sock.close()
