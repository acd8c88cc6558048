"""Profiles: pins in one place, and every unpinned download named before anything runs."""

from __future__ import annotations

import dataclasses
import re

import pytest

from lab import profiles
from lab.profiles import CURRENT, SEED_2020, Download


def test_current_profile_pins_every_download_with_a_checksum():
    assert profiles.missing_pins(CURRENT, "docker") == []
    for download in (CURRENT.calico_manifest, CURRENT.cri_dockerd, *CURRENT.metallb_manifests):
        assert download.url.startswith("https://")
        assert re.fullmatch(r"[0-9a-f]{64}", download.sha256), download.url


def test_commit_pinned_urls_name_a_full_commit():
    for download in (CURRENT.calico_manifest, *CURRENT.metallb_manifests):
        assert re.search(r"/[0-9a-f]{40}/", download.url), download.url


@pytest.mark.parametrize("field, step", [
    ("calico_manifest", "cni"),
    ("cri_dockerd", "runtime"),
])
def test_an_unpinned_download_is_named_with_its_step(field, step):
    broken = dataclasses.replace(CURRENT, **{field: Download(url=getattr(CURRENT, field).url, sha256="")})
    assert [s for s, _ in profiles.missing_pins(broken, "docker")] == [step]


def test_unpinned_metallb_is_named():
    broken = dataclasses.replace(CURRENT, metallb_manifests=(Download(url="https://example.invalid/x.yaml", sha256=""),))
    assert [s for s, _ in profiles.missing_pins(broken, "docker")] == ["metallb"]


def _downloads(profile):
    found = [profile.calico_manifest, *profile.metallb_manifests]
    found += [d for d in (profile.cri_dockerd, profile.kubernetes_node_archive) if d is not None]
    return found


@pytest.mark.parametrize("profile", [CURRENT, SEED_2020], ids=lambda p: p.name)
def test_every_download_of_every_profile_has_a_url_and_a_sum(profile):
    assert profiles.missing_pins(profile, profile.runtimes[0]) == []
    for download in _downloads(profile):
        assert download.url.startswith("https://"), download
        assert all(m.startswith("https://") for m in download.mirrors), download
        assert re.fullmatch(r"[0-9a-f]{64}|[0-9a-f]{128}", download.checksum), download.url


def test_seed_profile_pins():
    # MetalLB 0.9.8 by its tag commit: quay.io images (0.9.6's Docker Hub images are gone)
    assert SEED_2020.metallb_version == "0.9.8"
    for download in SEED_2020.metallb_manifests:
        assert "/b57f9934b9424d24109a8e0f5e4425836e2f00c1/manifests/" in download.url
    # Calico 3.11.3: the release archive, its manifest member and its image tarballs
    calico = SEED_2020.calico_manifest
    assert calico.url.endswith("/v3.11.3/release-v3.11.3.tgz") and calico.member.startswith("release-v3.11.3/")
    assert calico.member.endswith("/k8s-manifests/calico.yaml")
    assert {m.rsplit("/", 1)[1] for m in SEED_2020.calico_images} == {
        "calico-node.tar", "calico-cni.tar", "calico-kube-controllers.tar", "calico-pod2daemon-flexvol.tar"}
    assert SEED_2020.box_url.startswith("https://cloud.centos.org/centos/7/vagrant/x86_64/images/")
    assert SEED_2020.containerd_version == "1.2.10-3.2.el7"
    assert CURRENT.containerd_version is None


def test_fetch_args_carry_the_mirrors():
    d = Download(url="https://a.example/x", sha256="0" * 64, mirrors=("https://b.example/x",))
    assert d.fetch_args("/tmp/x") == ["https://a.example/x", "0" * 64, "/tmp/x", "https://b.example/x"]
    assert Download(url="https://a.example/y", sha256="", sha512="1" * 128).checksum == "1" * 128


