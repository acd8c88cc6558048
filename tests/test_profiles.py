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


def test_seed_profile_reports_what_it_lacks_instead_of_installing_unchecked():
    steps = [step for step, _ in profiles.missing_pins(SEED_2020, "docker")]
    # Whatever is still unpinned is reported, in pipeline order, never silently skipped.
    assert steps == sorted(steps, key=["runtime", "kubernetes", "cni", "metallb"].index)
    archive = SEED_2020.kubernetes_node_archive
    assert archive is not None and re.fullmatch(r"[0-9a-f]{128}", archive.sha512)
