"""Cluster check of the workload pods: pod-ips."""

from __future__ import annotations

from typing import List, Mapping, Optional

from .common import LOOK_WORKLOAD, WORKLOAD, _nodes_planned, planned_replicas
from .kube import name_of, nginx_pods
from .model import CheckResult, Finding, family, family_name, in_networks, ip, lab_families, result_from_findings
from .session import WORKLOAD_NAMESPACE


# =========================================================================== pod-ips


def evaluate_pod_ips(pods: Mapping, cfg, minor: Optional[int] = None) -> List[Finding]:
    """Every nginx replica the lab deploys is there (terminating, Failed and Evicted pods
    do not count), and each has one podIP per configured family inside the pod subnets,
    ``podIP == podIPs[0]``, and hostIP(s) equal to its node's planned address(es); hostIPs
    where the profile's Kubernetes has them (``host_ips``). ``minor`` is accepted for
    older callers; the profile decides."""
    findings = []
    planned = _nodes_planned(cfg)
    selected = nginx_pods(pods)
    replicas = planned_replicas(cfg)
    families = lab_families(cfg)
    if len(selected) != replicas:
        findings.append(Finding(f"{len(selected)} of {replicas} nginx replicas found ({WORKLOAD})",
                                f"{replicas} nginx pods (the Deployment's replicas), none terminating, Failed or Evicted",
                                f"{len(selected)}: " + (", ".join(name_of(p) for p in selected) or "none"),
                                "`invoke lab.up` deploys them; " + LOOK_WORKLOAD))
    look = "Calico IPAM config (calico-config assign_ipv4/assign_ipv6) and, with Docker, cri-dockerd --ipv6-dual-stack"
    for pod in selected:
        name = name_of(pod)
        status = pod.get("status") or {}
        node_name = (pod.get("spec") or {}).get("nodeName") or ""
        where = {"node": node_name, "pod": name}
        if status.get("phase") != "Running":
            findings.append(Finding(f"{name}: phase {status.get('phase')}", "Running", f"phase {status.get('phase')}",
                                    f"`kubectl describe pod -n {WORKLOAD_NAMESPACE} {name.split('/')[-1]}`", **where))
        listed = [entry.get("ip") for entry in status.get("podIPs") or []]
        shown = ", ".join(str(a) for a in listed) or "none"
        got = sorted(family(a) for a in listed)
        if got != families:
            missing = [family_name(f) for f in families if f not in got]
            findings.append(Finding(f"{name}: podIPs {shown} is not one IPv4 and one IPv6",
                                    "two podIPs, one per family", f"podIPs: {shown}", look,
                                    family=", ".join(missing), **where))
        if listed and status.get("podIP") != listed[0]:
            findings.append(Finding(f"{name}: podIP {status.get('podIP')} is not podIPs[0] {listed[0]}",
                                    "podIP == podIPs[0]", f"podIP {status.get('podIP')}, podIPs {shown}", look, **where))
        outside = [a for a in listed if a and not in_networks(a, cfg.pod_subnets)]
        if outside:
            findings.append(Finding(f"{name}: podIPs {', '.join(outside)} outside the pod subnets",
                                    f"inside {', '.join(str(n) for n in cfg.pod_subnets)}", f"podIPs: {shown}",
                                    "Calico IPPools (see calico-pools) and kubeadm networking.podSubnet",
                                    address=", ".join(outside), **where))
        node = planned.get(node_name)
        if node is None:
            continue
        if status.get("hostIP") and ip(status.get("hostIP")) != node.ipv4:
            findings.append(Finding(f"{name}: hostIP {status.get('hostIP')} is not {node_name}'s {node.ipv4}",
                                    f"hostIP {node.ipv4}", f"hostIP {status.get('hostIP')}",
                                    "kubelet --node-ip on " + node_name, address=str(status.get("hostIP")), **where))
        if cfg.profile.host_ips:
            hosts = [ip(entry.get("ip")) for entry in status.get("hostIPs") or []]
            if hosts != [node.ipv4, node.ipv6]:
                findings.append(Finding(f"{name}: hostIPs {', '.join(str(h) for h in hosts) or 'none'} are not {node_name}'s",
                                        f"hostIPs {node.ipv4}, {node.ipv6}", f"hostIPs {', '.join(str(h) for h in hosts) or 'none'}",
                                        "kubelet --node-ip on " + node_name + " (both families)", **where))
    return findings


def check_pod_ips(vctx) -> CheckResult:
    """Check ``pod-ips``."""
    pods = vctx.get_json("pods", "-n", WORKLOAD_NAMESPACE)
    findings = evaluate_pod_ips(pods, vctx.cfg)
    count = len(nginx_pods(pods))
    extra = " and hostIPs" if vctx.cfg.profile.host_ips else ""
    return result_from_findings(findings, f"{count} nginx pods each have an IPv4 and an IPv6 podIP in the pod subnets{extra}")
