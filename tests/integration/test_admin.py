"""Operating ftplb: metrics, the admin API, drain, reload, graceful stop, logs."""

from __future__ import annotations

import ftplib
import hashlib
import http.client
import io
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster import Cluster, free_ports, wait_for

TOKEN = "t0ken"
SIZE = 24 * 1024 * 1024


def start(cluster: Cluster, backends: int = 3, token: str = TOKEN, **options: object) -> str:
    """Backends with a big file and a balancer with the admin API; returns its URL."""
    for _ in range(backends):
        b = cluster.add_backend()
        with open(b.root / "big.bin", "wb") as f:
            f.truncate(SIZE)
    port = free_ports(1)
    admin: dict[str, Any] = {"listen": f"127.0.0.1:{port}", **({"token": token} if token else {})}
    sections: dict[str, Any] = {"admin": admin}
    sections.update(options.pop("sections", {}))  # type: ignore[arg-type]
    cluster.start_balancer(
        sections=sections,
        backend_options={b.name: {"send_proxy_data": True} for b in cluster.backends},
        **options,
    )
    return f"http://127.0.0.1:{port}"


def call(url: str, method: str = "GET", token: str | None = TOKEN, body: Any = None) -> Any:
    changing = method not in ("GET", "HEAD")
    if changing and body is None:
        body = {}  # a changing call is JSON, like ftplb drain's
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if changing:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
        return (
            json.loads(text) if response.headers.get_content_type() == "application/json" else text
        )


