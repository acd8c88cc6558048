"""Rendering: every artifact is written, and the Vagrantfile passes the real Vagrant."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lab import config, render

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ["current", "seed-2020"]


def vagrant(cwd, *args, home):
    if shutil.which("vagrant") is None:
        pytest.skip("vagrant is not installed")
    env = dict(os.environ, VAGRANT_HOME=str(home), VAGRANT_DEFAULT_PROVIDER="libvirt", VAGRANT_CHECKPOINT_DISABLE="1")
    return subprocess.run(["vagrant", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("driver", ["kvm", "qemu"])
def test_vagrantfile_passes_vagrant_validate_and_lists_the_planned_machines(tmp_path, profile, driver):
    cfg = config.load({"profile": profile, "libvirt_driver": driver, "state_dir": str(tmp_path / "lab")})
    render.render_all(cfg, cfg.state_dir)
    home = tmp_path / "vagrant.d"
    result = vagrant(cfg.state_dir, "validate", home=home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validated successfully" in result.stdout
    status = vagrant(cfg.state_dir, "status", "--machine-readable", home=home)
    assert status.returncode == 0, status.stderr
    states = {}
    for line in status.stdout.splitlines():
        fields = line.split(",")
        if len(fields) >= 4 and fields[2] == "state":
            states[fields[1]] = fields[3]
    assert states == {n.name: "not_created" for n in cfg.nodes}
    assert "libvirt" in status.stdout
    text = (cfg.state_dir / "Vagrantfile").read_text()
    assert f'config.vm.box = "{cfg.box}"' in text
    assert ('libvirt.cpu_model = "qemu64"' in text) == (driver == "qemu")
    for node in cfg.nodes:
        assert f'"{node.mac}"' in text and f'"{node.ipv6}"' in text


def test_vagrantfile_with_a_larger_lab_validates(tmp_path):
    cfg = config.load({"workers": 4, "name": "big", "state_dir": str(tmp_path / "lab")})
    render.render_all(cfg, cfg.state_dir)
    result = vagrant(cfg.state_dir, "validate", home=tmp_path / "vagrant.d")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("value, literal", [
    ("plain", '"plain"'),
    ('quo"te', '"quo\\"te"'),
    ("#{`id`}", '"\\#{`id`}"'),
    ("back\\slash", '"back\\\\slash"'),
])
def test_ruby_string_cannot_interpolate(value, literal):
    assert render.ruby_string(value) == literal


@pytest.mark.parametrize("profile", PROFILES)
def test_render_writes_every_artifact(tmp_path, profile):
    cfg = config.load({"profile": profile})
    written = {str(p.relative_to(tmp_path)) for p in render.render_all(cfg, tmp_path)}
    expected = {"Vagrantfile", "network.xml", "kubeadm-config.yaml"}
    expected |= {f"nodes/{n.name}.env" for n in cfg.nodes}
    assert expected <= written
    assert any(w.startswith("manifests/") for w in written)
    for path in written:
        text = (tmp_path / path).read_text()
        assert "{{" not in text and "}}" not in text, path
        if path.endswith(".yaml"):
            assert list(yaml.safe_load_all(text)), path
    # Rendering again changes nothing (same bootstrap token, same files).
    before = {p: (tmp_path / p).read_text() for p in written}
    render.render_all(cfg, tmp_path)
    assert before == {p: (tmp_path / p).read_text() for p in written}


def test_invoke_render_prints_what_it_wrote_and_touches_no_libvirt(tmp_path):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    # An unreachable libvirt URI proves that rendering never connects.
    env["INVOKE_LAB_LIBVIRT_URI"] = "qemu+ssh://nobody@invalid.invalid/system"
    result = subprocess.run([sys.executable, "-m", "invoke", "lab.render", "--out", str(out), "--profile", "seed-2020"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    printed = {Path(line) for line in result.stdout.split()}
    assert out / "Vagrantfile" in printed and out / "network.xml" in printed
    assert all(p.exists() for p in printed)
    assert "centos/7" in (out / "Vagrantfile").read_text()


def test_remote_libvirt_uri_validates(tmp_path):
    """vagrant-libvirt derives host, user and the ssh proxy to the guests from the URI."""
    uri = "qemu+ssh://lab@virt-host.invalid/system"
    cfg = config.load({"libvirt_uri": uri, "state_dir": str(tmp_path / "lab")})
    render.render_all(cfg, cfg.state_dir)
    assert f'libvirt.uri = "{uri}"' in (cfg.state_dir / "Vagrantfile").read_text()
    result = vagrant(cfg.state_dir, "validate", home=tmp_path / "vagrant.d")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("profile", PROFILES)
def test_a_pinned_box_sum_is_rendered_for_the_profiles_own_box_only(tmp_path, profile):
    import dataclasses

    from lab import profiles

    pinned = dataclasses.replace(profiles.PROFILES[profile], box_sha256="ab" * 32)
    cfg = dataclasses.replace(config.load({"profile": profile, "state_dir": str(tmp_path / "lab")}), profile=pinned)
    render.render_all(cfg, cfg.state_dir)
    text = (cfg.state_dir / "Vagrantfile").read_text()
    assert f'config.vm.box_download_checksum = "{"ab" * 32}"\n' in text
    assert 'config.vm.box_download_checksum_type = "sha256"\n' in text
    result = vagrant(cfg.state_dir, "validate", home=tmp_path / "vagrant.d")
    assert result.returncode == 0, result.stdout + result.stderr
    # A box of the user's is not the file the profile's sum is of.
    own = config.load({"profile": profile, "box_url": "https://boxes.example/mine.box"})
    assert "box_download_checksum" not in render.vagrantfile(dataclasses.replace(own, profile=pinned))


@pytest.mark.parametrize("profile", PROFILES)
def test_the_box_sum_of_every_profile_is_a_sha256_or_none(profile):
    from lab import profiles

    assert re.fullmatch(r"([0-9a-f]{64})?", profiles.PROFILES[profile].box_sha256)
    text = render.vagrantfile(config.load({"profile": profile}))
    assert ("box_download_checksum" in text) == bool(profiles.PROFILES[profile].box_sha256)
