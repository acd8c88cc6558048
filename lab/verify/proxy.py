"""Cluster check of kube-proxy: kube-proxy-ipvs."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

import yaml

from .kube import (
    is_local, load_balancer_ips, nginx_pods, nodes_with_ready_pods, pod_ips, pod_ready, ready_pod_ips_by_family,
    service_cluster_ips, service_families,
)
from .local_routes import apply_route_limits, route_limits, route_script
from .model import CheckResult, Finding, family_name, ip, result_from_findings, skipped, unreachable
from .parse import parse_ipvsadm, parse_modules, parse_sections, parse_sysctl, sectioned_script
from .probes import nginx_service_ports
from .session import UNSET_PROXY, WORKLOAD_NAMESPACE


# =========================================================================== kube-proxy-ipvs

IPVS_MODULES = ("ip_vs", "ip_vs_rr", "nf_conntrack")
SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.ipv6.conf.all.forwarding": "1",
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.bridge.bridge-nf-call-ip6tables": "1",
}
PROXY_MODE_URL = "http://127.0.0.1:10249/proxyMode"
ABSENT = "absent from ipvsadm -Ln"


def proxy_node_script() -> str:
    """One script per node: kube-proxy's mode, ipvsadm, modules, sysctls, and the IPv6 local
    routes with the kernel's release (:mod:`.local_routes`); no proxy settings."""
    return UNSET_PROXY + "\n" + sectioned_script({
        "proxymode": f"curl -sS --noproxy '*' --max-time 5 {PROXY_MODE_URL}",
        "ipvsadm": "ipvsadm -Ln",
        "modules": "cat /proc/modules",
        "sysctl": "sysctl " + " ".join(SYSCTLS),
    }) + "\n" + route_script()


def evaluate_kube_proxy_config(configmap: Optional[Mapping], cfg) -> List[Finding]:
    """kube-system/kube-proxy ``config.conf``: mode ipvs, strictARP (MetalLB L2 under IPVS),
    clusterCIDR with both pod subnets, and the IPv6DualStack gate where the version needs it."""
    look = "kube-system/kube-proxy ConfigMap (`kubectl -n kube-system get cm kube-proxy -o yaml`), the KubeProxyConfiguration given to kubeadm"
    if configmap is None:
        return [Finding("no kube-system/kube-proxy ConfigMap", "the ConfigMap kubeadm writes", "not found", look)]
    text = (configmap.get("data") or {}).get("config.conf")
    try:
        conf = yaml.safe_load(text or "") or {}
    except yaml.YAMLError as exc:
        return [Finding("kube-proxy config.conf is not YAML", "KubeProxyConfiguration", str(exc).splitlines()[0], look)]
    findings = []
    if conf.get("mode") != "ipvs":
        findings.append(Finding(f"kube-proxy mode is {conf.get('mode')!r}", "mode: ipvs", f"mode: {conf.get('mode')!r}", look))
    if not (conf.get("ipvs") or {}).get("strictARP"):
        findings.append(Finding("kube-proxy ipvs.strictARP is not true", "ipvs.strictARP: true (MetalLB layer 2 under IPVS)",
                                f"strictARP: {(conf.get('ipvs') or {}).get('strictARP')}", look))
    cidrs = [c.strip() for c in str(conf.get("clusterCIDR") or "").split(",") if c.strip()]
    want = [str(n) for n in cfg.pod_subnets]
    if sorted(cidrs) != sorted(want):
        findings.append(Finding(f"kube-proxy clusterCIDR is {conf.get('clusterCIDR')!r}", f"clusterCIDR: {','.join(want)}",
                                f"clusterCIDR: {conf.get('clusterCIDR')!r}", look + " (kubeadm copies networking.podSubnet)"))
    if cfg.profile.dual_stack_feature_gate and not (conf.get("featureGates") or {}).get("IPv6DualStack"):
        findings.append(Finding("kube-proxy lacks featureGates IPv6DualStack: true", "featureGates: {IPv6DualStack: true}",
                                f"featureGates: {conf.get('featureGates')}", look))
    return findings


@dataclass(frozen=True)
class IpvsExpectation:
    """A virtual server the nodes must have, and which nodes must show backends for it.

    ``on``: the nodes that must have it (empty: every node; a NodePort's address is one
    node's); ``required``: per node, the real servers it must list (every ready replica of
    that family, or with ``externalTrafficPolicy: Local`` the node's own).
    """

    protocol: str
    address: ipaddress._BaseAddress  # noqa: SLF001
    port: int
    what: str
    backends_on: frozenset  # node names that must list real servers
    allowed: frozenset  # acceptable real server addresses (ready nginx pod IPs of that family)
    on: frozenset = frozenset()
    required: Mapping[str, frozenset] = field(default_factory=dict, compare=False, hash=False)


