"""The checks of ``lab.verify``, as data: in order, grouped by layer."""

from __future__ import annotations

from typing import List, Optional, Sequence

from ..errors import LabError
from . import (
    cni, dns, fresh, ingress, network, nginx, node_objects, pod_objects, probes, proxy, service_objects, traffic,
)
from .model import CLUSTER, LAYERS, NETWORK, Check

CHECKS: tuple = (
    # ---- network: only the machines
    Check("node-addresses", NETWORK, "every node has its planned IPv4 and IPv6 on the lab network", network.node_addresses),
    Check("node-dns", NETWORK, "every node resolves every node name (short and fqdn) to both planned addresses", network.node_dns),
    Check("node-reach", NETWORK, "every node pings every other node over IPv4 and IPv6", network.node_reach),
    # ---- cluster: Kubernetes, CNI, kube-proxy, MetalLB, the workload
    Check("pod-cidrs", CLUSTER, "each node's spec.podCIDRs holds one IPv4 and one IPv6 block inside the pod subnets", node_objects.check_pod_cidrs),
    Check("node-internal-ips", CLUSTER, "each node's InternalIPs are its planned addresses, one per family", node_objects.check_node_internal_ips),
    Check("pod-ips", CLUSTER, "every nginx pod has an IPv4 and an IPv6 podIP in the pod subnets (and hostIPs)", pod_objects.check_pod_ips),
    Check("fresh-pod-ips", CLUSTER, "a new pod on every node gets an IPv4 and an IPv6 podIP (and hostIPs)", fresh.check_fresh_pod_ips),
    Check("downward-pod-ips", CLUSTER, "inside a pod, the Downward API status.podIPs and /etc/hosts list both pod addresses", fresh.check_downward_pod_ips),
    Check("service-families", CLUSTER, "each Service's families, cluster IPs and endpoints agree", service_objects.check_service_families),
    Check("service-policies", CLUSTER, "Services verify creates with no ipFamilies, PreferDualStack and RequireDualStack get their families", fresh.check_service_policies),
    Check("calico-pools", CLUSTER, "Calico has an enabled IPPool per pod subnet and both node addresses", cni.check_calico_pools),
    Check("kube-proxy-ipvs", CLUSTER, "kube-proxy runs IPVS on every node with virtual servers of both families", proxy.check_kube_proxy_ipvs),
    Check("nginx-listens", CLUSTER, "nginx listens on 0.0.0.0:80 and [::]:80 in every pod", nginx.check_nginx_listens),
    Check("pod-to-pod", CLUSTER, "a client pod on every node reaches every nginx pod over both families", probes.check_pod_to_pod, True),
    Check("pod-to-service", CLUSTER, "a client pod on every node reaches every nginx cluster IP", probes.check_pod_to_service, True),
    Check("node-to-service", CLUSTER, "every node reaches the cluster IPs and the NodePorts on each node address", probes.check_node_to_service),
    Check("nodeport-cluster", CLUSTER, "a Cluster-policy NodePort of both families answers on every node address, the control plane's included", traffic.check_nodeport_cluster),
    Check("hairpin", CLUSTER, "a pod reaches itself through its own Service over IPv4 and IPv6", traffic.check_hairpin),
    Check("udp-service", CLUSTER, "UDP to a Service's cluster IPs of both families is answered from every node", traffic.check_udp_service),
    Check("large-requests", CLUSTER, "2000-byte HTTP and UDP requests cross nodes and Services over both families (MTU)", traffic.check_large_requests),
    Check("cluster-dns", CLUSTER, "Service names answer A = IPv4 and AAAA = IPv6 cluster IPs from pods", dns.check_cluster_dns, True),
    Check("metallb-ingress", CLUSTER, "LoadBalancer Services get pool addresses of their families that answer the host", ingress.check_metallb_ingress),
    Check("client-ip-preserved", CLUSTER, "externalTrafficPolicy Local shows nginx the host's own address", ingress.check_client_ip_preserved),
    Check("external-ips", CLUSTER, "the externalIP Services answer the host on their addresses", ingress.check_external_ips),
)

CHECK_NAMES: tuple = tuple(c.name for c in CHECKS)


class UnknownCheckError(LabError):
    """``--only`` or ``--layer`` named something that does not exist."""


def select(only: Optional[Sequence[str]] = None, layer: Optional[str] = None) -> List[Check]:
    """The checks to run, in registry order.

    ``only`` is a list of check names (a comma-separated string is accepted too);
    ``layer`` is ``network`` or ``cluster``. Raises :class:`UnknownCheckError` with one line
    listing the valid names.
    """
    if isinstance(only, str):
        only = [part for part in only.split(",")]
    wanted = [name.strip() for name in (only or []) if name and name.strip()]
    unknown = [name for name in wanted if name not in CHECK_NAMES]
    if unknown:
        raise UnknownCheckError(f"unknown check{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                                f"valid checks: {', '.join(CHECK_NAMES)}")
    if layer is not None and layer not in LAYERS:
        raise UnknownCheckError(f"unknown layer {layer}; valid layers: {', '.join(LAYERS)}")
    return [c for c in CHECKS if (not wanted or c.name in wanted) and (layer is None or c.layer == layer)]
