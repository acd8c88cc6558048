"""Lab configuration: defaults, every source of overrides, and every bad input."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lab import config
from lab.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def problems_of(settings):
    with pytest.raises(ConfigError) as info:
        config.load(settings)
    return info.value.problems


# ----------------------------------------------------------------- defaults


def test_defaults_are_the_recipe_with_unique_local_ipv6():
    cfg = config.load({})
    assert cfg.name == "dslab"
    assert cfg.profile.name == "current"
    assert [n.name for n in cfg.nodes] == ["k8s-master01", "k8s-worker01", "k8s-worker02"]
    assert cfg.control_plane.name == "k8s-master01"
    assert [n.role for n in cfg.nodes] == ["control-plane", "worker", "worker"]
    assert [str(n) for n in cfg.pod_subnets] == ["10.244.0.0/16", "fd00:2::/48"]
    assert [str(n) for n in cfg.service_subnets] == ["10.96.0.0/16", "fd00:3::/112"]
    assert str(cfg.docker_ipv6_cidr) == "fd00:1::/64"
    assert cfg.network_ipv6.subnet_of(ipaddress.ip_network("fc00::/7"))
    assert cfg.libvirt_uri == "qemu:///system"
    assert cfg.libvirt_driver == "kvm"
    assert cfg.kube_proxy_mode == "ipvs"
    assert cfg.runtime == "docker"
    for node in cfg.nodes:
        assert node.ipv4 in cfg.network_ipv4 and node.ipv6 in cfg.network_ipv6
        assert node.ipv4 not in cfg.dhcp_ipv4_range
    assert cfg.metallb_ipv4_range.within(cfg.network_ipv4)
    assert cfg.metallb_ipv6_range.within(cfg.network_ipv6)


@pytest.mark.parametrize("profile, box, version", [
    ("current", "centos-stream-9", "1.36"),
    ("seed-2020", "centos/7", "1.17"),
])
def test_profile_fills_what_the_user_did_not_set(profile, box, version):
    cfg = config.load({"profile": profile})
    assert cfg.box == box
    assert cfg.profile.kubernetes_minor == version
    assert config.load({"profile": profile, "box": "my/box"}).box == "my/box"


def test_workers_count_and_explicit_nodes():
    assert [n.name for n in config.load({"workers": 3}).workers] == ["k8s-worker01", "k8s-worker02", "k8s-worker03"]
    nodes = [{"name": "cp", "role": "control-plane", "ipv4": "192.168.200.5", "ipv6": "fd00:db1::5"},
             {"name": "w1", "ipv4": "192.168.200.6", "ipv6": "fd00:db1::6"}]
    cfg = config.load({"nodes": nodes})
    assert [(n.name, n.role, str(n.ipv4)) for n in cfg.nodes] == [("cp", "control-plane", "192.168.200.5"),
                                                                 ("w1", "worker", "192.168.200.6")]


def test_macs_are_stable_and_differ_between_labs():
    a, b = config.load({}).nodes, config.load({"name": "other"}).nodes
    assert [n.mac for n in a] == [n.mac for n in config.load({}).nodes]
    assert not {n.mac for n in a} & {n.mac for n in b}


def test_numbers_from_strings_are_accepted():
    cfg = config.load({"cpus": "4", "memory_mb": "4096"})
    assert (cfg.cpus, cfg.memory_mb) == (4, 4096)


# ----------------------------------------------------------------- bad input

BAD = [
    ({"name": "Bad_Name"}, "lab.name:"),
    ({"name": "a" * 21}, "lab.name:"),
    ({"profile": "latest"}, "lab.profile: 'latest' is unknown"),
    ({"libvirt_driver": "xen"}, "lab.libvirt_driver: 'xen' is unknown"),
    ({"libvirt_uri": "http://host"}, "lab.libvirt_uri:"),
    ({"cpus": "two"}, "lab.cpus: 'two' is not a whole number"),
    ({"cpus": 0}, "lab.cpus: 0 is out of range"),
    ({"memory_mb": 100}, "lab.memory_mb: 100 is out of range"),
    ({"memory_mb": True}, "lab.memory_mb:"),
    ({"workers": 0}, "lab.workers: 0 is out of range"),
    ({"network_ipv4": "192.168.200.0/33"}, "lab.network_ipv4: '192.168.200.0/33' is not a valid CIDR"),
    ({"network_ipv4": "192.168.200.1/24"}, "lab.network_ipv4: '192.168.200.1/24' is not a valid CIDR"),
    ({"network_ipv6": "192.168.0.0/24"}, "lab.network_ipv6: '192.168.0.0/24' is IPv4"),
    ({"network_ipv6": "2000:db1::/64"}, "lab.network_ipv6: 2000:db1::/64 is not unique-local"),
    ({"pod_subnets": "10.244.0.0/16"}, "lab.pod_subnets: needs exactly one IPv4 and one IPv6 CIDR (got IPv4)"),
    ({"pod_subnets": "10.244.0.0/16,10.245.0.0/16"}, "lab.pod_subnets: needs exactly one IPv4 and one IPv6"),
    ({"service_subnets": "fd00:3::/112,fd00:4::/112"}, "lab.service_subnets: needs exactly one IPv4 and one IPv6"),
    ({"service_subnets": "10.96.0.0/16,fd00:3::/64"}, "lab.service_subnets: the IPv6 range fd00:3::/64 is too large"),
    ({"pod_subnets": "10.244.0.0/16,fd00:2::/48", "service_subnets": "10.244.0.0/20,fd00:3::/112"},
     "lab.service_subnets: 10.244.0.0/20 overlaps lab.pod_subnets"),
    ({"docker_ipv6_cidr": "fd00:2::/64"}, "lab.pod_subnets: fd00:2::/48 overlaps lab.docker_ipv6_cidr fd00:2::/64"),
    ({"network_ipv4": "10.244.1.0/24", "dhcp_ipv4_range": "10.244.1.100-10.244.1.139",
      "metallb_ipv4_range": "10.244.1.240-10.244.1.250", "external_ipv4": "10.244.1.145"},
     "lab.pod_subnets: 10.244.0.0/16 overlaps lab.network_ipv4"),
    ({"metallb_ipv4_range": "192.168.201.1-192.168.201.9"}, "lab.metallb_ipv4_range: 192.168.201.1-192.168.201.9 is not inside"),
    ({"metallb_ipv4_range": "192.168.200.1-192.168.200.9"}, "includes the network or gateway address"),
    ({"metallb_ipv4_range": "192.168.200.10-192.168.200.12"}, "contains k8s-master01's address 192.168.200.11"),
    ({"metallb_ipv6_range": "fd00:db1::20-fd00:db1::30"}, "contains k8s-worker01's address fd00:db1::21"),
    ({"metallb_ipv6_range": ""}, "lab.metallb_ipv6_range: '' is not an address range"),
    ({"metallb_ipv4_range": "192.168.200.130-192.168.200.150"}, "overlaps lab.dhcp_ipv4_range"),
    ({"external_ipv4": "10.0.0.1"}, "lab.external_ipv4: 10.0.0.1 is outside the node network"),
    ({"external_ipv6": "fd00:db1::1"}, "lab.external_ipv6: fd00:db1::1 is the network or gateway address"),
    ({"external_ipv4": "192.168.200.245"}, "overlaps lab.metallb_ipv4_range"),
    ({"nodes": [{"name": "cp", "role": "control-plane", "ipv4": "192.168.200.1", "ipv6": "fd00:db1::5"},
                {"name": "w", "ipv4": "192.168.200.6", "ipv6": "fd00:db1::6"}]}, "is the network, gateway or broadcast"),
    ({"nodes": [{"name": "cp", "role": "control-plane", "ipv4": "10.1.1.1", "ipv6": "fd00:db1::5"},
                {"name": "w", "ipv4": "192.168.200.6", "ipv6": "fd00:db1::6"}]}, "cp's address 10.1.1.1 is outside"),
    ({"nodes": [{"name": "cp", "role": "control-plane", "ipv4": "192.168.200.5", "ipv6": "fd00:db1::5"},
                {"name": "w", "ipv4": "192.168.200.5", "ipv6": "fd00:db1::6"}]}, "share the ipv4 192.168.200.5"),
    ({"nodes": [{"name": "cp", "role": "control-plane", "ipv4": "192.168.200.5", "ipv6": "fd00:db1::5"},
                {"name": "cp", "ipv4": "192.168.200.6", "ipv6": "fd00:db1::6"}]}, "share the name cp"),
    ({"nodes": [{"name": "Master_1", "role": "control-plane", "ipv4": "192.168.200.5", "ipv6": "fd00:db1::5"},
                {"name": "w", "ipv4": "192.168.200.6", "ipv6": "fd00:db1::6"}]}, "lab.nodes[0].name: 'Master_1' is not a DNS label"),
    ({"nodes": [{"name": "cp", "role": "boss", "ipv4": "192.168.200.5", "ipv6": "fd00:db1::5"}]}, "lab.nodes[0].role: 'boss' is unknown"),
    ({"nodes": [{"name": "w", "ipv4": "192.168.200.6", "ipv6": "fd00:db1::6"}]}, "needs exactly one node with role control-plane"),
    ({"nodes": [{"name": "cp", "role": "control-plane", "ipv4": "192.168.200.5", "ipv6": "192.168.200.6"}]}, "lab.nodes[0].ipv6:"),
    ({"node_cidr_mask_ipv4": 8}, "lab.node_cidr_mask_ipv4: /8 is larger than the pod subnet"),
    ({"pod_subnets": "10.244.0.0/23,fd00:2::/48"}, "lab.pod_subnets: 10.244.0.0/23 has room for 2 blocks of /24, fewer than the 3 nodes"),
    ({"node_cidr_mask_ipv6": 120}, "lab.node_cidr_mask_ipv6: /120 splits fd00:2::/48 into more than 2^16 blocks"),
    ({"runtime": "cri-o"}, "lab.runtime: 'cri-o' is not available on profile current"),
    ({"profile": "seed-2020", "runtime": "containerd"}, "lab.runtime: 'containerd' is not available on profile seed-2020"),
    ({"kube_proxy_mode": "userspace"}, "lab.kube_proxy_mode: 'userspace' is unknown"),
    ({"domain": "Not A Domain"}, "lab.domain:"),
    ({"cpu": 4}, "lab.cpu: unknown setting; did you mean lab.cpus?"),
    ({"memroy_mb": 4}, "lab.memroy_mb: unknown setting"),
]


@pytest.mark.parametrize("settings, expected", BAD, ids=[e for _, e in BAD])
def test_each_bad_input_gives_one_line_naming_the_setting(settings, expected):
    problems = problems_of(settings)
    matching = [p for p in problems if expected in p]
    assert matching, problems
    for line in problems:
        assert line.startswith("lab.") and "\n" not in line


def test_every_problem_is_reported_at_once():
    problems = problems_of({"name": "X", "cpus": "x", "profile": "nope", "typo": 1,
                            "external_ipv4": "1.2.3.4", "pod_subnets": "fd00:2::/48"})
    keys = {p.split(":")[0] for p in problems}
    assert {"lab.name", "lab.cpus", "lab.profile", "lab.typo", "lab.external_ipv4", "lab.pod_subnets"} <= keys


# ----------------------------------------------------------------- the invoke CLI


@pytest.fixture()
def project(tmp_path):
    """A copy of the task entry point with its own invoke.yaml beside it."""
    shutil.copy(ROOT / "tasks.py", tmp_path / "tasks.py")
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    env["PYTHONPATH"] = str(ROOT)
    return tmp_path, env


def invoke(cwd, env, *args):
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_overrides_from_each_source(project):
    cwd, env = project
    (cwd / "invoke.yaml").write_text("lab:\n  cpus: 3\n  workers: 3\n")
    (cwd / "other.yaml").write_text("lab:\n  memory_mb: 3072\n")
    env["INVOKE_LAB_NAME"] = "envlab"
    result = invoke(cwd, env, "-f", "other.yaml", "lab.config", "--profile", "seed-2020")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["cpus"] == 3 and shown["workers"] == 3          # invoke.yaml beside tasks.py
    assert shown["memory_mb"] == 3072                             # -f FILE
    assert shown["name"] == "envlab"                              # INVOKE_LAB_*
    assert shown["profile"] == "seed-2020" and shown["box"] == "centos/7"   # flag, then profile default


@pytest.mark.parametrize("source", ["yaml", "env"])
def test_bad_input_through_invoke_is_one_line_without_traceback(project, source):
    cwd, env = project
    if source == "yaml":
        (cwd / "invoke.yaml").write_text("lab:\n  cpus: many\n  state_dir: st\n")
    else:
        env["INVOKE_LAB_CPUS"] = "many"
        env["INVOKE_LAB_STATE_DIR"] = "st"
    result = invoke(cwd, env, "lab.render")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["lab.cpus: 'many' is not a whole number; set a number from 1 to 64"]
    assert not (cwd / "st").exists()


def test_unknown_setting_in_invoke_yaml_is_reported(project):
    cwd, env = project
    (cwd / "invoke.yaml").write_text("lab:\n  memory: 4096\n")
    result = invoke(cwd, env, "lab.config")
    assert result.returncode == 2
    assert "lab.memory: unknown setting" in result.stderr
