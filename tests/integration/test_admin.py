"""Operating ftplb: metrics, the admin API, drain, reload, graceful stop, logs."""

from __future__ import annotations

import ftplib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster import Cluster, free_ports, wait_for

TOKEN = "t0ken"
SIZE = 24 * 1024 * 1024


def start(cluster: Cluster, backends: int = 3, **options: object) -> str:
    """Backends with a big file and a balancer with the admin API; returns its URL."""
    for _ in range(backends):
        b = cluster.add_backend()
        with open(b.root / "big.bin", "wb") as f:
            f.truncate(SIZE)
    port = free_ports(1)
    sections: dict[str, Any] = {"admin": {"listen": f"127.0.0.1:{port}", "token": TOKEN}}
    sections.update(options.pop("sections", {}))  # type: ignore[arg-type]
    cluster.start_balancer(
        sections=sections,
        backend_options={b.name: {"send_proxy_data": True} for b in cluster.backends},
        **options,
    )
    return f"http://127.0.0.1:{port}"


def call(url: str, method: str = "GET", token: str | None = TOKEN, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
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
