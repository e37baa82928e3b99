"""FTP servers as inspect-mode backends, each as installed: no NAT, no masquerade."""

from __future__ import annotations

from tests.cluster import PASSWORD, USER, Backend, Cluster

KINDS = ["pyftpdlib", "vsftpd"]


def add_server(cluster: Cluster, kind: str) -> tuple[Backend, tuple[str, str]]:
    """Start one server of `kind`; returns it and the login that works on it.
    Every server has a writable `incoming/` directory."""
    if kind == "pyftpdlib":
        b = cluster.add_backend(proxy_protocol=False, passive_size=None, masquerade=None)
        login = (USER, PASSWORD)
    elif kind == "vsftpd":
        b = cluster.add_vsftpd(unmodified=True)
        login = ("anonymous", "guest")
    else:
        raise ValueError(kind)
    incoming = b.root / "incoming"
    incoming.mkdir()
    incoming.chmod(0o777)
    return b, login
