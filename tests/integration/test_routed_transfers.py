"""Real clients (curl, lftp, ftplib) through routed mode to `ftplb backend`: byte-exact."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest

from tests.cluster import LFTP_SETTINGS, Cluster, sha256, wait_for
from tests.conftest import need

DATA = os.urandom(3 * 1024 * 1024 + 17)


@pytest.fixture
def three(cluster: Cluster) -> Cluster:
    for _ in range(3):
        b = cluster.add_backend()
        (b.root / "data.bin").write_bytes(DATA)
        tree = b.root / "tree" / "sub"
        tree.mkdir(parents=True)
        (b.root / "tree" / "a.txt").write_text("a\n")
        (tree / "b.bin").write_bytes(DATA[:100_000])
    cluster.start_balancer(send_proxy="v1", backend_options=_proxy_data(cluster))
    return cluster


def _proxy_data(cluster: Cluster) -> dict[str, dict[str, object]]:
    return {b.name: {"send_proxy_data": True} for b in cluster.backends}


def curl(*args: str) -> bytes:
    need("curl")
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "60", *args], capture_output=True, timeout=90
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def uploaded(cluster: Cluster, name: str) -> tuple[str, bytes]:
    """(backend name, content) of the one backend root holding `name`."""
    found = [
        (b.name, (b.root / name).read_bytes()) for b in cluster.backends if (b.root / name).exists()
    ]
    assert len(found) == 1, f"{name} on {[f[0] for f in found]}"
    return found[0]


@pytest.mark.parametrize("mode", ["pasv", "epsv"])
def test_curl_download(three: Cluster, mode: str) -> None:
    flags = ["--disable-epsv", "--no-ftp-skip-pasv-ip"] if mode == "pasv" else []
    body = curl(*flags, "--interface", "127.0.0.11", three.url + "data.bin")
    assert sha256(body) == sha256(DATA)


@pytest.mark.parametrize("mode", ["pasv", "epsv"])
def test_curl_upload(three: Cluster, mode: str, tmp_path: Path) -> None:
    flags = ["--disable-epsv", "--no-ftp-skip-pasv-ip"] if mode == "pasv" else []
    payload = os.urandom(2 * 1024 * 1024 + 3)
    src = tmp_path / "payload.bin"
    src.write_bytes(payload)
    curl(*flags, "--interface", "127.0.0.12", "-T", str(src), three.url + f"up-{mode}.bin")
    _, content = uploaded(three, f"up-{mode}.bin")
    assert sha256(content) == sha256(payload)


def test_curl_listing(three: Cluster) -> None:
    names = curl("--list-only", three.url).decode().split()
    assert sorted(names) == ["data.bin", "tree", "whoami.txt"]


def test_lftp_get_put_mirror(three: Cluster, tmp_path: Path) -> None:
    lftp = need("lftp")
    payload = os.urandom(1024 * 1024 + 5)
    (tmp_path / "put.bin").write_bytes(payload)
    out = tmp_path / "out"
    out.mkdir()
    script = "; ".join(
        [
            *LFTP_SETTINGS,
            "set net:socket-bind-ipv4 127.0.0.13",
            f"lcd {out}",
            "get data.bin",
            f"put {tmp_path / 'put.bin'} -o put.bin",
            "mirror tree tree-copy",
            "cat whoami.txt",
            "bye",
        ]
    )
    done = subprocess.run(
        [lftp, "-u", "alice,secret", "-e", script, f"ftp://127.0.0.1:{three.balancer_port}"],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()
    served_by = done.stdout.decode().strip()
    assert sha256((out / "data.bin").read_bytes()) == sha256(DATA)
    holder, content = uploaded(three, "put.bin")
    assert holder == served_by  # one lftp session: one backend for everything
    assert sha256(content) == sha256(payload)
    assert (out / "tree-copy" / "a.txt").read_text() == "a\n"
    assert sha256((out / "tree-copy" / "sub" / "b.bin").read_bytes()) == sha256(DATA[:100_000])


def test_ftplib_retr_stor_list(three: Cluster) -> None:
    with three.ftp(source="127.0.0.14") as ftp:
        name = three.backend_of(ftp)
        buf = io.BytesIO()
        ftp.retrbinary("RETR data.bin", buf.write)
        assert sha256(buf.getvalue()) == sha256(DATA)
        payload = os.urandom(500_000)
        ftp.storbinary("STOR stored.bin", io.BytesIO(payload))
        assert sorted(ftp.nlst()) == ["data.bin", "stored.bin", "tree", "whoami.txt"]
        lines: list[str] = []
        ftp.retrlines("LIST", lines.append)
        assert any(line.endswith(" data.bin") and str(len(DATA)) in line for line in lines)
        ftp.set_pasv(True)
        ftp.sendcmd("TYPE I")
        host, port = ftp.makepasv()
        assert host == "127.0.0.1"  # the balancer, never a backend address
        assert three.backends[0].passive[0] <= port <= three.backends[-1].passive[1]
    holder, content = uploaded(three, "stored.bin")
    assert holder == name
    assert content == payload


def test_session_log_line(three: Cluster) -> None:
    body = curl("--interface", "127.0.0.15", three.url + "whoami.txt")
    served_by = body.decode()

    def mine() -> list[str]:
        return [x for x in three.session_lines() if "client=127.0.0.15:" in x]

    # curl may exit before the balancer has seen both sockets close.
    lines = wait_for(lambda: len(mine()) == 2 and mine(), what="two session lines")
    control = [x for x in lines if " control " in x]
    data = [x for x in lines if " data " in x]
    assert len(control) == 1 and len(data) == 1, lines
    assert f"backend={served_by}" in control[0]
    assert f"backend={served_by}" in data[0] and f"bytes_down={len(served_by)}" in data[0]
    assert "duration=" in control[0] and 'end="' in control[0]


def test_concurrent_downloads_are_spliced_and_byte_exact(three: Cluster) -> None:
    """Past 1 MiB the kernel moves a transfer's bytes, several at once included."""
    from concurrent.futures import ThreadPoolExecutor

    def slow_get(i: int) -> bytes:
        source = f"127.0.0.{41 + i}"
        return curl("--limit-rate", "2M", "--interface", source, three.url + "data.bin")

    with ThreadPoolExecutor(4) as pool:
        bodies = list(pool.map(slow_get, range(4)))
    assert all(sha256(b) == sha256(DATA) for b in bodies)

    def data_lines() -> list[str]:
        return [x for x in three.session_lines() if " data client=" in x]

    data = wait_for(lambda: len(data_lines()) == 4 and data_lines(), what="4 data lines")
    assert all("relay=splice" in x for x in data), data
