"""Cluster check of kube-proxy: kube-proxy-ipvs."""

from __future__ import annotations

import ipaddress
import yaml
from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence

from .kube import (
    is_local, load_balancer_ips, nginx_pods, nodes_with_ready_pods, ready_pod_ips_by_family,
    service_cluster_ips,
)
from .model import CheckResult, Finding, family_name, ip, result_from_findings, skipped, unreachable
from .parse import parse_ipvsadm, parse_modules, parse_sections, parse_sysctl, sectioned_script
from .probes import nginx_service_ports
from .session import WORKLOAD_NAMESPACE


# =========================================================================== kube-proxy-ipvs

IPVS_MODULES = ("ip_vs", "ip_vs_rr", "nf_conntrack")
SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.ipv6.conf.all.forwarding": "1",
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.bridge.bridge-nf-call-ip6tables": "1",
}
PROXY_MODE_URL = "http://127.0.0.1:10249/proxyMode"


def proxy_node_script() -> str:
    """One script per node: kube-proxy's mode, ipvsadm, modules and sysctls."""
    return sectioned_script({
        "proxymode": f"curl -s --max-time 5 {PROXY_MODE_URL}",
        "ipvsadm": "ipvsadm -Ln",
        "modules": "cat /proc/modules",
        "sysctl": "sysctl " + " ".join(SYSCTLS),
    })


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
    """A virtual server every node must have, and which nodes must show backends for it."""

    protocol: str
    address: ipaddress._BaseAddress  # noqa: SLF001
    port: int
    what: str
    backends_on: frozenset  # node names that must list real servers
    allowed: frozenset  # acceptable real server addresses (ready nginx pod IPs of that family)


def ipvs_expectations(services: Mapping, pods: Mapping, cfg) -> List[IpvsExpectation]:
    """Virtual servers for every cluster IP, LoadBalancer ingress IP and externalIP of the nginx Services.

    Cluster IPs need backends on every node; with ``externalTrafficPolicy: Local`` the
    external addresses only have backends on nodes running a ready nginx pod.
    """
    nginx = nginx_pods(pods)
    allowed = ready_pod_ips_by_family(nginx)
    hosting = frozenset(nodes_with_ready_pods(nginx))
    every = frozenset(n.name for n in cfg.nodes)
    expected = []
    for svc, name, port in nginx_service_ports(services):
        for address in service_cluster_ips(svc):
            parsed = ip(address)
            expected.append(IpvsExpectation("TCP", parsed, int(port["port"]), f"{name} cluster IP",
                                            every, frozenset(allowed[parsed.version])))
        external = [(a, "LoadBalancer IP") for a in load_balancer_ips(svc)] + \
                   [(a, "externalIP") for a in (svc.get("spec") or {}).get("externalIPs") or []]
        for address, kind in external:
            parsed = ip(address)
            if parsed is None:
                continue
            expected.append(IpvsExpectation("TCP", parsed, int(port["port"]), f"{name} {kind}",
                                            hosting if is_local(svc) else every, frozenset(allowed[parsed.version])))
    return expected