def metrics(admin: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = call(admin + "/metrics")
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@contextmanager
def slow_download(c: Cluster, source: str = "127.0.0.11") -> Iterator[tuple[ftplib.FTP, Any, str]]:
    """A logged-in session with RETR big.bin under way: (ftp, data socket, backend name)."""
    with c.ftp(source=source, timeout=30) as ftp:
        buf = io.BytesIO()
        ftp.retrbinary("RETR whoami.txt", buf.write)
        ftp.sendcmd("TYPE I")
        with ftp.transfercmd("RETR big.bin") as conn:
            yield ftp, conn, buf.getvalue().decode()


def finish(ftp: ftplib.FTP, conn: Any, already: bytes = b"") -> None:
    digest = hashlib.sha256(already)
    total = len(already)
    while chunk := conn.recv(1024 * 1024):
        digest.update(chunk)
        total += len(chunk)
    conn.close()
    assert ftp.voidresp().startswith("226")
    assert total == SIZE
    assert digest.hexdigest() == hashlib.sha256(bytes(SIZE)).hexdigest()


def who(c: Cluster, n: int) -> list[str]:
    names = []
    for i in range(n):
        with c.ftp(source=f"127.0.0.{50 + i}") as ftp:
            names.append(c.backend_of(ftp))
    return names


def test_metrics_follow_sessions_and_bytes(cluster: Cluster) -> None:
    admin = start(cluster)
    before = metrics(admin)
    with cluster.ftp() as a, cluster.ftp() as b, cluster.ftp() as c:
        now = metrics(admin)
        assert now[("ftplb_sessions_current", ())] == 3
        current = sum(v for (k, _), v in now.items() if k == "ftplb_backend_current_sessions")
        assert current == 3
        assert all(now[("ftplb_backend_up", (("backend", x.name),))] == 1 for x in cluster.backends)
        served = cluster.backend_of(a)
        buf = io.BytesIO()
        a.retrbinary("RETR big.bin", buf.write)
        assert len(buf.getvalue()) == SIZE
        del b, c
    wait_for(lambda: metrics(admin)[("ftplb_sessions_current", ())] == 0, what="sessions to end")
    after = metrics(admin)
    key = ("ftplb_backend_bytes_out_total", (("backend", served),))
    grown = after[key] - before.get(key, 0)
    # The file, plus the control replies of that session.
    assert SIZE <= grown < SIZE + 4096
    sessions = sum(
        after[("ftplb_backend_sessions_total", (("backend", x.name),))] for x in cluster.backends
    )
    assert sessions == 3
    assert (
        after[("ftplb_data_connections_total", (("direction", "inbound"), ("mode", "routed")))] == 1
    )
    assert after[("ftplb_data_connections_spliced_total", ())] == 1  # past 1 MiB: the kernel's


def test_state_changes_need_the_token(cluster: Cluster) -> None:
    admin = start(cluster, backends=1)
    for method, path, body in (
        ("POST", "/api/backends/ftp1/drain", None),
        ("POST", "/api/backends/ftp1/enable", None),
        ("POST", "/api/backends/ftp1/disable", None),
        ("PUT", "/api/backends/ftp1/weight", {"weight": 3}),
        ("POST", "/api/reload", None),
    ):
        for token in (None, "wrong"):
            with pytest.raises(urllib.error.HTTPError) as info:
                call(admin + path, method, token=token, body=body)
            assert info.value.code == 401
    backend = call(admin + "/api/backends", token=None)[0]
    assert backend["state"] == "UP" and backend["weight"] == 1  # nothing changed
    assert call(admin + "/api/backends/ftp1/weight", "PUT", body={"weight": 3})["weight"] == 3
    with pytest.raises(urllib.error.HTTPError) as info:
        call(admin + "/api/backends/nope/drain", "POST")
    assert info.value.code == 404


def test_drain_during_a_transfer(cluster: Cluster) -> None:
    admin = start(cluster, balance="roundrobin")
    with slow_download(cluster) as (ftp, conn, name):
        first = conn.recv(1024 * 1024)
        drained = call(admin + f"/api/backends/{name}/drain", "POST")
        assert drained["state"] == "DRAIN" and drained["sessions"]["current"] == 1
        assert name not in who(cluster, 10)
        finish(ftp, conn, first)
    state = call(admin + "/api/backends", token=None)
    assert next(b for b in state if b["name"] == name)["state"] == "DRAIN"
    call(admin + f"/api/backends/{name}/enable", "POST")
    assert name in who(cluster, 6)


def test_reload_adds_and_removes_backends_during_a_transfer(cluster: Cluster) -> None:
    admin = start(cluster, backends=2, balance="roundrobin")
    ftp1, ftp2 = cluster.backends
    assert cluster.balancer is not None
    log = cluster.balancer.log
    with slow_download(cluster) as (ftp, conn, name):
        first = conn.recv(1024 * 1024)
        # Remove the backend serving this transfer; add a third.
        keep = ftp2 if name == "ftp1" else ftp1
        new = cluster.add_backend()
        cluster.backends[:] = [keep, new]
        cluster.config_path.write_text(
            cluster.config_text(
                balance="roundrobin",
                sections={"admin": {"listen": admin.removeprefix("http://"), "token": TOKEN}},
                backend_options={b.name: {"send_proxy_data": True} for b in cluster.backends},
            )
        )
        cluster.balancer.popen.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded" in log(), what="the reload")
        assert set(who(cluster, 6)) == {keep.name, new.name}
        names = {b["name"]: b["state"] for b in call(admin + "/api/backends", token=None)}
        assert names[name] == "RETIRED"
        finish(ftp, conn, first)
    wait_for(lambda: f"backend {name} retired" in log(), what="the old backend to retire")
    assert name not in {b["name"] for b in call(admin + "/api/backends", token=None)}

    # An invalid file on SIGHUP changes nothing and says why.
    cluster.config_path.write_text("[balancer]\nlisten = 21\n")
    cluster.balancer.popen.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload rejected" in log(), what="the rejection")
    assert "balancer.listen: expected a string" in log()
    assert set(who(cluster, 4)) == {keep.name, new.name}


def test_a_backend_removed_and_put_back_while_draining_goes_on_serving(cluster: Cluster) -> None:
    # Routed mode: the draining backend holds its passive ports; putting it back
    # must revive it, not open a second set of listeners (bind conflict) or
    # close its listeners once the old session ends.
    admin = start(cluster, backends=2, balance="roundrobin")
    assert cluster.balancer is not None
    log = cluster.balancer.log
    every = list(cluster.backends)

    def write(backends: list[Any]) -> None:
        cluster.backends[:] = backends
        cluster.config_path.write_text(
            cluster.config_text(
                balance="roundrobin",
                sections={"admin": {"listen": admin.removeprefix("http://"), "token": TOKEN}},
                backend_options={b.name: {"send_proxy_data": True} for b in backends},
            )
        )
        assert cluster.balancer is not None
        cluster.balancer.popen.send_signal(signal.SIGHUP)

    with slow_download(cluster) as (ftp, conn, name):
        first = conn.recv(1024 * 1024)
        write([b for b in every if b.name != name])
        wait_for(lambda: log().count("reloaded") == 1, what="the first reload")
        write(every)
        wait_for(lambda: log().count("reloaded") == 2, what="the second reload")
        assert "address already in use" not in log().lower()
        states = {b["name"]: b["state"] for b in call(admin + "/api/backends", token=None)}
        assert states[name] == "UP"
        finish(ftp, conn, first)
    # The old session is over; the backend's passive ports still carry transfers.
    for i in range(4):
        with cluster.ftp(source=f"127.0.0.{60 + i}") as other:
            buf = io.BytesIO()
            other.retrbinary("RETR whoami.txt", buf.write)
            assert buf.getvalue().decode() in {b.name for b in every}
    assert name in who(cluster, 4)
    assert f"backend {name} retired" not in log()


def test_reload_via_api_reports_a_bad_file(cluster: Cluster) -> None:
    admin = start(cluster, backends=1)
    cluster.config_path.write_text("[balancer]\nmode = 'nat'\n")
    with pytest.raises(urllib.error.HTTPError) as info:
        call(admin + "/api/reload", "POST")
    assert info.value.code == 400
    assert "balancer.mode" in json.loads(info.value.read())["message"]


def test_sigterm_lets_the_transfer_finish(cluster: Cluster) -> None:
    start(cluster, backends=1, shutdown_timeout=20)
    assert cluster.balancer is not None
    proc = cluster.balancer.popen
    with slow_download(cluster) as (ftp, conn, _):
        first = conn.recv(1024 * 1024)
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "stopping: no new sessions" in cluster.balancer.log(), what="stopping")  # type: ignore[union-attr]
        # No new sessions...
        with pytest.raises(OSError):
            cluster.ftp(timeout=2)
        finish(ftp, conn, first)
    assert proc.wait(20) == 0


