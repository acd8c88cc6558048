"""Shared by the cluster-layer checks: the workload the lab deploys, as the checks expect it."""

from __future__ import annotations

from typing import Dict, List

from .. import workloads
from .model import family_name
from .session import WORKLOAD_NAMESPACE, WORKLOAD_SELECTOR

WORKLOAD = f"pods labelled {','.join(f'{k}={v}' for k, v in WORKLOAD_SELECTOR.items())} in namespace {WORKLOAD_NAMESPACE}"
LOOK_WORKLOAD = f"`kubectl get pods -n {WORKLOAD_NAMESPACE} -o wide -l {','.join(f'{k}={v}' for k, v in WORKLOAD_SELECTOR.items())}`"


def _nodes_planned(cfg):
    return {n.name: n for n in cfg.nodes}


def _is_2xx(code: str) -> bool:
    return code.isdigit() and 200 <= int(code) < 300


def planned_replicas(cfg) -> int:
    """How many nginx replicas the lab deploys: ``spec.replicas`` of the rendered Deployment."""
    deployments = [d for d in workloads.nginx(cfg) if d.get("kind") == "Deployment"]
    return int(deployments[0]["spec"]["replicas"]) if deployments else 0


def planned_services(cfg) -> Dict[str, dict]:
    """Service name -> the Service object the lab renders for it (its families, type, policy)."""
    return {svc["metadata"]["name"]: svc for svc in workloads.services(cfg)}


def families_text(families: List[int]) -> str:
    """``IPv4, IPv6``."""
    return ", ".join(family_name(f) for f in families)
