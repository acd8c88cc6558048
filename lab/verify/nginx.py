"""Cluster check of the workload's sockets: nginx-listens."""

from __future__ import annotations

import ipaddress
from typing import List, Mapping, Optional

from .common import LOOK_WORKLOAD, WORKLOAD, planned_replicas
from .kube import nginx_pods
from .model import CheckResult, Finding, result_from_findings
from .parse import Section, parse_proc_net_tcp
from .session import WORKLOAD_NAMESPACE


# =========================================================================== nginx-listens

HTTP_PORT = 80


def evaluate_nginx_listens(outputs: Mapping[str, Optional[Section]], replicas: Optional[int] = None) -> List[Finding]:
    """Each pod's /proc/net/tcp has 0.0.0.0:80 and /proc/net/tcp6 has [::]:80, in LISTEN;
    with ``replicas``, that many pods were read (every replica the lab deploys)."""
    findings = []
    look = "nginx config: `listen 80;` and `listen [::]:80;` (the official image adds the IPv6 one since 1.19 via its entrypoint)"
    if not outputs:
        return [Finding(f"no nginx pods found ({WORKLOAD})", "nginx pods", "none", LOOK_WORKLOAD)]
    if replicas is not None and len(outputs) != replicas:
        findings.append(Finding(f"{len(outputs)} of {replicas} nginx replicas to read", f"{replicas} nginx pods",
                                ", ".join(outputs) or "none", LOOK_WORKLOAD))
    for pod, section in outputs.items():
        if section is None or section.returncode != 0:
            findings.append(Finding(f"{pod}: could not read /proc/net/tcp", "the socket tables",
                                    (section.output.strip() if section else "") or "no output", f"`kubectl exec {pod} -- cat /proc/net/tcp`",
                                    pod=f"{WORKLOAD_NAMESPACE}/{pod}", error=(section.output.strip() if section else "")))
            continue
        sockets = [s for s in parse_proc_net_tcp(section.output) if s.listening and s.port == HTTP_PORT]
        for want in (ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("::")):
            if not any(s.address == want for s in sockets):
                shown = ", ".join(f"[{s.address}]:{s.port}" if s.address.version == 6 else f"{s.address}:{s.port}" for s in sockets) or "nothing"
                label = "0.0.0.0:80" if want.version == 4 else "[::]:80"
                findings.append(Finding(f"{pod}: nginx does not listen on {label}", f"LISTEN on {label}",
                                        f"listening on port 80: {shown}", look, pod=f"{WORKLOAD_NAMESPACE}/{pod}",
                                        family="IPv4" if want.version == 4 else "IPv6", address=label))
    return findings


def check_nginx_listens(vctx) -> CheckResult:
    """Check ``nginx-listens``."""
    outputs = {}
    for pod in nginx_pods(vctx.get_json("pods", "-n", WORKLOAD_NAMESPACE)):
        name = (pod.get("metadata") or {}).get("name")
        containers = (pod.get("spec") or {}).get("containers") or [{}]
        args = ["exec", "-n", WORKLOAD_NAMESPACE, name]
        if containers[0].get("name"):
            args += ["-c", containers[0]["name"]]
        result = vctx.kubectl_run(args + ["--", "cat", "/proc/net/tcp", "/proc/net/tcp6"])
        outputs[name] = Section(result.returncode, result.stdout if result.ok else (result.stderr or result.stdout))
    findings = evaluate_nginx_listens(outputs, planned_replicas(vctx.cfg))
    return result_from_findings(findings, f"nginx listens on 0.0.0.0:80 and [::]:80 in {len(outputs)} pods")
