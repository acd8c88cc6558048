"""HTTP probes from client pods and nodes: pod-to-pod, pod-to-service, node-to-service.

Each check demands a target in every family the lab is configured for and every nginx
replica: what the API does not offer to probe is a finding, never a smaller pass.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence, Tuple

from .common import LOOK_WORKLOAD, WORKLOAD, _is_2xx, families_text, planned_replicas, planned_services
from .kube import (
    is_local, name_of, nginx_pods, nginx_services, nodes_with_ready_pods, pod_ips, pod_port, pod_ready,
    service_cluster_ips, service_families, service_tcp_port,
)
from .local_routes import apply_route_limits, route_limits, route_script
from .model import CheckResult, Finding, family, family_name, lab_families, result_from_findings
from .parse import parse_sections, sectioned_script
from .session import UNSET_PROXY, WORKLOAD_NAMESPACE, ClientError, curl_command, http_url


# =========================================================================== probes (curl)


@dataclass(frozen=True)
class Target:
    """One HTTP probe: a key (section name), the URL and a human description; ``family``,
    ``address`` and ``pod`` say what is probed (for the findings)."""

    key: str
    url: str
    what: str
    look_at: str = ""
    family: str = ""
    address: str = ""
    pod: str = ""


@dataclass(frozen=True)
class Source:
    """Where probes run: a node, or a client pod on a node."""

    label: str
    node: str = ""
    pod: str = ""


def probe_script(targets: Sequence[Target]) -> str:
    """A shell script curling every target, with no proxy settings in its environment;
    each section is curl's error text (if any) and the HTTP code (000: no answer)."""
    return UNSET_PROXY + "\n" + sectioned_script(
        {t.key: " ".join(shlex.quote(part) for part in curl_command(t.url)) for t in targets})


def _code(text: str) -> Tuple[str, str]:
    """(HTTP code, curl's error text) of one probe's output."""
    body = (text or "").strip()
    code = body[-3:] if len(body) >= 3 and body[-3:].isdigit() else "000"
    return code, body[:-3].strip() if body.endswith(code) else body


def evaluate_probes(outputs: Mapping[str, Optional[str]], targets: Mapping[str, Sequence[Target]],
                    errors: Optional[Mapping[str, str]] = None,
                    sources: Optional[Mapping[str, Source]] = None) -> List[Finding]:
    """Every source answered 2xx for each of its targets.

    ``outputs`` maps a source (node or pod) to the :func:`probe_script` output, or None
    when the script itself could not run; ``errors`` holds that command's stderr (kubectl
    exec / ssh) and ``sources`` where each source is, both kept in the findings.
    """
    findings = []
    for source, wanted in targets.items():
        text = outputs.get(source)
        error = ((errors or {}).get(source) or "").strip()
        where = (sources or {}).get(source) or Source(source)
        if text is None:
            findings.append(Finding(f"{source}: could not run the probes", "curl output", "no answer",
                                    "is the source reachable? (`kubectl exec` / ssh)", node=where.node, pod=where.pod,
                                    error=error))
            continue
        sections = parse_sections(text)
        for target in wanted:
            section = sections.get(target.key)
            code, said = _code(section.output) if section is not None else ("000", "")
            if section is None:
                said = error or "the probe script stopped before this probe"
            if not _is_2xx(code):
                findings.append(Finding(f"{source} -> {target.what}: HTTP {code}", f"HTTP 2xx from {target.url}",
                                        f"HTTP {code}" + (" (no answer)" if code == "000" else ""), target.look_at,
                                        node=where.node, pod=target.pod or where.pod, family=target.family,
                                        address=target.address, error=said))
    return findings


def _target_meta(address) -> dict:
    return {"family": family_name(family(address)), "address": str(address)}


def pod_to_pod_targets(pods: Mapping, ready_only: bool = False) -> List[Target]:
    """Every address of every live nginx pod (with ``ready_only``, of every Ready one), both families."""
    targets = []
    for pod in nginx_pods(pods):
        if ready_only and not pod_ready(pod):
            continue
        port = pod_port(pod)
        name = (pod.get("metadata") or {}).get("name")
        for address in pod_ips(pod):
            targets.append(Target(f"{name}/{family(address)}", http_url(address, port),
                                  f"pod {name} {address}", "Calico routes between nodes (`ip -6 route` on the node), "
                                  "FELIX_IPV6SUPPORT, nginx-listens", pod=name_of(pod), **_target_meta(address)))
    return targets


