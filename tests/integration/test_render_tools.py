"""`ftplb render`'s output checked by each tool itself (haproxy -c, nft -c,
iptables-restore --test, proftpd -t) and by the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import need
from tests.servers import unpacked
from tests.unit.test_render import GOLDEN, ROOT, SAMPLE, rendered


def test_cli_matches_and_is_deterministic() -> None:
    runs = [
        subprocess.run(
            [
                sys.executable,
                "-m",
                "ftplb",
                "render",
                "nftables",
                "-c",
                SAMPLE,
                "--public-if",
                "eth0",
                "--private-if",
                "eth1",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        ).stdout
        for _ in range(2)
    ]
    assert runs[0] == runs[1] == (GOLDEN / "nftables.txt").read_text()


def test_haproxy_check(tmp_path: Path) -> None:
    path = tmp_path / "haproxy.cfg"
    path.write_text(rendered("haproxy"))
    done = subprocess.run([need("haproxy"), "-c", "-f", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    text = path.read_text()
    assert "server ftp1 198.18.1.11:21 check weight 1 send-proxy-v2 check-send-proxy" in text
    assert "bind 198.18.0.2:30100-30199" in text and "timeout client 900s" in text


def test_nft_check(tmp_path: Path) -> None:
    path = tmp_path / "ftplb.nft"
    path.write_text(rendered("nftables"))
    done = subprocess.run([need("nft"), "-c", "-f", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_iptables_restore_test(tmp_path: Path) -> None:
    text = rendered("iptables")
    done = subprocess.run(
        [need("iptables-restore"), "--test", "--noflush"],
        input=text,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    dnat = (
        "-A FTPLB-DNAT -i eth0 -d 198.18.0.2/32 -p tcp -m tcp --dport 30000:30099"
        " -j DNAT --to-destination 198.18.1.11"
    )
    assert dnat in text


@pytest.mark.parametrize("backend", ["ftp1", "ftp2", "ftp3"])
def test_proftpd_check(tmp_path: Path, backend: str) -> None:
    path = tmp_path / "proftpd.conf"
    path.write_text(rendered("proftpd", backend=backend))
    done = subprocess.run(
        [unpacked("/usr/sbin/proftpd"), "-t", "-c", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "masquerading as 198.18.0.2" in done.stderr
