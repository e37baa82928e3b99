"""Transparent mode (`source = "client"`) on a real topology (network namespaces,
root only): unmodified vsftpd (pasv_promiscuous=NO, port_promiscuous=NO),
ProFTPD and pure-ftpd behind ftplb in routed and inspect mode log the client
namespace's own address, for the session and for its transfers, and every
byte arrives. ftplb sets up the kernel's part itself and leaves the balancer's
namespace as it found it: after a stop, after SIGKILL and a restart, and when
it lacks the privilege to start at all.

    client 198.18.0.10 -- 198.18.0.2 [lb] 198.18.1.1 -- backends 198.18.1.11-13
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import need
from tests.netns.topology import (
    BACKENDS,
    CLIENT,
    GATEWAY,
    PUBLIC,
    Topology,
    namespaces_available,
    topology,
)
from tests.servers import NOBODY, _crypt, proftpd_standalone, unpacked

WHY = namespaces_available()
pytestmark = pytest.mark.skipif(bool(WHY), reason=f"netns topology unavailable: {WHY}")

DATA = os.urandom(2 * 1024 * 1024 + 11)
RANGES = [(30000, 30049), (30100, 30149), (30200, 30249)]
KINDS = ["vsftpd", "proftpd", "pure-ftpd"]
LOGINS = {
    "vsftpd": ("anonymous", "guest"),
    "proftpd": ("alice", "secret"),
    "pure-ftpd": ("alice", "secret"),
}


def public_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="ftplb-transparent-"))
    path.chmod(0o755)
    return path


class Servers:
    """One unmodified server per backend namespace, each with its transfer log."""

    def __init__(self, net: Topology, work: Path) -> None:
        self.net = net
        self.work = work
        self.logs: dict[str, Path] = {}
        self.roots: dict[str, Path] = {}
        for i, kind in enumerate(KINDS):
            root = work / f"{kind}-root"
            root.mkdir()
            root.chmod(0o755)
            (root / "data.bin").write_bytes(DATA)
            incoming = root / "incoming"
            incoming.mkdir()
            incoming.chmod(0o777)
            self.roots[kind] = root
            getattr(self, kind.replace("-", "_"))(i, root)

    def vsftpd(self, i: int, root: Path) -> None:
        empty = self.work / "vsftpd-empty"
        empty.mkdir()
        log = self.logs["vsftpd"] = self.work / "vsftpd.log"
        first, last = RANGES[i]
        conf = self.work / "vsftpd.conf"
        conf.write_text(
            "\n".join(
                [
                    "listen=YES",
                    "listen_ipv6=NO",
                    f"listen_address={BACKENDS[i]}",
                    "background=NO",
                    "anonymous_enable=YES",
                    "no_anon_password=YES",
                    f"anon_root={root}",
                    "anon_upload_enable=YES",
                    "anon_umask=022",
                    "write_enable=YES",
                    "local_enable=NO",
                    # Its own checks stay on: data must come from the control's address.
                    "pasv_promiscuous=NO",
                    "port_promiscuous=NO",
                    f"pasv_address={PUBLIC}",
                    f"pasv_min_port={first}",
                    f"pasv_max_port={last}",
                    "seccomp_sandbox=NO",
                    f"secure_chroot_dir={empty}",
                    "ftp_username=ftp",
                    "xferlog_enable=YES",
                    "log_ftp_protocol=YES",
                    f"vsftpd_log_file={log}",
                    "ftpd_banner=backend vsftpd ready",
                    "",
                ]
            )
        )
        self.net.spawn(self.net.backend(i), "vsftpd", [need("vsftpd"), str(conf)])

    def proftpd(self, i: int, root: Path) -> None:
        state = public_dir()
        log = self.logs["proftpd"] = state / "xfer.log"
        passwd = state / "passwd"
        passwd.write_text(f"alice:{_crypt('secret')}:{NOBODY}:{NOBODY}::{root}:/bin/sh\n")
        passwd.chmod(0o600)
        first, last = RANGES[i]
        conf = state / "proftpd.conf"
        conf.write_text(
            "\n".join(
                [
                    *proftpd_standalone("proftpd", BACKENDS[i], 21, state),
                    'ServerIdent on "backend proftpd ready"',
                    f"TransferLog {log}",
                    f"MasqueradeAddress {PUBLIC}",
                    f"PassivePorts {first} {last}",
                    "RequireValidShell off",
                    "AuthPAM off",
                    "AuthOrder mod_auth_file.c",
                    f"AuthUserFile {passwd}",
                    "DefaultRoot ~",
                    "Umask 022",
                    "AllowOverwrite on",
                    "",
                ]
            )
        )
        proftpd = unpacked("/usr/sbin/proftpd")
        self.net.spawn(self.net.backend(i), "proftpd", [proftpd, "-n", "-q", "-c", str(conf)])

    def pure_ftpd(self, i: int, root: Path) -> None:
        state = public_dir()
        log = self.logs["pure-ftpd"] = state / "xfer.log"
        pw, pdb = state / "pureftpd.passwd", state / "pureftpd.pdb"
        pw.write_text(f"alice:{_crypt('secret')}:{NOBODY}:{NOBODY}::{root}/./::::::::::::\n")
        subprocess.run(
            [unpacked("/usr/bin/pure-pw"), "mkdb", str(pdb), "-f", str(pw)],
            capture_output=True,
            check=True,
        )
        first, last = RANGES[i]
        self.net.spawn(
            self.net.backend(i),
            "pure-ftpd",
            [
                unpacked("/usr/sbin/pure-ftpd"),
                "-S",
                f"{BACKENDS[i]},21",
                "-l",
                f"puredb:{pdb}",
                "-E",
                "-A",
                "-H",
                "-P",
                PUBLIC,
                "-p",
                f"{first}:{last}",
                "-O",
                f"clf:{log}",
            ],
        )


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Topology, Servers]]:
    work = public_dir()
    with topology(tmp_path_factory.mktemp("transparent")) as t:
        servers = Servers(t, work)
        for host in BACKENDS:
            t.wait_port(t.lb, host, 21)
        yield t, servers
    subprocess.run(["rm", "-rf", str(work)], check=False)


def config_text(mode: str) -> str:
    lines = [
        "[balancer]",
        f'listen = "{PUBLIC}:21"',
        f'public_address = "{PUBLIC}"',
        f'data_listen = "{PUBLIC}"',
        f'mode = "{mode}"',
        'balance = "roundrobin"',
        'source = "client"',
        "workers = 1",
        'data_ports = "31000-31019"',
        "[health]",
        "interval = 0.5",
        "timeout = 0.5",
    ]
    for i, kind in enumerate(KINDS):
        lines += ["[[backends]]", f'name = "{kind}"', f'address = "{BACKENDS[i]}:21"']
        if mode == "routed":
            lines.append(f'passive_ports = "{RANGES[i][0]}-{RANGES[i][1]}"')
    return "\n".join(lines) + "\n"


def kernel_state(t: Topology) -> str:
    """What ftplb must leave as it found it in the balancer's namespace."""
    return "\n".join(
        t.exec(t.lb, *argv)
        for argv in (
            ["nft", "list", "ruleset"],
            ["ip", "-4", "rule"],
            ["ip", "-6", "rule"],
            ["ip", "-4", "route", "show", "table", "all"],
        )
    )


