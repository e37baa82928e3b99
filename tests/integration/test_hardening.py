"""ftplb against an attacker and a buggy peer: the defects found by trying to
break it (data loss, smuggling, ban bypasses, memory, frozen backends, reload),
each through real sockets, real backends and the real balancer. Mostly inspect
mode, which reads the control channel; routed mode where it applies."""

from __future__ import annotations

import errno
import ftplib
import io
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager

import pytest

from tests.cluster import (
    BALANCER_HOST,
    PASSWORD,
    USER,
    Cluster,
    free_ports,
    greeting,
    make_cert,
    sha256,
    wait_for,
)
from tests.conftest import need
from tests.integration.test_admin import call
from tests.integration.test_routed_ftps import ReusingFTP_TLS, tls_context

VICTIM = b"precious contents\n" * 1000


def plain_backend(cluster: Cluster, *args: str) -> None:
    b = cluster.add_backend(
        proxy_protocol=False, passive_size=None, masquerade=None, extra_args=args
    )
    (b.root / "victim.txt").write_bytes(VICTIM)


def dead_port(host: str) -> int:
    """A port on `host` where nothing listens (bound a moment, then let go)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def read_reply(sock: socket.socket) -> bytes:
    """One (possibly multi-line) reply from a raw control socket."""
    data = b""
    while True:
        chunk = sock.recv(1)
        if not chunk:
            return data
        data += chunk
        if data.endswith(b"\r\n"):
            last = data[:-2].rsplit(b"\r\n", 1)[-1]
            if len(last) >= 4 and last[3:4] == b" " and last[:3] == data[:3]:
                return data


@contextmanager
def raw_session(cluster: Cluster, source: str = "127.0.0.11") -> Iterator[socket.socket]:
    s = socket.create_connection((BALANCER_HOST, cluster.balancer_port), 10, (source, 0))
    with closing(s):
        assert read_reply(s).startswith(b"220")
        s.sendall(f"USER {USER}\r\n".encode())
        assert read_reply(s).startswith(b"331")
        s.sendall(f"PASS {PASSWORD}\r\n".encode())
        assert read_reply(s).startswith(b"230")
        yield s


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


# --- 1. active-mode data connections that fail -----------------------------------


@pytest.mark.parametrize("verb", ["PORT", "EPRT"])
@pytest.mark.parametrize("command", ["STOR", "APPE", "RETR"])
def test_an_unreachable_active_client_gets_425_and_the_backend_file_is_untouched(
    cluster: Cluster, verb: str, command: str
) -> None:
    plain_backend(cluster)
    cluster.start_balancer(mode="inspect", send_proxy="off")
    with cluster.ftp(source="127.0.0.11") as ftp:
        port = dead_port("127.0.0.11")
        if verb == "PORT":
            ftp.sendcmd(f"PORT 127,0,0,11,{port >> 8},{port & 0xFF}")
        else:
            ftp.sendcmd(f"EPRT |1|127.0.0.11|{port}|")
        with pytest.raises(ftplib.error_temp, match=r"^425"):
            ftp.sendcmd(f"{command} victim.txt")
        assert ftp.voidcmd("NOOP").startswith("200")  # the session goes on
    assert (cluster.backends[0].root / "victim.txt").read_bytes() == VICTIM


def test_an_unreachable_active_client_of_vsftpd_gets_425(cluster: Cluster) -> None:
    need("vsftpd")
    b = cluster.add_vsftpd(unmodified=True)
    incoming = b.root / "incoming"
    incoming.mkdir()
    incoming.chmod(0o777)
    (incoming / "victim.txt").write_bytes(VICTIM)
    (incoming / "victim.txt").chmod(0o666)
    cluster.start_balancer(mode="inspect", send_proxy="off")
    with ftplib.FTP(timeout=10, source_address=("127.0.0.11", 0)) as ftp:
        ftp.connect(BALANCER_HOST, cluster.balancer_port)
        ftp.login()
        port = dead_port("127.0.0.11")
        ftp.sendcmd(f"PORT 127,0,0,11,{port >> 8},{port & 0xFF}")
        with pytest.raises(ftplib.error_temp, match=r"^425"):
            ftp.sendcmd("STOR incoming/victim.txt")
    assert (incoming / "victim.txt").read_bytes() == VICTIM


def reset_after(conn: socket.socket, data: bytes) -> None:
    """Send `data`, then close with a TCP reset (an upload cut off by a crash).
    The pause lets the balancer's connection to the backend be accepted first:
    pyftpdlib drops a data connection reset before it has set it up, silently,
    and answers the STOR only when its passive listener times out (30 s)."""
    conn.sendall(data)
    time.sleep(0.2)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


@pytest.mark.parametrize("server", ["ftplb", "vsftpd"])
@pytest.mark.parametrize("mode", ["passive", "active"])
def test_an_upload_cut_by_a_reset_is_never_reported_complete(
    cluster: Cluster, mode: str, server: str
) -> None:
    if server == "vsftpd":
        need("vsftpd")
        b = cluster.add_vsftpd(unmodified=True)
        (b.root / "incoming").mkdir()
        (b.root / "incoming").chmod(0o777)
        path, user, password = "incoming/cut.bin", "anonymous", "x"
    else:
        plain_backend(cluster)
        path, user, password = "cut.bin", USER, PASSWORD
    cluster.start_balancer(mode="inspect", send_proxy="off")
    with ftplib.FTP(timeout=10, source_address=("127.0.0.11", 0)) as ftp:
        ftp.connect(BALANCER_HOST, cluster.balancer_port)
        ftp.login(user, password)
        ftp.voidcmd("TYPE I")
        if mode == "passive":
            host, port = ftp.makepasv()
            ftp.putcmd(f"STOR {path}")
            conn = socket.create_connection((host, port), 10, ("127.0.0.11", 0))
            assert ftp.getresp().startswith("150")
        else:
            with socket.create_server(("127.0.0.11", 0)) as listener:
                port = listener.getsockname()[1]
                ftp.sendcmd(f"PORT 127,0,0,11,{port >> 8},{port & 0xFF}")
                ftp.putcmd(f"STOR {path}")
                listener.settimeout(10)
                conn, _ = listener.accept()
            assert ftp.getresp().startswith("150")
        reset_after(conn, os.urandom(100_000))
        # The balancer passed the reset on: the backend knows the upload failed.
        with pytest.raises(ftplib.error_temp, match=r"^426"):
            ftp.voidresp()
        assert ftp.voidcmd("NOOP").startswith("200")


@pytest.mark.parametrize("mode", ["passive", "active"])
def test_a_tls_upload_whose_data_handshake_fails_is_never_reported_complete(
    cluster: Cluster, mode: str
) -> None:
    plain_backend(cluster)
    cert, key = make_cert(cluster.workdir)
    tls = {"cert": str(cert), "key": str(key), "handshake_timeout": 2.0}
    cluster.start_balancer(mode="inspect", send_proxy="off", sections={"tls": tls})
    with ReusingFTP_TLS(context=tls_context(), timeout=10, source_address=("127.0.0.11", 0)) as ftp:
        ftp.connect(BALANCER_HOST, cluster.balancer_port)
        ftp.login(USER, PASSWORD)
        ftp.prot_p()
        ftp.voidcmd("TYPE I")
        if mode == "passive":
            host, port = ftp.makepasv()
            ftp.putcmd("STOR victim.txt")
            conn = socket.create_connection((host, port), 10, ("127.0.0.11", 0))
            assert ftp.getresp().startswith("150")
        else:
            with socket.create_server(("127.0.0.11", 0)) as listener:
                port = listener.getsockname()[1]
                ftp.sendcmd(f"PORT 127,0,0,11,{port >> 8},{port & 0xFF}")
                ftp.putcmd("STOR victim.txt")
                listener.settimeout(10)
                conn, _ = listener.accept()
            assert ftp.getresp().startswith("150")
        # Not a TLS hello: the handshake fails, and so must the transfer.
        reset_after(conn, b"this is not TLS\r\n" * 100)
        with pytest.raises(ftplib.error_temp, match=r"^4"):
            ftp.voidresp()
        assert ftp.voidcmd("NOOP").startswith("200")


def test_a_routed_upload_cut_by_a_reset_is_never_reported_complete(cluster: Cluster) -> None:
    b = cluster.add_backend()
    cluster.start_balancer(backend_options={b.name: {"send_proxy_data": True}})
    with cluster.ftp(source="127.0.0.11") as ftp:
        ftp.voidcmd("TYPE I")
        host, port = ftp.makepasv()
        ftp.putcmd("STOR cut.bin")
        conn = socket.create_connection((host, port), 10, ("127.0.0.11", 0))
        assert ftp.getresp().startswith("150")
        reset_after(conn, os.urandom(100_000))
        with pytest.raises(ftplib.error_temp, match=r"^426"):
            ftp.voidresp()
    assert b.process is not None
    assert "cut.bin completed=0" in b.process.log()


# --- 2. smuggled commands ---------------------------------------------------------


def test_cr_smuggled_pasv_never_reaches_vsftpd(cluster: Cluster) -> None:
    need("vsftpd")
    backend = cluster.add_vsftpd(unmodified=True)
    cluster.start_balancer(mode="inspect", send_proxy="off")
    first = int(cluster.config_path.read_text().split('data_ports = "')[1].split("-")[0])
    s = socket.create_connection((BALANCER_HOST, cluster.balancer_port), 10, ("127.0.0.11", 0))
    with closing(s):
        assert read_reply(s).startswith(b"220")
        s.sendall(b"USER anonymous\r\n")
        read_reply(s)
        s.sendall(b"PASS x\r\n")
        assert read_reply(s).startswith(b"230")
        s.sendall(b"PASV\r\r\n")
        answer = read_reply(s).decode()
        assert answer.startswith("227"), answer
        assert "(127,0,0,1," in answer and backend.host.replace(".", ",") not in answer
        s.sendall(b"EPSV\r\r\n")
        answer = read_reply(s).decode()
        port = int(answer.split("|||")[1].split("|")[0])
        assert first <= port < first + 40, answer  # ours, not vsftpd's
        s.sendall(b"PASV\rX\r\n")
        assert read_reply(s).startswith(b"500")


def test_a_path_like_the_backend_address_is_not_rewritten(cluster: Cluster) -> None:
    plain_backend(cluster)
    cluster.start_balancer(mode="inspect", send_proxy="off")
    host = cluster.backends[0].host
    with cluster.ftp() as ftp:
        answer = ftp.sendcmd(f"MKD {host}")
        assert f'"/{host}"' in answer, answer
    assert (cluster.backends[0].root / host).is_dir()


# --- 3, 4. failed logins ------------------------------------------------------------


def test_failed_logins_ban_across_workers(cluster: Cluster) -> None:
    for _ in range(2):
        plain_backend(cluster, "--login-delay=0.05")
    cluster.start_balancer(
        mode="inspect", send_proxy="off", workers=2, max_login_failures=5, ban_time=60
    )
    # One connection each: the kernel spreads them over both workers.
    for _ in range(5):
        with ftplib.FTP(timeout=10, source_address=("127.0.0.31", 0)) as ftp:
            ftp.connect(BALANCER_HOST, cluster.balancer_port)
            with pytest.raises(ftplib.error_perm, match="530"):
                ftp.login(USER, "wrong")
    assert cluster.balancer is not None
    log = cluster.balancer.log
    wait_for(lambda: "client 127.0.0.31 banned" in log(), what="the ban")
    for _ in range(6):  # whichever worker answers
        answer = greeting(BALANCER_HOST, cluster.balancer_port, source="127.0.0.31")
        assert answer.startswith("421"), answer
    with cluster.ftp(source="127.0.0.32") as ftp:
        assert ftp.voidcmd("NOOP").startswith("200")


@pytest.mark.parametrize("then", ["hang up", "QUIT"])
def test_hanging_up_before_the_530_still_counts(cluster: Cluster, then: str) -> None:
    plain_backend(cluster, "--login-delay=3")
    cluster.start_balancer(mode="inspect", send_proxy="off", max_login_failures=5, ban_time=60)
    for n in range(5):
        s = socket.create_connection((BALANCER_HOST, cluster.balancer_port), 10, ("127.0.0.33", 0))
        with closing(s):
            assert read_reply(s).startswith(b"220")
            s.sendall(f"USER {USER}\r\n".encode())
            read_reply(s)
            tail = b"QUIT\r\n" if then == "QUIT" else b""
            s.sendall(f"PASS guess{n}\r\n".encode() + tail)
            time.sleep(0.3)  # a 230 would be here by now; a 530 takes 3 s
    assert cluster.balancer is not None
    log = cluster.balancer.log
    wait_for(lambda: "client 127.0.0.33 banned" in log(), what="the ban")
    assert greeting(BALANCER_HOST, cluster.balancer_port, source="127.0.0.33").startswith("421")


# --- 5. clients that send and never read --------------------------------------------


def flood(source: str, port: int, line: bytes, limit: int, logged_in: bool) -> int:
    """Send `line` over and over without reading a reply, until `limit` bytes or
    until the balancer has stopped taking them for 2 s; returns the bytes sent."""
    s = socket.create_connection((BALANCER_HOST, port), 10, (source, 0))
    with closing(s):
        if logged_in:
            s.sendall(f"USER {USER}\r\nPASS {PASSWORD}\r\n".encode())
        s.setblocking(False)
        chunk = line * (65536 // len(line))
        sent = 0
        stalled_since = None
        while sent < limit:
            try:
                sent += s.send(chunk)
                stalled_since = None
            except BlockingIOError:
                now = time.monotonic()
                stalled_since = stalled_since or now
                if now - stalled_since > 2:
                    break
                time.sleep(0.01)
        return sent


def test_clients_that_never_read_cannot_grow_memory_or_starve_others(cluster: Cluster) -> None:
    for _ in range(2):
        plain_backend(cluster)
    cluster.start_balancer(mode="inspect", send_proxy="off", login_timeout=30)
    assert cluster.balancer is not None
    pid = cluster.balancer.popen.pid
    with cluster.ftp(source="127.0.0.20") as bystander:
        bystander.voidcmd("NOOP")
        before = rss_kib(pid)
        floods = [
            (f"127.0.0.{50 + i}", line, logged_in)
            for i, (line, logged_in) in enumerate(
                [(b"EPRT\r\n", False)] * 3 + [(b"NOOP\r\n", True)] * 3
            )
        ]
        sent: list[int] = []
        threads = [
            threading.Thread(
                target=lambda a=a, ln=ln, li=li: sent.append(
                    flood(a, cluster.balancer_port, ln, 24 << 20, li)
                )
            )
            for a, ln, li in floods
        ]
        for t in threads:
            t.start()
        # Meanwhile another user is served.
        for _ in range(20):
            assert bystander.voidcmd("NOOP").startswith("200")
        for t in threads:
            t.join(60)
        grown = rss_kib(pid) - before
        assert grown < 64 * 1024, f"RSS grew {grown} KiB while clients sent {sum(sent)} bytes"
        # The flooders were held back by the kernel (unread replies), not absorbed.
        assert sum(sent) < 6 * (24 << 20)
        assert bystander.voidcmd("NOOP").startswith("200")
    assert "is DOWN" not in cluster.balancer.log()  # health checks were not starved


# --- 7. line reading --------------------------------------------------------------------


def test_an_over_long_line_between_commands_keeps_both_and_their_order(cluster: Cluster) -> None:
    plain_backend(cluster)
    cluster.start_balancer(mode="inspect", send_proxy="off")
    with raw_session(cluster) as s:
        s.sendall(b"NOOP\r\n" + b"x" * 5000 + b"\r\nPWD\r\n")
        codes = [read_reply(s)[:3] for _ in range(3)]
        assert codes == [b"200", b"500", b"257"]


def test_the_rest_of_an_over_long_line_is_never_obeyed(cluster: Cluster) -> None:
    plain_backend(cluster)
    cluster.start_balancer(mode="inspect", send_proxy="off")
    with raw_session(cluster) as s:
        s.sendall(b"x" * 3000)
        assert read_reply(s).startswith(b"500")
        s.sendall(b"HELP SITE\r\nNOOP\r\n")
        assert read_reply(s).startswith(b"200")  # no 214 first: HELP was the long line's tail


# --- 8. backends that accept and never greet, or greet with 421 -----------------------


def mode_backend(cluster: Cluster, mode: str) -> None:
    if mode == "inspect":
        plain_backend(cluster)
    else:
        b = cluster.add_backend()  # PROXY-aware, its own passive range
        (b.root / "victim.txt").write_bytes(VICTIM)


def mode_options(cluster: Cluster, mode: str) -> dict[str, object]:
    if mode == "inspect":
        return {"mode": mode, "send_proxy": "off"}
    # Routed: the backends check that data comes from the client, told by PROXY.
    data = {b.name: {"send_proxy_data": True} for b in cluster.backends if b.kind == "ftplb"}
    return {"mode": mode, "send_proxy": "v1", "backend_options": data}


@pytest.mark.parametrize("mode", ["inspect", "routed"])
def test_a_frozen_backend_is_passed_over_within_the_greeting_timeout(
    cluster: Cluster, mode: str
) -> None:
    for _ in range(2):
        mode_backend(cluster, mode)
    # Health checks far apart: the balancer cannot know the backend froze.
    cluster.start_balancer(
        **mode_options(cluster, mode),
        balance="roundrobin",
        greeting_timeout=1,
        login_timeout=20,
        health_interval=60,
    )
    frozen = cluster.backends[0]
    assert frozen.process is not None
    os.kill(frozen.process.popen.pid, signal.SIGSTOP)
    try:
        for _ in range(4):
            with cluster.ftp(timeout=8) as ftp:
                assert cluster.backend_of(ftp) == "ftp2"
                got = io.BytesIO()
                ftp.retrbinary("RETR victim.txt", got.write)
                assert got.getvalue() == VICTIM
    finally:
        os.kill(frozen.process.popen.pid, signal.SIGCONT)
    assert cluster.balancer is not None
    assert "backend ftp1: no greeting within 1s; redispatching" in cluster.balancer.log()


def busy_server(host: str) -> tuple[socket.socket, threading.Thread]:
    """A server that accepts and greets every connection with 421."""
    listener = socket.create_server((host, 0))
    listener.settimeout(0.2)

    def serve() -> None:
        while listener.fileno() >= 0:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.sendall(b"421 Too many users, try later.\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


@pytest.mark.parametrize("mode", ["inspect", "routed"])
def test_a_backend_greeting_421_is_passed_over(cluster: Cluster, mode: str) -> None:
    listener, thread = busy_server("127.0.1.3")
    try:
        cluster.add_fake_backend("busy", "127.0.1.3", listener.getsockname()[1])
        mode_backend(cluster, mode)
        # A TCP check cannot tell that the backend turns everyone away.
        options = mode_options(cluster, mode)
        if mode == "routed":
            options["backend_options"] = {
                "busy": {"send_proxy": "off"},
                "ftp2": {"send_proxy_data": True},
            }
        cluster.start_balancer(**options, balance="roundrobin", health_check="tcp")
        for _ in range(4):
            with cluster.ftp() as ftp:
                assert cluster.backend_of(ftp) == "ftp2"
    finally:
        listener.close()
        thread.join(5)
    assert cluster.balancer is not None
    assert "backend busy: backend greeted with 421; redispatching" in cluster.balancer.log()


# --- 9. reload with [tls] -------------------------------------------------------------


def test_reload_that_adds_tls_applies_it(cluster: Cluster) -> None:
    plain_backend(cluster)
    admin_port = free_ports(1)
    admin = {"listen": f"127.0.0.1:{admin_port}"}
    cluster.start_balancer(mode="inspect", send_proxy="off", sections={"admin": admin})
    cert, key = make_cert(cluster.workdir)
    text = cluster.config_path.read_text()
    tls = f'\n[tls]\ncert = "{cert}"\nkey = "{key}"\nrequired = true\n'
    moved = text.replace(f"127.0.0.1:{admin_port}", f"127.0.0.1:{free_ports(1)}")
    cluster.config_path.write_text(moved + tls)
    answer = call(f"http://127.0.0.1:{admin_port}/api/reload", "POST")
    assert answer["ok"] is True
    assert "needs a restart, old value kept: admin.listen" in answer["message"]
    # TLS is on now, and required, for new sessions.
    with ReusingFTP_TLS(context=tls_context(), timeout=10) as ftps:
        ftps.connect(BALANCER_HOST, cluster.balancer_port)
        ftps.login(USER, PASSWORD)
        ftps.prot_p()
        got = io.BytesIO()
        ftps.retrbinary("RETR victim.txt", got.write)
        assert sha256(got.getvalue()) == sha256(VICTIM)
    with ftplib.FTP(timeout=10) as plain:
        plain.connect(BALANCER_HOST, cluster.balancer_port)
        with pytest.raises(ftplib.error_perm, match=r"^530 TLS required"):
            plain.login(USER, PASSWORD)


# --- 11. limits --------------------------------------------------------------------------


def listen_queue_limit(port: int) -> int:
    """The accept queue's limit of the listener on `port` (ss's Send-Q)."""
    out = subprocess.run(
        [need("ss"), "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    return int(out.split()[2])


def test_backlog_is_configurable_and_defaults_to_somaxconn(cluster: Cluster) -> None:
    plain_backend(cluster)
    cluster.start_balancer(mode="inspect", send_proxy="off")
    with open("/proc/sys/net/core/somaxconn") as f:
        assert listen_queue_limit(cluster.balancer_port) == int(f.read())


def test_listen_overflows_are_logged(cluster: Cluster) -> None:
    plain_backend(cluster)
    cluster.start_balancer(mode="inspect", send_proxy="off", backlog=2)
    assert cluster.balancer is not None and listen_queue_limit(cluster.balancer_port) == 2
    pid = cluster.balancer.popen.pid
    os.kill(pid, signal.SIGSTOP)  # nobody accepts: the queue fills and overflows
    waiting = []
    try:
        for _ in range(12):
            s = socket.socket()
            s.setblocking(False)
            err = s.connect_ex((BALANCER_HOST, cluster.balancer_port))
            assert err in (0, errno.EINPROGRESS)
            waiting.append(s)
        time.sleep(1.5)
    finally:
        os.kill(pid, signal.SIGCONT)
        for s in waiting:
            s.close()
    log = cluster.balancer.log
    wait_for(lambda: "dropped by the kernel: a listen queue overflowed" in log(), timeout=15)


def test_active_connect_uses_the_configured_timeout(cluster: Cluster) -> None:
    plain_backend(cluster)
    cluster.start_balancer(mode="inspect", send_proxy="off", connect_timeout=1)
    # A listener whose queue is full drops further SYNs: a connect there hangs.
    with socket.socket() as full:
        full.bind(("127.0.0.11", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = []
        for _ in range(3):
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(("127.0.0.11", port))
            fillers.append(f)
        try:
            # ftplib gives up after 5 s: the old fixed 10 s connect timeout failed here.
            with cluster.ftp(source="127.0.0.11", timeout=5) as ftp:
                ftp.sendcmd(f"PORT 127,0,0,11,{port >> 8},{port & 0xFF}")
                with pytest.raises(ftplib.error_temp, match=r"^425"):
                    ftp.sendcmd("RETR victim.txt")
        finally:
            for f in fillers:
                f.close()
