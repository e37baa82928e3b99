"""Several ftplb nodes sharing a real Redis (Debian's redis-server, started here):
bans and failed logins, drains and leastconn hold across nodes; a node killed
with SIGKILL stops counting; a Redis outage stops nothing and heals; a second
node with the same name stays out."""

from __future__ import annotations

import ftplib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

import pytest
import redis as redis_client

from ftplb.proto.proxy_protocol import encode_v2
from tests.cluster import (
    BALANCER_HOST,
    PASSWORD,
    USER,
    Cluster,
    Process,
    free_ports,
    listening,
    make_cert,
    sha256,
    wait_for,
)
from tests.conftest import need
from tests.integration.test_admin import TOKEN, call, metrics
from tests.integration.test_routed_ftps import tls_context
from tests.integration.test_status_page import CHROMIUM_FLAGS

REDIS_HOST = "127.0.2.6"


class Redis:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.port = free_ports(1, REDIS_HOST)
        self.process: Process | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://{REDIS_HOST}:{self.port}/0"

    def start(self) -> None:
        argv = [
            need("redis-server"),
            "--bind", REDIS_HOST, "--port", str(self.port),
            "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--dir", str(self.cluster.workdir),
        ]  # fmt: skip
        self.process = self.cluster.spawn(f"redis-{time.monotonic_ns()}", argv)
        wait_for(lambda: listening(REDIS_HOST, self.port), what="redis-server")

    def stop(self) -> None:
        assert self.process is not None
        self.process.stop()

    def keys(self, pattern: str) -> list[bytes]:
        client = redis_client.Redis(host=REDIS_HOST, port=self.port)
        try:
            return list(client.keys(pattern))
        finally:
            client.close()


@pytest.fixture
def redis(cluster: Cluster) -> Iterator[Redis]:
    yield Redis(cluster)


class Node:
    def __init__(
        self, name: str, process: Process, port: int, admin: str, host: str = BALANCER_HOST
    ) -> None:
        self.name, self.process, self.port, self.admin = name, process, port, admin
        self.host = host

    def login(self, source: str, password: str = PASSWORD) -> ftplib.FTP:
        ftp = ftplib.FTP(timeout=10, source_address=(source, 0))
        ftp.connect(self.host, self.port)
        ftp.login(USER, password)
        return ftp

    def backends(self) -> dict[str, dict[str, Any]]:
        return {b["name"]: b for b in call(self.admin + "/api/backends")}


def node(
    cluster: Cluster,
    redis: Redis,
    name: str,
    node_name: str | None = None,
    host: str = BALANCER_HOST,
    advertise: str | None = None,
    **extra: Any,
) -> Node:
    port, admin = free_ports(1, host), free_ports(1)
    sections = {
        "admin": {"listen": f"127.0.0.1:{admin}", "token": TOKEN},
        "cluster": {
            "redis": redis.url,
            "node": node_name or name,
            **({"advertise": advertise} if advertise else {}),
        },
        **extra.pop("sections", {}),
    }
    process = cluster.spawn_balancer(
        name,
        listen=f"{host}:{port}",
        mode="inspect",
        send_proxy="off",
        **{"workers": 1, **extra},
        sections=sections,
    )
    n = Node(name, process, port, f"http://127.0.0.1:{admin}", host)
    wait_for(
        lambda: call(n.admin + "/api/status")["cluster"]["connected"] or node_name, what="join"
    )
    return n


def two_nodes(cluster: Cluster, redis: Redis, **extra: Any) -> tuple[Node, Node]:
    for _ in range(2):
        cluster.add_backend(proxy_protocol=False)
    return node(cluster, redis, "lb1", **extra), node(cluster, redis, "lb2", **extra)


def fail(n: Node, source: str) -> None:
    with suppress(ftplib.error_perm, ftplib.error_temp, EOFError, ConnectionError):
        n.login(source, "wrong").quit()


def refused(n: Node, source: str) -> bool:
    try:
        n.login(source).quit()
    except ftplib.error_temp as exc:
        return str(exc).startswith("421")
    return False


