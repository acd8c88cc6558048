"""``lab.destroy``: Vagrant first, then whatever libvirt still holds of the lab.

Ownership is by name, never by local state, so destroy works after ``.vagrant`` was
deleted by hand and after an ``up`` that failed at any step: the lab's domains (its
planned node names, or any ``<name>_*`` domain attached to the lab network), their disk
volumes, the lab network (``<name>_net``), and the box image volume of the lab's box
once nothing is backed by it any more. Safe to run twice; a part that cannot be removed
does not stop the rest, and every such failure is reported at the end.
"""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List

from . import machines, network
from .config import LabConfig
from .errors import LabError
from .render import STATE_MARKER

#: What the lab writes into its state directory; nothing else there is removed, and only
#: from a directory that carries the lab's marker.
STATE_ENTRIES = ("Vagrantfile", "network.xml", "kubeadm-config.yaml", "state.json", "ssh_config", "kubeconfig",
                 "nodes", "manifests", "logs", ".vagrant")


def box_volume_prefix(box: str) -> str:
    """Start of the names vagrant-libvirt gives the volumes of ``box``'s image."""
    return box.replace("/", "-VAGRANTSLASH-") + "_vagrant_box_image_"


def _undefine_domain(dom, libvirt) -> None:
    if dom.isActive():
        dom.destroy()
    # The lab's machines boot by BIOS (no NVRAM); saved state and snapshots go with them.
    flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    dom.undefineFlags(flags)


def _backing_files(pool) -> List[str]:
    paths = []
    for vol in pool.listAllVolumes(0):
        root = ET.fromstring(vol.XMLDesc(0))
        paths.extend(el.text for el in root.findall("./backingStore/path") if el.text)
    return paths


def _pool(conn, name: str):
    """The active storage pool ``name`` (refreshed), or None when it is absent or inactive."""
    import libvirt  # noqa: PLC0415

    try:
        pool = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
            raise
        return None
    if not pool.isActive():
        return None
    pool.refresh(0)
    return pool


def _domain_facts(dom):
    root = ET.fromstring(dom.XMLDesc(0))
    disks = [el.get("file") for el in root.findall("./devices/disk/source") if el.get("file")]
    nets = [el.get("network") for el in root.findall("./devices/interface/source") if el.get("network")]
    return disks, nets


def owned_domains(cfg: LabConfig, conn) -> Dict[str, object]:
    """The lab's domains by name: planned node names, or prefixed ones on the lab network."""
    planned = {cfg.domain_name(n) for n in cfg.nodes}
    owned = {}
    for dom in conn.listAllDomains(0):
        name = dom.name()
        if name in planned or (name.startswith(cfg.domain_prefix) and cfg.network_name in _domain_facts(dom)[1]):
            owned[name] = dom
    return owned


def _owned_volume(cfg: LabConfig, name: str, domain_names) -> bool:
    """Volumes vagrant-libvirt makes for a domain: ``<domain>.img`` and ``<domain>-vdX.qcow2``."""
    return any(re.fullmatch(re.escape(d) + r"(\.img|-vd[a-z]+\.qcow2)", name) for d in domain_names)


def libvirt_leftovers(cfg: LabConfig, conn) -> Dict[str, List[str]]:
    """What libvirt holds of the lab: domains, volumes and networks, by name."""
    domains = owned_domains(cfg, conn)
    names = set(domains) | {cfg.domain_name(n) for n in cfg.nodes}
    pool = _pool(conn, cfg.storage_pool)
    return {
        "domains": sorted(domains),
        "volumes": sorted(v.name() for v in pool.listAllVolumes(0) if _owned_volume(cfg, v.name(), names))
        if pool else [],
        "networks": [n.name() for n in conn.listAllNetworks(0) if n.name() == cfg.network_name],
    }


def destroy(cfg: LabConfig, log_path: Path, report=print) -> Dict[str, List[str]]:
    """Destroy the lab; return what was removed from libvirt beyond Vagrant's own work.

    Raises :class:`LabError` listing what could not be removed (after trying everything).
    """
    import libvirt  # noqa: PLC0415

    removed = {"domains": [], "volumes": [], "networks": []}
    failures = []
    try:
        machines.destroy(cfg, log_path)
    except LabError as exc:
        report(f"vagrant destroy failed ({exc}); removing by name instead")

    def attempt(kind, name, action):
        try:
            action()
            removed[kind].append(name)
        except libvirt.libvirtError as exc:
            failures.append(f"cannot remove {kind[:-1]} {name}: {exc.get_error_message()}")

    with network.connect(cfg.libvirt_uri) as conn:
        domains = owned_domains(cfg, conn)
        disks = set()
        for name, dom in domains.items():
            disks.update(_domain_facts(dom)[0])
            attempt("domains", name, lambda dom=dom: _undefine_domain(dom, libvirt))
        pool = _pool(conn, cfg.storage_pool)
        if pool is not None:
            names = set(domains) | {cfg.domain_name(n) for n in cfg.nodes}
            for vol in pool.listAllVolumes(0):
                if vol.path() in disks and vol.name().startswith(box_volume_prefix(cfg.box)):
                    continue  # a backing image, handled below
                if vol.path() in disks or _owned_volume(cfg, vol.name(), names):
                    attempt("volumes", vol.name(), lambda vol=vol: vol.delete(0))
            backing = _backing_files(pool)
            for vol in pool.listAllVolumes(0):
                if vol.name().startswith(box_volume_prefix(cfg.box)) and vol.path() not in backing:
                    attempt("volumes", vol.name(), lambda vol=vol: vol.delete(0))
        try:
            if network.delete_network(cfg, conn):
                removed["networks"].append(cfg.network_name)
        except libvirt.libvirtError as exc:
            failures.append(f"cannot remove network {cfg.network_name}: {exc.get_error_message()}")
    if failures:
        raise LabError("; ".join(failures) + "; run `invoke lab.destroy` again once the cause is fixed")
    remove_state(cfg.state_dir)
    return removed


def remove_state(state_dir: Path) -> None:
    """Remove what the lab wrote into ``state_dir`` (and the directory, if then empty).

    Only a directory with the lab's marker is touched: a mistyped ``lab.state_dir`` never
    costs the user files that merely share a name with the lab's.
    """
    state_dir = Path(state_dir)
    if not (state_dir / STATE_MARKER).exists():
        return
    for name in (*STATE_ENTRIES, STATE_MARKER):
        path = state_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    for leftover in state_dir.glob(".state.*"):
        leftover.unlink()
    try:
        state_dir.rmdir()
    except OSError:
        pass