def _ready_by_node(pods) -> Dict[str, Dict[int, set]]:
    """node -> family -> addresses of the ready nginx pods there."""
    out: Dict[str, Dict[int, set]] = {}
    for pod in pods:
        if pod_ready(pod):
            node = out.setdefault((pod.get("spec") or {}).get("nodeName"), {4: set(), 6: set()})
            for address in pod_ips(pod):
                parsed = ip(address)
                if parsed is not None:
                    node[parsed.version].add(parsed)
    return out


def ipvs_expectations(services: Mapping, pods: Mapping, cfg) -> List[IpvsExpectation]:
    """Virtual servers for every cluster IP, LoadBalancer ingress IP, externalIP and NodePort
    (on each node's own address of each family) of the nginx Services.

    Cluster IPs need every ready replica of their family as a backend on every node; with
    ``externalTrafficPolicy: Local`` the external addresses and NodePorts only have backends,
    the node's own replicas, on nodes running a ready nginx pod.
    """
    nginx = nginx_pods(pods)
    allowed = ready_pod_ips_by_family(nginx)
    by_node = _ready_by_node(nginx)
    hosting = frozenset(nodes_with_ready_pods(nginx))
    every = frozenset(n.name for n in cfg.nodes)

    def required(local: bool, version: int, nodes) -> Dict[str, frozenset]:
        return {n: frozenset(by_node.get(n, {}).get(version, set()) if local else allowed[version]) for n in nodes}

    expected = []
    for svc, name, port in nginx_service_ports(services):
        local = is_local(svc)
        for address in service_cluster_ips(svc):
            parsed = ip(address)
            expected.append(IpvsExpectation("TCP", parsed, int(port["port"]), f"{name} cluster IP",
                                            every, frozenset(allowed[parsed.version]), required=required(False, parsed.version, every)))
        external = [(a, "LoadBalancer IP") for a in load_balancer_ips(svc)] + \
                   [(a, "externalIP") for a in (svc.get("spec") or {}).get("externalIPs") or []]
        for address, kind in external:
            parsed = ip(address)
            if parsed is None:
                continue
            backends = hosting if local else every
            expected.append(IpvsExpectation("TCP", parsed, int(port["port"]), f"{name} {kind}", backends,
                                            frozenset(allowed[parsed.version]), required=required(local, parsed.version, backends)))
        if port.get("nodePort"):
            for node in cfg.nodes:
                for version in service_families(svc):
                    address = node.ipv4 if version == 4 else node.ipv6
                    backends = frozenset({node.name}) if not local or node.name in hosting else frozenset()
                    expected.append(IpvsExpectation("TCP", address, int(port["nodePort"]), f"{name} NodePort on {node.name}",
                                                    backends, frozenset(allowed[version]), on=frozenset({node.name}),
                                                    required=required(local, version, backends)))
    return expected


def _shown(protocol: str, address, port: int) -> str:
    return f"{protocol} {address}:{port}" if address.version == 4 else f"{protocol} [{address}]:{port}"


def _evaluate_table(node: str, table, expectations: Sequence[IpvsExpectation]) -> List[Finding]:
    findings = []
    for exp in expectations:
        if exp.on and node not in exp.on:
            continue
        vs = table.get((exp.protocol, exp.address, exp.port))
        shown = _shown(exp.protocol, exp.address, exp.port)
        where = {"node": node, "family": family_name(exp.address.version), "address": str(exp.address)}
        if vs is None:
            findings.append(Finding(f"{node}: no IPVS virtual server for {exp.what} {shown}",
                                    f"virtual server {shown}", ABSENT,
                                    "kube-proxy log (`kubectl -n kube-system logs -l k8s-app=kube-proxy`)", **where))
            continue
        # weight 0: an endpoint kube-proxy removed, kept while its connections drain
        backends = [rs.address for rs in vs.real_servers if rs.weight > 0]
        if node in exp.backends_on and not backends:
            findings.append(Finding(f"{node}: {exp.what} {shown} has no backends", "nginx pod addresses as real servers",
                                    "no real servers" + (" (only drained ones, weight 0)" if vs.real_servers else ""),
                                    "are the nginx pods Ready? Endpoints/EndpointSlices of the Service", **where))
            continue
        missing = sorted(str(a) for a in exp.required.get(node, frozenset()) if a not in backends)
        if node in exp.backends_on and missing:
            findings.append(Finding(f"{node}: {exp.what} {shown} lacks backends {', '.join(missing)}",
                                    f"a real server for each ready nginx replica of {family_name(exp.address.version)}",
                                    "real servers: " + ", ".join(str(b) for b in backends),
                                    "kube-proxy log; the Service's EndpointSlices", **where))
        wrong = [str(b) for b in backends if b not in exp.allowed]
        if wrong:
            findings.append(Finding(f"{node}: {exp.what} {shown} forwards to {', '.join(wrong)}",
                                    f"ready nginx pod addresses of {family_name(exp.address.version)}",
                                    ", ".join(str(b) for b in backends), "stale kube-proxy state; kube-proxy log", **where))
    return findings