def test_bans_and_failed_logins_hold_across_nodes(cluster: Cluster, redis: Redis) -> None:
    a, b = two_nodes(cluster, redis, max_login_failures=3)
    # Two failures on one node and one on the other: three across the cluster.
    fail(a, "127.0.0.90")
    fail(a, "127.0.0.90")
    fail(b, "127.0.0.90")
    wait_for(lambda: refused(a, "127.0.0.90") and refused(b, "127.0.0.90"), what="ban on both")
    assert "after 3 failed logins across the cluster" in b.process.log()
    # A ban made on one node holds on the other at once, and for a node that starts later.
    for _ in range(3):
        fail(a, "127.0.0.91")
    wait_for(lambda: refused(b, "127.0.0.91"), what="lb1's ban on lb2")
    c = node(cluster, redis, "lb3", max_login_failures=3)
    assert refused(c, "127.0.0.91")
    # Lifted through one node's API: lifted on all, failures forgotten.
    assert call(b.admin + "/api/bans/127.0.0.91", "DELETE") == {"lifted": "127.0.0.91"}
    wait_for(lambda: not refused(a, "127.0.0.91") and not refused(c, "127.0.0.91"), what="lift")
    fail(a, "127.0.0.91")
    a.login("127.0.0.91").quit()


def test_drain_and_leastconn_across_nodes(cluster: Cluster, redis: Redis) -> None:
    a, b = two_nodes(cluster, redis)
    call(a.admin + "/api/backends/ftp1/drain", "POST")
    wait_for(lambda: b.backends()["ftp1"]["state"] == "DRAIN", what="the drain on lb2")
    assert "set on another node (lb1)" in b.process.log()
    # A node started later applies it from Redis, naming the node it came from.
    c = node(cluster, redis, "lb3")
    assert c.backends()["ftp1"]["state"] == "DRAIN"
    assert "set on another node (lb1)" in c.process.log()
    c.process.stop()
    # Both nodes list each other, with their sessions and when they were last heard.
    members = wait_for(
        lambda: len(m := call(b.admin + "/api/status")["cluster"]["members"]) == 2 and m
    )
    assert [m["node"] for m in members] == ["lb1", "lb2"]
    assert all(time.time() - m["last_seen"] < 5 for m in members)
    call(b.admin + "/api/backends/ftp1/enable", "POST")
    wait_for(lambda: a.backends()["ftp1"]["state"] == "UP", what="the enable on lb1")
    # Three sessions on lb1, all on ftp1 (ftp2 drained meanwhile)...
    call(a.admin + "/api/backends/ftp2/drain", "POST")
    wait_for(lambda: b.backends()["ftp2"]["state"] == "DRAIN")
    with ExitStack() as stack:
        held = [stack.enter_context(a.login(f"127.0.0.{100 + i}")) for i in range(3)]
        assert {cluster.backend_of(f) for f in held} == {"ftp1"}
        call(a.admin + "/api/backends/ftp2/enable", "POST")
        wait_for(lambda: b.backends()["ftp2"]["state"] == "UP")
        # ...are seen by lb2 within a heartbeat: its next three go to ftp2.
        wait_for(lambda: b.backends()["ftp1"]["sessions"]["other_nodes"] == 3, what="counts")
        fresh = [stack.enter_context(b.login(f"127.0.0.{110 + i}")) for i in range(3)]
        assert [cluster.backend_of(f) for f in fresh] == ["ftp2", "ftp2", "ftp2"]
    # A node killed with SIGKILL: its counts expire instead of skewing leastconn.
    with ExitStack() as stack:
        for i in range(2):
            stack.enter_context(a.login(f"127.0.0.{120 + i}"))
        wait_for(lambda: sum(x["sessions"]["other_nodes"] for x in b.backends().values()) == 2)
        a.process.stop(signal.SIGKILL)
        wait_for(
            lambda: sum(x["sessions"]["other_nodes"] for x in b.backends().values()) == 0,
            timeout=15,
            what="the dead node's counts to expire",
        )


