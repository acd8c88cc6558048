"""Cluster-layer checks: Kubernetes, Calico, kube-proxy, MetalLB and the nginx workload.

Every check is a thin ``gather`` (kubectl, commands on nodes, in client pods or on the
host) feeding a pure ``evaluate_*`` function that tests drive with real API shapes.
"""

from __future__ import annotations

import ipaddress
import secrets
import shlex
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from .kube import (
    condition_true, internal_ips, is_local, items, load_balancer_hostnames, load_balancer_ips, name_of,
    nginx_pods, nginx_services, node_by_name, nodes_with_ready_pods, pod_cidrs, pod_ips, pod_port, pod_ready,
    ready_pod_ips_by_family, service_cluster_ips, service_families, service_tcp_port,
)
from .model import (
    CheckResult, Finding, failed, family, family_name, family_of_name, in_networks, ip, note,
    result_from_findings, skipped, unreachable,
)
from .parse import (
    Section, parse_access_log, parse_dig_short, parse_ipvsadm, parse_modules, parse_proc_net_tcp, parse_sections,
    parse_sysctl, sectioned_script,
)
from .session import (
    CLUSTER_DOMAIN, WORKLOAD_NAMESPACE, WORKLOAD_SELECTOR, ClientError, curl_command, http_url,
)

DUAL_NODE_IP_MINOR = 20  # kubelet --node-ip "<v4>,<v6>" from 1.20
DUAL_SERVICE_MINOR = 20  # ipFamilyPolicy/ipFamilies/clusterIPs from 1.20
HOST_IPS_MINOR = 29  # status.hostIPs beta (on by default) from 1.29
ENDPOINTSLICE_DEFAULT_MINOR = 18  # EndpointSlice controller on by default from 1.18
WORKLOAD = f"pods labelled {','.join(f'{k}={v}' for k, v in WORKLOAD_SELECTOR.items())} in namespace {WORKLOAD_NAMESPACE}"
LOOK_WORKLOAD = f"`kubectl get pods -n {WORKLOAD_NAMESPACE} -o wide -l {','.join(f'{k}={v}' for k, v in WORKLOAD_SELECTOR.items())}`"


def _nodes_planned(cfg):
    return {n.name: n for n in cfg.nodes}


def _is_2xx(code: str) -> bool:
    return code.isdigit() and 200 <= int(code) < 300


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
                                        want, f"podCIDRs: {shown}", look))
                continue
            net = ipaddress.ip_network(got[0], strict=False)
            if not in_networks(got[0], cfg.pod_subnets) or net.prefixlen != masks[version]:
                findings.append(Finding(f"{planned.name}: {family_name(version)} podCIDR {got[0]} is not {want}",
                                        want, f"podCIDRs: {shown}", look))
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


def evaluate_node_internal_ips(nodes: Mapping, cfg, minor: int) -> List[Finding]:
    """``status.addresses`` InternalIPs equal the planned addresses, one per family.

    Before 1.20 the kubelet takes one ``--node-ip``: a missing IPv6 InternalIP is then a
    note (an expected limitation of the version), not a failure.
    """
    findings = []
    by_name = node_by_name(nodes)
    look = "kubelet --node-ip (KUBELET_EXTRA_ARGS / kubeletExtraArgs node-ip) on the node; it must name the lab interface's addresses"
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
                if want.version == 6 and minor < DUAL_NODE_IP_MINOR:
                    missing_v6_expected.append(planned.name)
                    continue
                findings.append(Finding(f"{planned.name}: no {fam} InternalIP", f"InternalIP {want}",
                                        f"InternalIPs: {shown}", look))
            elif [ip(a) for a in got] != [want]:
                hint = look
                if any(ip(a) not in (cfg.network_ipv4 if want.version == 4 else cfg.network_ipv6) for a in got):
                    hint = "the kubelet picked another interface (the Vagrant NAT one?): set --node-ip; " + look
                findings.append(Finding(f"{planned.name}: {fam} InternalIP is {', '.join(got)}, not {want}",
                                        f"InternalIP {want}", f"InternalIPs: {shown}", hint))
    if missing_v6_expected:
        findings.append(note(f"no IPv6 InternalIP on {', '.join(missing_v6_expected)}: expected limitation of "
                             f"Kubernetes 1.{minor} (kubelet --node-ip takes one address until 1.20)"))
    return findings


