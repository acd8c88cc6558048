"""IPv6 NodePorts under kube-proxy IPVS on kernels that give IPv6 local routes no protocol.

kube-proxy's IPVS proxier of the 1.17 era (``GetLocalAddresses`` in
pkg/proxy/ipvs/netlink_linux.go) takes the node addresses it opens NodePorts on from the
local routing table, keeping only routes of protocol ``kernel``, as ``ip route show table
local type local proto kernel`` would. Linux sets that protocol on IPv6 local routes only
from 4.11 ("net: ipv6: Set protocol to kernel for local routes"); before, they read ``proto
none``, and such a kube-proxy opens no IPv6 NodePort on the node (kubernetes/kubernetes#93858).

The node scripts of the NodePort checks add the sections of :data:`COMMANDS`; where a node's
lab IPv6 has a local route of another protocol, what those checks miss at that address is
reported as the limit, in one note per node. Where the route is ``proto kernel`` (every
kernel since 4.11), nothing changes: a missing NodePort stays a failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from .model import Finding, ip
from .parse import parse_routes, parse_sections, sectioned_script

ROUTES_KEY = "ipv6-local-routes"
KERNEL_KEY = "kernel-release"
#: The sections a node script adds: the IPv6 local routing table, and the kernel's release.
COMMANDS = {ROUTES_KEY: "ip -6 route show table local", KERNEL_KEY: "uname -r"}
ISSUE = "kubernetes/kubernetes#93858"


@dataclass(frozen=True)
class RouteLimit:
    """A node whose lab IPv6 has a local route of a protocol other than ``kernel``."""

    node: str
    address: str
    protocol: str
    kernel: str


def route_script() -> str:
    """The sections of :data:`COMMANDS`, to append to a node script."""
    return sectioned_script(COMMANDS)


def route_limit(node: str, address, text: Optional[str]) -> Optional[RouteLimit]:
    """The limit of ``node`` read from its script output, or None: the local route of
    ``address`` is ``proto kernel``, or is absent, or the table could not be read."""
    sections = parse_sections(text or "")
    table = sections.get(ROUTES_KEY)
    if table is None or table.returncode != 0:
        return None
    want = ip(address)
    for route in parse_routes(table.output):
        if route.kind != "local" or ip(route.destination) != want:
            continue
        if route.protocol == "kernel":
            return None
        release = sections.get(KERNEL_KEY)
        kernel = release.output.strip() if release is not None and release.returncode == 0 else ""
        return RouteLimit(node, str(want), route.protocol or "(none given)", kernel or "of unknown release")
    return None


def route_limits(outputs: Mapping[str, Optional[str]], cfg) -> Dict[str, RouteLimit]:
    """A node's lab IPv6 address -> its limit, for every node whose output shows one."""
    found = {}
    for node in cfg.nodes:
        limit = route_limit(node.name, node.ipv6, outputs.get(node.name))
        if limit is not None:
            found[limit.address] = limit
    return found


def limit_note(limit: RouteLimit, count: int, what: str, cfg) -> Finding:
    """The note saying why ``count`` ``what`` at ``limit``'s address are expected."""
    return Finding(f"{limit.node}: {count} {what} on its IPv6 {limit.address}: expected limitation of Kubernetes "
                   f"{cfg.profile.kubernetes_minor} on kernel {limit.kernel}, whose IPv6 local routes are proto "
                   f"{limit.protocol}: kube-proxy (IPVS) opens NodePorts only on addresses whose local route is proto "
                   f"kernel, which IPv6 routes are from Linux 4.11 (`ip -6 route show table local` on the node; {ISSUE})",
                   note=True, node=limit.node, family="IPv6", address=limit.address)


def apply_route_limits(findings: Sequence[Finding], limits: Mapping[str, RouteLimit], cfg, what: str,
                       covered: Callable[[Finding], bool]) -> List[Finding]:
    """``findings`` with every problem at a limited node's IPv6 address that ``covered``
    accepts replaced by one note per node (:func:`limit_note`)."""
    kept: List[Finding] = []
    noted: Dict[str, int] = {}
    for finding in findings:
        if not finding.note and finding.address in limits and covered(finding):
            noted[finding.address] = noted.get(finding.address, 0) + 1
        else:
            kept.append(finding)
    return kept + [limit_note(limits[address], count, what, cfg) for address, count in noted.items()]
