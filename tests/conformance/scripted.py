"""A scripted FTP server for the odd-but-legal (and the odd-and-wrong) behaviour
of real servers that no installed server shows on demand: replies ending
with another code (glftpd), 1,000-line replies, closing in the middle of a
reply, 150 then 425, a 226 sent while the data is still on its way, PRET.

It speaks enough FTP for ftplb (USER, PASS, TYPE, EPSV/PASV, RETR, LIST,
QUIT); `replies` overrides what a verb gets, as raw bytes or a callable.
Every connection's commands are recorded in `commands`. Threads, not
asyncio: the test's own loop stays out of it. Stopped with `close()`.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

Handler = Callable[["Connection", str], None]


class Connection:
    def __init__(self, server: ScriptedServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.data_listener: socket.socket | None = None

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def accept_data(self) -> socket.socket:
        assert self.data_listener is not None, "no EPSV/PASV before the transfer"
        self.data_listener.settimeout(10)
        conn, _ = self.data_listener.accept()
        self.data_listener.close()
        self.data_listener = None
        return conn

    def serve(self) -> None:
        with self.sock:
            self.send(self.server.greeting)
            buf = b""
            while True:
                try:
                    chunk = self.sock.recv(4096)
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                while b"\r\n" in buf:
                    line, buf = buf.split(b"\r\n", 1)
                    text = line.decode("utf-8", "surrogateescape")
                    self.server.commands.append(text)
                    verb, _, arg = text.partition(" ")
                    verb = verb.upper()
                    if not self.answer(verb, arg):
                        return

    def answer(self, verb: str, arg: str) -> bool:
        """Reply to one command; False to end the connection."""
        custom = self.server.replies.get(verb)
        if callable(custom):
            custom(self, arg)
            return verb != "QUIT"
        if custom is not None:
            self.send(custom)
            return True
        if verb == "QUIT":
            self.send(b"221 Bye.\r\n")
            return False
        if verb in ("EPSV", "PASV"):
            self.data_listener = socket.create_server(
                (self.server.host, 0), family=self.server.family
            )
            port = self.data_listener.getsockname()[1]
            if verb == "EPSV":
                self.send(f"229 Entering Extended Passive Mode (|||{port}|)\r\n".encode())
            else:
                h = self.server.host.replace(".", ",")
                self.send(f"227 Entering Passive Mode ({h},{port >> 8},{port & 255}).\r\n".encode())
            return True
        if verb in ("RETR", "LIST"):
            payload = self.server.files.get(arg, b"") if verb == "RETR" else b"file\r\n"
            self.send(b"150 Opening data connection.\r\n")
            with self.accept_data() as data:
                data.sendall(payload)
            self.send(b"226 Transfer complete.\r\n")
            return True
        replies = {"USER": b"331 Password.\r\n", "PASS": b"230 Logged in.\r\n"}
        self.send(replies.get(verb, b"200 OK.\r\n"))
        return True


class ScriptedServer:
    def __init__(
        self,
        host: str,
        replies: dict[str, bytes | Handler] | None = None,
        greeting: bytes = b"220 scripted ready\r\n",
    ) -> None:
        self.host = host
        self.replies = replies or {}
        self.greeting = greeting
        self.files: dict[str, bytes] = {}
        self.commands: list[str] = []
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.create_server((host, 0), family=self.family)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(30)
            self._sockets.append(sock)
            thread = threading.Thread(target=Connection(self, sock).serve, daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        self._acceptor.join(5)
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + 10
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