def test_max_sessions_holds_across_nodes(cluster: Cluster, redis: Redis) -> None:
    a, b = two_nodes(cluster, redis, max_sessions=3)
    with ExitStack() as stack:
        for i in range(2):
            stack.enter_context(a.login(f"127.0.0.{150 + i}"))
        wait_for(lambda: sum(x["sessions"]["other_nodes"] for x in b.backends().values()) == 2)
        stack.enter_context(b.login("127.0.0.152"))  # the third, cluster-wide
        with pytest.raises(ftplib.error_temp, match=r"^421 Too many sessions"):
            b.login("127.0.0.153")


def test_max_per_ip_holds_across_nodes(cluster: Cluster, redis: Redis) -> None:
    a, b = two_nodes(cluster, redis, max_per_ip=2)
    with a.login("127.0.0.154"), a.login("127.0.0.154"):
        wait_for(lambda: sum(x["sessions"]["other_nodes"] for x in b.backends().values()) == 2)
        with pytest.raises(ftplib.error_temp, match=r"^421 Too many sessions from your address"):
            b.login("127.0.0.154")
        b.login("127.0.0.155").quit()  # another address is not held back


# Two nodes on their own addresses with the same data ports: a client that logs
# in on A and makes its data connection to B plays ECMP in front of both.
HOST_A, HOST_B = "127.0.0.61", "127.0.0.62"


def forwarding_nodes(
    cluster: Cluster, redis: Redis, workers: int = 1, ports: int = 8, **extra: Any
) -> tuple[Node, Node]:
    cluster.add_backend(proxy_protocol=False)
    first = free_ports(ports, HOST_A)
    common = {"workers": workers, "data_ports": f"{first}-{first + ports - 1}", **extra}
    a = node(
        cluster, redis, "lb1", host=HOST_A,
        advertise=f"{HOST_A}:{free_ports(workers, HOST_A)}", public_address="auto", **common,
    )  # fmt: skip
    b = node(
        cluster, redis, "lb2", host=HOST_B,
        advertise=f"{HOST_B}:{free_ports(workers, HOST_B)}", public_address="auto", **common,
    )  # fmt: skip

    def peers_known(n: Node) -> bool:
        members = call(n.admin + "/api/status")["cluster"]["members"]
        return sorted(m.get("advertise", "") for m in members) == [HOST_A, HOST_B]

    wait_for(lambda: peers_known(a) and peers_known(b), what="the nodes to know each other")
    return a, b


def passive_port(ftp: ftplib.FTP) -> int:
    ftp.voidcmd("TYPE I")
    return ftplib.parse227(ftp.sendcmd("PASV"))[1]


def download_via(ftp: ftplib.FTP, host: str, source: str, name: str) -> bytes:
    """RETR with the data connection made to `host` instead of the address PASV named."""
    port = passive_port(ftp)
    with socket.create_connection((host, port), timeout=10, source_address=(source, 0)) as conn:
        assert ftp.sendcmd(f"RETR {name}")[:3] in ("125", "150")
        got = read_to_end(conn)
    assert ftp.voidresp().startswith("226")
    return got


def read_to_end(conn: socket.socket) -> bytes:
    chunks = []
    while chunk := conn.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def big_file(cluster: Cluster, size: int) -> bytes:
    """Random bytes served as big.bin by the (only) backend."""
    payload = os.urandom(size)
    (cluster.backends[0].root / "big.bin").write_bytes(payload)
    return payload


def upload_via(ftp: ftplib.FTP, host: str, source: str, name: str, data: bytes) -> None:
    port = passive_port(ftp)
    with socket.create_connection((host, port), timeout=10, source_address=(source, 0)) as conn:
        assert ftp.sendcmd(f"STOR {name}")[:3] in ("125", "150")
        conn.sendall(data)
    assert ftp.voidresp().startswith("226")


def refused_connection(host: str, port: int, source: str) -> bool:
    """Connected, then closed or reset without a byte."""
    with socket.create_connection((host, port), timeout=10, source_address=(source, 0)) as conn:
        try:
            return conn.recv(1) == b""
        except ConnectionResetError:
            return True


