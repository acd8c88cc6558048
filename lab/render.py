"""Rendering: every file the lab generates, from the lab config and nothing else.

:func:`render_all` writes the Vagrantfile, the network XML, the kubeadm configuration,
the per-node provisioning inputs and the workload manifests into one directory. It
touches neither libvirt nor Vagrant.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List

import jinja2

from . import kubeadm, network, nodeenv, workloads
from .config import LabConfig
from .context import State

ROOT = Path(__file__).resolve().parent.parent
PROVISION_DIR = ROOT / "provision"
VAGRANTFILE_TEMPLATE = "Vagrantfile.j2"
BOOT_TIMEOUT_S = 900


def ruby_string(value) -> str:
    """A Ruby double-quoted string literal for ``value`` (no interpolation possible)."""
    return json.dumps(str(value)).replace("#", "\\#")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(ROOT)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["ruby"] = ruby_string
    return env


def vagrantfile(cfg: LabConfig) -> str:
    """The Vagrantfile of the lab, from ``Vagrantfile.j2``."""
    return _environment().get_template(VAGRANTFILE_TEMPLATE).render(
        nodes=cfg.nodes,
        box=cfg.box,
        box_url=cfg.box_url,
        boot_timeout=BOOT_TIMEOUT_S,
        libvirt_uri=cfg.libvirt_uri,
        libvirt_driver=cfg.libvirt_driver,
        cpus=cfg.cpus,
        memory_mb=cfg.memory_mb,
        storage_pool=cfg.storage_pool,
        domain_prefix=cfg.domain_prefix,
        network_name=cfg.network_name,
        network_ipv4=str(cfg.network_ipv4),
        ipv6_prefixlen=cfg.network_ipv6.prefixlen,
        gateway_ipv6=cfg.gateway_ipv6,
        domain=cfg.domain,
        network_script=PROVISION_DIR / "network.sh",
        lib_script=PROVISION_DIR / "lib.sh",
    )


def bootstrap_token(state: State) -> str:
    """The lab's kubeadm bootstrap token: random per lab, kept in its state."""
    token = state.get("bootstrap_token")
    if not token:
        token = kubeadm.new_token()
        state.set("bootstrap_token", token)
    return token


def artifacts(cfg: LabConfig, state: State) -> Dict[str, str]:
    """Every generated file, relative path → content."""
    files = {
        "Vagrantfile": vagrantfile(cfg),
        "network.xml": network.network_xml(cfg),
        "kubeadm-config.yaml": kubeadm.render_init(cfg, bootstrap_token(state)),
    }
    for node in cfg.nodes:
        files[f"nodes/{node.name}.env"] = nodeenv.env_file_text(nodeenv.node_env(cfg, node))
    ca_hash = state.get("ca_cert_hash")
    if ca_hash:
        for node in cfg.workers:
            files[f"nodes/{node.name}-join.yaml"] = kubeadm.render_join(cfg, node, bootstrap_token(state), ca_hash)
    for name, text in workloads.render_manifests(cfg).items():
        files[f"manifests/{name}"] = text
    return files


def write_files(out_dir: Path, files: Dict[str, str]) -> List[Path]:
    """Write ``files`` under ``out_dir``; only files whose content changed are rewritten."""
    written = []
    for rel, text in sorted(files.items()):
        path = Path(out_dir) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
        written.append(path)
    return written


#: Marks a directory as a lab's state directory (destroy cleans only such a directory).
STATE_MARKER = ".dslab"


def mark_state_dir(out_dir: Path, cfg: LabConfig) -> None:
    """Create ``out_dir`` with the lab's marker in it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    marker = out_dir / STATE_MARKER
    if not marker.exists():
        marker.write_text(f"state directory of dslab lab {cfg.name}\n")


def render_all(cfg: LabConfig, out_dir: Path) -> List[Path]:
    """Render every artifact into ``out_dir`` and return the paths written."""
    out_dir = Path(out_dir)
    mark_state_dir(out_dir, cfg)
    state = State(out_dir / "state.json")
    return write_files(out_dir, artifacts(cfg, state))
