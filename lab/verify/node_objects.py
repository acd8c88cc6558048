"""Cluster checks of the Node objects: pod-cidrs, node-internal-ips."""

from __future__ import annotations

import ipaddress
from typing import Dict, List, Mapping, Optional

from .kube import internal_ips, items, node_by_name, pod_cidrs
from .model import (
    CheckResult, Finding, family, family_name, in_networks, ip, note, result_from_findings, skipped,
)


# =========================================================================== pod-cidrs


def controller_manager_allocates(cm_pods: Optional[Mapping]) -> Optional[bool]:
    """Whether kube-controller-manager runs with ``--allocate-node-cidrs=true`` (None: unknown)."""
    for pod in items(cm_pods):
        for container in (pod.get("spec") or {}).get("containers") or []:
            args = list(container.get("command") or []) + list(container.get("args") or [])
            for arg in args:
                if arg.startswith("--allocate-node-cidrs"):
                    return arg.split("=", 1)[-1].lower() in ("true", "--allocate-node-cidrs")
            if args:
                return False
    return None


def unregistered(planned) -> Finding:
    """The finding for a planned node that has no Node object."""
    return Finding(f"{planned.name}: not registered", f"Node {planned.name}", "no such Node",
                   "`kubectl get nodes`; kubelet log on the node (`journalctl -u kubelet`)")


def evaluate_pod_cidrs(nodes: Mapping, cfg) -> List[Finding]:
    """Each node's ``spec.podCIDRs``: one IPv4 and one IPv6 block of the configured size inside
    the pod subnets, ``podCIDR == podCIDRs[0]``, no block given to two nodes."""
    findings = []
    masks = {4: cfg.node_cidr_mask_ipv4, 6: cfg.node_cidr_mask_ipv6}
    subnets = {n.version: n for n in cfg.pod_subnets}
    by_name = node_by_name(nodes)
    owners: Dict[str, str] = {}
    look = ("kube-controller-manager flags --allocate-node-cidrs, --cluster-cidr (both families), "
            "--node-cidr-mask-size-ipv4/-ipv6 (kubeadm sets them from networking.podSubnet)")
    for planned in cfg.nodes:
        node = by_name.get(planned.name)
        if node is None:
            findings.append(unregistered(planned))
            continue
        cidrs = pod_cidrs(node)
        spec = node.get("spec") or {}
        shown = ", ".join(cidrs) or "none"
        by_family = {4: [c for c in cidrs if family(c) == 4], 6: [c for c in cidrs if family(c) == 6]}
        for version in (4, 6):
            want = f"one {family_name(version)} /{masks[version]} inside {subnets[version]}"
            got = by_family[version]
            if len(got) != 1:
                findings.append(Finding(f"{planned.name}: {len(got)} {family_name(version)} podCIDRs",
                                        want, f"podCIDRs: {shown}", look, node=planned.name, family=family_name(version)))
                continue
            net = ipaddress.ip_network(got[0], strict=False)
            if not in_networks(got[0], cfg.pod_subnets) or net.prefixlen != masks[version]:
                findings.append(Finding(f"{planned.name}: {family_name(version)} podCIDR {got[0]} is not {want}",
                                        want, f"podCIDRs: {shown}", look, node=planned.name,
                                        family=family_name(version), address=got[0]))
            if got[0] in owners:
                findings.append(Finding(f"{planned.name}: podCIDR {got[0]} is also {owners[got[0]]}'s",
                                        "a block per node", f"{got[0]} on {owners[got[0]]} and {planned.name}", look))
            owners[got[0]] = planned.name
        if cidrs and spec.get("podCIDR") and spec.get("podCIDR") != cidrs[0]:
            findings.append(Finding(f"{planned.name}: podCIDR {spec['podCIDR']} is not podCIDRs[0] {cidrs[0]}",
                                    "podCIDR == podCIDRs[0]", f"podCIDR {spec['podCIDR']}, podCIDRs {shown}", look))
    return findings


def check_pod_cidrs(vctx) -> CheckResult:
    """Check ``pod-cidrs``."""
    allocate = controller_manager_allocates(vctx.try_get_json("pods", "-n", "kube-system", "-l", "component=kube-controller-manager"))
    if allocate is False:
        return skipped("kube-controller-manager runs without --allocate-node-cidrs=true, so nodes have no podCIDRs; "
                       "Calico IPAM gives pod addresses from its IPPools (see calico-pools)")
    findings = evaluate_pod_cidrs(vctx.get_json("nodes"), vctx.cfg)
    return result_from_findings(findings, "every node has one IPv4 and one IPv6 podCIDR inside the pod subnets "
                                          "(Calico IPAM still hands out pod IPs from its own blocks)")


# =========================================================================== node-internal-ips


def evaluate_node_internal_ips(nodes: Mapping, cfg, minor: Optional[int] = None) -> List[Finding]:
    """``status.addresses`` InternalIPs equal the planned addresses, one per family.

    Where the profile's kubelet takes one ``--node-ip`` (``kubelet_node_ip_dual`` false,
    before 1.20) a missing IPv6 InternalIP is a note (an expected limitation of the
    version), not a failure. ``minor`` is accepted for older callers; the profile decides.
    """
    findings = []
    by_name = node_by_name(nodes)
    look = "kubelet --node-ip (KUBELET_EXTRA_ARGS / kubeletExtraArgs node-ip) on the node; it must name the lab interface's addresses"
    single_node_ip = not cfg.profile.kubelet_node_ip_dual
    missing_v6_expected = []
    for planned in cfg.nodes:
        node = by_name.get(planned.name)
        if node is None:
            findings.append(unregistered(planned))
            continue
        addresses = internal_ips(node)
        shown = ", ".join(addresses) or "none"
        for want in (planned.ipv4, planned.ipv6):
            got = [a for a in addresses if family(a) == want.version]
            fam = family_name(want.version)
            if not got:
                if want.version == 6 and single_node_ip:
                    missing_v6_expected.append(planned.name)
                    continue
                findings.append(Finding(f"{planned.name}: no {fam} InternalIP", f"InternalIP {want}",
                                        f"InternalIPs: {shown}", look, node=planned.name, family=fam, address=str(want)))
            elif [ip(a) for a in got] != [want]:
                hint = look
                if any(ip(a) not in (cfg.network_ipv4 if want.version == 4 else cfg.network_ipv6) for a in got):
                    hint = "the kubelet picked another interface (the Vagrant NAT one?): set --node-ip; " + look
                findings.append(Finding(f"{planned.name}: {fam} InternalIP is {', '.join(got)}, not {want}",
                                        f"InternalIP {want}", f"InternalIPs: {shown}", hint,
                                        node=planned.name, family=fam, address=", ".join(got)))
    if missing_v6_expected:
        findings.append(note(f"no IPv6 InternalIP on {', '.join(missing_v6_expected)}: expected limitation of "
                             f"Kubernetes {cfg.profile.kubernetes_minor} (kubelet --node-ip takes one address until 1.20)"))
    return findings


def check_node_internal_ips(vctx) -> CheckResult:
    """Check ``node-internal-ips``."""
    findings = evaluate_node_internal_ips(vctx.get_json("nodes"), vctx.cfg)
    both = vctx.cfg.profile.kubelet_node_ip_dual
    return result_from_findings(findings, "every node reports its planned " + ("IPv4 and IPv6 InternalIPs" if both else "IPv4 InternalIP"))
