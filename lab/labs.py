"""What a libvirt host holds of labs: every lab on it (``lab.list``), and one lab's nodes (``lab.status``).

A lab's machines carry ``dslab lab <name>; dslab-lab-id=<id>`` as their libvirt description
(:mod:`lab.identity`); its network is ``<name>_net`` on the bridge ``dslab<8 hex digits of
sha256(name)>``, with the lab's id as its UUID. Machines made before labs carried an id have only
``dslab lab <name>``: they are grouped by name.

A lab's state directory is not written into libvirt, so it is found among the directories
known here: the configured ``lab.state_dir`` and every Vagrant project in Vagrant's machine
index (``$VAGRANT_HOME/data/machine-index/index``, as ``vagrant global-status`` reads it). One of
them is the lab's when the lab's id was made for it on this host (:func:`identity.made_here`), or,
for a lab without an id, when its ``.vagrant`` records one of the lab's machine UUIDs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from . import destroy, identity
from .cache_offline import vagrant_home
from .config import LabConfig

_DESCRIPTION = re.compile(r"dslab lab ([A-Za-z0-9-]{1,63}|\?)(;|$)")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
NETWORK_SUFFIX = "net"


def bridge_of(name: str) -> str:
    """The bridge of lab ``name``'s network (as :attr:`LabConfig.bridge_name`)."""
    return "dslab" + hashlib.sha256(name.encode()).hexdigest()[:8]


