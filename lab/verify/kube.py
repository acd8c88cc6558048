"""Pure helpers over Kubernetes API objects (as ``kubectl get -o json`` returns them).

They accept both eras: Kubernetes 1.17 (``spec.ipFamily``, one ``clusterIP``, no
``hostIPs``) and current (``ipFamilyPolicy``/``ipFamilies``/``clusterIPs``, ``hostIPs``).
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional

from .model import family, family_of_name, ip
from .session import WORKLOAD_NAMESPACE, WORKLOAD_SELECTOR, CLIENT_LABEL_KEY, CLIENT_LABEL_VALUE


def items(listing: Optional[Mapping]) -> List[dict]:
    """The ``items`` of a List (empty for None)."""
    return list((listing or {}).get("items") or [])


def name_of(obj: Mapping) -> str:
    """``namespace/name`` (or ``name`` for cluster-scoped objects)."""
    meta = obj.get("metadata") or {}
    return f"{meta['namespace']}/{meta.get('name')}" if meta.get("namespace") else str(meta.get("name"))


def labels_of(obj: Mapping) -> Dict[str, str]:
    """The object's labels."""
    return dict((obj.get("metadata") or {}).get("labels") or {})


def selects(selector: Optional[Mapping], labels: Mapping) -> bool:
    """True when a non-empty equality selector matches ``labels``."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def condition_true(obj: Mapping, kind: str) -> bool:
    """True when ``status.conditions`` has ``kind`` with status True."""
    return any(c.get("type") == kind and c.get("status") == "True" for c in (obj.get("status") or {}).get("conditions") or [])


# --------------------------------------------------------------------------- pods


def pod_gone(pod: Mapping) -> bool:
    """True for a pod that is no target any more: terminating (``metadata.deletionTimestamp``),
    Failed or Succeeded (an Evicted pod is Failed with ``status.reason: Evicted``)."""
    status = pod.get("status") or {}
    return bool((pod.get("metadata") or {}).get("deletionTimestamp")) or \
        status.get("phase") in ("Failed", "Succeeded") or status.get("reason") == "Evicted"


def nginx_pods(pods: Optional[Mapping], include_gone: bool = False) -> List[dict]:
    """The recipe's nginx pods: in the workload namespace, with the workload labels.

    Terminating, Failed and Evicted pods are left out (see :func:`pod_gone`) unless
    ``include_gone``.
    """
    found = []
    for pod in items(pods):
        meta = pod.get("metadata") or {}
        if meta.get("namespace", WORKLOAD_NAMESPACE) != WORKLOAD_NAMESPACE:
            continue
        labels = labels_of(pod)
        if labels.get(CLIENT_LABEL_KEY) == CLIENT_LABEL_VALUE:
            continue
        if selects(WORKLOAD_SELECTOR, labels) and (include_gone or not pod_gone(pod)):
            found.append(pod)
    return found


def pod_ips(pod: Mapping) -> List[str]:
    """``status.podIPs`` as strings (falling back to ``podIP``)."""
    status = pod.get("status") or {}
    listed = [entry.get("ip") for entry in status.get("podIPs") or [] if entry.get("ip")]
    if not listed and status.get("podIP"):
        listed = [status["podIP"]]
    return listed


def pod_ready(pod: Mapping) -> bool:
    """Running with condition Ready True."""
    return (pod.get("status") or {}).get("phase") == "Running" and condition_true(pod, "Ready")


def pod_port(pod: Mapping, default: int = 80) -> int:
    """The first declared TCP containerPort, else ``default``."""
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("protocol", "TCP") == "TCP" and port.get("containerPort"):
                return int(port["containerPort"])
    return default


def ready_pod_ips_by_family(pods: Iterable[Mapping]) -> Dict[int, set]:
    """{4: {...}, 6: {...}} pod addresses of the ready pods."""
    out = {4: set(), 6: set()}
    for pod in pods:
        if pod_ready(pod):
            for address in pod_ips(pod):
                parsed = ip(address)
                if parsed is not None:
                    out[parsed.version].add(parsed)
    return out


def nodes_with_ready_pods(pods: Iterable[Mapping]) -> set:
    """Node names hosting at least one ready pod."""
    return {(p.get("spec") or {}).get("nodeName") for p in pods if pod_ready(p)}


# --------------------------------------------------------------------------- services


def service_families(svc: Mapping) -> List[int]:
    """The Service's families, in order: ``ipFamilies`` (1.20+), ``ipFamily`` (1.16-1.19), else the clusterIP's."""
    spec = svc.get("spec") or {}
    if spec.get("ipFamilies"):
        return [family_of_name(f) for f in spec["ipFamilies"]]
    if spec.get("ipFamily"):
        return [family_of_name(spec["ipFamily"])]
    fam = family(spec.get("clusterIP"))
    return [fam] if fam else []


def service_cluster_ips(svc: Mapping) -> List[str]:
    """``clusterIPs`` (or the single ``clusterIP``) without the headless ``None``."""
    spec = svc.get("spec") or {}
    listed = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    return [a for a in listed if a and a != "None"]


def service_tcp_port(svc: Mapping) -> Optional[dict]:
    """The first TCP port entry of the Service."""
    for port in (svc.get("spec") or {}).get("ports") or []:
        if port.get("protocol", "TCP") == "TCP":
            return port
    return None


def is_local(svc: Mapping) -> bool:
    """externalTrafficPolicy Local."""
    return (svc.get("spec") or {}).get("externalTrafficPolicy") == "Local"


def nginx_services(services: Optional[Mapping]) -> List[dict]:
    """Services in the workload namespace whose selector picks the nginx pods."""
    found = []
    for svc in items(services):
        meta = svc.get("metadata") or {}
        spec = svc.get("spec") or {}
        if meta.get("namespace", WORKLOAD_NAMESPACE) != WORKLOAD_NAMESPACE or spec.get("type") == "ExternalName":
            continue
        if selects(spec.get("selector"), WORKLOAD_SELECTOR):
            found.append(svc)
    return found


def load_balancer_ips(svc: Mapping) -> List[str]:
    """``status.loadBalancer.ingress[].ip``."""
    ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    return [entry["ip"] for entry in ingress if entry.get("ip")]


def load_balancer_hostnames(svc: Mapping) -> List[str]:
    """``status.loadBalancer.ingress[].hostname`` (MetalLB never sets these)."""
    ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    return [entry["hostname"] for entry in ingress if entry.get("hostname")]


# --------------------------------------------------------------------------- nodes


def node_by_name(nodes: Optional[Mapping]) -> Dict[str, dict]:
    """Node objects by name."""
    return {(n.get("metadata") or {}).get("name"): n for n in items(nodes)}


def internal_ips(node: Mapping) -> List[str]:
    """The node's ``InternalIP`` addresses, in order."""
    return [a.get("address") for a in (node.get("status") or {}).get("addresses") or [] if a.get("type") == "InternalIP"]


def pod_cidrs(node: Mapping) -> List[str]:
    """``spec.podCIDRs`` (falling back to ``spec.podCIDR``)."""
    spec = node.get("spec") or {}
    return list(spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []))