def check_node_internal_ips(vctx) -> CheckResult:
    """Check ``node-internal-ips``."""
    findings = evaluate_node_internal_ips(vctx.get_json("nodes"), vctx.cfg, vctx.minor)
    both = vctx.minor >= DUAL_NODE_IP_MINOR
    return result_from_findings(findings, "every node reports its planned " + ("IPv4 and IPv6 InternalIPs" if both else "IPv4 InternalIP"))


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


# =========================================================================== service-families


def _slices_for(slices: Optional[Mapping], svc: Mapping) -> List[dict]:
    meta = svc.get("metadata") or {}
    found = []
    for sl in items(slices):
        smeta = sl.get("metadata") or {}
        if smeta.get("namespace") == meta.get("namespace") and \
                (smeta.get("labels") or {}).get("kubernetes.io/service-name") == meta.get("name"):
            found.append(sl)
    return found


def _endpoints_for(endpoints: Optional[Mapping], svc: Mapping) -> Optional[dict]:
    meta = svc.get("metadata") or {}
    for ep in items(endpoints):
        emeta = ep.get("metadata") or {}
        if emeta.get("namespace") == meta.get("namespace") and emeta.get("name") == meta.get("name"):
            return ep
    return None


def evaluate_service_families(services: Mapping, slices: Optional[Mapping], endpoints: Optional[Mapping],
                              cfg, minor: int) -> List[Finding]:
    """Each Service's families, cluster IPs and endpoints agree.

    1.20+: ``ipFamilyPolicy`` vs the number of ``ipFamilies``; ``clusterIPs`` in the same
    order and families, ``clusterIP == clusterIPs[0]``, inside the service subnets; its
    EndpointSlices' addressTypes are exactly its families; at least one nginx Service is
    dual-stack. 1.17: ``spec.ipFamily`` matches the single ``clusterIP``; EndpointSlices
    (beta, controller off by default) when present, else the Endpoints' addresses.
    """
    findings = []
    look = "the Service manifest (ipFamilyPolicy/ipFamilies) and kube-apiserver --service-cluster-ip-range (both families)"
    legacy = minor < DUAL_SERVICE_MINOR
    svc_items = [s for s in items(services) if (s.get("spec") or {}).get("type") != "ExternalName"]
    if not svc_items:
        return [Finding("no Services found", "Services", "none", "`kubectl get svc -A`")]
    slices_served = slices is not None and bool(items(slices))
    for svc in svc_items:
        name = name_of(svc)
        spec = svc.get("spec") or {}
        ips = service_cluster_ips(svc)
        headless = spec.get("clusterIP") == "None"
        if legacy and not spec.get("ipFamilies"):
            fam = family_of_name(spec.get("ipFamily", ""))
            if fam is None:
                findings.append(Finding(f"{name}: no spec.ipFamily", "spec.ipFamily IPv4 or IPv6",
                                        f"ipFamily {spec.get('ipFamily')!r}",
                                        "feature gate IPv6DualStack=true on kube-apiserver (kubeadm featureGates)"))
                continue
            families = [fam]
        else:
            policy = spec.get("ipFamilyPolicy")
            names = list(spec.get("ipFamilies") or [])
            families = [family_of_name(f) for f in names]
            want = {"SingleStack": 1, "PreferDualStack": 2, "RequireDualStack": 2}.get(policy)
            if want is None:
                findings.append(Finding(f"{name}: ipFamilyPolicy {policy!r}", "SingleStack, PreferDualStack or RequireDualStack",
                                        f"ipFamilyPolicy {policy!r}", look))
            elif len(names) != want or None in families or len(set(families)) != len(families):
                findings.append(Finding(f"{name}: ipFamilyPolicy {policy} with ipFamilies {names}",
                                        f"{want} distinct famil{'y' if want == 1 else 'ies'}", f"ipFamilies {names}",
                                        look + ("; PreferDualStack with one family means the cluster is not dual-stack"
                                                if policy == "PreferDualStack" else "")))
        if headless:
            continue
        shown = ", ".join(ips) or "none"
        if [family(a) for a in ips] != families:
            findings.append(Finding(f"{name}: clusterIPs {shown} do not match its families "
                                    f"{', '.join(family_name(f) for f in families)}",
                                    f"one cluster IP per family, in order {', '.join(family_name(f) for f in families)}",
                                    f"clusterIPs {shown}", look))
        if spec.get("clusterIPs") and spec.get("clusterIP") != spec["clusterIPs"][0]:
            findings.append(Finding(f"{name}: clusterIP {spec.get('clusterIP')} is not clusterIPs[0]",
                                    "clusterIP == clusterIPs[0]", f"clusterIP {spec.get('clusterIP')}, clusterIPs {shown}", look))
        outside = [a for a in ips if not in_networks(a, cfg.service_subnets)]
        if outside:
            findings.append(Finding(f"{name}: cluster IP {', '.join(outside)} outside the service subnets",
                                    f"inside {', '.join(str(n) for n in cfg.service_subnets)}", f"clusterIPs {shown}", look))
        if not spec.get("selector"):
            continue
        want_types = sorted(family_name(f) for f in families)
        if slices_served:
            own = _slices_for(slices, svc)
            types = sorted({sl.get("addressType") for sl in own})
            if types != want_types:
                findings.append(Finding(f"{name}: EndpointSlices of type {', '.join(types) or 'none'}",
                                        f"EndpointSlices of type {', '.join(want_types)}",
                                        f"{len(own)} slices: {', '.join(types) or 'none'}",
                                        "kube-controller-manager's endpointslice controller; "
                                        f"`kubectl get endpointslices -n {name.split('/')[0]} -l kubernetes.io/service-name={name.split('/')[-1]}`"))
            for sl in own:
                kind = family_of_name(sl.get("addressType", ""))
                wrong = [a for e in sl.get("endpoints") or [] for a in e.get("addresses") or [] if family(a) != kind]
                if wrong:
                    findings.append(Finding(f"{name}: EndpointSlice {name_of(sl)} of type {sl.get('addressType')} holds {', '.join(wrong)}",
                                            f"only {sl.get('addressType')} addresses", ", ".join(wrong), "the endpointslice controller"))
        elif legacy:
            ep = _endpoints_for(endpoints, svc)
            addresses = [a.get("ip") for s in (ep or {}).get("subsets") or [] for a in
                         (s.get("addresses") or []) + (s.get("notReadyAddresses") or [])]
            wrong = [a for a in addresses if family(a) not in families]
            if wrong:
                findings.append(Finding(f"{name}: Endpoints hold {', '.join(wrong)}, not {family_name(families[0])}",
                                        f"{family_name(families[0])} endpoint addresses", ", ".join(addresses),
                                        "IPv6DualStack feature gate on kube-controller-manager"))
        else:
            findings.append(Finding(f"{name}: no EndpointSlices", f"EndpointSlices of type {', '.join(want_types)}",
                                    "no discovery.k8s.io/v1 EndpointSlices in the cluster",
                                    "kube-controller-manager (endpointslice controller) logs"))
    if legacy:
        findings.append(note(f"Kubernetes 1.{minor} Services are single-family (spec.ipFamily); dual-stack Services arrived in 1.20"))
        if not slices_served:
            findings.append(note(f"no EndpointSlices (the controller is off by default before 1.{ENDPOINTSLICE_DEFAULT_MINOR}): "
                                 "checked the Endpoints' address families instead"))
    else:
        nginx = nginx_services(services)
        if nginx and not any(len(service_families(s)) == 2 for s in nginx):
            findings.append(Finding("no nginx Service is dual-stack", "at least one nginx Service with two ipFamilies",
                                    ", ".join(f"{name_of(s)}: {(s.get('spec') or {}).get('ipFamilies')}" for s in nginx),
                                    "ipFamilyPolicy: RequireDualStack on the LoadBalancer Service"))
    return findings


