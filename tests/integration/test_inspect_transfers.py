"""Inspect mode in front of unmodified servers: every data mode, every client, byte-exact."""

from __future__ import annotations

import ftplib
import io
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.cluster import BALANCER_HOST, LFTP_SETTINGS, Cluster, free_ports, sha256, wait_for
from tests.conftest import need
from tests.integration.test_admin import metrics
from tests.servers import KINDS, add_server

DATA = os.urandom(2 * 1024 * 1024 + 11)
BACKEND_ADDRESS = re.compile(r"127\.0\.1\.\d+|127,0,1,\d+")


class RecordingFTP(ftplib.FTP):
    """ftplib that keeps every line the balancer sent on the control channel."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self.received: list[str] = []
        super().__init__(*args, **kwargs)

    def getline(self) -> str:
        line = super().getline()
        self.received.append(line)
        return line


@pytest.fixture(params=KINDS)
def inspect(request: pytest.FixtureRequest, cluster: Cluster) -> tuple[Cluster, str, str]:
    kind = request.param
    login = None
    for _ in range(2):
        backend, login = add_server(cluster, kind)
        (backend.root / "data.bin").write_bytes(DATA)
        tree = backend.root / "tree" / "sub"
        tree.mkdir(parents=True)
        (backend.root / "tree" / "a.txt").write_text("a\n")
        (tree / "b.bin").write_bytes(DATA[:70_000])
        for d in (backend.root / "tree", tree):
            d.chmod(0o755)
    admin = free_ports(1)
    cluster.start_balancer(
        mode="inspect",
        send_proxy="off",
        balance="roundrobin",
        sections={"admin": {"listen": f"127.0.0.1:{admin}"}},
    )
    cluster.admin_url = f"http://127.0.0.1:{admin}"
    assert login is not None
    return cluster, *login


def spliced(c: Cluster) -> float:
    return metrics(c.admin_url)[("ftplb_data_connections_spliced_total", ())]


def url(c: Cluster, user: str, password: str, path: str = "") -> str:
    return f"ftp://{user}:{password}@{BALANCER_HOST}:{c.balancer_port}/{path}"


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(
        [need("curl"), "-sS", "-v", "--max-time", "60", *args], capture_output=True, timeout=90
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    # curl -v shows what the server said as '< ' lines: never a backend address.
    said = [x for x in done.stderr.decode(errors="replace").splitlines() if x.startswith("< ")]
    assert said and not any(BACKEND_ADDRESS.search(x) for x in said), said
    return done


MODES = {
    "pasv": ["--disable-epsv", "--no-ftp-skip-pasv-ip"],
    "epsv": [],
    "port": ["-P", "127.0.0.11", "--disable-eprt"],
    "eprt": ["-P", "127.0.0.11"],
}


@pytest.mark.parametrize("mode", list(MODES))
def test_curl_download_and_upload(
    inspect: tuple[Cluster, str, str], mode: str, tmp_path: Path
) -> None:
    c, user, password = inspect
    body = curl(*MODES[mode], "--interface", "127.0.0.11", url(c, user, password, "data.bin"))
    assert sha256(body.stdout) == sha256(DATA)
    # Plain on both sides and past 1 MiB: the kernel moved it (io/splice.py).
    wait_for(lambda: spliced(c) == 1, what="a spliced data connection")
    payload = os.urandom(1024 * 1024 + 7)
    src = tmp_path / "up.bin"
    src.write_bytes(payload)
    target = f"incoming/up-{mode}.bin"
    curl(*MODES[mode], "--interface", "127.0.0.11", "-T", str(src), url(c, user, password, target))
    found = [b.root / target for b in c.backends if (b.root / target).exists()]
    assert len(found) == 1
    assert sha256(found[0].read_bytes()) == sha256(payload)


def test_lftp_get_put_mirror(inspect: tuple[Cluster, str, str], tmp_path: Path) -> None:
    c, user, password = inspect
    lftp = need("lftp")
    payload = os.urandom(600_000)
    (tmp_path / "put.bin").write_bytes(payload)
    out = tmp_path / "out"
    out.mkdir()
    script = "; ".join(
        [
            *LFTP_SETTINGS,
            "set net:socket-bind-ipv4 127.0.0.12",
            f"lcd {out}",
            "get data.bin",
            f"put {tmp_path / 'put.bin'} -o incoming/put.bin",
            "mirror tree tree-copy",
            "bye",
        ]
    )
    done = subprocess.run(
        [lftp, "-u", f"{user},{password}", "-e", script, f"ftp://127.0.0.1:{c.balancer_port}"],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert sha256((out / "data.bin").read_bytes()) == sha256(DATA)
    found = [
        b.root / "incoming/put.bin" for b in c.backends if (b.root / "incoming/put.bin").exists()
    ]
    assert len(found) == 1 and found[0].read_bytes() == payload
    assert (out / "tree-copy" / "a.txt").read_text() == "a\n"
    assert (out / "tree-copy" / "sub" / "b.bin").read_bytes() == DATA[:70_000]


@pytest.mark.parametrize("passive", [True, False], ids=["passive", "active"])
def test_ftplib_retr_stor_list_mlsd_rest(inspect: tuple[Cluster, str, str], passive: bool) -> None:
    c, user, password = inspect
    ftp = RecordingFTP(timeout=20, source_address=("127.0.0.13", 0))
    with ftp:
        ftp.connect(BALANCER_HOST, c.balancer_port)
        ftp.login(user, password)
        ftp.set_pasv(passive)
        buf = io.BytesIO()
        ftp.retrbinary("RETR data.bin", buf.write)
        assert sha256(buf.getvalue()) == sha256(DATA)
        # REST: resume from an offset.
        tail = io.BytesIO()
        ftp.retrbinary("RETR data.bin", tail.write, rest=1_000_000)
        assert tail.getvalue() == DATA[1_000_000:]
        payload = os.urandom(300_000)
        ftp.storbinary("STOR incoming/s.bin", io.BytesIO(payload))
        back = io.BytesIO()
        ftp.retrbinary("RETR incoming/s.bin", back.write)
        assert back.getvalue() == payload
        names = ftp.nlst()
        assert {"data.bin", "tree", "incoming"} <= {n.rsplit("/", 1)[-1] for n in names}
        listing: list[str] = []
        ftp.retrlines("LIST", listing.append)
        assert any(x.endswith(" data.bin") and str(len(DATA)) in x for x in listing), listing
        if "MLSD" in ftp.sendcmd("FEAT") or "MLST" in ftp.sendcmd("FEAT"):
            facts = dict(ftp.mlsd())
            assert facts["data.bin"]["size"] == str(len(DATA))
    assert not any(BACKEND_ADDRESS.search(x) for x in ftp.received), ftp.received
    # Our PASV replies carry the public address.
    pasv = [x for x in ftp.received if x.startswith("227 ")]
    assert all("(127,0,0,1," in x for x in pasv), pasv
