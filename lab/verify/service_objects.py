"""Cluster check of the Services: service-families."""

from __future__ import annotations

from typing import List, Mapping, Optional

from .common import DUAL_SERVICE_MINOR, ENDPOINTSLICE_DEFAULT_MINOR
from .kube import items, name_of, nginx_services, service_cluster_ips, service_families
from .model import (
    CheckResult, Finding, family, family_name, family_of_name, in_networks, note, result_from_findings,
)


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


