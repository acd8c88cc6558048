"""Every path by which a setting reaches Ruby, a shell or XML, with hostile values: the
quoting holds (the value comes back unchanged, nothing runs), and values the config refuses
never get there."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

from lab import config, network, nodeenv, render

HOSTILE = [
    "$(touch {canary})",
    "`touch {canary}`",
    "'; touch {canary}; '",
    '"; touch {canary}; "',
    "#{`touch {canary}`}",
    "#@x #$0 #{1}",
    "back\\slash \\\\ \\' \\\"",
    "caf\u00e9 \u2028 \U0001f600",
    "tab\there",
    "<x/>&amp;]]>",
]


def _values(tmp_path):
    canary = tmp_path / "canary"
    return canary, [v.replace("{canary}", str(canary)) for v in HOSTILE]


@pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby is not installed")
def test_ruby_filter_round_trips_hostile_values(tmp_path):
    canary, values = _values(tmp_path)
    program = "".join(f"STDOUT.write({render.ruby_string(v)}.unpack('U*').join(',') + \"\\n\")\n" for v in values)
    result = subprocess.run(["ruby", "-e", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    got = result.stdout.splitlines()
    assert got == [",".join(str(ord(ch)) for ch in v) for v in values]
    assert not canary.exists()


def test_env_file_round_trips_hostile_values_through_bash(tmp_path):
    canary, values = _values(tmp_path)
    env = {f"V{i}": v for i, v in enumerate(values)}
    path = tmp_path / "node.env"
    path.write_text(nodeenv.env_file_text(env))
    script = "set -eu; . \"$1\"; " + " ".join(f'printf "%s\\0" "$V{i}";' for i in range(len(values)))
    result = subprocess.run(["bash", "-c", script, "bash", str(path)], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split("\0")[:-1] == values
    assert not canary.exists()


def test_network_xml_escapes_hostile_values(tmp_path):
    canary, values = _values(tmp_path)
    cfg = config.load({})
    for value in values:
        if "\t" in value:  # XML attribute values normalise tabs; domains never hold one
            continue
        hostile = dataclasses.replace(cfg, domain=value)
        root = ET.fromstring(network.network_xml(hostile))
        assert root.find("domain").get("name") == value
        assert [h.text for h in root.iter("hostname")][1] == f"k8s-master01.{value}"
        assert len(root.findall("domain")) == 1 and root.find("x") is None


def _vagrant(cwd, home, *args):
    if shutil.which("vagrant") is None:
        pytest.skip("vagrant is not installed")
    import os
    env = dict(os.environ, VAGRANT_HOME=str(home), VAGRANT_DEFAULT_PROVIDER="libvirt", VAGRANT_CHECKPOINT_DISABLE="1")
    return subprocess.run(["vagrant", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_vagrantfile_with_hostile_but_valid_values_validates_and_runs_nothing(tmp_path):
    canary = tmp_path / "canary"
    settings = {
        "state_dir": str(tmp_path / "lab 'dir' $(touch x)"),
        "box": "o.r-g_/n.a-m_e",
        "box_url": f"https://example.com/a.box?x=$(touch%20{canary})&y='#@x#$0'(;)",
        "libvirt_uri": "qemu+ssh://u.s-e_r@virt-host.invalid:2222/system?keyfile=/home/u/.ssh/k_1&no_verify=1",
        "storage_pool": "p+o.o_l-1",
    }
    cfg = config.load(settings)
    render.render_all(cfg, cfg.state_dir)
    text = (cfg.state_dir / "Vagrantfile").read_text()
    assert "env: {" in text and "NODE_IPV6" not in text  # the node's inputs come from its env file
    result = _vagrant(cfg.state_dir, tmp_path / "vagrant.d", "validate")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not canary.exists() and not (cfg.state_dir / "x").exists()
    for node in cfg.nodes:
        env_text = (cfg.state_dir / "nodes" / f"{node.name}.env").read_text()
        assert f"NODE_IPV6={node.ipv6}\n" in env_text


@pytest.mark.parametrize("settings", [
    {"external_ipv6": "fd00:db1::120%$(touch /tmp/dslab-canary)"},
    {"nodes": [{"name": "cp", "role": "control-plane", "ipv4": "192.168.200.5", "ipv6": "fd00:db1::5%$(id)"},
               {"name": "w", "ipv4": "192.168.200.6", "ipv6": "fd00:db1::6"}]},
    {"domain": "dslab.internal\n"},
    {"box": "centos/7\"; system('id') #"},
    {"libvirt_uri": "qemu+ssh://u@h$(id)/system"},
    {"storage_pool": "default\"; `id`"},
])
def test_rejected_values_never_reach_the_vagrantfile(tmp_path, settings):
    with pytest.raises(config.ConfigError):
        config.load(dict(settings, state_dir=str(tmp_path / "lab")))
    assert not (tmp_path / "lab").exists()
