"""Cluster checks of traffic from the host: metallb-ingress, client-ip-preserved, external-ips."""

from __future__ import annotations

import secrets
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .. import workloads
from .common import LOOK_WORKLOAD, _is_2xx, families_text
from .kube import (
    is_local, items, load_balancer_hostnames, load_balancer_ips, name_of, nginx_services, service_families,
    service_tcp_port,
)
from .model import (
    CheckResult, Finding, failed, family, family_name, in_networks, ip, lab_families, note, result_from_findings,
)
from .parse import parse_access_log
from .probes import Target
from .session import WORKLOAD_NAMESPACE, WORKLOAD_SELECTOR, curl_command, http_url

#: How long client-ip-preserved waits for nginx to log the request, and how often it looks.
LOG_WAIT_S = 10
LOG_POLL_S = 1

DUAL_POLICIES = ("PreferDualStack", "RequireDualStack")


# =========================================================================== metallb-ingress


def _in_pool(address, cfg) -> bool:
    parsed = ip(address)
    if parsed is None:
        return False
    return parsed in (cfg.metallb_ipv4_range if parsed.version == 4 else cfg.metallb_ipv6_range)


def _meta(address) -> dict:
    return {"family": family_name(family(address)), "address": str(address)}


def evaluate_load_balancers(services: Mapping, cfg) -> Tuple[List[Finding], List[Target]]:
    """Every LoadBalancer Service has ingress IPs, one per family of the Service, from the
    MetalLB pools; a dual-stack policy has both families; the lab's LoadBalancers have the
    addresses they ask for. Returns the findings and the HTTP targets to try from the host."""
    findings, targets = [], []
    look = "MetalLB: `kubectl -n metallb-system logs -l component=controller`, its IPAddressPool (0.13+) or ConfigMap (0.9)"
    planned = workloads.lb_addresses(cfg)
    for svc in items(services):
        spec = svc.get("spec") or {}
        if spec.get("type") != "LoadBalancer":
            continue
        name = name_of(svc)
        short = (svc.get("metadata") or {}).get("name")
        families = service_families(svc)
        want = families_text(families)
        if spec.get("ipFamilyPolicy") in DUAL_POLICIES and families != lab_families(cfg):
            lacking = [family_name(f) for f in lab_families(cfg) if f not in families]
            findings.append(Finding(f"{name}: ipFamilyPolicy {spec['ipFamilyPolicy']} but only {want or 'no family'}",
                                    f"ipFamilies {families_text(lab_families(cfg))}", f"ipFamilies {spec.get('ipFamilies')}",
                                    "kube-apiserver --service-cluster-ip-range needs a range of each family; "
                                    "service-families", family=", ".join(lacking)))
        ips = load_balancer_ips(svc)
        if not ips:
            names = load_balancer_hostnames(svc)
            findings.append(Finding(f"{name}: no LoadBalancer ingress IP", f"ingress IPs ({want}) from the MetalLB pools",
                                    "hostnames " + ", ".join(names) if names else "pending (no ingress)", look))
            continue
        got = sorted(family(a) for a in ips)
        if got != sorted(families):
            hint = look
            if len(families) == 1 and cfg.profile.legacy_metallb:
                hint = ("MetalLB 0.9 cannot choose a family: give this Service a pool of its family only "
                        "(metallb.universe.tf/address-pool annotation); " + look)
            findings.append(Finding(f"{name}: ingress {', '.join(ips)} does not match its families {want}",
                                    f"one ingress IP per family: {want}", f"ingress {', '.join(ips)}", hint))
        for address in planned.get(short, ()):
            if str(address) not in {str(ip(a)) for a in ips}:
                findings.append(Finding(f"{name}: no ingress {address} ({family_name(address.version)})",
                                        f"ingress {', '.join(str(a) for a in planned[short])} (what the Service asks MetalLB for)",
                                        f"ingress {', '.join(ips)}", look, **_meta(address)))
        outside = [a for a in ips if not _in_pool(a, cfg)]
        if outside:
            findings.append(Finding(f"{name}: ingress {', '.join(outside)} outside the MetalLB pools",
                                    f"inside {cfg.metallb_ipv4_range} / {cfg.metallb_ipv6_range}", f"ingress {', '.join(ips)}",
                                    look, address=", ".join(outside)))
        port = service_tcp_port(svc)
        if port is not None:
            for address in ips:
                targets.append(Target(f"lb-{short}/{family(address)}", http_url(address, port["port"]),
                                      f"LoadBalancer {name} {address}:{port['port']}",
                                      "MetalLB speaker (layer 2: ARP / NDP answers on the lab network), ipvsadm -Ln",
                                      **_meta(address)))
    return findings, targets


