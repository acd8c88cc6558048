"""Version pins of each profile, in one place.

A profile is the set of versions the lab installs. ``seed-2020`` is the recipe as it
was written in January 2020 (CentOS 7, Docker 19.03.5, Kubernetes 1.17.2, Calico 3.11)
with only the changes needed for it to still install; ``current`` is the same recipe on
today's supported versions. The profile fills every setting the user did not set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Mapping, Optional, Tuple


@dataclass(frozen=True)
class Download:
    """A file fetched on a node and checked against a pinned sha256 before use."""

    url: str
    sha256: str
    sha512: str = ""  # used where upstream publishes only a sha512 (e.g. 2020 release tarballs)


@dataclass(frozen=True)
class Profile:
    """Everything a profile pins. Fields are read by rendering and provisioning."""

    name: str
    description: str
    box: str
    box_url: Optional[str]
    kubernetes_version: str  # full version, without the leading "v"
    kubeadm_api_version: str  # kubeadm.k8s.io/<this>
    dual_stack_feature_gate: bool  # IPv6DualStack gate needed (before 1.23)
    kubelet_node_ip_dual: bool  # kubelet --node-ip accepts "<v4>,<v6>" (1.20+)
    max_service_ipv6_bits: int  # host bits of the IPv6 service range the apiserver accepts
    runtimes: tuple  # container runtimes this profile supports, first is the default
    docker_version: Optional[str]  # None: the newest docker-ce of the repository
    calico_version: str
    calico_manifest: Download
    metallb_version: str
    metallb_manifests: tuple  # Download, in apply order
    nginx_image: str
    kubernetes_binaries: Mapping[str, Download] = field(default_factory=dict)
    cri_dockerd: Optional[Download] = None
    kubernetes_schema_version: str = ""  # schema used to validate rendered objects
    # Provisioning (provision/*.sh through lab.nodeenv):
    kubernetes_node_archive: Optional[Download] = None  # set: binaries from this tarball, no package repo
    kubernetes_repo_base: str = "https://pkgs.k8s.io/core:/stable:"  # + /v<minor>/{rpm,deb}/
    docker_repo_base: str = "https://download.docker.com/linux"  # + /centos/docker-ce.repo, /debian
    centos_vault_url: Optional[str] = None  # EL7 only: base repos rewritten to this vault tree
    containerd_version: Optional[str] = None  # containerd.io beside docker-ce on EL; None: the newest

    @property
    def kubernetes_minor(self) -> str:
        """``1.36`` for ``1.36.1``."""
        return ".".join(self.kubernetes_version.split(".")[:2])


CURRENT = Profile(
    name="current",
    description="CentOS Stream 9, docker-ce with cri-dockerd, Kubernetes 1.36, Calico 3.31, MetalLB 0.16",
    box="centos-stream-9",
    box_url=(
        "https://cloud.centos.org/centos/9-stream/x86_64/images/"
        "CentOS-Stream-Vagrant-9-latest.x86_64.vagrant-libvirt.box"
    ),
    kubernetes_version="1.36.0",
    kubeadm_api_version="v1beta4",
    dual_stack_feature_gate=False,
    kubelet_node_ip_dual=True,
    max_service_ipv6_bits=20,
    runtimes=("docker", "containerd"),
    docker_version=None,
    calico_version="3.31.6",
    # projectcalico/calico tag v3.31.6 = commit cc4364f81fbb6dc6fe6e140456c98169dac99f1c; its
    # manifests/calico.yaml names quay.io/calico/{cni,node,kube-controllers}:v3.31.6. URL pinned by
    # that commit; sha256 of `git show v3.31.6:manifests/calico.yaml`.
    calico_manifest=Download(
        url="https://raw.githubusercontent.com/projectcalico/calico/cc4364f81fbb6dc6fe6e140456c98169dac99f1c/manifests/calico.yaml",
        sha256="34012557637766d4367f0e7d2ea8b6507fca6df68e08b87fcdcd527f689e2637",
    ),
    # MetalLB 0.16.1: tag v0.16.1 is commit 791dfcc63ced7a6b3e869131eae75e645150fff0 (wolfi-dev/os
    # metallb.yaml, expected-commit); that commit's metallb-native.yaml names
    # quay.io/metallb/{controller,speaker}:v0.16.1. URL pinned by commit (sha256 of the file there).
    metallb_version="0.16.1",
    metallb_manifests=(
        Download(
            url="https://raw.githubusercontent.com/metallb/metallb/791dfcc63ced7a6b3e869131eae75e645150fff0/config/manifests/metallb-native.yaml",
            sha256="bf25feebb7582ca7df845efd52ffbc2960d6cbf4cfc972f47fded9f788b67f0b",
        ),
    ),
    # Official image, stable branch 1.30 (1.30.0 released 2026-04; the tag follows 1.30.x fixes).
    nginx_image="docker.io/library/nginx:1.30",
    kubernetes_schema_version="1.36",
    # sha256 of the release tarball as pinned by kubespray v2.31.0
    # (roles/kubespray_defaults/vars/main/checksums.yml, cri_dockerd_archive_checksums amd64 0.3.24).
    cri_dockerd=Download(
        url="https://github.com/Mirantis/cri-dockerd/releases/download/v0.3.24/cri-dockerd-0.3.24.amd64.tgz",
        sha256="dd4b7f514c248a3aaca398f467430a4c58aae9a77ea8b96a2f5b5d6fba0948d1",
    ),
)

SEED_2020 = Profile(
    name="seed-2020",
    description="CentOS 7 (vault), Docker 19.03.5, Kubernetes 1.17.2, Calico 3.11, MetalLB 0.9",
    box="centos/7",
    box_url=None,
    kubernetes_version="1.17.2",
    kubeadm_api_version="v1beta2",
    dual_stack_feature_gate=True,
    kubelet_node_ip_dual=False,
    max_service_ipv6_bits=20,
    runtimes=("docker",),
    docker_version="19.03.5",
    # The containerd.io of Docker's el7 stable repository in the recipe's window (Dec 2019 - Feb
    # 2020): kubespray v2.12.3 (2020-03-05) roles/container-engine/containerd/vars/redhat.yml,
    # containerd_versioned_pkg 'stable' = containerd.io-1.2.10-3.2.el7 (docker-ce 19.03 requires
    # containerd.io >= 1.2.2-3). Installed as containerd.io-<this>.
    containerd_version="1.2.10-3.2.el7",
    calico_version="3.11.3",
    # Not pinned: no official Calico 3.11 manifest lives at a stable URL any more (the versioned
    # docs are gone; the 3.11 tags hold only templates; the release asset release-v3.11.3.tgz
    # carries one). The cni step refuses until a URL and its sha256 are set here.
    calico_manifest=Download(url="", sha256=""),
    # MetalLB 0.9.6: the last 0.9 release; namespace.yaml first, then metallb.yaml (ships
    # PodSecurityPolicies; speakers need the memberlist secret). metallb.yaml's sha256 is not
    # pinned yet: the metallb step refuses until it is.
    metallb_version="0.9.6",
    metallb_manifests=(
        # metallb/metallb manifests/namespace.yaml @76e62657325baa3cfb0031112e1332f993e2d854 (91 B): the
        # file's only version from v0.9.0 until its removal in v0.13, so the v0.9.6 tag holds these bytes.
        Download(url="https://raw.githubusercontent.com/metallb/metallb/v0.9.6/manifests/namespace.yaml",
                 sha256="51a1c68cd8f92e4653075ea978642689a7786099000f9017a616567bab76114f"),
        Download(url="https://raw.githubusercontent.com/metallb/metallb/v0.9.6/manifests/metallb.yaml", sha256=""),
    ),
    nginx_image="docker.io/library/nginx:1.17",
    kubernetes_schema_version="1.17",
    # No per-binary .sha256 of 1.17.2 is published where it can be cited; the release notes
    # (kubernetes/kubernetes CHANGELOG/CHANGELOG-1.17.md, "Node Binaries") give this tarball's sha512.
    # It holds kubernetes/node/bin/{kubeadm,kubelet,kubectl,kube-proxy}.
    kubernetes_node_archive=Download(
        url="https://dl.k8s.io/v1.17.2/kubernetes-node-linux-amd64.tar.gz",
        sha256="",
        sha512=(
            "e7546138dd1768716e7bbfe6136625ff2023293ec1f62741b63c167aaebe9b20"
            "0314f140608445fa5393512aebe7c2eece17d5935c9257fe05d3b9d9ac25c9b3"
        ),
    ),
    centos_vault_url="https://vault.centos.org/7.9.2009",
)

def _unpinned(download: Optional[Download]) -> bool:
    return download is None or not download.url or not (download.sha256 or download.sha512)


def missing_pins(profile: Profile, runtime: str) -> List[Tuple[str, str]]:
    """(step, problem) for every download of ``profile`` that has no URL or checksum.

    Such a step refuses to run rather than install something unchecked.
    """
    found = []
    if runtime == "docker" and profile.name == "current" and _unpinned(profile.cri_dockerd):
        found.append(("runtime", "cri-dockerd has no pinned URL and checksum"))
    if profile.kubernetes_node_archive is not None and _unpinned(profile.kubernetes_node_archive):
        found.append(("kubernetes", "the Kubernetes node archive has no checksum"))
    if _unpinned(profile.calico_manifest):
        found.append(("cni", f"the Calico {profile.calico_version} manifest has no pinned URL and sha256"))
    if not profile.metallb_manifests or any(_unpinned(d) for d in profile.metallb_manifests):
        found.append(("metallb", f"a MetalLB {profile.metallb_version} manifest has no pinned URL and sha256"))
    return found


PROFILES = {p.name: p for p in (CURRENT, SEED_2020)}
DEFAULT_PROFILE = CURRENT.name
