"""FTP servers as inspect-mode backends, each as installed: no NAT, no masquerade.

vsftpd is Debian's installed package; ProFTPD and pure-ftpd conflict with it
as packages, so `make deps` unpacks their binaries into .deps/root.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.cluster import (
    BACKEND_HOSTS,
    PASSWORD,
    USER,
    Backend,
    Cluster,
    free_ports,
    listening,
    wait_for,
)
from tests.conftest import need

KINDS = ["pyftpdlib", "vsftpd", "proftpd", "pure-ftpd"]
UNPACKED = Path(__file__).resolve().parents[1] / ".deps" / "root"
NOBODY = 65534


def unpacked(path: str) -> str:
    binary = UNPACKED / path.lstrip("/")
    if binary.exists():
        return str(binary)
    return need(os.path.basename(path))


def add_server(
    cluster: Cluster, kind: str, extra: tuple[str, ...] = ()
) -> tuple[Backend, tuple[str, str]]:
    """Start one server of `kind`; returns it and the login that works on it.
    Every server has a writable `incoming/` directory. `extra`: vsftpd.conf lines."""
    if kind == "pyftpdlib":
        b = cluster.add_backend(proxy_protocol=False, passive_size=None, masquerade=None)
        login = (USER, PASSWORD)
    elif kind == "vsftpd":
        b = cluster.add_vsftpd(unmodified=True, extra=extra)
        login = ("anonymous", "guest")
    elif kind == "proftpd":
        b = _proftpd(cluster)
        login = (USER, PASSWORD)
    elif kind == "pure-ftpd":
        b = _pure_ftpd(cluster)
        login = (USER, PASSWORD)
    else:
        raise ValueError(kind)
    incoming = b.root / "incoming"
    incoming.mkdir()
    incoming.chmod(0o777)
    return b, login


def _new(cluster: Cluster, kind: str) -> Backend:
    index = len(cluster.backends)
    name = f"{kind}{index + 1}"
    host = BACKEND_HOSTS[index % len(BACKEND_HOSTS)]
    root = cluster.public_dir(name) / "root"
    root.mkdir()
    root.chmod(0o755)
    (root / "whoami.txt").write_text(name)
    b = Backend(name, host, free_ports(1, host), (0, 0), root, kind=kind)
    cluster.backends.append(b)
    return b


def proftpd_standalone(name: str, host: str, port: int, state: Path) -> list[str]:
    """The proftpd.conf lines every ProFTPD we start shares: standalone on
    host:port only, running as nobody, its state files in `state`."""
    return [
        "ServerType standalone",
        f'ServerName "{name}"',
        f"DefaultAddress {host}",
        f"Port {port}",
        "SocketBindTight on",
        "UseIPv6 off",
        "User nobody",
        "Group nogroup",
        f"ScoreboardFile {state}/scoreboard",
        f"PidFile {state}/pid",
        "DelayEngine off",
        "WtmpLog off",
        "UseReverseDNS off",
    ]


def _proftpd(cluster: Cluster) -> Backend:
    proftpd = unpacked("/usr/sbin/proftpd")
    b = _new(cluster, "proftpd")
    state = b.root.parent
    passwd = state / "passwd"
    passwd.write_text(f"{USER}:{_crypt(PASSWORD)}:{NOBODY}:{NOBODY}::{b.root}:/bin/sh\n")
    passwd.chmod(0o600)  # ProFTPD refuses a world-readable AuthUserFile
    conf = state / "proftpd.conf"
    conf.write_text(
        "\n".join(
            [
                *proftpd_standalone(b.name, b.host, b.port, state),
                f'ServerIdent on "backend {b.name} ready"',
                f"TransferLog {state}/xfer.log",
                "RequireValidShell off",
                "AuthPAM off",
                "AuthOrder mod_auth_file.c",
                f"AuthUserFile {passwd}",
                "DefaultRoot ~",
                "Umask 022",
                "AllowOverwrite on",
                "AllowStoreRestart on",  # APPE and REST + STOR (off by default)
                "MaxInstances 200",
                "TimeoutIdle 60",
                "",
            ]
        )
    )
    b.process = cluster.spawn(b.name, [proftpd, "-n", "-q", "-c", str(conf)])
    _wait_listening(b)
    return b


def _pure_ftpd(cluster: Cluster) -> Backend:
    pure_ftpd = unpacked("/usr/sbin/pure-ftpd")
    pure_pw = unpacked("/usr/bin/pure-pw")
    b = _new(cluster, "pure-ftpd")
    state = b.root.parent
    pw, pdb = state / "pureftpd.passwd", state / "pureftpd.pdb"
    # A SHA-512 crypt hash: pure-pw's own default (argon2) costs seconds per login.
    pw.write_text(f"{USER}:{_crypt(PASSWORD)}:{NOBODY}:{NOBODY}::{b.root}/./::::::::::::\n")
    subprocess.run([pure_pw, "mkdb", str(pdb), "-f", str(pw)], capture_output=True, check=True)
    b.process = cluster.spawn(
        b.name,
        [pure_ftpd, "-S", f"{b.host},{b.port}", "-l", f"puredb:{pdb}", "-E", "-A", "-H"],
    )
    _wait_listening(b)
    return b


def _crypt(password: str) -> str:
    done = subprocess.run(
        [need("openssl"), "passwd", "-6", password], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def _wait_listening(b: Backend) -> None:
    def up() -> bool:
        assert b.process is not None
        assert b.process.popen.poll() is None, b.process.log()
        return listening(b.host, b.port)

    wait_for(up, what=f"{b.name} to listen")