def host_probe(vctx, targets: Sequence[Target], token: Optional[str] = None,
               errors: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """HTTP code of each target, curled from the host (never through a proxy); curl's error
    text goes to ``errors`` when given."""
    codes = {}
    for target in targets:
        result = vctx.host_run(curl_command(target.url, token))
        codes[target.key] = (result.stdout.strip()[-3:] if result.stdout.strip() else "000")
        if errors is not None:
            errors[target.key] = (result.stderr or "").strip()
    return codes


def evaluate_host_codes(codes: Mapping[str, str], targets: Sequence[Target],
                        errors: Optional[Mapping[str, str]] = None) -> List[Finding]:
    """Every target answered 2xx to the host."""
    findings = []
    for target in targets:
        code = codes.get(target.key, "000")
        if not _is_2xx(code):
            findings.append(Finding(f"host -> {target.what}: HTTP {code}", f"HTTP 2xx from {target.url}",
                                    f"HTTP {code}" + (" (no answer)" if code == "000" else ""), target.look_at,
                                    node="the host", family=target.family, address=target.address,
                                    error=(errors or {}).get(target.key, "")))
    return findings


def missing_load_balancers(services: Mapping, cfg) -> Optional[CheckResult]:
    """A failure when a LoadBalancer Service the lab deploys is absent or has no ingress yet."""
    have = {(s.get("metadata") or {}).get("name"): s for s in items(services)
            if (s.get("spec") or {}).get("type") == "LoadBalancer"}
    absent = [name for name in workloads.lb_addresses(cfg) if name not in have or not load_balancer_ips(have[name])]
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
    errors: Dict[str, str] = {}
    findings += evaluate_host_codes(host_probe(vctx, targets, errors=errors), targets, errors)
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
                                 f"{name} {address}", "externalTrafficPolicy of the Service", **_meta(address)), family(address)))
    return found


def _logged(lines, token: str):
    return [line for line in lines if token in line.request]


def evaluate_client_ip(log_text: str, probes: Mapping[str, Tuple[Target, int, str]], codes: Mapping[str, str], cfg,
                       errors: Optional[Mapping[str, str]] = None, waited: str = "") -> List[Finding]:
    """For each probe (token -> target, family, key) the nginx log line carrying the token
    shows the host's own address of that family (``cfg.gateway_ipv4/6``). ``errors``: curl's
    error text per key and the ``kubectl logs`` error under ``"logs"``; ``waited`` says how
    long the logs were read for."""
    findings = []
    lines = parse_access_log(log_text)
    nodes = {str(a): n.name for n in cfg.nodes for a in (n.ipv4, n.ipv6)}
    for token, (target, version, key) in probes.items():
        want = cfg.gateway_ipv4 if version == 4 else cfg.gateway_ipv6
        where = {"family": target.family or family_name(version), "address": target.address}
        code = codes.get(key, "000")
        if not _is_2xx(code):
            findings.append(Finding(f"host -> {target.what}: HTTP {code}", f"HTTP 2xx from {target.url}", f"HTTP {code}",
                                    "metallb-ingress", node="the host", error=(errors or {}).get(key, ""), **where))
            continue
        hits = _logged(lines, token)
        if not hits:
            findings.append(Finding(f"{target.what}: the request is not in the nginx logs", f"a log line with {token}",
                                    f"{len(lines)} log lines, none with the token" + (f" ({waited})" if waited else ""),
                                    LOOK_WORKLOAD + " and `kubectl logs`", error=(errors or {}).get("logs", ""), **where))
            continue
        seen = ip(hits[-1].remote_addr)
        if seen != want:
            why = (f"{nodes[str(seen)]}'s address: the request was SNATed" if str(seen) in nodes else "not the host")
            findings.append(Finding(f"{target.what}: nginx saw client {seen} ({why})", f"client {want} (the host)",
                                    f"client {seen}", "externalTrafficPolicy: Local on the Service; kube-proxy ipvs masquerading",
                                    pod=hits[-1].pod, **where))
    return findings