def forwarded(n: Node, direction: str) -> float:
    key = ("ftplb_cluster_forwarded_data_connections_total", (("direction", direction),))
    return metrics(n.admin)[key]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_data_connection_that_reaches_another_node_is_forwarded(
    cluster: Cluster, redis: Redis, workers: int
) -> None:
    a, b = forwarding_nodes(cluster, redis, workers)
    payload = big_file(cluster, 4 << 20)
    sources = [f"127.0.0.{111 + i}" for i in range(6)]
    for i, source in enumerate(sources):  # several sessions: with 2 workers, both slices
        with a.login(source) as ftp:
            got = download_via(ftp, HOST_B, source, "big.bin")
            assert sha256(got) == sha256(payload)
            if i == 0:
                upload_via(ftp, HOST_B, source, "up.bin", payload[: 1 << 20])
    up = cluster.backends[0].root / "up.bin"
    assert sha256(up.read_bytes()) == sha256(payload[: 1 << 20])
    assert forwarded(b, "out") == len(sources) + 1
    assert forwarded(a, "in") == len(sources) + 1
    assert forwarded(a, "out") == forwarded(b, "in") == 0
    assert "forwarded to the node at 127.0.0.61" in b.process.log()


def test_another_address_never_gets_a_forwarded_data_connection(
    cluster: Cluster, redis: Redis
) -> None:
    a, b = forwarding_nodes(cluster, redis)
    payload = big_file(cluster, 1 << 20)
    with a.login("127.0.0.121") as ftp:
        port = passive_port(ftp)
        # Another address on the port that 127.0.0.121 waits on, through either node.
        assert refused_connection(HOST_B, port, "127.0.0.122")
        assert refused_connection(HOST_A, port, "127.0.0.122")
        # The forward port takes nothing without the cluster's signature, from
        # an address that is not a node nor from a node's (another program on
        # its host), however well-formed its PROXY header.
        advertise = call(a.admin + "/api/status")["cluster"]["advertise"]
        forward_port = int(advertise.rsplit(":", 1)[1])
        for source in ("127.0.0.123", HOST_B):
            with socket.create_connection(
                (HOST_A, forward_port), timeout=10, source_address=(source, 0)
            ) as conn:
                conn.sendall(encode_v2(("127.0.0.121", 40000), (HOST_A, port)))
                with suppress(ConnectionResetError):
                    assert conn.recv(1) == b""
        # The client itself still gets its file, through the other node.
        with socket.create_connection(
            (HOST_B, port), timeout=10, source_address=("127.0.0.121", 0)
        ) as conn:
            assert ftp.sendcmd("RETR big.bin")[:3] in ("125", "150")
            got = read_to_end(conn)
        assert ftp.voidresp().startswith("226")
        assert sha256(got) == sha256(payload)
    assert "data connection from 127.0.0.122" in b.process.log()
    for source in ("127.0.0.123", HOST_B):
        assert re.search(rf"connection from {source}:\d+ closed: no signature", a.process.log())
    assert forwarded(b, "out") == 1 and forwarded(a, "in") == 1


def test_a_forwarded_tls_data_connection_resumes_the_control_session(
    cluster: Cluster, redis: Redis
) -> None:
    cert, key = make_cert(cluster.workdir)
    tls = {"cert": str(cert), "key": str(key)}
    a, b = forwarding_nodes(cluster, redis, sections={"tls": tls})
    payload = big_file(cluster, 1 << 20)
    source = "127.0.0.127"
    with ftplib.FTP_TLS(context=tls_context(), timeout=10, source_address=(source, 0)) as ftp:
        ftp.connect(HOST_A, a.port)
        ftp.login(USER, PASSWORD)
        ftp.prot_p()
        port = passive_port(ftp)
        with socket.create_connection((HOST_B, port), 10, (source, 0)) as raw:
            assert ftp.sendcmd("RETR big.bin")[:3] in ("125", "150")
            # Node A, behind B, checks that the control session is resumed.
            assert ftp.sock is not None
            session = ftp.sock.session  # type: ignore[attr-defined]
            conn = ftp.context.wrap_socket(raw, server_hostname=HOST_A, session=session)
            got = read_to_end(conn)
            assert conn.session_reused
        assert ftp.voidresp().startswith("226")
    assert sha256(got) == sha256(payload)
    assert forwarded(b, "out") == 1 and forwarded(a, "in") == 1