def check_service_families(vctx) -> CheckResult:
    """Check ``service-families``."""
    services = vctx.get_json("services", "-A")
    if vctx.minor < DUAL_SERVICE_MINOR:
        slices = vctx.try_get_json("endpointslices.v1beta1.discovery.k8s.io", "-A")
        endpoints = vctx.try_get_json("endpoints", "-A")
    else:
        slices = vctx.try_get_json("endpointslices.discovery.k8s.io", "-A")
        endpoints = None
    findings = evaluate_service_families(services, slices, endpoints, vctx.cfg, vctx.minor)
    count = len([s for s in items(services) if (s.get("spec") or {}).get("type") != "ExternalName"])
    return result_from_findings(findings, f"{count} Services: families, cluster IPs and endpoints agree")


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


def evaluate_cluster_dns(outputs: Mapping[str, Optional[str]], services: Mapping) -> List[Finding]:
    """A records = the IPv4 cluster IPs, AAAA = the IPv6 ones (empty for a missing family)."""
    findings = []
    queries = dns_queries(services)
    look = "CoreDNS (`kubectl -n kube-system logs -l k8s-app=kube-dns`), the kube-dns Service, the pod's /etc/resolv.conf"
    for source, text in outputs.items():
        if text is None:
            findings.append(unreachable(source, "dig", "dig output", "`kubectl exec` into the client pod"))
            continue
        sections = parse_sections(text)
        for key, (svc, rtype, fqdn) in queries.items():
            version = 4 if rtype == "A" else 6
            want = sorted(str(ip(a)) for a in service_cluster_ips(svc) if family(a) == version)
            section = sections.get(key)
            got = sorted(str(a) for a in parse_dig_short(section.output)) if section is not None else []
            if got != want:
                findings.append(Finding(f"{source}: {rtype} {fqdn} answered {', '.join(got) or 'nothing'}",
                                        f"{rtype} {', '.join(want) or '(no record)'}", f"{rtype} {', '.join(got) or '(no record)'}", look))
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
        return result_from_findings([Finding(str(exc), "client pods Ready", "not ready", "`kubectl describe pod` of the client pods")], "")
    script = dns_probe_script(services)
    outputs = {}
    for node_name, pod in clients.items():
        result = vctx.exec_in(WORKLOAD_NAMESPACE, pod, ["sh", "-c", script])
        outputs[f"client on {node_name}"] = result.stdout if result.stdout else None
    findings = evaluate_cluster_dns(outputs, services)
    return result_from_findings(findings, f"{len(nginx_services(services))} nginx Services resolve to their cluster IPs "
                                          "(A = IPv4, AAAA = IPv6) from pods on every node")


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


