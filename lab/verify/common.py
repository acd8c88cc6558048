"""Shared by the cluster-layer checks: version thresholds and the workload's names."""

from __future__ import annotations

from .session import WORKLOAD_NAMESPACE, WORKLOAD_SELECTOR

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