def test_a_stopping_node_lets_the_transfers_it_forwards_finish(
    cluster: Cluster, redis: Redis
) -> None:
    a, b = forwarding_nodes(cluster, redis)
    payload = big_file(cluster, 32 << 20)
    source = "127.0.0.128"
    with a.login(source) as ftp, ftplib.FTP(timeout=10, source_address=(source, 0)) as late:
        late.connect(HOST_A, a.port)
        late.login(USER, PASSWORD)
        late_port = passive_port(late)
        port = passive_port(ftp)
        with socket.create_connection((HOST_B, port), 10, (source, 0)) as conn:
            assert ftp.sendcmd("RETR big.bin")[:3] in ("125", "150")
            first = conn.recv(1 << 16)
            b.process.popen.send_signal(signal.SIGTERM)  # mid-transfer
            wait_for(lambda: "stopping: no new sessions" in b.process.log(), what="B stopping")
            # Nothing new goes through B from now on...
            assert refused_connection(HOST_B, late_port, source)
            # ...but what it carries ends whole.
            got = first + read_to_end(conn)
        assert ftp.voidresp().startswith("226")
    assert sha256(got) == sha256(payload)
    assert b.process.popen.wait(timeout=30) == 0


def test_one_address_never_gets_the_same_port_from_two_nodes(
    cluster: Cluster, redis: Redis
) -> None:
    a, b = forwarding_nodes(cluster, redis, ports=3)
    with ExitStack() as stack:
        sessions = [stack.enter_context(n.login("127.0.0.125")) for n in (a, b, a)]
        ports = [passive_port(ftp) for ftp in sessions]
        assert len(set(ports)) == 3, ports
        # Every port is announced to this address somewhere: a fourth session gets none.
        fourth = stack.enter_context(b.login("127.0.0.125"))
        with pytest.raises(ftplib.error_temp, match=r"^425"):
            passive_port(fourth)
        # Another address may share them all.
        other = stack.enter_context(b.login("127.0.0.126"))
        assert passive_port(other) in ports
        assert len(redis.keys("ftplb:data:*")) == 4
    # Sessions gone, their claims are let go (not left to expire).
    wait_for(lambda: redis.keys("ftplb:data:*") == [], timeout=5, what="claims let go")


def test_a_redis_outage_stops_nothing_and_heals(cluster: Cluster, redis: Redis) -> None:
    a, b = two_nodes(cluster, redis, max_login_failures=2)

    def connected(n: Node) -> float:
        return metrics(n.admin)[("ftplb_cluster_connected", ())]

    assert connected(a) == connected(b) == 1
    wait_for(lambda: metrics(a.admin)[("ftplb_cluster_nodes", ())] == 2, what="two nodes seen")
    redis.stop()
    wait_for(lambda: connected(a) == 0 and connected(b) == 0, what="the outage noticed")
    # Sessions go on through both nodes, transfers included.
    for n in (a, b):
        for i in range(3):
            ftp = n.login(f"127.0.0.{130 + i}")
            assert ftp.nlst()  # a data connection too
            ftp.quit()
    # A ban made during the outage holds on its own node...
    fail(a, "127.0.0.95")
    fail(a, "127.0.0.95")
    assert refused(a, "127.0.0.95") and not refused(b, "127.0.0.95")
    time.sleep(2)
    assert a.process.log().count("unreachable") == 1  # logged once, not per retry
    redis.start()  # the same port, empty
    wait_for(lambda: connected(a) == 1 and connected(b) == 1, timeout=20, what="rejoined")
    # ...and reaches the other once Redis is back.
    wait_for(lambda: refused(b, "127.0.0.95"), what="the outage's ban to converge")


def test_the_same_node_name_twice_stays_out(cluster: Cluster, redis: Redis) -> None:
    cluster.add_backend(proxy_protocol=False)
    a = node(cluster, redis, "lb1")
    b = node(cluster, redis, "lb1-copy", node_name="lb1")
    wait_for(lambda: "another running ftplb node is named 'lb1'" in b.process.log())
    assert call(b.admin + "/api/status")["cluster"]["connected"] is False
    assert call(a.admin + "/api/status")["cluster"]["connected"] is True
    b.login("127.0.0.140").quit()  # it still serves, on its own state