# =========================================================================== calico-pools

CALICO_V4 = "projectcalico.org/IPv4Address"
CALICO_V6 = "projectcalico.org/IPv6Address"


def evaluate_calico(pools: Optional[Mapping], calico_pods: Optional[Mapping], nodes: Mapping, cfg) -> List[Finding]:
    """An enabled IPPool per family equal to the pod subnet (and none enabled outside it);
    calico-node Ready on every node; each Node's Calico address annotations are the planned
    addresses on the lab network."""
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
        annotations = ((nodes_by_name.get(planned.name) or {}).get("metadata") or {}).get("annotations") or {}
        for key, want, net, env in ((CALICO_V4, planned.ipv4, cfg.network_ipv4, "IP"),
                                    (CALICO_V6, planned.ipv6, cfg.network_ipv6, "IP6")):
            value = annotations.get(key)
            if ip(value) != want:
                findings.append(Finding(f"{planned.name}: Calico detected {value or 'no address'} for {family_name(want.version)}",
                                        f"{key}: {want}/{net.prefixlen}", f"{key}: {value}",
                                        f"calico-node env {env}=autodetect with IP{'6' if env == 'IP6' else ''}_AUTODETECTION_METHOD "
                                        f"picking the lab interface (e.g. cidr={net})" + ("; FELIX_IPV6SUPPORT=true" if env == "IP6" else "")))
    return findings


def check_calico_pools(vctx) -> CheckResult:
    """Check ``calico-pools``."""
    pools = vctx.try_get_json("ippools.crd.projectcalico.org")
    calico_pods = vctx.try_get_json("pods", "-A", "-l", "k8s-app=calico-node")
    findings = evaluate_calico(pools, calico_pods, vctx.get_json("nodes"), vctx.cfg)
    return result_from_findings(findings, f"IPPools {', '.join(str(n) for n in vctx.cfg.pod_subnets)} enabled; "
                                          f"calico-node Ready with both addresses on {len(vctx.cfg.nodes)} nodes")


