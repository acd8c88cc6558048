"""Cluster check of the Services: service-families."""

from __future__ import annotations

from typing import List, Mapping, Optional

from .common import families_text, planned_replicas, planned_services
from .kube import items, name_of, nginx_services, selects, service_cluster_ips, service_families
from .model import (
    CheckResult, Finding, family, family_name, family_of_name, in_networks, note, result_from_findings,
)
from .session import WORKLOAD_SELECTOR


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


def _ready_slice_addresses(slices: List[dict], version: int) -> List[str]:
    """Addresses of the ready endpoints in the slices of one address type (``ready`` unset counts as ready)."""
    found = []
    for sl in slices:
        if family_of_name(sl.get("addressType", "")) != version:
            continue
        for endpoint in sl.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready", True) is not False:
                found.extend(endpoint.get("addresses") or [])
    return found


def _serves_workload(svc: Mapping) -> bool:
    return selects((svc.get("spec") or {}).get("selector"), WORKLOAD_SELECTOR)


def _planned_family_findings(services: Mapping, cfg) -> List[Finding]:
    """Every Service the lab deploys exists, with the families it was rendered with."""
    findings = []
    have = {name_of(s).split("/")[-1]: s for s in nginx_services(services)}
    for name, plan in planned_services(cfg).items():
        want = service_families(plan)
        svc = have.get(name)
        if svc is None:
            findings.append(Finding(f"Service {name} is missing", f"Service {name} ({families_text(want)})", "absent",
                                    "`invoke lab.up` (step workloads) deploys it; manifests/services.yaml in the state directory"))
        elif service_families(svc) != want:
            findings.append(Finding(f"{name_of(svc)}: families {families_text(service_families(svc)) or 'none'}, "
                                    f"not the planned {families_text(want)}", f"ipFamilies {families_text(want)}",
                                    f"ipFamilies {(svc.get('spec') or {}).get('ipFamilies') or (svc.get('spec') or {}).get('ipFamily')}",
                                    "the Service manifest (manifests/services.yaml); kube-apiserver --service-cluster-ip-range "
                                    "with both families", family=", ".join(family_name(f) for f in want if f not in service_families(svc))))
    return findings


def evaluate_service_families(services: Mapping, slices: Optional[Mapping], endpoints: Optional[Mapping],
                              cfg, minor: Optional[int] = None) -> List[Finding]:
    """Each Service's families, cluster IPs and endpoints agree.

    1.20+: ``ipFamilyPolicy`` vs the number of ``ipFamilies``; ``clusterIPs`` in the same
    order and families, ``clusterIP == clusterIPs[0]``, inside the service subnets; its
    EndpointSlices' addressTypes are exactly its families; at least one nginx Service is
    dual-stack. 1.17: ``spec.ipFamily`` matches the single ``clusterIP``; EndpointSlices
    (beta, controller off by default) when present, else the Endpoints' addresses.
    The nginx Services' endpoints hold a ready address of every replica in each of the
    Service's families; the lab's Services have their planned families. The profile
    (``dual_stack_services``, ``endpoint_slices``) decides the era; ``minor`` is accepted
    for older callers.
    """
    findings = []
    look = "the Service manifest (ipFamilyPolicy/ipFamilies) and kube-apiserver --service-cluster-ip-range (both families)"
    legacy = not cfg.profile.dual_stack_services
    replicas = planned_replicas(cfg)
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
                                            f"only {sl.get('addressType')} addresses", ", ".join(wrong), "the endpointslice controller",
                                            family=str(sl.get("addressType")), address=", ".join(wrong)))
            if _serves_workload(svc):
                for version in families:
                    ready = _ready_slice_addresses(own, version)
                    if len(set(ready)) != replicas:
                        findings.append(Finding(
                            f"{name}: {family_name(version)} EndpointSlices hold {len(set(ready))} of {replicas} ready nginx endpoints",
                            f"a ready {family_name(version)} endpoint for each of the {replicas} nginx replicas",
                            f"ready {family_name(version)} endpoints: {', '.join(ready) or 'none'}",
                            "pod-ips (do the pods have that family?), nginx readiness; "
                            f"`kubectl get endpointslices -n {name.split('/')[0]} -l kubernetes.io/service-name={name.split('/')[-1]} -o yaml`",
                            family=family_name(version)))
        elif legacy:
            ep = _endpoints_for(endpoints, svc)
            addresses = [a.get("ip") for s in (ep or {}).get("subsets") or [] for a in
                         (s.get("addresses") or []) + (s.get("notReadyAddresses") or [])]
            wrong = [a for a in addresses if family(a) not in families]
            if wrong:
                findings.append(Finding(f"{name}: Endpoints hold {', '.join(wrong)}, not {family_name(families[0])}",
                                        f"{family_name(families[0])} endpoint addresses", ", ".join(addresses),
                                        "IPv6DualStack feature gate on kube-controller-manager",
                                        family=family_name(families[0]), address=", ".join(wrong)))
            ready = {a.get("ip") for s in (ep or {}).get("subsets") or [] for a in s.get("addresses") or []
                     if family(a.get("ip")) in families}
            if _serves_workload(svc) and len(ready) != replicas:
                findings.append(Finding(f"{name}: Endpoints hold {len(ready)} of {replicas} ready nginx addresses",
                                        f"a ready {family_name(families[0])} address for each of the {replicas} nginx replicas",
                                        f"ready addresses: {', '.join(sorted(ready)) or 'none'}",
                                        f"pod-ips, nginx readiness; `kubectl get endpoints -n {name.split('/')[0]} {name.split('/')[-1]} -o yaml`",
                                        family=family_name(families[0])))
        else:
            findings.append(Finding(f"{name}: no EndpointSlices", f"EndpointSlices of type {', '.join(want_types)}",
                                    "no discovery.k8s.io/v1 EndpointSlices in the cluster",
                                    "kube-controller-manager (endpointslice controller) logs"))
    if legacy:
        findings.append(note(f"Kubernetes {cfg.profile.kubernetes_minor} Services are single-family (spec.ipFamily); "
                             "dual-stack Services arrived in 1.20"))
        if not slices_served:
            findings.append(note("no EndpointSlices (the controller is off by default before 1.18): "
                                 "checked the Endpoints' address families instead"))
    else:
        nginx = nginx_services(services)
        if nginx and not any(len(service_families(s)) == 2 for s in nginx):
            findings.append(Finding("no nginx Service is dual-stack", "at least one nginx Service with two ipFamilies",
                                    ", ".join(f"{name_of(s)}: {(s.get('spec') or {}).get('ipFamilies')}" for s in nginx),
                                    "ipFamilyPolicy: RequireDualStack on the LoadBalancer Service"))
    findings += _planned_family_findings(services, cfg)
    return findings


def check_service_families(vctx) -> CheckResult:
    """Check ``service-families``."""
    services = vctx.get_json("services", "-A")
    if vctx.cfg.profile.endpoint_slices:
        slices = vctx.try_get_json("endpointslices.discovery.k8s.io", "-A")
        endpoints = None
    else:
        slices = vctx.try_get_json("endpointslices.v1beta1.discovery.k8s.io", "-A")
        endpoints = vctx.try_get_json("endpoints", "-A")
    findings = evaluate_service_families(services, slices, endpoints, vctx.cfg)
    count = len([s for s in items(services) if (s.get("spec") or {}).get("type") != "ExternalName"])
    return result_from_findings(findings, f"{count} Services: families, cluster IPs and endpoints agree")


