"""One balancer per server kind, shared by the module's cases (a server start
costs more than most cases).

`Pair` opens the same kind of session twice: through ftplb (inspect mode,
the server as installed) and straight to the server. Cases run the same
steps on both and compare what the client saw: a server that cannot do a
thing fails the same way both times, and ftplb must change nothing else.
"""

from __future__ import annotations

import ftplib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.cluster import BALANCER_HOST, Backend, Cluster, cluster_at
from tests.servers import add_server

SERVERS = ["pyftpdlib", "vsftpd", "proftpd"]
CLIENT = "127.0.0.11"


@dataclass
class Pair:
    cluster: Cluster
    backend: Backend
    login: tuple[str, str]
    kind: str

    def through(self, source: str = CLIENT, encoding: str = "utf-8") -> ftplib.FTP:
        return self._open(BALANCER_HOST, self.cluster.balancer_port, source, encoding)

    def direct(self, source: str = CLIENT, encoding: str = "utf-8") -> ftplib.FTP:
        return self._open(self.backend.host, self.backend.port, source, encoding)

    def _open(self, host: str, port: int, source: str, encoding: str) -> ftplib.FTP:
        ftp = ftplib.FTP(timeout=15, source_address=(source, 0), encoding=encoding)
        ftp.connect(host, port)
        ftp.login(*self.login)
        return ftp

    @property
    def incoming(self) -> str:
        return "incoming"


@pytest.fixture(scope="module", params=SERVERS)
def pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pair]:
    kind = request.param
    with cluster_at(tmp_path_factory.mktemp(kind)) as c:
        if kind == "vsftpd":
            # vsftpd reads ABOR during a transfer only so (off by default).
            b, login = add_server(c, kind, extra=("async_abor_enable=YES",))
        else:
            b, login = add_server(c, kind)
        # ProFTPD pauses after each session: back-to-back sessions can make a
        # 0.5 s health check fail. Lenient checks: the cases are about FTP.
        c.start_balancer(mode="inspect", send_proxy="off", health_timeout=2, health_fall=5)
        yield Pair(c, b, login, kind)
