"""Cluster check of the workload pods: pod-ips."""

from __future__ import annotations

from typing import List, Mapping

from .common import HOST_IPS_MINOR, LOOK_WORKLOAD, WORKLOAD, _nodes_planned
from .kube import name_of, nginx_pods
from .model import CheckResult, Finding, family, in_networks, ip, result_from_findings
from .session import WORKLOAD_NAMESPACE


# =========================================================================== pod-ips


def evaluate_pod_ips(pods: Mapping, cfg, minor: int) -> List[Finding]:
    """Every nginx pod has two podIPs of different families inside the pod subnets,
    ``podIP == podIPs[0]``, and hostIP(s) equal to its node's planned address(es)."""
    findings = []
    planned = _nodes_planned(cfg)
    selected = nginx_pods(pods)
    if not selected:
        return [Finding(f"no nginx pods found ({WORKLOAD})", "3 running nginx pods", "none",
                        "`invoke lab.up` deploys them; " + LOOK_WORKLOAD)]
    look = "Calico IPAM config (calico-config assign_ipv4/assign_ipv6) and, with Docker, cri-dockerd --ipv6-dual-stack"
    for pod in selected:
        name = name_of(pod)
        status = pod.get("status") or {}
        node_name = (pod.get("spec") or {}).get("nodeName")
        if status.get("phase") != "Running":
            findings.append(Finding(f"{name}: phase {status.get('phase')}", "Running", f"phase {status.get('phase')}",
                                    f"`kubectl describe pod -n {WORKLOAD_NAMESPACE} {name.split('/')[-1]}`"))
        listed = [entry.get("ip") for entry in status.get("podIPs") or []]
        shown = ", ".join(str(a) for a in listed) or "none"
        families = [family(a) for a in listed]
        if len(listed) != 2 or sorted(families) != [4, 6]:
            findings.append(Finding(f"{name}: podIPs {shown} is not one IPv4 and one IPv6",
                                    "two podIPs, one per family", f"podIPs: {shown}", look))
        if listed and status.get("podIP") != listed[0]:
            findings.append(Finding(f"{name}: podIP {status.get('podIP')} is not podIPs[0] {listed[0]}",
                                    "podIP == podIPs[0]", f"podIP {status.get('podIP')}, podIPs {shown}", look))
        outside = [a for a in listed if a and not in_networks(a, cfg.pod_subnets)]
        if outside:
            findings.append(Finding(f"{name}: podIPs {', '.join(outside)} outside the pod subnets",
                                    f"inside {', '.join(str(n) for n in cfg.pod_subnets)}", f"podIPs: {shown}",
                                    "Calico IPPools (see calico-pools) and kubeadm networking.podSubnet"))
        node = planned.get(node_name)
        if node is None:
            continue
        if status.get("hostIP") and ip(status.get("hostIP")) != node.ipv4:
            findings.append(Finding(f"{name}: hostIP {status.get('hostIP')} is not {node_name}'s {node.ipv4}",
                                    f"hostIP {node.ipv4}", f"hostIP {status.get('hostIP')}",
                                    "kubelet --node-ip on " + node_name))
        if minor >= HOST_IPS_MINOR:
            hosts = [ip(entry.get("ip")) for entry in status.get("hostIPs") or []]
            if hosts != [node.ipv4, node.ipv6]:
                findings.append(Finding(f"{name}: hostIPs {', '.join(str(h) for h in hosts) or 'none'} are not {node_name}'s",
                                        f"hostIPs {node.ipv4}, {node.ipv6}", f"hostIPs {', '.join(str(h) for h in hosts) or 'none'}",
                                        "kubelet --node-ip on " + node_name + " (both families)"))
    return findings


def check_pod_ips(vctx) -> CheckResult:
    """Check ``pod-ips``."""
    pods = vctx.get_json("pods", "-n", WORKLOAD_NAMESPACE)
    findings = evaluate_pod_ips(pods, vctx.cfg, vctx.minor)
    count = len(nginx_pods(pods))
    extra = " and hostIPs" if vctx.minor >= HOST_IPS_MINOR else ""
    return result_from_findings(findings, f"{count} nginx pods each have an IPv4 and an IPv6 podIP in the pod subnets{extra}")


