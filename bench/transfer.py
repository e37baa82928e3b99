"""Bulk download: direct from a backend, through ftplb (routed and inspect mode),
through HAProxy running `ftplb render haproxy`'s config (default and tuned), and
through ProFTPD's mod_proxy as a reverse proxy (the inspect-mode peer: it reads
the control channel and relays data itself, as ftplb inspect does).

    .venv/bin/python bench/transfer.py [--size-mib 1024] [--rounds 7] [--write-docs]

Starts real processes (`ftplb backend`, `ftplb run`) on loopback, downloads a
generated file with curl in interleaved rounds, and prints medians and the
ratio. The backend runs without PROXY protocol so that the same server serves
both rows. With --write-docs the table goes into docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.cluster import (  # noqa: E402
    BALANCER_HOST,
    PASSWORD,
    USER,
    Backend,
    Cluster,
    cluster_at,
    free_ports,
    make_cert,
    wait_for,
)
from tests.servers import UNPACKED, proftpd_standalone  # noqa: E402

MIB = 1024 * 1024


def make_file(path: Path, size: int) -> None:
    chunk = os.urandom(4 * MIB)
    with open(path, "wb") as f:
        written = 0
        while written < size:
            n = min(len(chunk), size - written)
            f.write(chunk[:n])
            written += n


def download(
    url: str, size: int, flags: tuple[str, ...] = (), prefix: tuple[str, ...] = ()
) -> None:
    """One curl download to /dev/null (run under `prefix`, e.g. `ip netns exec NS`);
    fails unless all `size` bytes arrived."""
    done = subprocess.run(
        [
            *prefix,
            "curl",
            "-sS",
            "--max-time",
            "300",
            *flags,
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=330,
    )
    if done.returncode != 0:
        raise SystemExit(f"curl failed on {url}: {done.stderr}")
    if int(done.stdout) != size:
        raise SystemExit(f"{url}: got {done.stdout} bytes, expected {size}")


def timed_download(
    url: str, size: int, flags: tuple[str, ...] = (), prefix: tuple[str, ...] = ()
) -> float:
    """MiB/s of one download."""
    started = time.perf_counter()
    download(url, size, flags, prefix)
    return size / MIB / (time.perf_counter() - started)


Row = str | tuple[str, tuple[str, ...]]


def _timed(row: Row, size: int) -> float:
    url, flags = (row, ()) if isinstance(row, str) else row
    return timed_download(url, size, flags)


def ftps_rows(c: Cluster, tmp: Path, plain: Backend) -> dict[str, Row]:
    """FTPS: a TLS backend direct and through routed ftplb (pass-through), and
    inspect-mode ftplb terminating TLS in front of the plain backend."""
    cert, key = make_cert(tmp, "bench")
    tls = c.add_backend(
        proxy_protocol=False, passive_size=50, extra_args=(f"--tls-cert={cert}", f"--tls-key={key}")
    )
    os.link(plain.root / "big.bin", tls.root / "big.bin")
    saved = list(c.backends)
    configs = {}
    try:
        c.backends[:] = [tls]
        routed_port = free_ports(1)
        configs["routed"] = c.config_text(send_proxy="off", listen=f"{BALANCER_HOST}:{routed_port}")
        c.backends[:] = [plain]
        inspect_port = free_ports(1)
        configs["inspect"] = c.config_text(
            mode="inspect",
            send_proxy="off",
            listen=f"{BALANCER_HOST}:{inspect_port}",
            sections={"tls": {"cert": str(cert), "key": str(key)}},
        )
    finally:
        c.backends[:] = saved
    for name, text in configs.items():
        path = tmp / f"ftps-{name}.toml"
        path.write_text(text)
        proc = c.spawn(f"ftps-{name}", [sys.executable, "-m", "ftplb", "run", "-c", str(path)])
        wait_for(lambda proc=proc: "ready:" in proc.log(), what=f"ftps {name}")
    flags = ("--ssl-reqd", "--insecure")
    login = f"ftp://{USER}:{PASSWORD}@"
    return {
        "FTPS direct (curl <- TLS backend)": (f"{login}{tls.address}/big.bin", flags),
        "FTPS ftplb routed, passed through": (
            f"{login}{BALANCER_HOST}:{routed_port}/big.bin",
            flags,
        ),
        "FTPS ftplb inspect, terminated (TLS to client only)": (
            f"{login}{BALANCER_HOST}:{inspect_port}/big.bin",
            flags,
        ),
    }


def start_mod_proxy(c: Cluster, *backends: Backend, passive: int = 50) -> str | None:
    """ProFTPD with Debian's mod_proxy (both unpacked into .deps by `make deps`)
    as a reverse proxy in front of `backends` (least connections); its URL, or
    None without them."""
    proftpd = UNPACKED / "usr" / "sbin" / "proftpd"
    modules = UNPACKED / "usr" / "lib" / "proftpd"
    if not (proftpd.exists() and (modules / "mod_proxy.so").exists()):
        print("ProFTPD mod_proxy not found in .deps (make deps): row skipped")
        return None
    host = "127.0.0.4"
    port = free_ports(1, host)
    first = free_ports(passive, host)
    # ProFTPD drops to nobody before opening its tables. They are SQLite files,
    # written at each session's start: in memory, so that a disk's fsync (0.4 s
    # per session on this VM's disk) does not stand for mod_proxy's speed.
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    state = c.public_dir("mod-proxy", under=shm)
    tables = state / "tables"
    tables.mkdir()
    tables.chmod(0o777)
    conf = state / "proftpd.conf"
    conf.write_text(
        "\n".join(
            [
                *proftpd_standalone("mod_proxy", host, port, state),
                "MaxInstances 200",
                f"PassivePorts {first} {first + passive - 1}",
                f"ModulePath {modules}",
                "LoadModule mod_proxy.c",
                "ProxyEngine on",
                f"ProxyLog {state}/proxy.log",
                f"ProxyTables {tables}",
                "ProxyRole reverse",
                # Plain FTP backends: no TLS set-up (a CA bundle parsed per session).
                "ProxyTLSEngine off",
                "ProxyReverseConnectPolicy LeastConns",
                # EPSV toward the backend: its PASV names the routed balancer (masquerade).
                "ProxyDataTransferPolicy EPSV",
                "ProxyReverseServers " + " ".join(f"ftp://{b.address}" for b in backends),
                "",
            ]
        )
    )
    # Debian's mod_proxy.so expects libssl in the process (proftpd-core's binary
    # does not link it; the proftpd-mod-crypto package would load it).
    c.spawn(
        "mod-proxy",
        [str(proftpd), "-n", "-q", "-c", str(conf)],
        env={"LD_PRELOAD": "libssl.so.3"},
    )
    return wait_serving(f"ftp://{USER}:{PASSWORD}@{host}:{port}/big.bin", "ProFTPD mod_proxy")


def start_haproxy(c: Cluster, tmp: Path, host: str, tuning: str) -> str:
    """HAProxy with `ftplb render haproxy`'s config on `host` (its own passive
    listeners there: curl connects to the control address, whatever PASV says)."""
    port = free_ports(1, host)
    toml = tmp / f"haproxy-{host}.toml"
    toml.write_text(
        c.config_text(
            send_proxy="off", listen=f"{host}:{port}", data_listen=host, public_address=host
        )
    )
    text = subprocess.run(
        [sys.executable, "-m", "ftplb", "render", "haproxy", "-c", str(toml)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    text = text.replace("global\n", "global\n" + tuning, 1)
    cfg = tmp / f"haproxy-{host}.cfg"
    cfg.write_text(text)
    c.spawn(f"haproxy-{host}", ["haproxy", "-db", "-f", str(cfg)])
    return wait_serving(f"ftp://{USER}:{PASSWORD}@{host}:{port}/big.bin", f"HAProxy on {host}")


def wait_serving(url: str, what: str) -> str:
    """Wait until a login and a listing of the directory of `url` work; returns `url`."""

    def up() -> bool:
        probe = ["curl", "-sS", "--max-time", "2", "-o", "/dev/null", url.rsplit("/", 1)[0] + "/"]
        return subprocess.run(probe, capture_output=True).returncode == 0

    wait_for(up, what=what)
    return url


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import uvloop

        loop = f"uvloop {uvloop.__version__}"
    except ImportError:
        loop = "asyncio"
    return (
        f"{os.cpu_count()} cores ({model}), Linux {platform.release()}, "
        f"Python {platform.python_version()}, {loop}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    size = args.size_mib * MIB

    with tempfile.TemporaryDirectory(prefix="ftplb-bench-") as tmp, cluster_at(Path(tmp)) as c:
        backend = c.add_backend(proxy_protocol=False, passive_size=50)
        make_file(backend.root / "big.bin", size)
        c.start_balancer(send_proxy="off")
        inspect_port = free_ports(1)
        c.spawn_balancer(
            "inspect", mode="inspect", send_proxy="off", listen=f"{BALANCER_HOST}:{inspect_port}"
        )
        # Routed mode without splice (the Protocol relay alone), on its own address.
        protocol_port = free_ports(1, "127.0.0.7")
        c.spawn_balancer(
            "protocol-relay",
            env={"FTPLB_SPLICE": "0"},
            send_proxy="off",
            listen=f"127.0.0.7:{protocol_port}",
            data_listen="127.0.0.7",
            public_address="127.0.0.7",
        )
        haproxy_urls = {}
        for label, host, tuning in (
            ("HAProxy 2.6 tcp, classic design (rendered)", "127.0.0.2", ""),
            ("HAProxy, tune.bufsize 262144", "127.0.0.3", "    tune.bufsize 262144\n"),
        ):
            haproxy_urls[label] = start_haproxy(c, Path(tmp), host, tuning)
        rows: dict[str, Row] = {
            "direct (curl <- backend)": f"ftp://{USER}:{PASSWORD}@{backend.address}/big.bin",
            "ftplb routed (curl <- ftplb <- backend)": (
                f"ftp://{USER}:{PASSWORD}@{BALANCER_HOST}:{c.balancer_port}/big.bin"
            ),
            "ftplb routed, Protocol relay only (FTPLB_SPLICE=0)": (
                f"ftp://{USER}:{PASSWORD}@127.0.0.7:{protocol_port}/big.bin"
            ),
            "ftplb inspect (curl <- ftplb <- backend)": (
                f"ftp://{USER}:{PASSWORD}@{BALANCER_HOST}:{inspect_port}/big.bin"
            ),
            **haproxy_urls,
            **ftps_rows(c, Path(tmp), backend),
        }
        mod_proxy = start_mod_proxy(c, backend)
        if mod_proxy is not None:
            rows["ProFTPD 1.3.8 mod_proxy 0.9, reverse (inspect-mode peer)"] = mod_proxy
        for row in rows.values():  # warm the page cache and every path
            _timed(row, size)
        results: dict[str, list[float]] = {name: [] for name in rows}
        for _ in range(args.rounds):
            for name, row in rows.items():
                results[name].append(_timed(row, size))

    title = (
        f"Bulk download of a {args.size_mib} MiB file, {args.rounds} interleaved rounds, "
        "median MiB/s (curl to /dev/null, loopback)."
    )
    report(title, results, "bench/transfer.py" if args.write_docs else "")
    return 0


def report(
    title: str, results: dict[str, list[float]], block: str = "", notes: tuple[str, ...] = ()
) -> None:
    """Print the table (ratios to the first row) and `notes`; with `block`, write
    it to the docs."""
    direct = statistics.median(next(iter(results.values())))
    lines = [
        title,
        "",
        "| path | MiB/s (median) | min | max | ratio to direct |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, values in results.items():
        med = statistics.median(values)
        low, high = min(values), max(values)
        lines.append(f"| {name} | {med:,.0f} | {low:,.0f} | {high:,.0f} | {med / direct:.2f} |")
    if notes:
        lines += ["", *notes]
    lines += ["", f"Machine: {machine()}."]
    table = "\n".join(lines)
    print(table)
    if block:
        write_block(block, table)


def write_block(name: str, table: str) -> None:
    """Replace (or add) the block `name` wrote last time in docs/performance.md."""
    path = ROOT / "docs" / "performance.md"
    text = path.read_text() if path.exists() else ""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{start}\n{table}\n\nRun on {time.strftime('%Y-%m-%d')}.\n{end}"
    if start in text and end in text:
        before = text[: text.index(start)]
        after = text[text.index(end) + len(end) :]
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