def pod_target_gaps(pods: Mapping, cfg) -> List[Finding]:
    """What pod-to-pod cannot probe: missing replicas, pods not Ready, a family without an address."""
    findings = []
    live = nginx_pods(pods)
    replicas = planned_replicas(cfg)
    if len(live) != replicas:
        findings.append(Finding(f"{len(live)} of {replicas} nginx replicas to probe ({WORKLOAD})",
                                f"{replicas} nginx pods", ", ".join(name_of(p) for p in live) or "none", LOOK_WORKLOAD))
    for pod in live:
        node = (pod.get("spec") or {}).get("nodeName") or ""
        if not pod_ready(pod):
            findings.append(Finding(f"{name_of(pod)}: not Ready, so not probed", "a Ready nginx pod",
                                    f"phase {(pod.get('status') or {}).get('phase')}", LOOK_WORKLOAD, node=node, pod=name_of(pod)))
        have = {family(a) for a in pod_ips(pod)}
        for version in lab_families(cfg):
            if version not in have:
                findings.append(Finding(f"{name_of(pod)}: no {family_name(version)} address to probe",
                                        f"an {family_name(version)} podIP", "podIPs: " + (", ".join(pod_ips(pod)) or "none"),
                                        "pod-ips (Calico IPAM, cri-dockerd --ipv6-dual-stack)", node=node,
                                        pod=name_of(pod), family=family_name(version)))
    return findings


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
                                  "kube-proxy-ipvs (virtual servers and backends); kube-proxy logs", **_target_meta(address)))
    return targets


def planned_family_gaps(services: Mapping, cfg):
    """(name, family, Service or None) for each planned family of the lab's Services that has
    no cluster IP (the Service absent, or without that family)."""
    have = {(s.get("metadata") or {}).get("name"): s for s in nginx_services(services)}
    for name, plan in planned_services(cfg).items():
        svc = have.get(name)
        got = {family(a) for a in service_cluster_ips(svc)} if svc is not None else set()
        for version in service_families(plan):
            if version not in got:
                yield name, version, plan, svc


def cluster_ips_seen(svc: Optional[Mapping]) -> str:
    """What a Service shows of its cluster IPs, for a finding."""
    return "absent" if svc is None else "clusterIPs: " + (", ".join(service_cluster_ips(svc)) or "none")


def service_target_gaps(services: Mapping, cfg) -> List[Finding]:
    """Every Service the lab deploys is there with a cluster IP in each of its planned families."""
    return [Finding(f"Service {name}: no {family_name(version)} cluster IP to probe",
                    f"cluster IPs of {families_text(service_families(plan))}", cluster_ips_seen(svc),
                    "service-families; the Service manifest (manifests/services.yaml)", family=family_name(version))
            for name, version, plan, svc in planned_family_gaps(services, cfg)]


