"""Rendering: every file the lab generates, from the lab config and nothing else.

:func:`render_all` writes the Vagrantfile, the network XML, the kubeadm configuration,
the per-node provisioning inputs and the workload manifests into one directory. It
touches neither libvirt nor Vagrant.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from pathlib import Path
import urllib.parse
from typing import Dict, List, Optional, Tuple

import jinja2

from . import identity, kubeadm, manifests, network, nodeenv, statedir
from .config import LabConfig
from .context import State
from .private import private_dir, write_private

HERE = Path(__file__).resolve().parent


def _provision_dir() -> Path:
    """The scripts run on the nodes: ``lab/provision`` in an installed package (pyproject.toml
    maps the checkout's top-level ``provision/`` there), else that ``provision/`` itself."""
    installed = HERE / "provision"
    return installed if installed.is_dir() else HERE.parent / "provision"


PROVISION_DIR = _provision_dir()
#: The Vagrantfile template: ``Vagrantfile.j2`` at the top of the project, installed as package
#: data of ``lab`` through the link ``lab/templates/Vagrantfile.j2``.
TEMPLATES_DIR = HERE / "templates"
VAGRANTFILE_TEMPLATE = "Vagrantfile.j2"
BOOT_TIMEOUT_S = 900


def ruby_string(value) -> str:
    """A Ruby double-quoted string literal for ``value``: ``"``, ``\\`` and ``#`` escaped (no
    interpolation: ``#{}``, ``#@``, ``#$``), printable ASCII as is, every other character as
    ``\\u{hex}`` (valid Ruby for any code point; a lone surrogate is refused)."""
    out = []
    for ch in str(value):
        if ch in '"\\#':
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        elif 0xD800 <= ord(ch) <= 0xDFFF:
            raise ValueError(f"{value!r} holds a lone surrogate; it has no Ruby form")
        else:
            out.append(f"\\u{{{ord(ch):x}}}")
    return '"' + "".join(out) + '"'


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["ruby"] = ruby_string
    return env


def baked_box(cfg: LabConfig):
    """The host cache's box that ``lab.box`` names (one ``lab.bake`` made), when ``lab.box_url`` is unset."""
    if cfg.box_url is not None:
        return None
    from .cache import for_config  # noqa: PLC0415 - read only when a Vagrantfile is made

    return for_config(cfg).box(cfg.box)


def box_source(cfg: LabConfig) -> Tuple[Optional[str], str]:
    """(the box URL, its pinned sha256 or "") of the Vagrantfile: a baked box of the host's cache as a
    ``file://`` URL with the sum the cache recorded; the profile's own box with the profile's pin; a
    ``lab.box`` or ``lab.box_url`` of the user's as given, unchecked."""
    baked = baked_box(cfg)
    if baked is not None:
        from .cache import for_config  # noqa: PLC0415

        return "file://" + urllib.parse.quote(str(for_config(cfg).box_path(baked))), baked.sha256
    profile = cfg.profile
    same = (cfg.box, cfg.box_url) == (profile.box, profile.box_url)
    return cfg.box_url, profile.box_sha256 if same else ""


def vagrantfile(cfg: LabConfig, lab_id: Optional[str] = None) -> str:
    """The Vagrantfile of the lab, from ``templates/Vagrantfile.j2``; its machines carry ``lab_id``."""
    url, sha256 = box_source(cfg)
    return _environment().get_template(VAGRANTFILE_TEMPLATE).render(
        description=identity.description(cfg.name, lab_id),
        nodes=cfg.nodes,
        box=cfg.box,
        box_url=url,
        box_sha256=sha256,
        baked_box=baked_box(cfg) is not None,
        boot_timeout=BOOT_TIMEOUT_S,
        libvirt_uri=cfg.libvirt_uri,
        libvirt_driver=cfg.libvirt_driver,
        cpus=cfg.cpus,
        memory_mb=cfg.memory_mb,
        storage_pool=cfg.storage_pool,
        domain_prefix=cfg.domain_prefix,
        network_name=cfg.network_name,
        network_ipv4=str(cfg.network_ipv4),
        network_script=PROVISION_DIR / "network.sh",
        lib_script=PROVISION_DIR / "lib.sh",
    )


#: Where the state keeps the token ``kubeadm init`` was given, and the one joins use now.
BOOTSTRAP_TOKEN_KEY = "bootstrap_token"
JOIN_TOKEN_KEY = "join_token"


def bootstrap_token(state: State) -> str:
    """The token of ``kubeadm init`` (in kubeadm-config.yaml): random per lab, kept in its state.

    It never changes, so the init configuration of a running cluster stays the same; joins
    after it expired use :func:`join_token`.
    """
    token = state.get(BOOTSTRAP_TOKEN_KEY)
    if not token:
        token = kubeadm.new_token()
        state.set(BOOTSTRAP_TOKEN_KEY, token)
    return token


def join_token(state: State) -> str:
    """The token the workers join with: the last one minted for a join, else the init token."""
    return state.get(JOIN_TOKEN_KEY) or bootstrap_token(state)


def artifacts(cfg: LabConfig, state: State) -> Dict[str, str]:
    """Every generated file, relative path → content."""
    files = {
        "Vagrantfile": vagrantfile(cfg, identity.lab_id(state)),
        "network.xml": network.network_xml(cfg, identity.lab_id(state)),
        "kubeadm-config.yaml": kubeadm.render_init(cfg, bootstrap_token(state)),
    }
    for node in cfg.nodes:
        files[f"nodes/{node.name}.env"] = nodeenv.env_file_text(nodeenv.node_env(cfg, node))
    ca_hash = state.get("ca_cert_hash")
    if ca_hash:
        for node in cfg.workers:
            files[f"nodes/{node.name}-join.yaml"] = kubeadm.render_join(cfg, node, join_token(state), ca_hash)
    for name, text in manifests.render_manifests(cfg).items():
        files[f"manifests/{name}"] = text
    return files


#: Rendered files that hold a secret (the bootstrap token): mode 0600, every other one 0644.
SECRET_FILES = ("kubeadm-config.yaml", "nodes/*-join.yaml")


def file_mode(rel: str) -> int:
    """The mode of the rendered file ``rel``: 0600 when it holds a secret (:data:`SECRET_FILES`)."""
    return 0o600 if any(fnmatch.fnmatchcase(rel, pattern) for pattern in SECRET_FILES) else 0o644


def write_files(out_dir: Path, files: Dict[str, str], modes: Optional[Dict[str, int]] = None) -> List[Path]:
    """Write ``files`` under ``out_dir`` (made 0700), each with its mode (``modes``, else
    :func:`file_mode`); only files whose content changed are rewritten, every mode is set."""
    written = []
    private_dir(out_dir)
    for rel, text in sorted(files.items()):
        path = Path(out_dir) / rel
        mode = (modes or {}).get(rel, file_mode(rel))
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            write_private(path, text, mode)
        elif stat.S_IMODE(path.stat().st_mode) != mode:
            os.chmod(path, mode)
        written.append(path)
    return written


#: Marks a directory as a lab's state directory (destroy cleans only such a directory).
def render_all(cfg: LabConfig, out_dir: Path) -> List[Path]:
    """Render every artifact into ``out_dir`` and return the paths written."""
    out_dir = Path(out_dir)
    statedir.mark(out_dir, cfg)
    state = State(out_dir / "state.json")
    written = write_files(out_dir, artifacts(cfg, state))
    statedir.record(out_dir, written)
    return written
