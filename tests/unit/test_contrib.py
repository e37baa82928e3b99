"""The deployment files say what the docs promise."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_systemd_unit() -> None:
    unit = (ROOT / "contrib" / "ftplb.service").read_text()
    for line in (
        "ExecStart=/usr/local/bin/ftplb run -c /etc/ftplb/ftplb.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ):
        assert line in unit.splitlines(), line


def test_dockerfile() -> None:
    text = (ROOT / "contrib" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["ftplb"]' in text and "USER ftplb" in text