def node_port_targets(services: Mapping, pods: Mapping, cfg) -> List[Target]:
    """The NodePort of each nginx Service on each node's address of each of its families.

    With ``externalTrafficPolicy: Local`` only nodes running a ready nginx pod answer, so
    only those are probed.
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
                                      "kube-proxy --nodeport-addresses, ipvsadm -Ln on that node", **_target_meta(address)))
    return targets


def node_port_gaps(services: Mapping, pods: Mapping) -> List[Finding]:
    """A Local NodePort Service no node can answer for (no node runs a ready nginx pod)."""
    hosting = nodes_with_ready_pods(nginx_pods(pods))
    return [Finding(f"Service {name}: no node runs a ready nginx pod, so its Local NodePort cannot be probed",
                    "a ready nginx pod on some node", "none", LOOK_WORKLOAD)
            for svc, name, port in nginx_service_ports(services) if port.get("nodePort") and is_local(svc) and not hosting]


def _run_in_clients(vctx, targets: Sequence[Target]):
    clients = vctx.clients()
    script = probe_script(targets)
    outputs, wanted, errors, sources = {}, {}, {}, {}
    for node_name, pod in clients.items():
        source = f"client on {node_name}"
        result = vctx.exec_in(WORKLOAD_NAMESPACE, pod, ["sh", "-c", script])
        outputs[source] = result.stdout if result.stdout else None
        errors[source] = result.stderr
        wanted[source] = targets
        sources[source] = Source(source, node_name, f"{WORKLOAD_NAMESPACE}/{pod}")
    return outputs, wanted, errors, sources


def _probe_from_clients(vctx, targets: Sequence[Target]) -> List[Finding]:
    try:
        outputs, wanted, errors, sources = _run_in_clients(vctx, targets)
    except ClientError as exc:
        return [exc.finding()]
    return evaluate_probes(outputs, wanted, errors, sources)


def check_pod_to_pod(vctx) -> CheckResult:
    """Check ``pod-to-pod``."""
    pods = vctx.get_json("pods", "-n", WORKLOAD_NAMESPACE)
    targets = pod_to_pod_targets(pods, ready_only=True)
    findings = pod_target_gaps(pods, vctx.cfg)
    if targets:
        findings += _probe_from_clients(vctx, targets)
    elif not findings:
        findings.append(Finding(f"no nginx pod addresses ({WORKLOAD})", "nginx pods with podIPs", "none", LOOK_WORKLOAD))
    return result_from_findings(findings, f"client pods on {len(vctx.cfg.nodes)} nodes reach {len(targets)} nginx pod "
                                          f"addresses ({planned_replicas(vctx.cfg)} replicas, {families_text(lab_families(vctx.cfg))})")


def check_pod_to_service(vctx) -> CheckResult:
    """Check ``pod-to-service``."""
    services = vctx.get_json("services", "-A")
    targets = cluster_ip_targets(services)
    findings = service_target_gaps(services, vctx.cfg)
    if targets:
        findings += _probe_from_clients(vctx, targets)
    elif not findings:
        findings.append(Finding("no nginx Service cluster IPs", "nginx Services", "none", f"`kubectl get svc -n {WORKLOAD_NAMESPACE}`"))
    return result_from_findings(findings, f"client pods on {len(vctx.cfg.nodes)} nodes reach {len(targets)} Service cluster IPs "
                                          f"({families_text(lab_families(vctx.cfg))})")


def unanswered(finding: Finding) -> bool:
    """A probe that got no HTTP answer at all (HTTP 000)."""
    return finding.seen.startswith("HTTP 000")


def check_node_to_service(vctx) -> CheckResult:
    """Check ``node-to-service``: every node probes the cluster IPs and the NodePorts; an IPv6
    NodePort unanswered on a node whose IPv6 local route is not ``proto kernel`` is that
    limit, in a note (:mod:`.local_routes`)."""
    services = vctx.get_json("services", "-A")
    pods = vctx.get_json("pods", "-n", WORKLOAD_NAMESPACE)
    targets = cluster_ip_targets(services) + node_port_targets(services, pods, vctx.cfg)
    findings = service_target_gaps(services, vctx.cfg) + node_port_gaps(services, pods)
    if not targets:
        findings.append(Finding("no nginx Service cluster IPs or NodePorts", "nginx Services", "none",
                                f"`kubectl get svc -n {WORKLOAD_NAMESPACE}`"))
        return result_from_findings(findings, "")
    script = probe_script(targets) + "\n" + route_script()
    outputs, wanted, errors, sources = {}, {}, {}, {}
    for node in vctx.cfg.nodes:
        result = vctx.node_run(node.name, script)
        outputs[node.name] = result.stdout if result.stdout else None
        errors[node.name] = result.stderr
        wanted[node.name] = targets
        sources[node.name] = Source(node.name, node.name)
    findings += apply_route_limits(evaluate_probes(outputs, wanted, errors, sources), route_limits(outputs, vctx.cfg),
                                   vctx.cfg, "IPv6 NodePort probe(s) unanswered", unanswered)
    ports = len([t for t in targets if t.key.startswith("np-")])
    return result_from_findings(findings, f"every node reaches {len(targets) - ports} cluster IPs and {ports} NodePort addresses")