def start(t: Topology, config: Path, name: str = "ftplb"):  # type: ignore[no-untyped-def]
    proc = t.spawn(t.lb, name, [sys.executable, "-m", "ftplb", "run", "-c", str(config)])
    deadline = time.monotonic() + 20
    while "ready:" not in proc.log():
        assert proc.popen.poll() is None, proc.log()
        assert time.monotonic() < deadline, proc.log()
        time.sleep(0.1)
    return proc


def url(kind: str) -> str:
    user, password = LOGINS[kind]
    return f"ftp://{user}:{password}@{PUBLIC}/"


def curl(t: Topology, *args: str) -> bytes:
    done = subprocess.run(
        ["ip", "netns", "exec", t.client, need("curl"), "-sS", "--max-time", "30", *args],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("mode", ["routed", "inspect"])
def test_unmodified_servers_see_the_client(
    net: tuple[Topology, Servers], mode: str, tmp_path: Path
) -> None:
    t, servers = net
    before = kernel_state(t)
    config = tmp_path / "ftplb.toml"
    config.write_text(config_text(mode))
    proc = start(t, config)
    upload = tmp_path / "up.bin"
    upload.write_bytes(DATA[::-1])
    try:
        assert "nftables table inet ftplb_transparent" in proc.log()
        # roundrobin: sessions go to the servers in turn, so each run of three
        # sessions meets each server once (with the login that server knows).
        for round_ in range(3):
            flags = [] if round_ % 2 == 0 else ["--disable-epsv"]  # EPSV, then PASV
            for kind in KINDS:
                got = curl(t, *flags, url(kind) + "data.bin")
                assert hashlib.sha256(got).digest() == hashlib.sha256(DATA).digest()
            for kind in KINDS:
                curl(t, *flags, "-T", str(upload), url(kind) + f"incoming/{mode}-{round_}.bin")
        for kind in KINDS:
            uploads = sorted((servers.roots[kind] / "incoming").glob(f"{mode}-*"))
            assert uploads, kind
            for path in uploads:
                assert path.read_bytes() == DATA[::-1], path
            log = servers.logs[kind].read_text(errors="replace")
            # Every login and transfer is logged with the client's own address,
            # never ours (health checks, which log nothing else, do come from us).
            assert CLIENT in log, (kind, log[-2000:])
            done = [line for line in log.splitlines() if kind != "vsftpd" or "] OK " in line]
            assert done and all(GATEWAY not in line for line in done), (kind, done)
        vsftpd = servers.logs["vsftpd"].read_text()
        assert re.search(rf'CONNECT: Client "{re.escape(CLIENT)}"', vsftpd)
        assert re.search(rf'OK DOWNLOAD: Client "{re.escape(CLIENT)}"', vsftpd)
        assert re.search(rf'OK UPLOAD: Client "{re.escape(CLIENT)}"', vsftpd)
    finally:
        proc.stop()
        t.procs.remove(proc)
    assert "removed" in proc.log()
    assert kernel_state(t) == before


def test_a_killed_ftplb_is_cleaned_up_by_the_next_start(
    net: tuple[Topology, Servers], tmp_path: Path
) -> None:
    t, _ = net
    before = kernel_state(t)
    config = tmp_path / "ftplb.toml"
    config.write_text(config_text("inspect"))
    proc = start(t, config)
    proc.stop(signal.SIGKILL)
    t.procs.remove(proc)
    assert "ftplb_transparent" in t.exec(t.lb, "nft", "list", "tables")
    again = start(t, config, "ftplb-again")
    try:
        # One rule, not two: the leftover was replaced.
        assert t.exec(t.lb, "ip", "-4", "rule").count("lookup 18004") == 1
        got = curl(t, f"ftp://anonymous:guest@{PUBLIC}/data.bin")
        assert hashlib.sha256(got).digest() == hashlib.sha256(DATA).digest()
    finally:
        again.stop()
        t.procs.remove(again)
    assert kernel_state(t) == before


def test_without_the_privilege_nothing_starts_and_nothing_is_left(
    net: tuple[Topology, Servers],
) -> None:
    t, _ = net
    before = kernel_state(t)
    work = public_dir()
    config = work / "ftplb.toml"
    config.write_text(config_text("routed"))
    config.chmod(0o644)
    as_nobody = [
        need("setpriv"),
        f"--reuid={NOBODY}",
        f"--regid={NOBODY}",
        "--clear-groups",
        "--inh-caps=-all",
    ]
    for command in ("run", "check"):
        done = subprocess.run(
            ["ip", "netns", "exec", t.lb, *as_nobody, sys.executable, "-m", "ftplb", command,
             "-c", str(config)],
            capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(work)},
        )  # fmt: skip
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert 'balancer.source = "client" needs CAP_NET_ADMIN' in done.stderr, done.stderr
    # No ip_forward: said as clearly, by root too.
    t.exec(t.lb, "sysctl", "-qw", "net.ipv4.ip_forward=0")
    try:
        done = subprocess.run(
            ["ip", "netns", "exec", t.lb, sys.executable, "-m", "ftplb", "run", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert "net.ipv4.ip_forward = 1" in done.stderr
    finally:
        t.exec(t.lb, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    subprocess.run(["rm", "-rf", str(work)], check=False)
    assert kernel_state(t) == before
