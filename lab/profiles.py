"""Version pins of each profile, in one place.

A profile is the set of versions the lab installs. ``seed-2020`` is the recipe as it
was written in January 2020 (CentOS 7, Docker 19.03.5, Kubernetes 1.17.2, Calico 3.11)
with only the changes needed for it to still install; ``current`` is the same recipe on
today's supported versions. The profile fills every setting the user did not set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Mapping, Optional, Tuple


@dataclass(frozen=True)
class Download:
    """A file fetched on a node and checked against a pinned sha256 before use."""

    url: str
    sha256: str
    sha512: str = ""  # used where upstream publishes only a sha512 (e.g. 2020 release tarballs)
    mirrors: Tuple[str, ...] = ()  # more URLs of the same bytes, tried in turn; the sum decides
    member: str = ""  # the file to use is this member of the (tar.gz) download

    @property
    def checksum(self) -> str:
        """The pinned sum fetch.sh checks (sha256, else sha512)."""
        return self.sha256 or self.sha512

    def fetch_args(self, dest: str) -> List[str]:
        """The arguments of ``provision/fetch.sh`` that put this download at ``dest``."""
        return [self.url, self.checksum, dest, *self.mirrors]


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
    calico_images: Tuple[str, ...] = ()  # `docker save` members of calico_manifest's archive, loaded on every node
    # What the profile's versions can do, read by validation, rendering and lab.verify
    # instead of comparing profile names or version strings:
    dual_stack_services: bool = True  # Service ipFamilyPolicy/ipFamilies/clusterIPs (1.20+)
    host_ips: bool = True  # Pod status.hostIPs (beta, on by default, from 1.29)
    endpoint_slices: bool = True  # EndpointSlice controller on by default (1.18+); else read Endpoints
    legacy_metallb: bool = False  # MetalLB configured by its `config` ConfigMap (0.9), not by CRDs
    # Pods spread by topologySpreadConstraints with nodeTaintsPolicy (beta, on by default, from
    # 1.26); else by a preferred pod anti-affinity
    topology_spread: bool = True
    kube_proxy_modes: Tuple[str, ...] = ("ipvs", "nftables")  # nftables from 1.31
    needs_cri_dockerd: bool = True  # runtime docker goes through cri-dockerd (dockershim removed in 1.24)
    client_image: str = "registry.k8s.io/e2e-test-images/agnhost:2.53"  # lab.verify's client pods (curl, dig, sh)
    # The focus selecting the upstream dual-stack e2e tests of this version (test/e2e/network/dual_stack.go)
    e2e_focus: str = r"\[Feature:IPv6DualStack\]"
    # sha256 of the box file at box_url as its publisher gives it ("": none could be pinned);
    # rendered as the Vagrantfile's box_download_checksum, so Vagrant checks the download.
    box_sha256: str = ""

    @property
    def kubernetes_minor(self) -> str:
        """``1.36`` for ``1.36.1``."""
        return ".".join(self.kubernetes_version.split(".")[:2])


CURRENT = Profile(
    name="current",
    description="CentOS Stream 9, docker-ce with cri-dockerd, Kubernetes 1.36, Calico 3.31, MetalLB 0.16",
    box="centos-stream-9",
    # The CentOS project's -latest libvirt box: neither pinned by date nor checked. Its CHECKSUM
    # file beside the images could not be read offline, and the only dated box sum found
    # (CentOS-Stream-Vagrant-9-20211119.0, captured by kubevirt/containerdisks) is of a 2021 image
    # that cloud.centos.org no longer keeps; so box_sha256 stays empty. The README's pins section says so.
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
    # The CentOS project's own libvirt box of CentOS 7 (2004.01, the last 7 box), by URL, so the
    # profile does not depend on the Vagrant Cloud entry; as pinned by other labs' Vagrantfiles.
    # No copy of the sha256sum.txt published beside it could be read offline, so box_sha256
    # stays empty and no box_download_checksum is set (Vagrant checks nothing of this box); the
    # README says so.
    box_url="https://cloud.centos.org/centos/7/vagrant/x86_64/images/CentOS-7-x86_64-Vagrant-2004_01.LibVirt.box",
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
    # Calico's own release artifact: release-v3.11.3.tgz of the projectcalico/calico GitHub release
    # v3.11.3 (tag commit 677299316880c513965c82786b04a927914a1299, 2020-05-28). Its Makefile
    # (`release-archive`, lines 349-455 at that tag) puts the rendered docs manifest at
    # release-v3.11.3/k8s-manifests/calico.yaml and `docker save` tarballs of the images under
    # release-v3.11.3/images/. Git holds only the Jekyll template of the manifest (tag and branch
    # release-legacy), and no copy of the rendered file could be confirmed, so the archive is
    # pinned: sha256 as locked by kanwren/hermit-packages calicoctl.hcl @74344801 (the one
    # published sum found). 3.11.3 stands in for the recipe's 3.11.1/3.11.2: same manifest, fixes only.
    calico_manifest=Download(
        url="https://github.com/projectcalico/calico/releases/download/v3.11.3/release-v3.11.3.tgz",
        sha256="f6f01f4ee9da6a7606c750d2035510b97286e4ee27447720fae64304671c2a94",
        member="release-v3.11.3/k8s-manifests/calico.yaml",
    ),
    # The images that manifest names (calico/{cni,pod2daemon-flexvol,node,kube-controllers}:v3.11.3),
    # loaded from the same archive on every node instead of about a dozen Docker Hub pulls.
    calico_images=tuple(f"release-v3.11.3/images/calico-{name}.tar"
                        for name in ("node", "cni", "kube-controllers", "pod2daemon-flexvol")),
    # MetalLB 0.9.8 (metallb/metallb tag v0.9.8 = commit b57f9934b9424d24109a8e0f5e4425836e2f00c1,
    # 2023-04-14, head of branch v0.9: "no MetalLB code changes", a rebuild of 0.9 on quay.io).
    # The 0.9.6 manifests name Docker Hub images metallb/{speaker,controller} that are gone
    # (canonical/microk8s#3854); 0.9.8's name quay.io/metallb/{speaker,controller}:v0.9.8.
    # namespace.yaml first, then metallb.yaml (ships PodSecurityPolicies; speakers need the
    # memberlist secret). Sums of `git show v0.9.8:manifests/<file>`: namespace.yaml 91 B (the same
    # bytes in every 0.9 tag), metallb.yaml 7533 B. 0.9.8 stands in for the recipe's 0.8.x/0.9.x.
    metallb_version="0.9.8",
    metallb_manifests=(
        Download(url="https://raw.githubusercontent.com/metallb/metallb/b57f9934b9424d24109a8e0f5e4425836e2f00c1/manifests/namespace.yaml",
                 sha256="51a1c68cd8f92e4653075ea978642689a7786099000f9017a616567bab76114f"),
        Download(url="https://raw.githubusercontent.com/metallb/metallb/b57f9934b9424d24109a8e0f5e4425836e2f00c1/manifests/metallb.yaml",
                 sha256="f3f8b232840eaf536717dcd1fdc34bc99adb02c587d0550aa87b6ad3dd06c9f6"),
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
    dual_stack_services=False,
    host_ips=False,
    endpoint_slices=False,
    legacy_metallb=True,
    topology_spread=False,
    kube_proxy_modes=("ipvs",),
    needs_cri_dockerd=False,
    # agnhost's 1.17-era tag (2.8) lived on gcr.io/kubernetes-e2e-test-images; an older
    # registry.k8s.io tag stands in.
    client_image="registry.k8s.io/e2e-test-images/agnhost:2.39",
    # 1.16-1.18 tag the dual-stack tests [Feature:IPv6DualStackAlphaFeature] (dual_stack.go at v1.17.2)
    e2e_focus=r"\[Feature:IPv6DualStackAlphaFeature\]",
)


#: The sums fetch.sh checks: lowercase hex of a sha256, or of a sha512; URLs: https, with no
#: space, quote, backtick or backslash.
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA512 = re.compile(r"[0-9a-f]{128}")
_HTTPS_URL = re.compile(r"https://[^\s'\"`\\]+")


def pin_problem(download: Optional[Download]) -> Optional[str]:
    """Why ``download`` is not pinned, or None: the one rule for every download of the lab.

    Pinned is an https URL (its mirrors too) and a sha256 of 64 lowercase hex digits, or,
    where the sha256 is empty because upstream publishes only a sha512 (see
    :class:`Download`), a sha512 of 128. The answer completes a sentence about the download
    ("the Calico manifest has no sha256").
    """
    if download is None or not download.url:
        return "has no URL"
    if not _HTTPS_URL.fullmatch(download.url):
        return f"has the URL {download.url!r}, not an https URL"
    bad = next((m for m in download.mirrors if not _HTTPS_URL.fullmatch(m)), None)
    if bad is not None:
        return f"has the mirror {bad!r}, not an https URL"
    if download.sha256:
        return None if _SHA256.fullmatch(download.sha256) else "has a sha256 that is not 64 lowercase hex digits"
    if download.sha512:
        return None if _SHA512.fullmatch(download.sha512) else "has a sha512 that is not 128 lowercase hex digits"
    return "has no sha256"


def pinned(download: Optional[Download]) -> bool:
    """True when ``download`` is pinned (:func:`pin_problem` finds nothing)."""
    return pin_problem(download) is None


def missing_pins(profile: Profile, runtime: str) -> List[Tuple[str, str]]:
    """(step, problem) for every download of ``profile`` that is not pinned (:func:`pin_problem`),
    and for a missing nginx image.

    Such a step refuses to run rather than install something unchecked.
    """
    found = []
    if runtime == "docker" and profile.needs_cri_dockerd:
        problem = pin_problem(profile.cri_dockerd)
        if problem:
            found.append(("runtime", f"the cri-dockerd download {problem}"))
    if profile.kubernetes_node_archive is not None:
        problem = pin_problem(profile.kubernetes_node_archive)
        if problem:
            found.append(("kubernetes", f"the Kubernetes node archive {problem}"))
    problem = pin_problem(profile.calico_manifest)
    if problem:
        found.append(("cni", f"the Calico {profile.calico_version} manifest {problem}"))
    if not profile.metallb_manifests:
        found.append(("metallb", f"no MetalLB {profile.metallb_version} manifest is pinned"))
    for number, download in enumerate(profile.metallb_manifests, start=1):
        problem = pin_problem(download)
        if problem:
            found.append(("metallb", f"MetalLB {profile.metallb_version} manifest {number} {problem}"))
    if not profile.nginx_image:
        found.append(("workloads", "no nginx image is set"))
    return found


def step_pin_problems(profile: Profile, runtime: str, step: str) -> List[str]:
    """What of :func:`missing_pins` stops ``step``."""
    return [problem for name, problem in missing_pins(profile, runtime) if name == step]


PROFILES = {p.name: p for p in (CURRENT, SEED_2020)}
DEFAULT_PROFILE = CURRENT.name