@pytest.mark.parametrize(
    ("section", "reason"),
    [
        ('redis = "http://127.0.0.1:6379"', "is not a Redis URL"),
        ('redis = "redis://127.0.0.1:99999"', "is not a Redis URL"),
        ('redis = "redis://127.0.0.1:6379/x"', "is not a Redis URL"),
        ('redis = "redis://127.0.0.1:6379"\nadvertise = "nope"', "cluster.advertise"),
        ('node = "bad name!"', "cluster.node"),
        ('redis = "redis://127.0.0.1:6379"\nadvertise = "127.0.0.1:7000"', "only inspect mode"),
    ],
)
def test_bad_cluster_settings_exit_2(tmp_path: Path, section: str, reason: str) -> None:
    config = tmp_path / "ftplb.toml"
    config.write_text(
        '[balancer]\nlisten = "127.0.0.1:2121"\n\n[cluster]\n'
        + section
        + '\n\n[[backends]]\nname = "a"\naddress = "127.0.1.1:21"\npassive_ports = "30000-30009"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "ftplb", "check", "-c", str(config)], capture_output=True, text=True
    )
    assert done.returncode == 2, done.stdout
    assert str(config) in done.stderr and reason in done.stderr, done.stderr


def test_the_status_page_and_top_show_the_cluster(cluster: Cluster, redis: Redis) -> None:
    from playwright.sync_api import expect, sync_playwright

    chromium, tmux = need("chromium"), need("tmux")
    a, b = forwarding_nodes(cluster, redis)
    (cluster.backends[0].root / "big.bin").write_bytes(b"x" * 100_000)
    with a.login("127.0.0.129") as ftp:
        assert download_via(ftp, HOST_B, "127.0.0.129", "big.bin") == b"x" * 100_000
        with ExitStack() as stack:  # sessions on B: A's page counts them
            for i in range(2):
                stack.enter_context(b.login(f"127.0.0.{130 + i}"))
            wait_for(
                lambda: (
                    {m["node"]: m["sessions"] for m in cluster_of(a)["members"]}
                    == {"lb1": 1, "lb2": 2}
                ),
                what="both nodes' sessions",
            )
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
                try:
                    page = browser.new_page()
                    page.goto(a.admin + "/")
                    line = page.locator("#cluster")
                    expect(line).to_contain_text("Cluster: Redis connected, 2 nodes")
                    expect(line).to_contain_text("lb1 (this node): 1 sessions")
                    expect(line).to_contain_text("lb2: 2 sessions")
                    expect(line).to_contain_text(
                        "Data connections forwarded to other nodes: 0, taken from them: 1"
                    )
                    page.goto(b.admin + "/")
                    expect(page.locator("#cluster")).to_contain_text(
                        "Data connections forwarded to other nodes: 1, taken from them: 0"
                    )
                finally:
                    browser.close()
            name = f"ftplb-top-{free_ports(1)}"
            command = f"{sys.executable} -m ftplb top --admin {b.admin} --interval 0.5"
            subprocess.run(
                [tmux, "new-session", "-d", "-s", name, "-x", "180", "-y", "60", command],
                check=True,
            )
            try:
                screen = wait_for(
                    lambda: (
                        (s := subprocess.run(
                            [tmux, "capture-pane", "-p", "-t", name],
                            capture_output=True, text=True,
                        ).stdout)
                        and "cluster: Redis connected" in s
                        and s
                    ),
                    what="top's cluster table",
                )  # fmt: skip
            finally:
                subprocess.run([tmux, "kill-session", "-t", name], capture_output=True)
    rows = {line.split()[1]: line for line in screen.splitlines() if " lb" in line}
    assert "lb2" in rows and "(this)" in rows["lb2"] and " 2 " in rows["lb2"]
    assert "lb1" in rows and " 1 " in rows["lb1"]
    assert "data connections forwarded to other nodes: 1, taken from them: 0" in screen


def cluster_of(n: Node) -> dict[str, Any]:
    return dict(call(n.admin + "/api/status")["cluster"])
