"""`ftplb render kubernetes`: ftplb in front of an FTP pool inside a cluster.

A Deployment (probes on the admin API), a Service exposing exactly the
control port and every data port, a ConfigMap holding the file, and a
PodDisruptionBudget. Inspect mode only: its small shared data-port pool is
what makes a Service possible at all (routed mode would need every backend's
passive range published). YAML is written by hand, for the comments that say
why; tests parse it and check the ports against the config.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from pathlib import Path

from ftplb import __version__
from ftplb.config import Config, HostPort
from ftplb.render.base import RenderError, RenderOptions, header

CONFIG_DIR = "/etc/ftplb"
NAME = "ftplb"
MAX_SERVICE_PORTS = 200
"""Cloud load balancers cap listeners per load balancer (AWS NLB: 50 by
default); past a couple of hundred a Service is the wrong tool anyway."""


def _q(value: str) -> str:
    """A YAML scalar that stays a string (JSON strings are valid YAML)."""
    return json.dumps(value)


def _reachable(what: str, at: HostPort | str) -> None:
    """Refuse a listener the Service or the kubelet could not reach in a pod."""
    host = at.host if isinstance(at, HostPort) else at
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        raise RenderError(
            f"{what}: {host} is loopback, which nothing outside the pod reaches"
            ' (listen on "0.0.0.0" in a pod)'
        )


def kubernetes(config: Config, options: RenderOptions) -> str:
    b = config.balancer
    if b.mode != "inspect":
        raise RenderError(
            'balancer.mode: kubernetes renders inspect mode (mode = "inspect"): its shared'
            " data ports fit a Service; routed mode publishes every backend's passive range"
        )
    _reachable("balancer.listen", b.listen)
    _reachable("balancer.data_listen", b.data_listen or b.listen)
    admin = config.admin.listen
    if admin is None:
        raise RenderError(
            'admin.listen: the probes ask the admin API\'s /healthz (set listen = "0.0.0.0:9100")'
        )
    _reachable("admin.listen", admin)
    data = list(range(b.data_ports.first, b.data_ports.last + 1))
    implicit = config.tls.implicit_listen
    service_ports = 1 + len(data) + (implicit is not None)
    if service_ports > MAX_SERVICE_PORTS:
        raise RenderError(
            f"balancer.data_ports: {b.data_ports} makes {service_ports} Service ports;"
            f" at most {MAX_SERVICE_PORTS} (data ports are shared between clients:"
            " 20 carry many concurrent transfers)"
        )
    text = Path(config.path).read_text(encoding="utf-8")
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    image = options.image or f"{NAME}:{__version__}"
    replicas = options.replicas
    grace = int(b.shutdown_timeout) + 5

    container_ports = [("ftp", b.listen.port)]
    if implicit is not None:
        container_ports.append(("ftps", implicit.port))
    container_ports += [(f"data-{p}", p) for p in data]
    lines = header(config, "kubernetes")
    lines += [
        "# Applies as is: kubectl apply -f THIS_FILE. The image runs `ftplb` as a",
        "# non-root user (contrib/Dockerfile); --image names yours.",
    ]
    if config.admin.token:
        lines.append("# admin.token is in the ConfigMap: keep this as private as the file.")
    lines += [
        "---",
        "apiVersion: v1",
        "kind: ConfigMap",
        "metadata:",
        f"  name: {NAME}-config",
        "data:",
    ]
    lines.append("  ftplb.toml: |")
    lines += [f"    {line}".rstrip() for line in text.splitlines()]
    lines += [
        "---",
        "apiVersion: apps/v1",
        "kind: Deployment",
        "metadata:",
        f"  name: {NAME}",
        "  labels:",
        f"    app.kubernetes.io/name: {NAME}",
        "spec:",
        f"  replicas: {replicas}",
        "  selector:",
        "    matchLabels:",
        f"      app.kubernetes.io/name: {NAME}",
        "  template:",
        "    metadata:",
        "      labels:",
        f"        app.kubernetes.io/name: {NAME}",
        "      annotations:",
        "        # A changed file rolls the pods (render again after editing it).",
        f"        ftplb.io/config-sha256: {_q(digest)}",
        "    spec:",
        "      # shutdown_timeout for sessions to finish after SIGTERM, and a margin.",
        f"      terminationGracePeriodSeconds: {grace}",
        "      securityContext:",
        "        # Port 21 as a non-root user: a namespaced (safe) sysctl, where a",
        "        # capability would not reach a non-root process.",
        "        sysctls:",
        "          - name: net.ipv4.ip_unprivileged_port_start",
        '            value: "0"',
        "      containers:",
        "        - name: ftplb",
        f"          image: {_q(image)}",
        f'          args: ["run", "-c", "{CONFIG_DIR}/ftplb.toml"]',
        "          ports:",
    ]
    for name, port in [*container_ports, ("admin", admin.port)]:
        lines += [f"            - name: {name}", f"              containerPort: {port}"]
    lines += [
        "          # Ready while at least one backend is up: a pod with none gets no",
        "          # new clients from the Service.",
        "          readinessProbe:",
        "            httpGet: {path: /healthz, port: admin}",
        "            periodSeconds: 5",
        "            failureThreshold: 2",
        "          # Alive while the admin API answers at all: dead backends are no",
        "          # reason to restart the balancer (and cut its sessions).",
        "          livenessProbe:",
        "            httpGet: {path: /api/status, port: admin}",
        "            periodSeconds: 10",
        "            failureThreshold: 3",
        "          securityContext:",
        "            allowPrivilegeEscalation: false",
        "            capabilities:",
        "              drop: [ALL]",
        "          volumeMounts:",
        "            - name: config",
        f"              mountPath: {CONFIG_DIR}",
        "              readOnly: true",
        "      volumes:",
        "        - name: config",
        "          configMap:",
        f"            name: {NAME}-config",
        "---",
        "apiVersion: v1",
        "kind: Service",
        "metadata:",
        f"  name: {NAME}",
    ]
    if b.accept_proxy:
        lines += [
            "  annotations:",
            "    # accept_proxy is set: the load balancer in front sends PROXY v2 (AWS NLB;",
            "    # other clouds have their own annotation, see docs/kubernetes.md).",
            "    service.beta.kubernetes.io/aws-load-balancer-type: external",
            "    service.beta.kubernetes.io/aws-load-balancer-nlb-target-type: ip",
            '    service.beta.kubernetes.io/aws-load-balancer-proxy-protocol: "*"',
        ]
    lines += [
        "spec:",
        "  type: LoadBalancer",
        "  # Local: no second hop through another node, so the client's address",
        "  # survives (no SNAT to a node address: bans, max_per_ip and the data",
        "  # connection's address check need it) and a data connection is not sent",
        "  # to another node's pod than the one holding its control connection.",
        "  externalTrafficPolicy: Local",
        "  # A data connection must reach the pod that holds its session: with more",
        "  # than one replica, keep each client on one pod.",
        "  sessionAffinity: ClientIP",
        "  selector:",
        f"    app.kubernetes.io/name: {NAME}",
        "  ports:",
    ]
    for name, port in container_ports:
        lines += [
            f"    - name: {name}",
            "      protocol: TCP",
            f"      port: {port}",
            f"      targetPort: {port}",
        ]
    lines += [
        "---",
        "apiVersion: policy/v1",
        "kind: PodDisruptionBudget",
        "metadata:",
        f"  name: {NAME}",
        "spec:",
        "  # Node drains take one pod at a time; each lets its sessions finish",
        "  # (terminationGracePeriodSeconds) before it goes.",
        "  maxUnavailable: 1",
        "  selector:",
        "    matchLabels:",
        f"      app.kubernetes.io/name: {NAME}",
        "",
    ]
    return "\n".join(lines)
