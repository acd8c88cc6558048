"""HTTP probes from client pods and nodes: pod-to-pod, pod-to-service, node-to-service."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .common import LOOK_WORKLOAD, WORKLOAD, _is_2xx
from .kube import (
    is_local, nginx_pods, nginx_services, nodes_with_ready_pods, pod_ips, pod_port, service_cluster_ips,
    service_families, service_tcp_port,
)
from .model import CheckResult, Finding, family, result_from_findings
from .parse import parse_sections, sectioned_script
from .session import WORKLOAD_NAMESPACE, ClientError, curl_command, http_url


# =========================================================================== probes (curl)


@dataclass(frozen=True)
class Target:
    """One HTTP probe: a key (section name), the URL and a human description."""

    key: str
    url: str
    what: str
    look_at: str = ""


def probe_script(targets: Sequence[Target]) -> str:
    """A shell script curling every target; each section is the HTTP code (000: no answer)."""
    return sectioned_script({t.key: " ".join(shlex.quote(part) for part in curl_command(t.url)) for t in targets})


def evaluate_probes(outputs: Mapping[str, Optional[str]], targets: Mapping[str, Sequence[Target]]) -> List[Finding]:
    """Every source answered 2xx for each of its targets.

    ``outputs`` maps a source (node or pod) to the :func:`probe_script` output, or None
    when the script itself could not run.
    """
    findings = []
    for source, wanted in targets.items():
        text = outputs.get(source)
        if text is None:
            findings.append(Finding(f"{source}: could not run the probes", "curl output", "no answer",
                                    "is the source reachable? (`kubectl exec` / ssh)"))
            continue
        sections = parse_sections(text)
        for target in wanted:
            section = sections.get(target.key)
            code = section.output.strip()[-3:] if section is not None and section.output.strip() else "000"
            if not _is_2xx(code):
                findings.append(Finding(f"{source} -> {target.what}: HTTP {code}", f"HTTP 2xx from {target.url}",
                                        f"HTTP {code}" + (" (no answer)" if code == "000" else ""), target.look_at))
    return findings


def pod_to_pod_targets(pods: Mapping) -> List[Target]:
    """Every nginx pod address, both families."""
    targets = []
    for pod in nginx_pods(pods):
        port = pod_port(pod)
        for address in pod_ips(pod):
            name = (pod.get("metadata") or {}).get("name")
            targets.append(Target(f"{name}/{family(address)}", http_url(address, port),
                                  f"pod {name} {address}", "Calico routes between nodes (`ip -6 route` on the node), "
                                  "FELIX_IPV6SUPPORT, nginx-listens"))
    return targets


def nginx_service_ports(services: Mapping):
    """(Service, name, TCP port) of every nginx Service that has a TCP port."""
    for svc in nginx_services(services):
        port = service_tcp_port(svc)
        if port is not None:
            yield svc, (svc.get("metadata") or {}).get("name"), port


def cluster_ip_targets(services: Mapping) -> List[Target]:
    """Every cluster IP (each family) of the nginx Services, on the Service port."""
    targets = []
    for svc, name, port in nginx_service_ports(services):
        for address in service_cluster_ips(svc):
            targets.append(Target(f"svc-{name}/{family(address)}", http_url(address, port["port"]),
                                  f"Service {name} {address}:{port['port']}",
                                  "kube-proxy-ipvs (virtual servers and backends); kube-proxy logs"))
    return targets


def node_port_targets(services: Mapping, pods: Mapping, cfg) -> List[Target]:
    """The NodePort of each nginx Service on each node's address of each of its families.

    With ``externalTrafficPolicy: Local`` only nodes running an nginx pod answer, so only
    those are probed.
    """
    targets = []
    hosting = nodes_with_ready_pods(nginx_pods(pods))
    for svc, name, port in nginx_service_ports(services):
        if not port.get("nodePort"):
            continue
        for node in cfg.nodes:
            if is_local(svc) and node.name not in hosting:
                continue
            for fam in service_families(svc):
                address = node.ipv4 if fam == 4 else node.ipv6
                targets.append(Target(f"np-{name}-{node.name}/{fam}", http_url(address, port["nodePort"]),
                                      f"NodePort {name} on {node.name} {address}:{port['nodePort']}",
                                      "kube-proxy --nodeport-addresses, ipvsadm -Ln on that node"))
    return targets


def _run_in_clients(vctx, targets: Sequence[Target]) -> Tuple[Dict[str, Optional[str]], Dict[str, Sequence[Target]]]:
    clients = vctx.clients()
    script = probe_script(targets)
    outputs, wanted = {}, {}
    for node_name, pod in clients.items():
        source = f"client on {node_name}"
        result = vctx.exec_in(WORKLOAD_NAMESPACE, pod, ["sh", "-c", script])
        outputs[source] = result.stdout if result.stdout else None
        wanted[source] = targets
    return outputs, wanted


def check_pod_to_pod(vctx) -> CheckResult:
    """Check ``pod-to-pod``."""
    targets = pod_to_pod_targets(vctx.get_json("pods", "-n", WORKLOAD_NAMESPACE))
    if not targets:
        return result_from_findings([Finding(f"no nginx pod addresses ({WORKLOAD})", "nginx pods with podIPs", "none", LOOK_WORKLOAD)], "")
    try:
        outputs, wanted = _run_in_clients(vctx, targets)
    except ClientError as exc:
        return result_from_findings([Finding(str(exc), "client pods Ready", "not ready",
                                             "`kubectl describe pod -l app.kubernetes.io/managed-by=dslab-verify` (image pull?)")], "")
    findings = evaluate_probes(outputs, wanted)
    return result_from_findings(findings, f"client pods on {len(outputs)} nodes reach {len(targets)} nginx pod addresses over both families")


def check_pod_to_service(vctx) -> CheckResult:
    """Check ``pod-to-service``."""
    targets = cluster_ip_targets(vctx.get_json("services", "-A"))
    if not targets:
        return result_from_findings([Finding("no nginx Service cluster IPs", "nginx Services", "none",
                                             f"`kubectl get svc -n {WORKLOAD_NAMESPACE}`")], "")
    try:
        outputs, wanted = _run_in_clients(vctx, targets)
    except ClientError as exc:
        return result_from_findings([Finding(str(exc), "client pods Ready", "not ready", "`kubectl describe pod` of the client pods")], "")
    findings = evaluate_probes(outputs, wanted)
    return result_from_findings(findings, f"client pods on {len(outputs)} nodes reach {len(targets)} Service cluster IPs")


def check_node_to_service(vctx) -> CheckResult:
    """Check ``node-to-service``."""
    services = vctx.get_json("services", "-A")
    pods = vctx.get_json("pods", "-n", WORKLOAD_NAMESPACE)
    targets = cluster_ip_targets(services) + node_port_targets(services, pods, vctx.cfg)
    if not targets:
        return result_from_findings([Finding("no nginx Service cluster IPs or NodePorts", "nginx Services", "none",
                                             f"`kubectl get svc -n {WORKLOAD_NAMESPACE}`")], "")
    script = probe_script(targets)
    outputs, wanted = {}, {}
    for node in vctx.cfg.nodes:
        result = vctx.node_run(node.name, script)
        outputs[node.name] = result.stdout if result.stdout else None
        wanted[node.name] = targets
    findings = evaluate_probes(outputs, wanted)
    ports = len([t for t in targets if t.key.startswith("np-")])
    return result_from_findings(findings, f"every node reaches {len(targets) - ports} cluster IPs and {ports} NodePort addresses")