def domain_state(dom) -> str:
    """A libvirt domain's state in words."""
    import libvirt  # noqa: PLC0415

    words = {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_BLOCKED: "running",
             libvirt.VIR_DOMAIN_PAUSED: "paused", libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down",
             libvirt.VIR_DOMAIN_SHUTOFF: "shut off", libvirt.VIR_DOMAIN_CRASHED: "crashed",
             libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended"}
    return words.get(dom.state()[0], "unknown")


@dataclass
class Lab:
    """One lab found on a libvirt host."""

    name: str
    lab_id: Optional[str]
    machines: Dict[str, str] = field(default_factory=dict)  # domain name -> state
    networks: List[str] = field(default_factory=list)
    uuids: List[str] = field(default_factory=list)  # of its machines, for labs without an id
    state_dir: Optional[Path] = None

    def as_dict(self) -> dict:
        """The lab as JSON data."""
        return {"name": self.name, "id": self.lab_id, "machines": dict(sorted(self.machines.items())),
                "networks": sorted(self.networks), "state_dir": str(self.state_dir) if self.state_dir else None}


def vagrant_projects(environ=None) -> List[Path]:
    """The project directories of Vagrant's machine index (nothing when there is none or it cannot be read)."""
    environ = os.environ if environ is None else environ
    try:
        data = json.loads((vagrant_home(environ) / "data" / "machine-index" / "index").read_text(encoding="utf-8"))
        entries = data["machines"].values()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
    found = []
    for entry in entries:
        path = entry.get("vagrantfile_path") if isinstance(entry, dict) else None
        if isinstance(path, str) and path and Path(path) not in found:
            found.append(Path(path))
    return found


def _recorded_uuids(state_dir: Path) -> List[str]:
    """The machine UUIDs a state directory's ``.vagrant`` records."""
    found = []
    for id_file in (state_dir / ".vagrant" / "machines").glob("*/libvirt/id"):
        try:
            value = id_file.read_text(errors="replace").strip().lower()
        except OSError:
            continue
        if _UUID.fullmatch(value):
            found.append(value)
    return found


def _state_dir(lab: Lab, candidates: Iterable[Path]) -> Optional[Path]:
    for candidate in candidates:
        if lab.lab_id and identity.made_here(lab.lab_id, candidate):
            return candidate
        if not lab.lab_id and set(lab.uuids) & set(_recorded_uuids(candidate)):
            return candidate
    return None


def labs_on(conn, candidates: Iterable[Path] = ()) -> List[Lab]:
    """Every lab on the libvirt connection ``conn``, with its state directory where one of ``candidates`` is it."""
    labs: Dict[str, Lab] = {}
    for dom in conn.listAllDomains(0):
        description = ET.fromstring(dom.XMLDesc(0)).findtext("description") or ""
        found = _DESCRIPTION.match(description)
        if not found:
            continue
        name = found.group(1) if found.group(1) != "?" else dom.name().split("_", 1)[0]
        lab_id = identity.id_in(description)
        lab = labs.setdefault(lab_id or f"name:{name}", Lab(name, lab_id))
        lab.machines[dom.name()] = domain_state(dom)
        lab.uuids.append(dom.UUIDString().lower())
    for net in conn.listAllNetworks(0):
        name = net.name()
        if not name.endswith("_" + NETWORK_SUFFIX):
            continue
        lab_name = name[: -len(NETWORK_SUFFIX) - 1]
        bridge = ET.fromstring(net.XMLDesc(0)).find("bridge")
        if bridge is None or bridge.get("name") != bridge_of(lab_name):
            continue
        uuid = net.UUIDString().lower()
        key = uuid if uuid in labs or f"name:{lab_name}" not in labs else f"name:{lab_name}"
        labs.setdefault(key, Lab(lab_name, uuid)).networks.append(name)
    candidates = [Path(os.path.abspath(c)) for c in candidates]
    for lab in labs.values():
        lab.state_dir = _state_dir(lab, candidates)
    return sorted(labs.values(), key=lambda lab: (lab.name, lab.lab_id or ""))


def node_states(cfg: LabConfig, conn) -> Dict[str, str]:
    """Node name -> the state of its machine: as libvirt says for the lab's own, ``not created`` when
    there is none, ``another lab's`` when a machine of that name is not this lab's."""
    import libvirt  # noqa: PLC0415

    own = destroy.owned_domains(cfg, conn)
    states = {}
    for node in cfg.nodes:
        name = cfg.domain_name(node)
        if name in own:
            states[node.name] = domain_state(own[name])
            continue
        try:
            conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
            states[node.name] = "not created"
        else:
            states[node.name] = "another lab's"
    return states



def status_report(cfg: LabConfig, steps_done: List[str], states: Dict[str, str]) -> dict:
    """``lab.status`` as data: the lab, the steps done (in order), each node's state and addresses."""
    kubeconfig = cfg.state_dir / "kubeconfig"
    return {
        "name": cfg.name, "profile": cfg.profile.name, "state_dir": str(cfg.state_dir), "libvirt_uri": cfg.libvirt_uri,
        "steps_done": list(steps_done), "kubeconfig": str(kubeconfig) if kubeconfig.exists() else None,
        "nodes": [{"name": n.name, "role": n.role, "state": states.get(n.name, "unknown"), "ipv4": str(n.ipv4),
                   "ipv6": str(n.ipv6), "fqdn": n.fqdn(cfg.domain)} for n in cfg.nodes],
    }


def status_text(report: dict) -> str:
    """:func:`status_report` for a terminal: a header, then one line per node."""
    lines = [f"lab {report['name']} (profile {report['profile']})", f"  state directory: {report['state_dir']}",
             f"  libvirt: {report['libvirt_uri']}", f"  steps done: {', '.join(report['steps_done']) or 'none'}"]
    if report["kubeconfig"]:
        lines.append(f"  kubeconfig: {report['kubeconfig']}")
    lines.append("")
    lines += [f"{n['name']:<16} {n['role']:<14} {n['state']:<14} {n['ipv4']:<16} {n['ipv6']:<20} {n['fqdn']}"
              for n in report["nodes"]]
    return "\n".join(lines)


def list_text(found: List[Lab]) -> str:
    """The labs for a terminal: one line each, machines counted by state."""
    lines = [f"{'NAME':<20} {'MACHINES':<24} {'NETWORK':<24} STATE DIRECTORY"]
    for lab in found:
        counts: Dict[str, int] = {}
        for state in lab.machines.values():
            counts[state] = counts.get(state, 0) + 1
        machines = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"
        lines.append(f"{lab.name:<20} {machines:<24} {', '.join(lab.networks) or 'none':<24} "
                     f"{lab.state_dir or '(not known here)'}")
    return "\n".join(lines)