def test_seed_node_archive_is_checked_by_sha512():
    archive = SEED_2020.kubernetes_node_archive
    assert archive is not None and re.fullmatch(r"[0-9a-f]{128}", archive.sha512)


# --------------------------------------------------------------------------- one rule for pins

SUM256, SUM512 = "ab" * 32, "cd" * 64
PINS = [
    # (download, pinned?)
    (Download(url="https://a.example/x", sha256=SUM256), True),
    (Download(url="https://a.example/x", sha256="", sha512=SUM512), True),  # upstream publishes only a sha512
    (Download(url="https://a.example/x", sha256=SUM256, mirrors=("https://b.example/x",)), True),
    (None, False),
    (Download(url="", sha256=SUM256), False),
    (Download(url="http://a.example/x", sha256=SUM256), False),
    (Download(url="ftp://a.example/x", sha256=SUM256), False),
    (Download(url="https://a.example/a b", sha256=SUM256), False),
    (Download(url="https://a.example/x", sha256=SUM256, mirrors=("http://b.example/x",)), False),
    (Download(url="https://a.example/x", sha256=""), False),
    (Download(url="https://a.example/x", sha256=SUM256[:-1]), False),
    (Download(url="https://a.example/x", sha256=SUM256.upper()), False),
    (Download(url="https://a.example/x", sha256="g" * 64), False),
    (Download(url="https://a.example/x", sha256="", sha512=SUM512[:-2]), False),
    (Download(url="https://a.example/x", sha256=SUM512), False),  # a sha512 in the sha256 field
]


@pytest.mark.parametrize("download, pinned", PINS, ids=[str(i) for i in range(len(PINS))])
def test_one_rule_says_what_is_pinned(download, pinned):
    assert profiles.pinned(download) is pinned
    problem = profiles.pin_problem(download)
    assert (problem is None) is pinned
    assert problem is None or "\n" not in problem


@pytest.mark.parametrize("field, step", [
    ("calico_manifest", "cni"),
    ("cri_dockerd", "runtime"),
])
@pytest.mark.parametrize("download, pinned", [p for p in PINS if p[0] is not None and p[0].url],
                         ids=[str(i) for i, p in enumerate(PINS) if p[0] is not None and p[0].url])
def test_every_download_is_judged_by_the_one_rule(field, step, download, pinned):
    profile = dataclasses.replace(CURRENT, **{field: download})
    named = [s for s, _ in profiles.missing_pins(profile, "docker")]
    assert named == ([] if pinned else [step])
    archive = dataclasses.replace(SEED_2020, kubernetes_node_archive=download)
    assert [s for s, _ in profiles.missing_pins(archive, "docker")] == ([] if pinned else ["kubernetes"])


def test_a_missing_nginx_image_is_named_with_its_step():
    assert profiles.step_pin_problems(dataclasses.replace(CURRENT, nginx_image=""), "docker", "workloads") == [
        "no nginx image is set"]


# --------------------------------------------------------------------------- what each profile can do


def _minor(version):
    return tuple(int(p) for p in version.split(".")[:2])


@pytest.mark.parametrize("profile", [CURRENT, SEED_2020], ids=lambda p: p.name)
def test_each_capability_agrees_with_the_versions_it_stands_for(profile):
    k8s, calico, metallb = (_minor(v) for v in (profile.kubernetes_version, profile.calico_version,
                                                 profile.metallb_version))
    assert profile.dual_stack_services == (k8s >= (1, 20))
    assert profile.dual_stack_feature_gate == (k8s < (1, 23))
    assert profile.kubelet_node_ip_dual == (k8s >= (1, 20))
    assert profile.endpoint_slices == (k8s >= (1, 18))
    assert profile.needs_cri_dockerd == (k8s >= (1, 24))
    assert profile.topology_spread == (k8s >= (1, 26))
    assert profile.host_ips == (k8s >= (1, 29))
    assert ("nftables" in profile.kube_proxy_modes) == (k8s >= (1, 31))
    assert profile.legacy_metallb == (metallb < (0, 13))