def test_status_and_drain_commands(cluster: Cluster) -> None:
    admin = start(cluster, backends=2)
    host = admin.removeprefix("http://")
    env = {**os.environ, "COLUMNS": "200"}

    def ftplb(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ftplb", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )

    done = ftplb("status", "--admin", host)
    assert done.returncode == 0, done.stderr
    assert "ftp1" in done.stdout and "ftp2" in done.stdout and "UP" in done.stdout
    refused = ftplb("drain", "ftp1", "--admin", host)
    assert refused.returncode == 1 and "HTTP 401" in refused.stderr
    done = ftplb("drain", "ftp1", "-c", str(cluster.config_path))
    assert done.returncode == 0 and done.stdout.startswith("ftp1: DRAIN"), done.stderr
    done = ftplb("enable", "ftp1", "--admin", host, "--token", TOKEN)
    assert done.returncode == 0 and done.stdout.startswith("ftp1: UP")
    down = ftplb("status", "--admin", f"127.0.0.1:{free_ports(1)}")
    assert down.returncode == 1 and "cannot reach the admin API" in down.stderr


def test_json_logs(cluster: Cluster) -> None:
    start(cluster, backends=1, sections={"log": {"format": "json"}})
    with cluster.ftp(source="127.0.0.77"):
        pass
    assert cluster.balancer is not None
    balancer = cluster.balancer

    def session_entries() -> list[dict[str, Any]]:
        entries = [json.loads(line) for line in balancer.log().splitlines() if line.startswith("{")]
        return [e for e in entries if e["logger"] == "ftplb.session" and "127.0.0.77" in e["msg"]]

    entries = wait_for(session_entries, what="the session line")
    assert entries[0]["level"] == "info" and entries[0]["msg"].startswith(
        "control client=127.0.0.77:"
    )


def send(
    url: str, method: str = "GET", headers: dict[str, str] | None = None, body: bytes = b""
) -> tuple[int, Any]:
    """One raw request with exactly these headers (Host included when given):
    (status, the JSON body or the text)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.request(method, parts.path, body=body or None, headers=headers or {})
        response = conn.getresponse()
        text = response.read().decode()
        if response.headers.get_content_type() == "application/json":
            return response.status, json.loads(text)
        return response.status, text
    finally:
        conn.close()


def states(admin: str) -> dict[str, str]:
    return {b["name"]: b["state"] for b in call(admin + "/api/backends", token=None)}


def test_a_browser_cannot_change_state_cross_site(cluster: Cluster) -> None:
    """No token: what stops a page on another site is the Origin and the JSON
    content type (a form or a "simple" fetch cannot send application/json)."""
    admin = start(cluster, backends=1, token="")
    here = admin  # http://127.0.0.1:PORT, as a browser on the status page sends it
    drain = admin + "/api/backends/ftp1/drain"
    json_type = {"Content-Type": "application/json"}
    for headers, status in (
        ({"Origin": "http://evil.example", "Content-Type": "text/plain"}, 403),
        ({"Origin": "http://evil.example", **json_type}, 403),
        ({"Origin": "null", **json_type}, 403),
        ({"Origin": here.replace("127.0.0.1", "127.0.0.2"), **json_type}, 403),
        ({"Content-Type": "text/plain"}, 415),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
        ({}, 415),
    ):
        code, answer = send(drain, "POST", headers, b"{}")
        assert (code, states(admin)) == (status, {"ftp1": "UP"}), headers
        assert "error" in answer
    code, answer = send(
        admin + "/api/backends/ftp1/weight", "PUT", {"Content-Type": "text/plain"}, b'{"weight": 5}'
    )
    assert code == 415 and call(admin + "/api/backends")[0]["weight"] == 1
    assert send(admin + "/api/reload", "POST", {"Content-Type": "text/plain"})[0] == 415
    # Reading stays open (the browser keeps a foreign page from reading the answer).
    assert send(admin + "/api/backends", headers={"Origin": "http://evil.example"})[0] == 200
    # The status page's own call: same origin, JSON.
    code, answer = send(drain, "POST", {"Origin": here, **json_type}, b"{}")
    assert code == 200 and answer["state"] == "DRAIN"
    code, answer = send(admin + "/api/backends/ftp1/enable", "POST", json_type)
    assert code == 200 and answer["state"] == "UP"  # no body, no Origin: a script's call


def test_host_header_is_checked_against_dns_rebinding(cluster: Cluster) -> None:
    """A rebinding page reaches us under its own name: a Host that is neither an
    IP literal, nor localhost, nor in allowed_hosts is refused, and logged."""
    admin = start(cluster, backends=1, token="")
    port = urllib.parse.urlsplit(admin).port
    for host in (
        f"evil.example:{port}",
        "evil.example",
        "ftplb.example.com",
        f"127.0.0.1.nip.io:{port}",
    ):
        for path in ("/", "/metrics", "/api/status", "/static/app.js"):
            code, answer = send(admin + path, headers={"Host": host})
            assert code == 421 and "Host" in answer["error"], (host, path)
        code, answer = send(
            admin + "/api/backends/ftp1/drain",
            "POST",
            {"Host": host, "Origin": f"http://{host}", "Content-Type": "application/json"},
        )
        assert code == 421
    assert states(admin) == {"ftp1": "UP"}
    assert cluster.balancer is not None
    assert f"admin: GET /metrics refused: Host 'evil.example:{port}'" in cluster.balancer.log()
    for host in (
        f"127.0.0.1:{port}",
        "127.0.0.1",
        f"localhost:{port}",
        "LocalHost",
        f"[::1]:{port}",
    ):
        assert send(admin + "/api/status", headers={"Host": host})[0] == 200, host
    code, answer = send(
        admin + "/api/backends/ftp1/drain",
        "POST",
        {
            "Host": f"localhost:{port}",
            "Origin": f"http://localhost:{port}",
            "Content-Type": "application/json; charset=utf-8",
        },
    )
    assert code == 200 and answer["state"] == "DRAIN"


def test_allowed_hosts(cluster: Cluster) -> None:
    b = cluster.add_backend()
    port = free_ports(1)
    admin = f"http://127.0.0.1:{port}"
    text = cluster.config_text(sections={"admin": {"listen": f"127.0.0.1:{port}"}})
    text = text.replace("[admin]\n", '[admin]\nallowed_hosts = ["FTPLB.example.com"]\n', 1)
    cluster.config_path.write_text(text)
    argv = [sys.executable, "-m", "ftplb", "run", "-c", str(cluster.config_path)]
    proc = cluster.balancer = cluster.spawn("balancer", argv)
    wait_for(lambda: "ready:" in proc.log() or proc.popen.poll() is not None, what="ready")
    assert proc.popen.poll() is None, proc.log()
    name = f"ftplb.example.com:{port}"
    assert send(admin + "/api/status", headers={"Host": name})[0] == 200
    assert send(admin + "/api/status", headers={"Host": "ftplb.EXAMPLE.com"})[0] == 200
    assert send(admin + "/api/status", headers={"Host": f"other.example.com:{port}"})[0] == 421
    json_type = {"Content-Type": "application/json"}
    drain = admin + f"/api/backends/{b.name}/drain"
    # The Origin must be what the Host names: same name, same port.
    for origin in (
        f"http://127.0.0.1:{port}",
        "http://ftplb.example.com",
        "https://ftplb.example.com:1",
    ):
        code, _ = send(drain, "POST", {"Host": name, "Origin": origin, **json_type})
        assert code == 403, origin
    code, answer = send(drain, "POST", {"Host": name, "Origin": f"http://{name}", **json_type})
    assert code == 200 and answer["state"] == "DRAIN"


def test_deep_or_big_json_body_is_a_client_error(cluster: Cluster) -> None:
    admin = start(cluster, backends=1)
    weight = admin + "/api/backends/ftp1/weight"
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    deep = b"[" * 30000 + b"]" * 30000  # under the size cap: json's recursion gives up
    code, answer = send(weight, "PUT", headers, deep)
    assert code == 400 and "weight" in answer["error"]
    code, answer = send(weight, "PUT", headers, b"[" * 100000 + b"]" * 100000)
    assert code == 413 and "64 KiB" in answer["error"]
    code, answer = send(weight, "PUT", headers, b'{"weight": 2, "pad": "' + b"x" * 70000 + b'"}')
    assert code == 413
    assert call(admin + "/api/backends")[0]["weight"] == 1
    assert call(weight, "PUT", body={"weight": 2})["weight"] == 2
    assert cluster.balancer is not None
    assert "Traceback" not in cluster.balancer.log()


def test_the_status_page_cannot_be_framed(cluster: Cluster) -> None:
    """Clickjacking: another site's page framing ours would have the operator's
    click send a same-origin, JSON drain that passes every check above."""
    admin = start(cluster, backends=1, token="")
    with urllib.request.urlopen(admin + "/", timeout=10) as response:
        assert response.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
