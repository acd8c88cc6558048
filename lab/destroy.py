"""``lab.destroy``: Vagrant first, then whatever libvirt still holds under the lab's prefix.

Ownership is by name, never by local state: domains and volumes whose names start with
the lab's prefix (``<name>_``), the lab's network (named after the lab), and the box
image volume of the lab's box once nothing is backed by it any more. Safe to run twice,
after ``.vagrant`` was deleted by hand, and after an ``up`` that failed at any step.
"""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List

from . import machines, network
from .config import LabConfig
from .errors import LabError

#: What the lab writes into its state directory; nothing else there is removed.
STATE_ENTRIES = ("Vagrantfile", "network.xml", "kubeadm-config.yaml", "state.json", "ssh_config", "kubeconfig",
                 "nodes", "manifests", "logs", ".vagrant")


def box_volume_prefix(box: str) -> str:
    """Start of the names vagrant-libvirt gives the volumes of ``box``'s image."""
    return box.replace("/", "-VAGRANTSLASH-") + "_vagrant_box_image_"


def _undefine_domain(dom, libvirt) -> None:
    if dom.isActive():
        dom.destroy()
    flags = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
             | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
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


def libvirt_leftovers(cfg: LabConfig, conn) -> Dict[str, List[str]]:
    """What libvirt holds of the lab: domains, volumes and networks, by name."""
    pool = _pool(conn, cfg.storage_pool)
    return {
        "domains": [d.name() for d in conn.listAllDomains(0) if d.name().startswith(cfg.domain_prefix)],
        "volumes": [v.name() for v in pool.listAllVolumes(0) if v.name().startswith(cfg.domain_prefix)] if pool else [],
        "networks": [n.name() for n in conn.listAllNetworks(0) if n.name() == cfg.network_name],
    }


def destroy(cfg: LabConfig, log_path: Path, report=print) -> Dict[str, List[str]]:
    """Destroy the lab; return what was removed from libvirt (beyond Vagrant's own work)."""
    import libvirt  # noqa: PLC0415

    removed = {"domains": [], "volumes": [], "networks": []}
    try:
        machines.destroy(cfg, log_path)
    except LabError as exc:
        report(f"vagrant destroy failed ({exc}); removing by name instead")

    with network.connect(cfg.libvirt_uri) as conn:
        for dom in conn.listAllDomains(0):
            if dom.name().startswith(cfg.domain_prefix):
                _undefine_domain(dom, libvirt)
                removed["domains"].append(dom.name())
        pool = _pool(conn, cfg.storage_pool)
        if pool is not None:
            for vol in pool.listAllVolumes(0):
                if vol.name().startswith(cfg.domain_prefix):
                    vol.delete(0)
                    removed["volumes"].append(vol.name())
            backing = _backing_files(pool)
            for vol in pool.listAllVolumes(0):
                if vol.name().startswith(box_volume_prefix(cfg.box)) and vol.path() not in backing:
                    vol.delete(0)
                    removed["volumes"].append(vol.name())
        if network.delete_network(cfg, conn):
            removed["networks"].append(cfg.network_name)
    remove_state(cfg.state_dir)
    return removed


def remove_state(state_dir: Path) -> None:
    """Remove what the lab wrote into ``state_dir`` (and the directory, if then empty)."""
    state_dir = Path(state_dir)
    for name in STATE_ENTRIES:
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
