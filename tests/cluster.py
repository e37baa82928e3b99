"""Real processes for the tests: `ftplb backend`s, vsftpd, and `ftplb run`.

Every process is started here and stopped here, by PID. Addresses: the
balancer on 127.0.0.1, backends on 127.0.1.x, clients from 127.0.0.11 and up.
Ports come from a counter below the kernel's ephemeral range.
"""

from __future__ import annotations

import contextlib
import ftplib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

BALANCER_HOST = "127.0.0.1"
BACKEND_HOSTS = ["127.0.1.1", "127.0.1.2", "127.0.1.3"]
USER, PASSWORD = "alice", "secret"

# lftp honouring PASV addresses and failing fast instead of retrying quietly.
LFTP_SETTINGS = [
    "set ftp:ignore-pasv-address false",
    "set ftp:prefer-epsv false",
    "set net:max-retries 1",
    "set net:timeout 10",
]

_next_port = 20000 + (os.getpid() % 40) * 100


def free_ports(count: int, host: str = "127.0.0.1") -> int:
    """The first of `count` consecutive ports that are free on `host` right now."""
    global _next_port
    while True:
        first = _next_port
        _next_port += count
        if _next_port > 32000:
            _next_port = 20000
            continue
        if all(_port_free(host, p) for p in range(first, first + count)):
            return first


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wait_for(
    predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = "it"
) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def greeting(host: str, port: int, timeout: float = 2.0, source: str | None = None) -> str:
    """The first reply line a fresh connection gets ('' if it is closed first)."""
    src = (source, 0) if source else None
    with socket.create_connection((host, port), timeout, source_address=src) as s:
        data = b""
        while b"\n" not in data:
            chunk = s.recv(1024)
            if not chunk:
                break
            data += chunk
        return data.decode(errors="replace").split("\r\n")[0]


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        return self.popen.returncode


@dataclass
class Backend:
    name: str
    host: str
    port: int
    passive: tuple[int, int]
    root: Path
    process: Process | None = None
    kind: str = "ftplb"
    args: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass
class Cluster:
    """Backends plus a balancer in front of them, all on loopback."""

    workdir: Path
    backends: list[Backend] = field(default_factory=list)
    balancer: Process | None = None
    balancer_port: int = 0
    processes: list[Process] = field(default_factory=list)
    scratch: list[Path] = field(default_factory=list)
    admin_url: str = ""
    """The admin API's URL, for tests that start the balancer with one."""

    def public_dir(self, name: str, under: str | None = None) -> Path:
        """A directory every user can traverse (pytest's tmp_path is root-only,
        and servers that drop privileges before chroot need the way in); in
        `under` if given (/dev/shm: memory)."""
        path = Path(tempfile.mkdtemp(prefix=f"ftplb-{name}-", dir=under))
        path.chmod(0o755)
        self.scratch.append(path)
        return path

    # -- processes

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Process:
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
            )
        proc = Process(name, popen, log_path)
        self.processes.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
        for path in self.scratch:
            shutil.rmtree(path, ignore_errors=True)

    # -- backends

    def add_backend(
        self,
        *,
        proxy_protocol: bool = True,
        passive_size: int | None = 20,
        masquerade: str | None = BALANCER_HOST,
        start: bool = True,
        extra_args: tuple[str, ...] = (),
        users: tuple[tuple[str, str], ...] = ((USER, PASSWORD),),
        port: int | None = None,
    ) -> Backend:
        """An `ftplb backend`. passive_size/masquerade None: an unmodified server
        (kernel-chosen passive ports, its own address in PASV replies)."""
        index = len(self.backends)
        name = f"ftp{index + 1}"
        host = BACKEND_HOSTS[index % len(BACKEND_HOSTS)]
        port = port or free_ports(1, host)
        first = free_ports(passive_size, BALANCER_HOST) if passive_size else 0
        last = first + passive_size - 1 if passive_size else 0
        root = self.workdir / name
        root.mkdir()
        (root / "whoami.txt").write_text(name)
        b = Backend(name, host, port, (first, last), root)
        b.args = [
            f"--listen={host}:{port}",
            f"--root={root}",
            *[f"--user={u}:{p}" for u, p in users],
            *([f"--passive-ports={first}-{last}"] if passive_size else []),
            *([f"--masquerade={masquerade}"] if masquerade else []),
            f"--banner=backend {name} ready",
            *(["--proxy-protocol"] if proxy_protocol else []),
            *extra_args,
        ]
        self.backends.append(b)
        if start:
            self.start_backend(b)
        return b

    def start_backend(self, b: Backend) -> None:
        argv = [sys.executable, "-m", "ftplb", "backend", *b.args]
        proc = b.process = self.spawn(b.name, argv)
        # Watch the log, not the port: a probe from 127.0.0.1 (a trusted proxy)
        # without a header would be logged as a refused connection.
        wait_for(
            lambda: "serving " in proc.log() or proc.popen.poll() is not None,
            what=f"backend {b.name} to listen",
        )
        assert proc.popen.poll() is None, proc.log()

    def stop_backend(self, b: Backend) -> None:
        assert b.process is not None
        b.process.stop()

    def add_fake_backend(self, name: str, host: str, port: int) -> Backend:
        """A backend entry for a server the test runs itself (hung, refusing...)."""
        passive = free_ports(1, BALANCER_HOST)
        root = self.workdir / name
        root.mkdir()
        b = Backend(name, host, port, (passive, passive), root, kind="fake")
        self.backends.append(b)
        return b

    def add_vsftpd(
        self, *, passive_size: int = 20, unmodified: bool = False, extra: tuple[str, ...] = ()
    ) -> Backend:
        """Debian's vsftpd: a routed-mode backend (pasv_address + its own range),
        or with `unmodified` as installed (its own address, any passive port)."""
        vsftpd = shutil.which("vsftpd") or "/usr/sbin/vsftpd"
        index = len(self.backends)
        name = f"vsftpd{index + 1}"
        host = BACKEND_HOSTS[index % len(BACKEND_HOSTS)]
        port = free_ports(1, host)
        first = free_ports(passive_size, BALANCER_HOST)
        root = self.workdir / name
        root.mkdir()
        root.chmod(0o755)  # vsftpd refuses a writable chroot root
        (root / "whoami.txt").write_text(name)
        empty = self.workdir / f"{name}-empty"
        empty.mkdir()
        conf = self.workdir / f"{name}.conf"
        conf.write_text(
            "\n".join(
                [
                    "listen=YES",
                    "listen_ipv6=NO",
                    f"listen_address={host}",
                    f"listen_port={port}",
                    "background=NO",
                    "anonymous_enable=YES",
                    "anon_upload_enable=YES",
                    "anon_mkdir_write_enable=YES",
                    "anon_other_write_enable=YES",
                    "anon_umask=022",
                    "write_enable=YES",
                    "no_anon_password=YES",
                    f"anon_root={root}",
                    "local_enable=NO",
                    "pasv_enable=YES",
                    *(
                        []
                        if unmodified
                        else [
                            f"pasv_address={BALANCER_HOST}",
                            f"pasv_min_port={first}",
                            f"pasv_max_port={first + passive_size - 1}",
                        ]
                    ),
                    "pasv_promiscuous=NO",
                    "port_promiscuous=NO",
                    "seccomp_sandbox=NO",
                    f"secure_chroot_dir={empty}",
                    "ftp_username=ftp",  # created by the vsftpd package
                    "idle_session_timeout=30",
                    "data_connection_timeout=30",
                    "xferlog_enable=YES",
                    f"vsftpd_log_file={self.workdir / (name + '.xfer.log')}",
                    f"ftpd_banner=backend {name} ready",
                    *extra,
                    "",
                ]
            )
        )
        b = Backend(name, host, port, (first, first + passive_size - 1), root, kind="vsftpd")
        self.backends.append(b)
        b.process = self.spawn(name, [vsftpd, str(conf)])
        wait_for(lambda: listening(host, port), what=f"vsftpd {name} to listen")
        return b

    # -- the balancer

    def config_text(self, **balancer: object) -> str:
        self.balancer_port = self.balancer_port or free_ports(1)
        settings: dict[str, object] = {
            "listen": f"{BALANCER_HOST}:{self.balancer_port}",
            "public_address": BALANCER_HOST,
            "mode": "routed",
            "balance": "leastconn",
            "send_proxy": "v1",
            # One process unless a test asks for more (tests/integration/test_workers.py).
            "workers": 1,
        }
        health = {"check": "ftp", "interval": 0.5, "timeout": 0.5, "rise": 2, "fall": 2}
        per_backend = balancer.pop("backend_options", {})
        users = balancer.pop("users", {})
        sections = balancer.pop("sections", {})
        for key in list(balancer):
            if key.startswith("health_"):
                health[key[len("health_") :]] = balancer.pop(key)
        settings.update(balancer)
        lines = ["[balancer]"] + [f"{k} = {_toml(v)}" for k, v in settings.items()]
        lines += ["", "[health]"] + [f"{k} = {_toml(v)}" for k, v in health.items()]
        if settings["mode"] == "inspect" and "data_ports" not in settings:
            first = free_ports(40, BALANCER_HOST)
            lines.insert(1, f'data_ports = "{first}-{first + 39}"')
        for section, values in sections.items():  # type: ignore[attr-defined]
            lines += ["", f"[{section}]"] + [f"{_key(k)} = {_toml(v)}" for k, v in values.items()]
        if users:
            lines += ["", "[users]"] + [f"{k} = {_toml(v)}" for k, v in users.items()]  # type: ignore[union-attr]
        for b in self.backends:
            lines += [
                "",
                "[[backends]]",
                f'name = "{b.name}"',
                f'address = "{b.address}"',
            ]
            if settings["mode"] == "routed":
                lines.append(f'passive_ports = "{b.passive[0]}-{b.passive[1]}"')
            opts = per_backend.get(b.name, {}) if isinstance(per_backend, dict) else {}
            lines += [f"{k} = {_toml(v)}" for k, v in opts.items()]
        return "\n".join(lines) + "\n"

    @property
    def config_path(self) -> Path:
        return self.workdir / "ftplb.toml"

    def start_balancer(self, wait_ready: bool = True, **balancer: object) -> Process:
        self.balancer = self.spawn_balancer(
            "balancer", config=self.config_path, wait_ready=wait_ready, **balancer
        )
        return self.balancer

    def spawn_balancer(
        self,
        name: str,
        *,
        config: Path | None = None,
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
        **balancer: object,
    ) -> Process:
        """`ftplb run` with `config_text(**balancer)` written to `config` (default:
        NAME.toml); benches run several, each on its own `listen` address."""
        config = config or self.workdir / f"{name}.toml"
        config.write_text(self.config_text(**balancer))
        argv = [sys.executable, "-m", "ftplb", "run", "-c", str(config)]
        proc = self.spawn(name, argv, env=env)
        if wait_ready:
            wait_for(
                lambda: "ready:" in proc.log() or proc.popen.poll() is not None,
                what=f"{name} to be ready",
            )
            assert proc.popen.poll() is None, proc.log()
        return proc

    @property
    def url(self) -> str:
        return f"ftp://{USER}:{PASSWORD}@{BALANCER_HOST}:{self.balancer_port}/"

    def ftp(self, source: str | None = None, timeout: float = 10.0) -> ftplib.FTP:
        """A logged-in ftplib session through the balancer."""
        ftp = ftplib.FTP(timeout=timeout, source_address=(source, 0) if source else None)
        ftp.connect(BALANCER_HOST, self.balancer_port)
        ftp.login(USER, PASSWORD)
        return ftp

    def backend_of(self, ftp: ftplib.FTP) -> str:
        """Which backend holds this session, from its greeting."""
        m = re.search(r"backend (\S+) ready", ftp.getwelcome())
        assert m, ftp.getwelcome()
        return m.group(1)

    def session_lines(self) -> list[str]:
        assert self.balancer is not None
        return [line for line in self.balancer.log().splitlines() if "ftplb.session: " in line]


def listening(host: str, port: int) -> bool:
    """A TCP connection to host:port succeeds now."""
    try:
        with socket.create_connection((host, port), 0.2):
            return True
    except OSError:
        return False


def make_cert(
    directory: Path, name: str = "ftplb-test", ips: tuple[str, ...] = ()
) -> tuple[Path, Path]:
    """A self-signed certificate and key (PEM) made with openssl; with `ips`, valid
    for those addresses (its own CA, for clients that verify)."""
    cert, key = directory / f"{name}.cert.pem", directory / f"{name}.key.pem"
    san = ["-addext", "subjectAltName=" + ",".join(f"IP:{ip}" for ip in ips)] if ips else []
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={name}",
            *san,
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        capture_output=True,
        check=True,
    )
    return cert, key


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else f'"{key}"'


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return f'"{value}"'


@contextlib.contextmanager
def cluster_at(workdir: Path) -> Iterator[Cluster]:
    c = Cluster(workdir)
    try:
        yield c
    finally:
        c.stop_all()
