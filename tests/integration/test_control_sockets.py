"""Options of the control connections, seen from outside with `ss`."""

from __future__ import annotations

import subprocess

import pytest

from tests.cluster import BALANCER_HOST, Cluster, wait_for
from tests.conftest import need


def established(condition: str) -> list[str]:
    """`ss` lines of established TCP sockets matching `condition`, with their timers."""
    done = subprocess.run(
        [need("ss"), "-tnoH", "state", "established", condition],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.splitlines()


@pytest.mark.parametrize("mode", ["routed", "inspect"])
def test_control_connections_keep_alive_on_both_sides(cluster: Cluster, mode: str) -> None:
    # Accepted sockets inherit keepalive from the listener (set once, not per session).
    routed = mode == "routed"
    b = cluster.add_backend(
        proxy_protocol=routed,
        passive_size=20 if routed else None,
        masquerade=BALANCER_HOST if routed else None,
    )
    cluster.start_balancer(mode=mode, send_proxy="v1" if routed else "off")
    with cluster.ftp(source="127.0.0.16") as ftp:
        assert ftp.voidcmd("NOOP").startswith("200")

        def ours() -> list[str]:
            return established(f"( sport = :{cluster.balancer_port} and dst 127.0.0.16 )")

        # ss shows one timer: keepalive's once the last reply is acknowledged.
        assert len(ours()) == 1
        wait_for(lambda: "timer:(keepalive," in ours()[0], timeout=3, what=f"keepalive {ours()}")
        # Toward the backend (health checks come and go beside it).
        toward = wait_for(
            lambda: [x for x in established(f"( dport = :{b.port} )") if "keepalive" in x],
            what="the backend connection",
        )
        assert len(toward) == 1, toward
