"""`ftplb render`: golden files for review, and each tool's own check of the output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ftplb.config import load_config
from ftplb.render import RENDERERS, RenderError, RenderOptions, render
from tests.conftest import need
from tests.servers import unpacked

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
SAMPLE = "tests/golden/ftplb.toml"  # relative: the path is part of the output
OPTIONS = RenderOptions(public_if="eth0", private_if="eth1")


def rendered(kind: str, **options: str) -> str:
    cfg = load_config(ROOT / SAMPLE)
    cfg = type(cfg)(**{**cfg.__dict__, "path": SAMPLE})
    return render(kind, cfg, RenderOptions(**{**OPTIONS.__dict__, **options}))


@pytest.mark.parametrize("kind", sorted(RENDERERS))
def test_golden(kind: str) -> None:
    """Regenerate with: for k in ...; do ftplb render $k -c tests/golden/ftplb.toml
    --public-if eth0 --private-if eth1 > tests/golden/$k.txt; done (and review the diff)."""
    assert rendered(kind) == (GOLDEN / f"{kind}.txt").read_text()


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


def test_refusals() -> None:
    with pytest.raises(RenderError, match="--backend: no backend named"):
        rendered("vsftpd", backend="nope")
    cfg = load_config(ROOT / SAMPLE)
    inspect = type(cfg)(
        **{
            **cfg.__dict__,
            "balancer": type(cfg.balancer)(**{**cfg.balancer.__dict__, "mode": "inspect"}),
        }
    )
    with pytest.raises(RenderError, match="routed design"):
        render("haproxy", inspect)