# =========================================================================== metallb-ingress


def _in_pool(address, cfg) -> bool:
    parsed = ip(address)
    if parsed is None:
        return False
    return parsed in (cfg.metallb_ipv4_range if parsed.version == 4 else cfg.metallb_ipv6_range)


def evaluate_load_balancers(services: Mapping, cfg) -> Tuple[List[Finding], List[Target]]:
    """Every LoadBalancer Service has ingress IPs, one per family of the Service, from the
    MetalLB pools; returns the findings and the HTTP targets to try from the host."""
    findings, targets = [], []
    look = "MetalLB: `kubectl -n metallb-system logs -l component=controller`, its IPAddressPool (0.13+) or ConfigMap (0.9)"
    for svc in items(services):
        spec = svc.get("spec") or {}
        if spec.get("type") != "LoadBalancer":
            continue
        name = name_of(svc)
        families = service_families(svc)
        want = ", ".join(family_name(f) for f in families)
        ips = load_balancer_ips(svc)
        if not ips:
            names = load_balancer_hostnames(svc)
            findings.append(Finding(f"{name}: no LoadBalancer ingress IP", f"ingress IPs ({want}) from the MetalLB pools",
                                    "hostnames " + ", ".join(names) if names else "pending (no ingress)", look))
            continue
        got = sorted(family(a) for a in ips)
        if got != sorted(families):
            hint = look
            if len(families) == 1:
                hint = ("MetalLB 0.9 cannot choose a family: give this Service a pool of its family only "
                        "(metallb.universe.tf/address-pool annotation); " + look)
            findings.append(Finding(f"{name}: ingress {', '.join(ips)} does not match its families {want}",
                                    f"one ingress IP per family: {want}", f"ingress {', '.join(ips)}", hint))
        outside = [a for a in ips if not _in_pool(a, cfg)]
        if outside:
            findings.append(Finding(f"{name}: ingress {', '.join(outside)} outside the MetalLB pools",
                                    f"inside {cfg.metallb_ipv4_range} / {cfg.metallb_ipv6_range}", f"ingress {', '.join(ips)}", look))
        port = service_tcp_port(svc)
        if port is not None:
            for address in ips:
                targets.append(Target(f"lb-{(svc.get('metadata') or {}).get('name')}/{family(address)}",
                                      http_url(address, port["port"]), f"LoadBalancer {name} {address}:{port['port']}",
                                      "MetalLB speaker (layer 2: ARP / NDP answers on the lab network), ipvsadm -Ln"))
    return findings, targets


def host_probe(vctx, targets: Sequence[Target], token: Optional[str] = None) -> Dict[str, str]:
    """HTTP code of each target, curled from the host."""
    codes = {}
    for target in targets:
        result = vctx.host_run(curl_command(target.url, token))
        codes[target.key] = (result.stdout.strip()[-3:] if result.stdout.strip() else "000")
    return codes


def evaluate_host_codes(codes: Mapping[str, str], targets: Sequence[Target]) -> List[Finding]:
    """Every target answered 2xx to the host."""
    findings = []
    for target in targets:
        code = codes.get(target.key, "000")
        if not _is_2xx(code):
            findings.append(Finding(f"host -> {target.what}: HTTP {code}", f"HTTP 2xx from {target.url}",
                                    f"HTTP {code}" + (" (no answer)" if code == "000" else ""), target.look_at))
    return findings


def missing_load_balancers(services: Mapping, cfg) -> Optional[CheckResult]:
    """A failure when a LoadBalancer Service the lab deploys is absent or has no ingress yet."""
    from ..workloads import lb_addresses  # noqa: PLC0415 - the lab's own plan of LoadBalancers

    have = {(s.get("metadata") or {}).get("name"): s for s in items(services)
            if (s.get("spec") or {}).get("type") == "LoadBalancer"}
    absent = [name for name in lb_addresses(cfg) if name not in have or not load_balancer_ips(have[name])]
    if not absent:
        return None
    return failed(f"LoadBalancer Service(s) without an ingress address: {', '.join(absent)}",
                  "every LoadBalancer the lab deploys with MetalLB addresses of its families",
                  "; ".join(f"{n}: {'absent' if n not in have else 'no status.loadBalancer.ingress'}" for n in absent),
                  "invoke lab.up (step metallb, workloads); kubectl -n metallb-system logs deploy/controller")


