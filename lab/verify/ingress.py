"""Cluster checks of traffic from the host: metallb-ingress, client-ip-preserved, external-ips."""

from __future__ import annotations

import secrets
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .common import LOOK_WORKLOAD, _is_2xx
from .kube import (
    is_local, items, load_balancer_hostnames, load_balancer_ips, name_of, nginx_services, service_families,
    service_tcp_port,
)
from .model import CheckResult, Finding, failed, family, family_name, in_networks, ip, result_from_findings
from .parse import parse_access_log
from .probes import Target
from .session import WORKLOAD_NAMESPACE, WORKLOAD_SELECTOR, curl_command, http_url


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


