"""The LoadBalancer plan: which of the recipe's Services take an address from which MetalLB
range, and which addresses they ask for.

One place for it, read by the validation (each range must hold an address for every
LoadBalancer of its family) and by the manifests and checks that use the addresses.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

from .profiles import Profile
from .settings import AddressRange, LabConfig

SVC_IPV4 = "my-nginx-svc-ipv4"
SVC_IPV6 = "my-nginx-svc-ipv6"
SVC_IPV6_LOCAL = "my-nginx-svc-ipv6-local"
SVC_DUAL = "my-nginx-svc-dual"


def lb_needs(profile: Profile) -> Dict[int, List[str]]:
    """Per family, the LoadBalancer Services that take an address from that family's range."""
    needs: Dict[int, List[str]] = {4: [], 6: [SVC_IPV6_LOCAL]}
    if profile.dual_stack_services:
        needs[4].append(SVC_DUAL)
        needs[6].append(SVC_DUAL)
    return needs


def size(rng: AddressRange) -> int:
    """How many addresses ``rng`` holds."""
    return int(rng.last) - int(rng.first) + 1


def lb_addresses(cfg: LabConfig) -> Dict[str, Tuple]:
    """Service name → the LoadBalancer addresses it asks for, IPv4 first.

    Addresses are handed out from the start of each MetalLB range, in :func:`lb_needs`
    order; the validation makes sure each range holds them.
    """
    needs = lb_needs(cfg.profile)
    out: Dict[str, list] = {name: [] for name in (*needs[6], *needs[4])}
    for family, rng in ((4, cfg.metallb_ipv4_range), (6, cfg.metallb_ipv6_range)):
        for offset, name in enumerate(needs[family]):
            out[name].append(rng.first + offset)
    return {name: tuple(sorted(addrs, key=lambda a: a.version)) for name, addrs in out.items()}
