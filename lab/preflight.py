"""Checks made before ``lab.up`` creates anything; every problem is reported at once."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from . import machines, network
from .config import LabConfig
from .errors import PreflightError

#: Memory the host keeps for itself beyond the machines, MiB.
HOST_RESERVE_MB = 512
#: kubeadm's preflight minimums for a control-plane node (NumCPU, Mem).
KUBEADM_MIN_CPUS = 2
KUBEADM_MIN_MEMORY_MB = 1700
KIB = 1024
#: A route the kernel made from a router advertisement (linux/ipv6_route.h).
RTF_ADDRCONF = 0x00040000
IPV6_ROUTES = Path("/proc/net/ipv6_route")
IPV6_CONF = Path("/proc/sys/net/ipv6/conf")


def is_local(uri: str) -> bool:
    """True when ``uri`` names libvirt on this host."""
    return "://" in uri and uri.split("://", 1)[1].startswith("/")


def available_mb(conn) -> int:
    """Memory the host can give the machines: free plus page cache and buffers, MiB."""
    import libvirt  # noqa: PLC0415

    stats = conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
    return sum(stats.get(key, 0) for key in ("free", "buffers", "cached")) // KIB


def kvm_available(conn) -> bool:
    """True when libvirt on that connection offers the ``kvm`` domain type for x86_64."""
    caps = ET.fromstring(conn.getCapabilities())
    for guest in caps.findall("guest"):
        arch = guest.find("arch")
        if arch is not None and arch.get("name") == "x86_64":
            if any(d.get("type") == "kvm" for d in arch.findall("domain")):
                return True
    return False


def read_accept_ra(interface: str) -> Optional[int]:
    """``net.ipv6.conf.<interface>.accept_ra`` of this host ("all" for the global one)."""
    try:
        return int((IPV6_CONF / interface / "accept_ra").read_text().strip())
    except (OSError, ValueError):
        return None


def ra_route_problems(routes: str, accept_ra: Callable[[str], Optional[int]]) -> List[str]:
    """Interfaces whose router-advertised IPv6 routes make libvirt refuse the lab network.

    libvirt starts an IPv6 network with forwarding only when no route of ``/proc/net/ipv6_route``
    that carries RTF_ADDRCONF sits on an interface with ``accept_ra`` 1 (or 0 while ``all`` is 1):
    turning on forwarding would make the kernel flush those routes (``virNetDevIPCheckIPv6Forwarding``,
    libvirt ``src/util/virnetdevip.c``). The fix is ``accept_ra=2`` on that interface.
    """
    everywhere = accept_ra("all")
    found = []
    for line in routes.splitlines():
        fields = line.split()
        if len(fields) < 10:
            continue
        try:
            flags = int(fields[8], 16)
        except ValueError:
            continue
        interface = fields[9]
        if not flags & RTF_ADDRCONF or interface in found:
            continue
        value = accept_ra(interface)
        if value == 1 or (value == 0 and everywhere == 1):
            found.append(interface)
    return [f"host: interface {name} has IPv6 routes from router advertisements, and libvirt will not start "
            f"an IPv6 network with forwarding while they could be flushed; run `sysctl -w "
            f"net.ipv6.conf.{name}.accept_ra=2` (and keep it in /etc/sysctl.d/), then `invoke lab.up` again"
            for name in found]


def host_ra_route_problems() -> List[str]:
    """:func:`ra_route_problems` for this host (nothing when IPv6 is off)."""
    try:
        routes = IPV6_ROUTES.read_text()
    except OSError:
        return []
    return ra_route_problems(routes, read_accept_ra)


def vagrant_plugins() -> str:
    """Output of ``vagrant plugin list`` ('' when it fails)."""
    try:
        return subprocess.run(["vagrant", "plugin", "list"], capture_output=True, text=True, timeout=120,
                              env=machines.vagrant_env()).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def check(cfg: LabConfig, cluster: bool = True) -> Tuple[LabConfig, List[str]]:
    """Check the host; return the config to use and warnings, or raise with every problem.

    When ``kvm`` is asked for but libvirt cannot offer it, the lab falls back to the
    ``qemu`` driver (software emulation) with a warning. With ``cluster`` (``lab.up`` will
    reach ``kubeadm init``), the control plane must also meet kubeadm's minimums.
    """
    problems, warnings = [], []
    if cluster and cfg.cpus < KUBEADM_MIN_CPUS:
        problems.append(f"lab.cpus: kubeadm needs {KUBEADM_MIN_CPUS} CPUs on the control plane, not {cfg.cpus}; "
                        f"set lab.cpus: {KUBEADM_MIN_CPUS} (or use --until kubernetes)")
    if cluster and cfg.memory_mb < KUBEADM_MIN_MEMORY_MB:
        problems.append(f"lab.memory_mb: kubeadm needs {KUBEADM_MIN_MEMORY_MB} MiB on the control plane, not "
                        f"{cfg.memory_mb}; set lab.memory_mb: 2048 (or use --until kubernetes)")
    if shutil.which("vagrant") is None:
        problems.append("vagrant: not found on PATH; install it (Debian/Ubuntu: apt-get install vagrant)")
    elif "vagrant-libvirt" not in vagrant_plugins():
        problems.append("vagrant-libvirt: plugin missing; install it (apt-get install vagrant-libvirt, "
                        "or vagrant plugin install vagrant-libvirt)")
    try:
        with network.connect(cfg.libvirt_uri) as conn:
            cfg = _check_libvirt(cfg, conn, problems, warnings)
    except PreflightError as exc:
        problems.extend(exc.problems)
    if problems:
        raise PreflightError(problems)
    return cfg, warnings


def _check_libvirt(cfg: LabConfig, conn, problems: List[str], warnings: List[str]) -> LabConfig:
    """The checks that need libvirt; returns the config to use (driver fallback)."""
    import libvirt  # noqa: PLC0415

    try:
        pool = conn.storagePoolLookupByName(cfg.storage_pool)
        if not pool.isActive():
            problems.append(f"lab.storage_pool: pool {cfg.storage_pool!r} is not active; "
                            f"start it with: virsh pool-start {cfg.storage_pool}")
    except libvirt.libvirtError:
        problems.append(f"lab.storage_pool: no pool {cfg.storage_pool!r} at {cfg.libvirt_uri}; create it "
                        f"(virsh pool-define-as {cfg.storage_pool} dir --target /var/lib/libvirt/images "
                        f"&& virsh pool-start {cfg.storage_pool}) or set lab.storage_pool")
    if cfg.libvirt_driver == "kvm" and not kvm_available(conn):
        warnings.append("lab.libvirt_driver: KVM is not usable here; using 'qemu' (software emulation, slow)")
        cfg = dataclasses.replace(cfg, libvirt_driver="qemu")
    running = set(machines.domains_running(cfg, conn))
    needed_mb = cfg.memory_mb * len([n for n in cfg.nodes if n.name not in running])
    free_mb = available_mb(conn)
    if needed_mb and free_mb < needed_mb + HOST_RESERVE_MB:
        problems.append(f"lab.memory_mb: the machines need {needed_mb} MiB but the host has {free_mb} MiB free; "
                        "lower lab.memory_mb or lab.workers, or free memory")
    taken = [(f"libvirt network {name}", net) for name, net in network.network_ranges(conn)
             if name != cfg.network_name]
    if is_local(cfg.libvirt_uri):
        taken += [(where, net) for where, net in network.host_ranges()
                  if not where.endswith(f" {cfg.bridge_name}")]
        if not network.is_active(conn, cfg.network_name):  # libvirt checks when it starts the network
            problems.extend(host_ra_route_problems())
    problems.extend(network.clashes(cfg, taken))
    return cfg
