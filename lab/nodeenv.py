"""The environment the node scripts in ``provision/`` read, derived from the lab config.

Every ``provision/*.sh`` script takes its settings from environment variables (or from an
env file given as its first argument). :func:`node_env` is the single place that turns a
:class:`~lab.config.LabConfig` and one :class:`~lab.config.Node` into those variables, and
:func:`env_file_text` writes them as a file that is safe to ``source``.
"""

from __future__ import annotations

import re
import shlex
from typing import Mapping, Tuple

from . import kubeadm
from .config import LabConfig, Node

#: Where the lab puts its files on a node (rendered configs, scripts, env file).
REMOTE_DIR = "/opt/dslab"
KUBEADM_CONFIG = f"{REMOTE_DIR}/kubeadm-config.yaml"
KUBEADM_JOIN_CONFIG = f"{REMOTE_DIR}/kubeadm-join.yaml"
#: Written by control-plane.sh / join.sh only after ``kubeadm init`` / ``kubeadm join`` exited 0.
INIT_DONE = "/var/lib/dslab/kubeadm-init.done"
JOIN_DONE = "/var/lib/dslab/kubeadm-join.done"
ENV_FILE = f"{REMOTE_DIR}/node.env"
#: provision/fetch.sh on a node: ``bash FETCH URL SUM DEST [MIRROR...]``.
FETCH = f"{REMOTE_DIR}/provision/fetch.sh"

_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")

#: The variables of :func:`node_env` each script of ``provision/`` reads (a script run with
#: another sources ``lib.sh`` too). A step is re-run when one of the values its scripts read
#: changes, and only then (``lab.pipeline``); tests/test_pipeline.py keeps this true to the scripts.
READS = {
    "lib.sh": ("CRI_SOCKET",),
    "network.sh": ("GATEWAY_IPV6", "NODE_IPV4", "NODE_IPV6", "NODE_IPV6_PREFIXLEN", "NODE_NAME"),
    "prepare.sh": ("CENTOS_VAULT_URL", "KUBE_PROXY_MODE"),
    "runtime.sh": ("CONTAINERD_VERSION", "DOCKER_FIXED_CIDR_V6", "DOCKER_REPO_BASE", "DOCKER_VERSION", "RUNTIME"),
    "cri-dockerd.sh": ("CRI_DOCKERD_SHA256", "CRI_DOCKERD_URL", "RUNTIME"),
    "kubernetes.sh": ("KUBERNETES_ARCHIVE_SUM", "KUBERNETES_ARCHIVE_URL", "KUBERNETES_MINOR", "KUBERNETES_REPO_BASE",
                      "KUBERNETES_SOURCE", "KUBERNETES_VERSION"),
    "control-plane.sh": ("KUBEADM_CONFIG", "RUNTIME"),
    "join.sh": ("KUBEADM_JOIN_CONFIG",),
    "fetch.sh": (),
    "load-images.sh": (),
    "cache-images.sh": ("RUNTIME",),
    "cache-packages.sh": (),
}


def variables_read(scripts) -> Tuple[str, ...]:
    """The :func:`node_env` variables ``scripts`` (names in ``provision/``) read, sorted."""
    return tuple(sorted({name for script in scripts for name in READS[script]}))


def node_env(cfg: LabConfig, node: Node) -> dict[str, str]:
    """Every variable the provisioning scripts read for ``node``, as strings."""
    profile = cfg.profile
    archive = profile.kubernetes_node_archive
    cri_dockerd = profile.cri_dockerd if cfg.runtime == "docker" else None
    return {
        "NODE_NAME": node.name,
        "NODE_IPV4": str(node.ipv4),
        "NODE_IPV6": str(node.ipv6),
        "NODE_IPV6_PREFIXLEN": str(cfg.network_ipv6.prefixlen),
        "GATEWAY_IPV6": str(cfg.gateway_ipv6),
        "RUNTIME": cfg.runtime,
        "DOCKER_VERSION": profile.docker_version or "",
        "CONTAINERD_VERSION": profile.containerd_version or "",
        "DOCKER_FIXED_CIDR_V6": str(cfg.docker_ipv6_cidr),
        "DOCKER_REPO_BASE": profile.docker_repo_base,
        "CRI_DOCKERD_URL": cri_dockerd.url if cri_dockerd else "",
        "CRI_DOCKERD_SHA256": cri_dockerd.sha256 if cri_dockerd else "",
        "KUBERNETES_VERSION": profile.kubernetes_version,
        "KUBERNETES_MINOR": profile.kubernetes_minor,
        "KUBERNETES_SOURCE": "archive" if archive else "packages",
        "KUBERNETES_REPO_BASE": profile.kubernetes_repo_base,
        "KUBERNETES_ARCHIVE_URL": archive.url if archive else "",
        "KUBERNETES_ARCHIVE_SUM": (archive.sha256 or archive.sha512) if archive else "",
        "KUBE_PROXY_MODE": cfg.kube_proxy_mode,
        "CENTOS_VAULT_URL": profile.centos_vault_url or "",
        "KUBEADM_CONFIG": KUBEADM_CONFIG,
        "KUBEADM_JOIN_CONFIG": KUBEADM_JOIN_CONFIG,
        "CRI_SOCKET": kubeadm.cri_socket(cfg),
    }


def env_file_text(env: Mapping[str, str]) -> str:
    """``KEY=VALUE`` lines, values shell-quoted, sorted by name; safe to ``source``."""
    lines = ["# dslab node settings; generated, do not edit"]
    for key in sorted(env):
        if not _NAME.match(key):
            raise ValueError(f"{key!r} is not a shell variable name")
        value = str(env[key])
        if "\n" in value or "\0" in value:
            raise ValueError(f"the value of {key} contains a newline or NUL byte")
        lines.append(f"{key}={shlex.quote(value)}")
    return "\n".join(lines) + "\n"
