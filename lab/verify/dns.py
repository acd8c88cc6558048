"""Cluster check of CoreDNS: cluster-dns."""

from __future__ import annotations

import shlex
from typing import Dict, List, Mapping, Optional, Tuple

from .kube import nginx_services, service_cluster_ips
from .model import CheckResult, Finding, family, family_name, ip, result_from_findings, unreachable
from .parse import parse_dig_short, parse_sections, sectioned_script
from .probes import cluster_ips_seen, planned_family_gaps
from .session import CLUSTER_DOMAIN, WORKLOAD_NAMESPACE, ClientError


# =========================================================================== cluster-dns


def dns_queries(services: Mapping) -> Dict[str, Tuple[dict, str, str]]:
    """Section key -> (Service, record type, fqdn) for the nginx Services (not headless)."""
    queries = {}
    for svc in nginx_services(services):
        if (svc.get("spec") or {}).get("clusterIP") == "None":
            continue
        meta = svc.get("metadata") or {}
        fqdn = f"{meta.get('name')}.{meta.get('namespace', WORKLOAD_NAMESPACE)}.svc.{CLUSTER_DOMAIN}"
        for rtype in ("A", "AAAA"):
            queries[f"{meta.get('name')}/{rtype}"] = (svc, rtype, fqdn)
    return queries


def dns_probe_script(services: Mapping) -> str:
    """``dig +short`` for A and AAAA of every nginx Service."""
    return sectioned_script({key: f"dig +short +time=2 +tries=2 {rtype} {shlex.quote(fqdn)}"
                             for key, (_svc, rtype, fqdn) in dns_queries(services).items()})


def planned_record_gaps(services: Mapping, cfg) -> List[Finding]:
    """A record the lab's Services must answer but cannot: a planned family without a cluster IP."""
    findings = []
    for name, version, _plan, svc in planned_family_gaps(services, cfg):
        rtype = "A" if version == 4 else "AAAA"
        findings.append(Finding(f"Service {name}: no {family_name(version)} cluster IP, so {rtype} cannot answer",
                                f"{rtype} = the {family_name(version)} cluster IP of {name}", cluster_ips_seen(svc),
                                "service-families", family=family_name(version)))
    return findings


def evaluate_cluster_dns(outputs: Mapping[str, Optional[str]], services: Mapping, cfg=None,
                         errors: Optional[Mapping[str, str]] = None) -> List[Finding]:
    """A records = the IPv4 cluster IPs, AAAA = the IPv6 ones (empty for a missing family);
    with ``cfg``, every planned family of the lab's Services must have a record to answer.
    ``errors`` keeps each source's ``kubectl exec`` error text."""
    findings = planned_record_gaps(services, cfg) if cfg is not None else []
    queries = dns_queries(services)
    look = "CoreDNS (`kubectl -n kube-system logs -l k8s-app=kube-dns`), the kube-dns Service, the pod's /etc/resolv.conf"
    for source, text in outputs.items():
        node = source.split(" on ", 1)[-1] if " on " in source else ""
        if text is None:
            findings.append(unreachable(source, "dig", "dig output", "`kubectl exec` into the client pod",
                                        error=(errors or {}).get(source, ""), node=node))
            continue
        sections = parse_sections(text)
        for key, (svc, rtype, fqdn) in queries.items():
            version = 4 if rtype == "A" else 6
            want = sorted(str(ip(a)) for a in service_cluster_ips(svc) if family(a) == version)
            section = sections.get(key)
            got = sorted(str(a) for a in parse_dig_short(section.output)) if section is not None else []
            if got != want:
                said = section.output.strip() if section is not None and not got else ""
                findings.append(Finding(f"{source}: {rtype} {fqdn} answered {', '.join(got) or 'nothing'}",
                                        f"{rtype} {', '.join(want) or '(no record)'}", f"{rtype} {', '.join(got) or '(no record)'}",
                                        look, node=node, family=family_name(version), address=", ".join(want), error=said))
    return findings


def check_cluster_dns(vctx) -> CheckResult:
    """Check ``cluster-dns``."""
    services = vctx.get_json("services", "-A")
    if not dns_queries(services):
        return result_from_findings([Finding("no nginx Services to resolve", "nginx Services", "none",
                                             f"`kubectl get svc -n {WORKLOAD_NAMESPACE}`")], "")
    try:
        clients = vctx.clients()
    except ClientError as exc:
        return result_from_findings([exc.finding()], "")
    script = dns_probe_script(services)
    outputs, errors = {}, {}
    for node_name, pod in clients.items():
        result = vctx.exec_in(WORKLOAD_NAMESPACE, pod, ["sh", "-c", script])
        outputs[f"client on {node_name}"] = result.stdout if result.stdout else None
        errors[f"client on {node_name}"] = result.stderr
    findings = evaluate_cluster_dns(outputs, services, vctx.cfg, errors)
    return result_from_findings(findings, f"{len(nginx_services(services))} nginx Services resolve to their cluster IPs "
                                          "(A = IPv4, AAAA = IPv6) from pods on every node")
