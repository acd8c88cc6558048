"""Cluster check of Calico: calico-pools."""

from __future__ import annotations

import ipaddress
from typing import List, Mapping, Optional

from .kube import condition_true, items, name_of, node_by_name, pod_ready
from .model import CheckResult, Finding, family, family_name, in_networks, ip, result_from_findings


# =========================================================================== calico-pools

CALICO_V4 = "projectcalico.org/IPv4Address"
CALICO_V6 = "projectcalico.org/IPv6Address"


def evaluate_calico(pools: Optional[Mapping], calico_pods: Optional[Mapping], nodes: Mapping, cfg) -> List[Finding]:
    """An enabled IPPool per family equal to the pod subnet (and none enabled outside it);
    calico-node Ready on every node; no Node with ``NetworkUnavailable`` True (calico-node
    sets it False, reason CalicoIsUp, once it runs there, and True, CalicoIsDown, when it
    shuts down); each Node's Calico address annotations are the planned addresses on the lab
    network."""
    findings = []
    look_pool = "calico-node env CALICO_IPV4POOL_CIDR / CALICO_IPV6POOL_CIDR and calico-config ipam assign_ipv4/assign_ipv6"
    if pools is None:
        findings.append(Finding("IPPools (crd.projectcalico.org/v1) cannot be read", "IPPool objects", "not served",
                                "is Calico installed? `kubectl get crd ippools.crd.projectcalico.org`"))
    else:
        enabled = [p for p in items(pools) if not (p.get("spec") or {}).get("disabled")]
        for subnet in cfg.pod_subnets:
            fam = [p for p in enabled if family((p.get("spec") or {}).get("cidr")) == subnet.version]
            cidrs = [str((p.get("spec") or {}).get("cidr")) for p in fam]
            if not any(ipaddress.ip_network(c, strict=False) == subnet for c in cidrs):
                findings.append(Finding(f"no enabled {family_name(subnet.version)} IPPool for {subnet}",
                                        f"an enabled IPPool with cidr {subnet}",
                                        f"enabled {family_name(subnet.version)} pools: {', '.join(cidrs) or 'none'}", look_pool))
            for p in fam:
                cidr = (p.get("spec") or {}).get("cidr")
                if not in_networks(cidr, cfg.pod_subnets):
                    findings.append(Finding(f"IPPool {name_of(p)} ({cidr}) is enabled outside the pod subnets",
                                            f"inside {subnet}", f"cidr {cidr}", "disable or delete it (`spec.disabled: true`)"))
    by_node = {}
    for pod in items(calico_pods):
        by_node[(pod.get("spec") or {}).get("nodeName")] = pod
    nodes_by_name = node_by_name(nodes)
    for planned in cfg.nodes:
        pod = by_node.get(planned.name)
        if pod is None:
            findings.append(Finding(f"{planned.name}: no calico-node pod", "a Ready calico-node pod", "none",
                                    "the calico-node DaemonSet (`kubectl -n kube-system get ds calico-node`)"))
        elif not pod_ready(pod):
            findings.append(Finding(f"{planned.name}: calico-node {name_of(pod)} not Ready", "Ready",
                                    f"phase {(pod.get('status') or {}).get('phase')}, Ready={condition_true(pod, 'Ready')}",
                                    f"`kubectl -n kube-system logs {(pod.get('metadata') or {}).get('name')} -c calico-node`"))
        unavailable = [c for c in ((nodes_by_name.get(planned.name) or {}).get("status") or {}).get("conditions") or []
                       if c.get("type") == "NetworkUnavailable" and c.get("status") == "True"]
        for cond in unavailable:
            findings.append(Finding(f"{planned.name}: NetworkUnavailable is True ({cond.get('reason')}: {cond.get('message')})",
                                    "NetworkUnavailable False (CalicoIsUp)", f"NetworkUnavailable True, {cond.get('reason')}",
                                    f"calico-node on {planned.name} (`kubectl -n kube-system logs -l k8s-app=calico-node`)",
                                    node=planned.name))
        annotations = ((nodes_by_name.get(planned.name) or {}).get("metadata") or {}).get("annotations") or {}
        for key, want, net, env in ((CALICO_V4, planned.ipv4, cfg.network_ipv4, "IP"),
                                    (CALICO_V6, planned.ipv6, cfg.network_ipv6, "IP6")):
            value = annotations.get(key)
            if ip(value) != want:
                hint = (f"calico-node env {env}=autodetect with IP{'6' if env == 'IP6' else ''}_AUTODETECTION_METHOD "
                        f"picking the lab interface (e.g. cidr={net})" + ("; FELIX_IPV6SUPPORT=true" if env == "IP6" else ""))
                findings.append(Finding(f"{planned.name}: Calico detected {value or 'no address'} for {family_name(want.version)}",
                                        f"{key}: {want}/{net.prefixlen}", f"{key}: {value}", hint, node=planned.name,
                                        family=family_name(want.version), address=str(value or "")))
    return findings


def check_calico_pools(vctx) -> CheckResult:
    """Check ``calico-pools``."""
    pools = vctx.try_get_json("ippools.crd.projectcalico.org")
    calico_pods = vctx.try_get_json("pods", "-A", "-l", "k8s-app=calico-node")
    findings = evaluate_calico(pools, calico_pods, vctx.get_json("nodes"), vctx.cfg)
    return result_from_findings(findings, f"IPPools {', '.join(str(n) for n in vctx.cfg.pod_subnets)} enabled; "
                                          f"calico-node Ready with both addresses on {len(vctx.cfg.nodes)} nodes")