def local_family_gaps(found: Sequence[Tuple[Target, int]], cfg) -> List[Finding]:
    """What client-ip-preserved cannot prove: a Local LoadBalancer address the lab plans
    without a probe (its Service lacks it), and, as a note, a family of the lab none of the
    planned Local LoadBalancers has (the profile's workload gives it none)."""
    findings = []
    probed = {t.address for t, _v in found}
    planned = [a for name, addrs in workloads.lb_addresses(cfg).items() for a in addrs]
    for address in planned:
        if str(address) not in probed:
            findings.append(Finding(f"no probe of the Local LoadBalancer address {address} ({family_name(address.version)})",
                                    f"Local LoadBalancer addresses {', '.join(str(a) for a in planned)}",
                                    "Local addresses: " + (", ".join(sorted(probed)) or "none"),
                                    "metallb-ingress; the Services in manifests/services.yaml", **_meta(address)))
    for version in lab_families(cfg):
        if not any(a.version == version for a in planned):
            findings.append(note(f"the {cfg.profile.name} workload has no {family_name(version)} LoadBalancer with "
                                 f"externalTrafficPolicy: Local, so client-ip-preserved proves {family_name(version)} nowhere"))
    return findings


def read_access_logs(vctx, probes: Mapping[str, Tuple[Target, int, str]], codes: Mapping[str, str]):
    """The nginx logs, read until every answered probe's token is in them or :data:`LOG_WAIT_S`
    passed (nginx writes its log line after the answer): (text, kubectl's error text, how long)."""
    selector = ",".join(f"{k}={v}" for k, v in WORKLOAD_SELECTOR.items())
    wanted = [token for token, (_t, _v, key) in probes.items() if _is_2xx(codes.get(key, "000"))]
    start = vctx.clock()
    reads = 0
    while True:
        logs = vctx.kubectl_run(["logs", "-n", WORKLOAD_NAMESPACE, "-l", selector, "--tail=500", "--all-containers=true",
                                 "--max-log-requests=20"])
        reads += 1
        lines = parse_access_log(logs.stdout)
        pending = [token for token in wanted if not _logged(lines, token)]
        elapsed = vctx.clock() - start
        if not pending or elapsed >= LOG_WAIT_S:
            return logs.stdout, (logs.stderr or "").strip(), f"read {reads} times over {elapsed:.0f} s"
        vctx.sleep(LOG_POLL_S)


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
    probes, codes, errors = {}, {}, {}
    for target, version in found:
        token = f"{secrets.token_hex(6)}-{version}"
        probes[token] = (target, version, target.key)
        codes.update(host_probe(vctx, [target], token, errors))
    text, errors["logs"], waited = read_access_logs(vctx, probes, codes)
    findings = local_family_gaps(found, vctx.cfg) + evaluate_client_ip(text, probes, codes, vctx.cfg, errors, waited)
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
                findings.append(Finding(f"{name}: externalIP {address} is not of its families {families_text(families)}",
                                        "externalIPs of the Service's families", f"externalIPs {spec.get('externalIPs')}",
                                        "the Service manifest", **_meta(address)))
            if not in_networks(address, (cfg.network_ipv4, cfg.network_ipv6)):
                findings.append(Finding(f"{name}: externalIP {address} is off the lab network", f"inside {cfg.network_ipv4} / {cfg.network_ipv6}",
                                        str(address), "the Service manifest / lab.external_ipv4/6", **_meta(address)))
            if port is not None:
                targets.append(Target(f"ext-{(svc.get('metadata') or {}).get('name')}/{address}", http_url(address, port["port"]),
                                      f"externalIP {name} {address}:{port['port']}",
                                      "nothing answers ARP/NDP for an externalIP by itself: the address must be routed to a node "
                                      "(host route or the address on a node); ipvsadm -Ln", **_meta(address)))
    for planned in (cfg.external_ipv4, cfg.external_ipv6):
        if str(planned) not in used:
            findings.append(Finding(f"no nginx Service has externalIP {planned}", f"a Service with externalIPs [{planned}]",
                                    "externalIPs in use: " + (", ".join(used) or "none"), "the workload manifests (lab.external_ipv4/6)",
                                    **_meta(planned)))
    return findings, targets


def check_external_ips(vctx) -> CheckResult:
    """Check ``external-ips``."""
    services = vctx.get_json("services", "-A")
    findings, targets = evaluate_external_ips(services, vctx.cfg)
    errors: Dict[str, str] = {}
    findings += evaluate_host_codes(host_probe(vctx, targets, errors=errors), targets, errors)
    return result_from_findings(findings, f"{len(targets)} externalIP addresses answer HTTP from the host")