def check_metallb_ingress(vctx) -> CheckResult:
    """Check ``metallb-ingress``."""
    services = vctx.get_json("services", "-A")
    missing = missing_load_balancers(services, vctx.cfg)
    if missing is not None:
        return missing
    findings, targets = evaluate_load_balancers(services, vctx.cfg)
    findings += evaluate_host_codes(host_probe(vctx, targets), targets)
    return result_from_findings(findings, f"{len(targets)} LoadBalancer addresses from the MetalLB pools answer HTTP from the host")


# =========================================================================== client-ip-preserved


def local_targets(services: Mapping) -> List[Tuple[Target, int]]:
    """(target, family) for every ingress IP of the nginx LoadBalancer Services with policy Local."""
    found = []
    for svc in nginx_services(services):
        spec = svc.get("spec") or {}
        port = service_tcp_port(svc)
        if spec.get("type") != "LoadBalancer" or not is_local(svc) or port is None:
            continue
        name = (svc.get("metadata") or {}).get("name")
        for address in load_balancer_ips(svc):
            found.append((Target(f"local-{name}/{family(address)}", http_url(address, port["port"]),
                                 f"{name} {address}", "externalTrafficPolicy of the Service"), family(address)))
    return found


def evaluate_client_ip(log_text: str, probes: Mapping[str, Tuple[Target, int, str]], codes: Mapping[str, str], cfg) -> List[Finding]:
    """For each probe (token -> target, family, key) the nginx log line carrying the token
    shows the host's own address of that family (``cfg.gateway_ipv4/6``)."""
    findings = []
    lines = parse_access_log(log_text)
    nodes = {str(a): n.name for n in cfg.nodes for a in (n.ipv4, n.ipv6)}
    for token, (target, version, key) in probes.items():
        want = cfg.gateway_ipv4 if version == 4 else cfg.gateway_ipv6
        code = codes.get(key, "000")
        if not _is_2xx(code):
            findings.append(Finding(f"host -> {target.what}: HTTP {code}", f"HTTP 2xx from {target.url}", f"HTTP {code}",
                                    "metallb-ingress"))
            continue
        hits = [line for line in lines if token in line.request]
        if not hits:
            findings.append(Finding(f"{target.what}: the request is not in the nginx logs", f"a log line with {token}",
                                    f"{len(lines)} log lines, none with the token", LOOK_WORKLOAD + " and `kubectl logs`"))
            continue
        seen = ip(hits[-1].remote_addr)
        if seen != want:
            why = (f"{nodes[str(seen)]}'s address: the request was SNATed" if str(seen) in nodes else "not the host")
            findings.append(Finding(f"{target.what}: nginx saw client {seen} ({why})", f"client {want} (the host)",
                                    f"client {seen}", "externalTrafficPolicy: Local on the Service; kube-proxy ipvs masquerading"))
    return findings


def check_client_ip_preserved(vctx) -> CheckResult:
    """Check ``client-ip-preserved``."""
    services = vctx.get_json("services", "-A")
    missing = missing_load_balancers(services, vctx.cfg)
    if missing is not None:
        return missing
    found = local_targets(services)
    if not found:
        return failed("no nginx LoadBalancer Service has externalTrafficPolicy: Local",
                      "my-nginx-svc-ipv6-local with externalTrafficPolicy: Local", "none",
                      "manifests/services.yaml in the state directory")
    probes, codes = {}, {}
    for target, version in found:
        token = f"{secrets.token_hex(6)}-{version}"
        probes[token] = (target, version, target.key)
        codes.update(host_probe(vctx, [target], token))
    selector = ",".join(f"{k}={v}" for k, v in WORKLOAD_SELECTOR.items())
    logs = vctx.kubectl_run(["logs", "-n", WORKLOAD_NAMESPACE, "-l", selector, "--tail=500", "--all-containers=true",
                             "--max-log-requests=20"])
    findings = evaluate_client_ip(logs.stdout, probes, codes, vctx.cfg)
    return result_from_findings(findings, f"nginx logged the host's own address ({vctx.cfg.gateway_ipv4}, {vctx.cfg.gateway_ipv6} by family) "
                                          f"for {len(found)} requests through Local LoadBalancer addresses")


