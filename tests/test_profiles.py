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