def evaluate_node_proxy(outputs: Mapping[str, Optional[str]], expectations: Sequence[IpvsExpectation],
                        errors: Optional[Mapping[str, str]] = None, cfg=None) -> List[Finding]:
    """Per node: proxyMode says ipvs; ipvsadm lists each expected virtual server with pod
    backends of its family (real servers of weight 0, still draining, do not count); the
    IPVS modules are loaded; forwarding and bridge sysctls are 1. ``errors``: each node's
    ssh error text, kept in the findings. With ``cfg``, IPv6 NodePort virtual servers
    missing on a node whose IPv6 local route is not ``proto kernel`` are that limit, in a
    note (:mod:`.local_routes`)."""
    findings = []
    for node, text in outputs.items():
        if text is None:
            findings.append(unreachable(node, "the kube-proxy probes", "output", error=(errors or {}).get(node, ""), node=node))
            continue
        sections = parse_sections(text)
        mode = sections.get("proxymode")
        mode_text = mode.output.strip() if mode is not None else ""
        if mode_text != "ipvs":
            findings.append(Finding(f"{node}: kube-proxy runs in mode {mode_text or '(no answer)'!s}", "ipvs",
                                    f"{PROXY_MODE_URL} -> {mode_text or 'no answer'}",
                                    "kube-proxy log on that node: it falls back to iptables when IPVS modules are missing",
                                    node=node))
        ipvs = sections.get("ipvsadm")
        if ipvs is None or ipvs.returncode != 0:
            findings.append(Finding(f"{node}: ipvsadm -Ln failed", "the IPVS table",
                                    (ipvs.output.strip() if ipvs else "no output") or "no output",
                                    "install ipvsadm on the node (provisioning)", node=node))
        else:
            findings += _evaluate_table(node, parse_ipvsadm(ipvs.output), expectations)
        modules = sections.get("modules")
        loaded = parse_modules(modules.output) if modules is not None else []
        missing = [m for m in IPVS_MODULES if m not in loaded]
        if missing:
            findings.append(Finding(f"{node}: kernel modules {', '.join(missing)} not loaded", ", ".join(IPVS_MODULES),
                                    "loaded: " + (", ".join(m for m in IPVS_MODULES if m in loaded) or "none of them"),
                                    "/etc/modules-load.d/ on the node (provisioning), `modprobe ip_vs`", node=node))
        values = parse_sysctl(sections["sysctl"].output) if "sysctl" in sections else {}
        for key, want in SYSCTLS.items():
            if values.get(key) != want:
                hint = "load br_netfilter (modules-load.d)" if "bridge" in key and key not in values else "/etc/sysctl.d/ on the node"
                findings.append(Finding(f"{node}: {key} = {values.get(key, '(missing)')}", f"{key} = {want}",
                                        f"{key} = {values.get(key, '(missing)')}", hint, node=node))
    if cfg is not None:
        findings = apply_route_limits(findings, route_limits(outputs, cfg), cfg, "IPv6 NodePort virtual server(s) missing",
                                      lambda f: f.seen == ABSENT and " NodePort on " in f.problem)
    return findings


def check_kube_proxy_ipvs(vctx) -> CheckResult:
    """Check ``kube-proxy-ipvs``."""
    if vctx.cfg.kube_proxy_mode != "ipvs":
        return skipped(f"lab.kube_proxy_mode is {vctx.cfg.kube_proxy_mode}, not ipvs")
    configmap = vctx.try_get_json("configmap", "kube-proxy", "-n", "kube-system")
    findings = evaluate_kube_proxy_config(configmap, vctx.cfg)
    expectations = ipvs_expectations(vctx.get_json("services", "-A"), vctx.get_json("pods", "-n", WORKLOAD_NAMESPACE), vctx.cfg)
    script = proxy_node_script()
    outputs, errors = {}, {}
    for node in vctx.cfg.nodes:
        result = vctx.node_run(node.name, script)
        outputs[node.name] = result.stdout if result.stdout else None
        errors[node.name] = result.stderr
    findings += evaluate_node_proxy(outputs, expectations, errors, vctx.cfg)
    return result_from_findings(findings, f"kube-proxy is in ipvs mode on {len(outputs)} nodes with "
                                          f"{len(expectations)} nginx virtual servers (both families) and their backends")