# =========================================================================== external-ips


def evaluate_external_ips(services: Mapping, cfg) -> Tuple[List[Finding], List[Target]]:
    """The planned external IPs are each some nginx Service's externalIP, of one of its
    families, on the lab network; returns findings and the host's HTTP targets."""
    findings, targets = [], []
    used = {}
    for svc in nginx_services(services):
        spec = svc.get("spec") or {}
        port = service_tcp_port(svc)
        name = name_of(svc)
        families = service_families(svc)
        for address in spec.get("externalIPs") or []:
            used[str(ip(address))] = name
            if family(address) not in families:
                findings.append(Finding(f"{name}: externalIP {address} is not of its families "
                                        f"{', '.join(family_name(f) for f in families)}",
                                        "externalIPs of the Service's families", f"externalIPs {spec.get('externalIPs')}",
                                        "the Service manifest"))
            if not in_networks(address, (cfg.network_ipv4, cfg.network_ipv6)):
                findings.append(Finding(f"{name}: externalIP {address} is off the lab network", f"inside {cfg.network_ipv4} / {cfg.network_ipv6}",
                                        str(address), "the Service manifest / lab.external_ipv4/6"))
            if port is not None:
                targets.append(Target(f"ext-{(svc.get('metadata') or {}).get('name')}/{address}", http_url(address, port["port"]),
                                      f"externalIP {name} {address}:{port['port']}",
                                      "nothing answers ARP/NDP for an externalIP by itself: the address must be routed to a node "
                                      "(host route or the address on a node); ipvsadm -Ln"))
    for planned in (cfg.external_ipv4, cfg.external_ipv6):
        if str(planned) not in used:
            findings.append(Finding(f"no nginx Service has externalIP {planned}", f"a Service with externalIPs [{planned}]",
                                    "externalIPs in use: " + (", ".join(used) or "none"), "the workload manifests (lab.external_ipv4/6)"))
    return findings, targets


def check_external_ips(vctx) -> CheckResult:
    """Check ``external-ips``."""
    services = vctx.get_json("services", "-A")
    findings, targets = evaluate_external_ips(services, vctx.cfg)
    findings += evaluate_host_codes(host_probe(vctx, targets), targets)
    return result_from_findings(findings, f"{len(targets)} externalIP addresses answer HTTP from the host")


# =========================================================================== nginx-listens

HTTP_PORT = 80


def evaluate_nginx_listens(outputs: Mapping[str, Optional[Section]]) -> List[Finding]:
    """Each pod's /proc/net/tcp has 0.0.0.0:80 and /proc/net/tcp6 has [::]:80, in LISTEN."""
    findings = []
    look = "nginx config: `listen 80;` and `listen [::]:80;` (the official image adds the IPv6 one since 1.19 via its entrypoint)"
    if not outputs:
        return [Finding(f"no nginx pods found ({WORKLOAD})", "nginx pods", "none", LOOK_WORKLOAD)]
    for pod, section in outputs.items():
        if section is None or section.returncode != 0:
            findings.append(Finding(f"{pod}: could not read /proc/net/tcp", "the socket tables",
                                    (section.output.strip() if section else "") or "no output", f"`kubectl exec {pod} -- cat /proc/net/tcp`"))
            continue
        sockets = [s for s in parse_proc_net_tcp(section.output) if s.listening and s.port == HTTP_PORT]
        for want in (ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("::")):
            if not any(s.address == want for s in sockets):
                shown = ", ".join(f"[{s.address}]:{s.port}" if s.address.version == 6 else f"{s.address}:{s.port}" for s in sockets) or "nothing"
                label = "0.0.0.0:80" if want.version == 4 else "[::]:80"
                findings.append(Finding(f"{pod}: nginx does not listen on {label}", f"LISTEN on {label}",
                                        f"listening on port 80: {shown}", look))
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
    findings = evaluate_nginx_listens(outputs)
    return result_from_findings(findings, f"nginx listens on 0.0.0.0:80 and [::]:80 in {len(outputs)} pods")