def evaluate_node_proxy(outputs: Mapping[str, Optional[str]], expectations: Sequence[IpvsExpectation]) -> List[Finding]:
    """Per node: proxyMode says ipvs; ipvsadm lists each expected virtual server with pod
    backends of its family; the IPVS modules are loaded; forwarding and bridge sysctls are 1."""
    findings = []
    for node, text in outputs.items():
        if text is None:
            findings.append(unreachable(node, "the kube-proxy probes", "output"))
            continue
        sections = parse_sections(text)
        mode = sections.get("proxymode")
        mode_text = mode.output.strip() if mode is not None else ""
        if mode_text != "ipvs":
            findings.append(Finding(f"{node}: kube-proxy runs in mode {mode_text or '(no answer)'!s}", "ipvs",
                                    f"{PROXY_MODE_URL} -> {mode_text or 'no answer'}",
                                    "kube-proxy log on that node: it falls back to iptables when IPVS modules are missing"))
        ipvs = sections.get("ipvsadm")
        if ipvs is None or ipvs.returncode != 0:
            findings.append(Finding(f"{node}: ipvsadm -Ln failed", "the IPVS table",
                                    (ipvs.output.strip() if ipvs else "no output") or "no output",
                                    "install ipvsadm on the node (provisioning)"))
        else:
            table = parse_ipvsadm(ipvs.output)
            for exp in expectations:
                vs = table.get((exp.protocol, exp.address, exp.port))
                shown = f"{exp.protocol} {exp.address}:{exp.port}" if exp.address.version == 4 else f"{exp.protocol} [{exp.address}]:{exp.port}"
                if vs is None:
                    findings.append(Finding(f"{node}: no IPVS virtual server for {exp.what} {shown}",
                                            f"virtual server {shown}", "absent from ipvsadm -Ln",
                                            "kube-proxy log (`kubectl -n kube-system logs -l k8s-app=kube-proxy`)"))
                    continue
                backends = [rs.address for rs in vs.real_servers]
                if node in exp.backends_on and not backends:
                    findings.append(Finding(f"{node}: {exp.what} {shown} has no backends", "nginx pod addresses as real servers",
                                            "no real servers", "are the nginx pods Ready? Endpoints/EndpointSlices of the Service"))
                wrong = [str(b) for b in backends if b not in exp.allowed]
                if wrong:
                    findings.append(Finding(f"{node}: {exp.what} {shown} forwards to {', '.join(wrong)}",
                                            f"ready nginx pod addresses of {family_name(exp.address.version)}",
                                            ", ".join(str(b) for b in backends), "stale kube-proxy state; kube-proxy log"))
        modules = sections.get("modules")
        loaded = parse_modules(modules.output) if modules is not None else []
        missing = [m for m in IPVS_MODULES if m not in loaded]
        if missing:
            findings.append(Finding(f"{node}: kernel modules {', '.join(missing)} not loaded", ", ".join(IPVS_MODULES),
                                    "loaded: " + (", ".join(m for m in IPVS_MODULES if m in loaded) or "none of them"),
                                    "/etc/modules-load.d/ on the node (provisioning), `modprobe ip_vs`"))
        values = parse_sysctl(sections["sysctl"].output) if "sysctl" in sections else {}
        for key, want in SYSCTLS.items():
            if values.get(key) != want:
                hint = "load br_netfilter (modules-load.d)" if "bridge" in key and key not in values else "/etc/sysctl.d/ on the node"
                findings.append(Finding(f"{node}: {key} = {values.get(key, '(missing)')}", f"{key} = {want}",
                                        f"{key} = {values.get(key, '(missing)')}", hint))
    return findings


def check_kube_proxy_ipvs(vctx) -> CheckResult:
    """Check ``kube-proxy-ipvs``."""
    if vctx.cfg.kube_proxy_mode != "ipvs":
        return skipped(f"lab.kube_proxy_mode is {vctx.cfg.kube_proxy_mode}, not ipvs")
    configmap = vctx.try_get_json("configmap", "kube-proxy", "-n", "kube-system")
    findings = evaluate_kube_proxy_config(configmap, vctx.cfg)
    expectations = ipvs_expectations(vctx.get_json("services", "-A"), vctx.get_json("pods", "-n", WORKLOAD_NAMESPACE), vctx.cfg)
    script = proxy_node_script()
    outputs = {}
    for node in vctx.cfg.nodes:
        result = vctx.node_run(node.name, script)
        outputs[node.name] = result.stdout if result.stdout else None
    findings += evaluate_node_proxy(outputs, expectations)
    return result_from_findings(findings, f"kube-proxy is in ipvs mode on {len(outputs)} nodes with "
                                          f"{len(expectations)} nginx virtual servers (both families) and their backends")


