"""`ftplb render kubernetes`: manifests parsed with a YAML library and checked
against the config (the Service exposes exactly the control and data ports),
the ConfigMap's file loads as the original, and kubectl builds the set offline
(`kubectl kustomize`: a client-side dry run needs an API server)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster import make_cert
from tests.conftest import need

CONFIG = """\
[balancer]
listen = "0.0.0.0:21"
mode = "inspect"
public_address = "auto"
data_ports = "30000-30019"
accept_proxy = ["10.0.0.0/8"]
shutdown_timeout = 50

[tls]
cert = "tls/ftplb-test.cert.pem"
key = "tls/ftplb-test.key.pem"
implicit_listen = "0.0.0.0:990"

[admin]
listen = "0.0.0.0:9100"
token = "s3cret"

[discovery]
interval = 5

[[backends]]
name = "pool"
address = "ftp-pool.ftp.svc.cluster.local:21"
discover = "dns"
"""


def render(tmp_path: Path, text: str, *extra: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "ftplb.toml"
    config.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "ftplb", "render", "kubernetes", "-c", str(config), *extra],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # tls paths are relative
    )


def by_kind(out: str) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(out) if d]
    kinds = {d["kind"]: d for d in docs}
    assert len(kinds) == len(docs)
    return kinds


def test_manifests_expose_exactly_the_configured_ports(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    make_cert(tmp_path / "tls")
    done = render(tmp_path, CONFIG, "--image", "registry.example/ftplb:1", "--replicas", "2")
    assert done.returncode == 0, done.stderr
    kinds = by_kind(done.stdout)
    assert set(kinds) == {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"}

    service = kinds["Service"]["spec"]
    ports = [(p["port"], p["targetPort"], p["protocol"]) for p in service["ports"]]
    assert sorted(ports) == sorted(
        [(21, 21, "TCP"), (990, 990, "TCP")] + [(p, p, "TCP") for p in range(30000, 30020)]
    )
    assert len({p["name"] for p in service["ports"]}) == len(ports)
    assert all(len(p["name"]) <= 15 for p in service["ports"])  # Kubernetes' limit
    assert service["externalTrafficPolicy"] == "Local"
    assert service["sessionAffinity"] == "ClientIP"
    assert "# Local: no second hop" in done.stdout  # the why is written down
    # accept_proxy: the NLB is told to send PROXY v2.
    annotations = kinds["Service"]["metadata"]["annotations"]
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-proxy-protocol"] == "*"

    deployment = kinds["Deployment"]["spec"]
    assert deployment["replicas"] == 2
    pod = deployment["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 55
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/ftplb:1"
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named["admin"] == 9100 and named["ftp"] == 21
    assert sorted(named.values()) == sorted([21, 990, 9100, *range(30000, 30020)])
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"]["port"] == "admin"
    assert container["args"] == ["run", "-c", "/etc/ftplb/ftplb.toml"]
    assert pod["volumes"][0]["configMap"]["name"] == kinds["ConfigMap"]["metadata"]["name"]
    selector = deployment["selector"]["matchLabels"]
    assert kinds["Service"]["spec"]["selector"] == selector
    assert kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == selector

    # The ConfigMap holds the file itself: it loads to the same configuration.
    held = kinds["ConfigMap"]["data"]["ftplb.toml"]
    assert held == CONFIG


def test_the_config_map_round_trips_through_ftplb_check(tmp_path: Path) -> None:
    text = CONFIG.replace("[tls]\n", "[tls_unused]\n").split("[tls_unused]")[0]
    text += '[admin]\nlisten = "0.0.0.0:9100"\ntoken = "s3cret"\n\n'
    text += '[[backends]]\nname = "pool"\naddress = "ftp-pool.svc:21"\ndiscover = "dns"\n'
    done = render(tmp_path, text)
    assert done.returncode == 0, done.stderr
    copy = tmp_path / "copy.toml"
    copy.write_text(by_kind(done.stdout)["ConfigMap"]["data"]["ftplb.toml"])
    check = subprocess.run(
        [sys.executable, "-m", "ftplb", "check", "-c", str(copy)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_kubectl_builds_the_manifests(tmp_path: Path) -> None:
    kubectl = need("kubectl")
    (tmp_path / "tls").mkdir()
    make_cert(tmp_path / "tls")
    done = render(tmp_path, CONFIG)
    assert done.returncode == 0, done.stderr
    (tmp_path / "ftplb.yaml").write_text(done.stdout)
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - ftplb.yaml\n")
    built = subprocess.run(
        [kubectl, "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert built.returncode == 0, built.stderr
    assert set(by_kind(built.stdout)) == {
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    }


BASE = 'mode = "inspect"\nlisten = "0.0.0.0:21"\npublic_address = "auto"\n'
BACKEND = '\n[[backends]]\nname = "a"\naddress = "10.0.0.1:21"\n'
ADMIN = '\n[admin]\nlisten = "0.0.0.0:9100"\ntoken = "t"\n'


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (
            '[balancer]\nlisten = "0.0.0.0:21"\n'
            + ADMIN
            + BACKEND
            + 'passive_ports = "30000-30009"\n',
            "balancer.mode",
        ),
        ("[balancer]\n" + BASE + BACKEND, "admin.listen"),
        (
            '[balancer]\nmode = "inspect"\nlisten = "127.0.0.1:21"\n' + ADMIN + BACKEND,
            "balancer.listen",
        ),
        (
            "[balancer]\n" + BASE + ADMIN.replace("0.0.0.0:9100", "127.0.0.1:9100") + BACKEND,
            "admin.listen",
        ),
        ("[balancer]\n" + BASE + 'data_ports = "30000-30999"\n' + ADMIN + BACKEND, "data_ports"),
    ],
    ids=["routed", "no-admin", "loopback-listen", "loopback-admin", "too-many-ports"],
)
def test_what_a_pod_cannot_serve_is_refused(tmp_path: Path, text: str, field: str) -> None:
    done = render(tmp_path, text)
    assert done.returncode == 2, done.stdout
    assert done.stdout == ""
    assert str(tmp_path / "ftplb.toml") in done.stderr and field in done.stderr, done.stderr


def test_the_contrib_example_is_rendered_from_its_config() -> None:
    contrib = Path(__file__).parents[2] / "contrib" / "kubernetes"
    done = subprocess.run(
        [sys.executable, "-m", "ftplb", "render", "kubernetes", "-c", "ftplb.toml"],
        capture_output=True,
        text=True,
        cwd=contrib,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == (contrib / "ftplb.yaml").read_text(), "render contrib/kubernetes again"
    kubectl = need("kubectl")
    built = subprocess.run(
        [kubectl, "kustomize", str(contrib)], capture_output=True, text=True, timeout=60
    )
    assert built.returncode == 0, built.stderr
    docs = [d for d in yaml.safe_load_all(built.stdout) if d]
    headless = [d for d in docs if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None"]
    assert [d["metadata"]["name"] for d in headless] == ["ftp-pool"]
