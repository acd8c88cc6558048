"""The node scripts in provision/, run for real with bash against stub system commands.

Each scenario builds a fake node below a temporary DSLAB_ROOT (os-release, /proc, /etc...),
puts tests/stubs/stub.py first on PATH under the name of every system command the scripts
call, runs the scripts with the environment lab.nodeenv derives from a real LabConfig, and
checks the recorded calls and the files left behind. A second run on that state must make
no changing call and change no file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from lab import config as labconfig
from lab.nodeenv import env_file_text, node_env

REPO = Path(__file__).resolve().parent.parent
PROVISION = REPO / "provision"
STUB = Path(__file__).resolve().parent / "stubs" / "stub.py"

STUBBED = [
    "dnf", "yum", "apt-get", "apt-mark", "dpkg-query", "rpm", "systemctl", "modprobe", "sysctl",
    "swapoff", "setenforce", "getenforce", "kubeadm", "kubectl", "nmcli", "ip", "hostnamectl",
    "passwd", "usermod", "sshd",
]
#: Real tools the scripts may use; everything else is absent from PATH.
REAL_TOOLS = [
    "bash", "env", "cat", "awk", "sed", "grep", "cut", "tr", "wc", "mktemp", "mkdir", "install",
    "cmp", "rm", "mv", "chmod", "basename", "dirname", "tar", "gzip", "sha256sum", "sha512sum",
    "python3", "head", "sort", "ls", "cp", "ln", "touch", "date", "tail", "od", "base64", "sha1sum",
]

#: argv patterns that change the system. Each entry: command -> predicate on its arguments.
CHANGING = {
    "dnf": lambda a: bool({"install", "remove", "update", "upgrade", "makecache", "config-manager"} & set(a)),
    "yum": lambda a: bool({"install", "remove", "update", "upgrade", "makecache"} & set(a)),
    "apt-get": lambda a: bool({"install", "update", "remove", "upgrade"} & set(a)),
    "apt-mark": lambda a: bool({"hold", "unhold"} & set(a)),
    "systemctl": lambda a: bool({"enable", "disable", "start", "stop", "restart", "reload", "mask",
                                 "unmask", "daemon-reload"} & set(a)),
    "modprobe": lambda a: True,
    "sysctl": lambda a: bool({"-w", "-p", "--system"} & set(a)),
    "swapoff": lambda a: True,
    "setenforce": lambda a: True,
    "hostnamectl": lambda a: "set-hostname" in a,
    "ip": lambda a: bool({"add", "del", "delete", "replace", "change", "flush"} & set(a)),
    "nmcli": lambda a: bool({"modify", "reapply", "up", "down"} & set(a)),
    "kubeadm": lambda a: bool({"init", "join", "reset", "pull"} & set(a)),
    "curl": lambda a: True,
    "usermod": lambda a: True,
    "passwd": lambda a: a[:1] != ["-S"],
    "rpm": lambda a: bool({"-i", "-U", "-e", "-ivh", "-Uvh"} & set(a)),
}

OS_RELEASE = {
    "el7": 'NAME="CentOS Linux"\nID="centos"\nID_LIKE="rhel fedora"\nVERSION_ID="7"\n',
    "el9": 'NAME="CentOS Stream"\nID="centos"\nID_LIKE="rhel fedora"\nVERSION_ID="9"\n',
    "alma9": 'NAME="AlmaLinux"\nID="almalinux"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.4"\n',
    "debian": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\n',
}
KERNEL = {"el7": "3.10.0-1160.el7.x86_64", "el9": "5.14.0-427.el9.x86_64", "debian": "6.1.0-18-amd64"}
#: The package that brings the curl command on each test box.
CURL_PACKAGE = {"el7": "curl", "el9": "curl-minimal", "debian": "curl"}
NM_UUID = "5fb06bd0-0bb0-7ffb-45f1-d6edd65f3e03"
#: Calico 3.31 docs (operations/troubleshoot/troubleshooting.mdx, "Configure NetworkManager").
CALICO_NM_CONF = ("[keyfile]\nunmanaged-devices=interface-name:cali*;interface-name:tunl*;interface-name:vxlan.calico;"
                  "interface-name:vxlan-v6.calico;interface-name:wireguard.cali;interface-name:wg-v6.cali\n")
HOSTS = ("127.0.0.1   localhost localhost.localdomain\n"
         "127.0.1.1 k8s-master01 k8s-master01\n"
         "::1 localhost ip6-localhost ip6-loopback\n"
         "192.168.200.5 other.example other\n")

#: The repositories' signing keys as they serve them (public keys, tests/fixtures/keys/): Docker's
#: debian/gpg and centos/gpg, and pkgs.k8s.io's Release.key / repomd.xml.key (one key for both).
KEYS = REPO / "tests" / "fixtures" / "keys"
#: key file -> the fingerprint its upstream publishes (or, for pkgs.k8s.io, is seen to serve).
KEY_FINGERPRINTS = {
    "docker-debian.asc": "9DC858229FC7DD38854AE2D88D81803C0EBFCD88",
    "docker-centos.asc": "060A61C51B558A7F742B77AAC52FEB6B621E9F35",
    "kubernetes.asc": "DE15B14486CD377B9E876E1A234654DA9A296436",
}


def key_urls(env: dict, family: str) -> dict:
    """URL -> the fixture key it serves, for the repositories a node of ``family`` configures."""
    k8s = f"{env['KUBERNETES_REPO_BASE']}/v{env['KUBERNETES_MINOR']}"
    if family == "debian":
        return {f"{k8s}/deb/Release.key": "kubernetes.asc", f"{env['DOCKER_REPO_BASE']}/debian/gpg": "docker-debian.asc"}
    return {f"{k8s}/rpm/repodata/repomd.xml.key": "kubernetes.asc", f"{env['DOCKER_REPO_BASE']}/centos/gpg": "docker-centos.asc"}

#: The stable section of Docker's docker-ce.repo (a stored copy: maikehongg/docker-ce.repo
#: docker-ce.repo @6f2589d5001accf5d5f8c703154d2dafbaf1ac28), its key a local, checked file.
DOCKER_CE_REPO = ("[docker-ce-stable]\nname=Docker CE Stable - $basearch\n"
                  "baseurl=https://download.docker.com/linux/centos/$releasever/$basearch/stable\n"
                  "enabled=1\ngpgcheck=1\ngpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-dslab-docker-ce\n")

DAEMON_JSON = {
    "exec-opts": ["native.cgroupdriver=systemd"],
    "log-driver": "json-file",
    "log-opts": {"max-size": "100m"},
    "storage-driver": "overlay2",
    "ipv6": True,
}


# --------------------------------------------------------------------------- the fake node


class Node:
    """A fake node: root directory, stub state, and a way to run scripts on it."""

    def __init__(self, tmp: Path, family: str, os_id: str | None = None):
        self.family = family
        self.root = tmp / "root"
        self.stub = self.root / ".stub"
        (self.stub / "bin").mkdir(parents=True)
        self.bin = tmp / "bin"
        self.sysbin = tmp / "sysbin"
        self.bin.mkdir()
        self.sysbin.mkdir()
        for name in STUBBED:
            (self.bin / name).symlink_to(STUB)
        for tool in REAL_TOOLS:
            # python3 runs the stubs: the interpreter running the tests, not whatever PATH finds
            # (a pyenv shim, for one, cannot work on this restricted PATH).
            path = sys.executable if tool == "python3" else shutil.which(tool)
            assert path, f"the test needs {tool} on this machine"
            (self.sysbin / tool).symlink_to(path)
        self.write("etc/os-release", OS_RELEASE[os_id or family])
        self.write("proc/sys/kernel/osrelease", KERNEL[family] + "\n")
        self.write("proc/modules", "ext4 745472 1 - Live 0x0000000000000000\n")
        self.write("proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n/dev/dm-1 partition 2097148 0 -2\n")
        self.write("etc/fstab", "UUID=abcd / xfs defaults 0 0\n/dev/mapper/centos-swap swap swap defaults 0 0\n")
        self.write("etc/hosts", HOSTS)
        self.write("etc/hostname", "localhost.localdomain\n")
        state = {
            "packages": {},
            "services": {},
            "sysctl": {
                "net.bridge.bridge-nf-call-iptables": "0", "net.bridge.bridge-nf-call-ip6tables": "0",
                "net.ipv4.ip_forward": "0", "net.ipv6.conf.all.forwarding": "0",
                "net.ipv6.conf.eth1.accept_ra": "1", "net.ipv6.conf.eth1.autoconf": "1",
            },
            "interfaces": {
                "eth0": {"v4": ["192.168.121.10/24"], "v6": []},
                "eth1": {"v4": [], "v6": [
                    {"addr": "fd00:db1::5054:ff:fe12:3456/64", "flags": "dynamic mngtmpaddr noprefixroute"},
                    {"addr": "fe80::5054:ff:fe12:3456/64", "flags": ""},
                ]},
            },
            "routes6": ["default via fe80::1 dev eth1 proto ra metric 1024 expires 1790sec pref medium"],
            "nm": {"devices": {"eth1": NM_UUID},
                   "connections": {NM_UUID: {"connection.id": "System eth1", "ipv6.method": "auto",
                                             "ipv6.addresses": "", "ipv6.gateway": ""}}},
            "swap_units": [],
            "zram_unit_files": [],
            "downloads": {},
            "fail": [],
        }
        if family.startswith("el"):
            state["selinux"] = "Enforcing"
            state["services"]["firewalld"] = {"enabled": True, "active": True, "masked": False}
            # CentOS 7 and EL9 boxes run NetworkManager.
            state["services"]["NetworkManager"] = {"enabled": True, "active": True, "masked": False}
            self.write("etc/selinux/config", "SELINUX=enforcing\nSELINUXTYPE=targeted\n")
        if family == "el7":
            self.write("etc/sysconfig/network-scripts/ifcfg-eth1",
                       "DEVICE=eth1\nBOOTPROTO=dhcp\nONBOOT=yes\nNM_CONTROLLED=no\n")
            self.write("etc/yum.repos.d/CentOS-Base.repo",
                       "[base]\nname=CentOS-$releasever - Base\n"
                       "mirrorlist=http://mirrorlist.centos.org/?release=$releasever&arch=$basearch&repo=os\n"
                       "#baseurl=http://mirror.centos.org/centos/$releasever/os/$basearch/\ngpgcheck=1\n")
        if family == "el9":
            state["zram_unit_files"] = ["systemd-zram-setup@.service"]
        if family == "debian":
            state["swap_units"] = ["dev-sda5.swap"]
            self.write("etc/network/interfaces", "source /etc/network/interfaces.d/*\n\n"
                       "auto eth1\nallow-hotplug eth1\niface eth1 inet dhcp\n")
        self.save(state)
        (self.stub / "calls.log").write_text("")
        # The curl command is there on every box: EL9 images carry curl-minimal, not curl.
        self.preinstall(CURL_PACKAGE[family], ["curl"], "7.76.1" if family == "el9" else "1.0")

    # state helpers
    def write(self, rel: str, text: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def read(self, rel: str) -> str:
        return (self.root / rel).read_text()

    def state(self) -> dict:
        return json.loads((self.stub / "state.json").read_text())

    def save(self, state: dict) -> None:
        (self.stub / "state.json").write_text(json.dumps(state))

    def update(self, **changes) -> None:
        state = self.state()
        state.update(changes)
        self.save(state)

    def preinstall(self, package: str, commands=(), version="1.0") -> None:
        state = self.state()
        state["packages"][package] = version
        self.save(state)
        for command in commands:
            (self.stub / "bin" / command).symlink_to(STUB)

    def assign_ipv4(self, address: str) -> None:
        state = self.state()
        state["interfaces"]["eth1"]["v4"] = [f"{address}/24"]
        self.save(state)

    # running
    def run(self, script: str, env: dict, *args: str, check: bool = True):
        proc_env = {
            "PATH": f"{self.bin}:{self.stub / 'bin'}:{self.sysbin}",
            "DSLAB_ROOT": str(self.root),
            "TMPDIR": str(self.root.parent / "tmp"),
            "LC_ALL": "C",
            **env,
        }
        (self.root.parent / "tmp").mkdir(exist_ok=True)
        path = script if os.path.isabs(script) else str(PROVISION / script)
        result = subprocess.run(["bash", path, *args], env=proc_env,
                                capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"{script} exited {result.returncode}\nstderr:\n{result.stderr}")
        return result

    def calls(self) -> list[list[str]]:
        lines = (self.stub / "calls.log").read_text().splitlines()
        return [json.loads(line) for line in lines]

    def clear_calls(self) -> None:
        (self.stub / "calls.log").write_text("")

    def snapshot(self) -> dict:
        out = {}
        for path in sorted(self.root.rglob("*")):
            if self.stub in path.parents or path == self.stub:
                continue
            if path.is_file():
                out[str(path.relative_to(self.root))] = (path.read_bytes(), path.stat().st_mtime_ns)
        return out


def changing(calls):
    return [c for c in calls if c[0] in CHANGING and CHANGING[c[0]](c[1:])]


def has(calls, *argv) -> bool:
    return list(argv) in calls


def contains(calls, *words) -> bool:
    """Some call includes all of ``words`` in order-independent fashion."""
    return any(all(w in c for w in words) for c in calls)


def fake_tarball(path: Path, members: dict[str, str]) -> str:
    """Write a .tar.gz with ``members`` (name -> text, executable) and return its sha256."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lab_env(profile: str, runtime: str | None = None, node: str = "k8s-master01") -> dict:
    cfg = labconfig.load({"profile": profile, "runtime": runtime})
    return node_env(cfg, cfg.node(node)), cfg


SCRIPTS = ["network.sh", "prepare.sh", "runtime.sh", "cri-dockerd.sh", "kubernetes.sh", "control-plane.sh"]


# --------------------------------------------------------------------------- shellcheck


def test_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    scripts = sorted(str(p) for p in PROVISION.glob("*.sh"))
    assert scripts
    result = subprocess.run(["shellcheck", "-x", *scripts], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_scripts_are_strict_bash():
    for path in PROVISION.glob("*.sh"):
        text = path.read_text()
        assert text.startswith("#!/usr/bin/env bash\n"), path.name
        assert "set -euo pipefail" in text, path.name


# --------------------------------------------------------------------------- nodeenv


def test_node_env_derives_everything_from_config():
    env, cfg = lab_env("seed-2020")
    node = cfg.node("k8s-master01")
    assert env["NODE_NAME"] == "k8s-master01"
    assert env["NODE_IPV4"] == str(node.ipv4) and env["NODE_IPV6"] == str(node.ipv6)
    assert env["GATEWAY_IPV6"] == str(cfg.gateway_ipv6)
    assert env["DOCKER_FIXED_CIDR_V6"] == "fd00:1::/64"
    assert env["DOCKER_VERSION"] == "19.03.5"
    assert env["KUBERNETES_VERSION"] == "1.17.2" and env["KUBERNETES_SOURCE"] == "archive"
    assert len(env["KUBERNETES_ARCHIVE_SUM"]) == 128
    assert env["CRI_DOCKERD_URL"] == ""
    assert env["CENTOS_VAULT_URL"].startswith("https://vault.centos.org/7.9.2009")
    current, _ = lab_env("current")
    assert current["KUBERNETES_SOURCE"] == "packages" and current["KUBERNETES_MINOR"] == "1.36"
    assert current["CRI_DOCKERD_URL"].endswith(".amd64.tgz") and len(current["CRI_DOCKERD_SHA256"]) == 64
    containerd, _ = lab_env("current", "containerd")
    assert containerd["RUNTIME"] == "containerd" and containerd["CRI_DOCKERD_URL"] == ""
    assert all(isinstance(v, str) for v in env.values())


def test_env_file_is_safe_to_source(tmp_path):
    env = {"A": "plain", "B": "it's $(not run) `x` \"q\"", "C": ""}
    path = tmp_path / "node.env"
    path.write_text(env_file_text(env))
    out = subprocess.run(["bash", "-c", f'set -eu; . {shlex.quote(str(path))}; printf "%s|%s|%s" "$A" "$B" "$C"'],
                         capture_output=True, text=True, check=True).stdout
    assert out == "plain|it's $(not run) `x` \"q\"|"
    with pytest.raises(ValueError):
        env_file_text({"bad-name": "x"})
    with pytest.raises(ValueError):
        env_file_text({"A": "two\nlines"})


# --------------------------------------------------------------------------- full runs

SCENARIOS = {
    # id: (family, os-release id, profile, runtime)
    "el7-seed-2020": ("el7", None, "seed-2020", None),
    "el9-current-docker": ("el9", None, "current", None),
    "debian-current-docker": ("debian", None, "current", None),
    "el9-current-containerd": ("el9", "alma9", "current", "containerd"),
}


def prepare_scenario(tmp_path, scenario):
    family, os_id, profile, runtime = SCENARIOS[scenario]
    node = Node(tmp_path, family, os_id)
    env, cfg = lab_env(profile, runtime)
    node.assign_ipv4(env["NODE_IPV4"])
    node.write("opt/dslab/kubeadm-config.yaml", "kind: InitConfiguration\n")
    downloads = {}
    if env["CRI_DOCKERD_URL"]:
        sum_ = fake_tarball(tmp_path / "cri-dockerd.tgz", {"cri-dockerd/cri-dockerd": "#!/bin/sh\necho cri-dockerd\n"})
        downloads[env["CRI_DOCKERD_URL"]] = str(tmp_path / "cri-dockerd.tgz")
        env["CRI_DOCKERD_SHA256"] = sum_  # the real pin is for the real tarball
    if env["KUBERNETES_ARCHIVE_URL"]:
        fake_tarball(tmp_path / "node.tar.gz", {f"kubernetes/node/bin/{b}": f"#!/bin/sh\necho {b}\n"
                                                for b in ("kubeadm", "kubelet", "kubectl", "kube-proxy")})
        downloads[env["KUBERNETES_ARCHIVE_URL"]] = str(tmp_path / "node.tar.gz")
        env["KUBERNETES_ARCHIVE_SUM"] = hashlib.sha512((tmp_path / "node.tar.gz").read_bytes()).hexdigest()
    for url, key in key_urls(env, family).items():
        downloads[url] = str(KEYS / key)
    if family == "debian":
        node.preinstall("docker.io", ["dockerd", "docker"], "20.10.24+dfsg1-1")
        state = node.state()
        state["services"]["docker"] = {"enabled": True, "active": True, "masked": False}
        node.save(state)
    node.update(downloads=downloads)
    return node, env, cfg


def run_all(node, env):
    for script in SCRIPTS:
        node.run(script, env)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_full_run_then_idempotent_rerun(tmp_path, scenario):
    node, env, cfg = prepare_scenario(tmp_path, scenario)
    family, _, profile, runtime = SCENARIOS[scenario]
    run_all(node, env)
    calls = node.calls()

    # network
    assert has(calls, "ip", "-6", "addr", "add", f"{env['NODE_IPV6']}/64", "dev", "eth1")
    assert has(calls, "ip", "-6", "addr", "del", "fd00:db1::5054:ff:fe12:3456/64", "dev", "eth1")
    assert has(calls, "ip", "-6", "route", "replace", "default", "via", env["GATEWAY_IPV6"], "dev", "eth1")
    assert has(calls, "sysctl", "-w", "net.ipv6.conf.eth1.accept_ra=0")
    assert has(calls, "sysctl", "-w", "net.ipv6.conf.eth1.autoconf=0")
    assert has(calls, "hostnamectl", "set-hostname", "k8s-master01")
    assert "k8s-master01" not in node.read("etc/hosts")
    # prepare
    assert has(calls, "swapoff", "-a")
    assert "#/dev/mapper/centos-swap" in node.read("etc/fstab")
    for module in ("br_netfilter", "overlay", "ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh"):
        assert has(calls, "modprobe", module)
    conntrack = "nf_conntrack_ipv4" if family == "el7" else "nf_conntrack"
    assert has(calls, "modprobe", conntrack)
    assert conntrack in node.read("etc/modules-load.d/dslab.conf").split()
    for key in ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables",
                "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"):
        assert has(calls, "sysctl", "-w", f"{key}=1")
        assert f"{key}=1" in node.read("etc/sysctl.d/90-dslab.conf")
    assert contains(calls, "ipset") and contains(calls, "ipvsadm")
    # kubernetes
    assert has(calls, "systemctl", "enable", "kubelet")
    assert not any(c[0] == "systemctl" and "--now" in c and "kubelet" in c for c in calls)
    assert not any(c[0] == "systemctl" and c[1:2] == ["start"] and "kubelet" in c for c in calls)
    # control plane
    assert has(calls, "kubeadm", "config", "images", "pull", "--config", "/opt/dslab/kubeadm-config.yaml")
    assert has(calls, "kubeadm", "init", "--config", "/opt/dslab/kubeadm-config.yaml")
    pull = calls.index(["kubeadm", "config", "images", "pull", "--config", "/opt/dslab/kubeadm-config.yaml"])
    assert pull < calls.index(["kubeadm", "init", "--config", "/opt/dslab/kubeadm-config.yaml"])

    if runtime != "containerd":
        daemon = json.loads(node.read("etc/docker/daemon.json"))
        assert daemon == {**DAEMON_JSON, "fixed-cidr-v6": str(cfg.docker_ipv6_cidr)}
        assert has(calls, "systemctl", "enable", "docker") or family == "debian"
    else:
        toml = node.read("etc/containerd/config.toml")
        assert "SystemdCgroup = true" in toml and "SystemdCgroup = false" not in toml
        assert has(calls, "systemctl", "enable", "containerd")
        assert has(calls, "dnf", "install", "-y", "containerd.io")
        assert not node.root.joinpath("etc/docker/daemon.json").exists()

    if scenario == "el7-seed-2020":
        assert has(calls, "setenforce", "0")
        assert "SELINUX=permissive" in node.read("etc/selinux/config")
        assert has(calls, "systemctl", "stop", "firewalld") and has(calls, "systemctl", "disable", "firewalld")
        repo = node.read("etc/yum.repos.d/CentOS-Base.repo")
        assert "baseurl=https://vault.centos.org/7.9.2009/os/$basearch/" in repo
        assert "\nmirrorlist=" not in repo
        install = next(c for c in calls if c[:3] == ["yum", "install", "-y"] and "ipset" in c)
        assert {"ipvsadm", "conntrack-tools", "socat", "ebtables", "ethtool"} <= set(install)
        assert "iproute-tc" not in install  # EL7's iproute has tc
        assert has(calls, "yum", "install", "-y", "--setopt=skip_missing_names_on_install=False",
                   "docker-ce-19.03.5", "docker-ce-cli-19.03.5", "containerd.io-1.2.10-3.2.el7")
        assert env["CONTAINERD_VERSION"] == "1.2.10-3.2.el7"
        assert all("--setopt=skip_missing_names_on_install=False" in c for c in calls if c[:2] == ["yum", "install"])
        # and checked by rpm afterwards, pinned specs by name and version
        assert has(calls, "rpm", "-q", "--quiet", "containerd.io-1.2.10-3.2.el7")
        assert has(calls, "rpm", "-q", "--quiet", "docker-ce-19.03.5")
        assert has(calls, "nmcli", "connection", "reload")
        ifcfg = node.read("etc/sysconfig/network-scripts/ifcfg-eth1")
        assert f"IPV6ADDR={env['NODE_IPV6']}/64" in ifcfg and f"IPV6_DEFAULTGW={env['GATEWAY_IPV6']}" in ifcfg
        assert "IPV6_AUTOCONF=no" in ifcfg and "BOOTPROTO=dhcp" in ifcfg
        assert contains(calls, "curl", "https://dl.k8s.io/v1.17.2/kubernetes-node-linux-amd64.tar.gz")
        for binary in ("kubeadm", "kubelet", "kubectl"):
            assert os.access(node.root / "usr/bin" / binary, os.X_OK)
        assert node.read("etc/systemd/system/kubelet.service").startswith("[Unit]")
        dropin = node.read("etc/systemd/system/kubelet.service.d/10-kubeadm.conf")
        assert "EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env" in dropin
        assert "EnvironmentFile=-/etc/sysconfig/kubelet" in dropin
        assert "ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS" in dropin
        assert has(calls, "systemctl", "daemon-reload")
        assert not node.root.joinpath("etc/systemd/system/cri-docker.service").exists()
    if family.startswith("el"):
        assert node.read("etc/NetworkManager/conf.d/calico.conf") == CALICO_NM_CONF
        assert has(calls, "systemctl", "reload", "NetworkManager")
        # the box's curl command is used as it is (EL9: curl-minimal, which conflicts with curl)
        assert not any(c[:2] in (["yum", "install"], ["dnf", "install"]) and "curl" in c for c in calls)
    else:
        assert not node.root.joinpath("etc/NetworkManager/conf.d/calico.conf").exists()
    if family == "el9":
        assert has(calls, "nmcli", "-g", "GENERAL.CON-UUID", "device", "show", "eth1")
        assert has(calls, "nmcli", "connection", "modify", NM_UUID, "ipv6.method", "manual",
                   "ipv6.addresses", f"{env['NODE_IPV6']}/64", "ipv6.gateway", env["GATEWAY_IPV6"])
        install = next(c for c in calls if c[:3] == ["dnf", "install", "-y"] and "ipset" in c)
        # tc in its own package (kubeadm preflight FileExisting-tc); ebtables from iptables-nft
        assert {"iproute-tc", "iptables-nft", "conntrack-tools"} <= set(install) and "ebtables" not in install
        assert has(calls, "nmcli", "device", "reapply", "eth1")
        assert has(calls, "systemctl", "mask", "systemd-zram-setup@zram0.service")
        repo = node.read("etc/yum.repos.d/kubernetes.repo")
        assert "baseurl=https://pkgs.k8s.io/core:/stable:/v1.36/rpm/" in repo
        assert repo == ("[kubernetes]\nname=Kubernetes\nbaseurl=https://pkgs.k8s.io/core:/stable:/v1.36/rpm/\n"
                        "enabled=1\ngpgcheck=1\n"
                        "gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-dslab-kubernetes\n"
                        "exclude=kubelet kubeadm kubectl cri-tools kubernetes-cni\n")
        assert has(calls, "dnf", "install", "-y", "kubelet-1.36.0", "kubeadm-1.36.0", "kubectl-1.36.0",
                   "--disableexcludes=kubernetes")
    if scenario == "el9-current-docker":
        assert has(calls, "dnf", "install", "-y", "docker-ce", "docker-ce-cli", "containerd.io")
        assert node.read("etc/yum.repos.d/docker-ce.repo") == DOCKER_CE_REPO
        assert not contains(calls, "curl", "https://download.docker.com/linux/centos/docker-ce.repo")
    if family.startswith("el"):
        assert node.read("etc/pki/rpm-gpg/RPM-GPG-KEY-dslab-docker-ce") == (KEYS / "docker-centos.asc").read_text()
        assert contains(calls, "curl", "https://download.docker.com/linux/centos/gpg")
    if family == "debian":
        assert not contains(calls, "docker-ce")  # Debian's docker.io is already there
        assert has(calls, "systemctl", "mask", "dev-sda5.swap")
        stanza = node.read("etc/network/interfaces.d/dslab-ipv6-eth1")
        assert "iface eth1 inet6 static" in stanza and f"address {env['NODE_IPV6']}/64" in stanza
        assert f"gateway {env['GATEWAY_IPV6']}" in stanza and "accept_ra 0" in stanza
        assert node.read("etc/network/interfaces").endswith("iface eth1 inet dhcp\n")  # IPv4 untouched
        assert node.read("etc/apt/sources.list.d/kubernetes.list") == \
            "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.asc] https://pkgs.k8s.io/core:/stable:/v1.36/deb/ /\n"
        keyring = node.root / "etc/apt/keyrings/kubernetes-apt-keyring.asc"
        assert keyring.read_text() == (KEYS / "kubernetes.asc").read_text()
        assert keyring.stat().st_mode & 0o044 == 0o044  # _apt reads it
        assert contains(calls, "curl", "https://pkgs.k8s.io/core:/stable:/v1.36/deb/Release.key")
        assert contains(calls, "apt-get", "install", "kubelet=1.36.0-*", "kubeadm=1.36.0-*", "kubectl=1.36.0-*")
        assert has(calls, "apt-mark", "hold", "kubelet")
        assert not contains(calls, "getenforce") and not contains(calls, "setenforce")
    if profile == "current" and runtime != "containerd":
        unit = node.read("etc/systemd/system/cri-docker.service")
        exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
        assert exec_start.split() == ["ExecStart=/usr/local/bin/cri-dockerd", "--container-runtime-endpoint", "fd://",
                                      "--network-plugin=cni", "--ipv6-dual-stack"]
        assert "Requires=cri-docker.socket" in unit.splitlines()
        socket = node.read("etc/systemd/system/cri-docker.socket").splitlines()
        assert "ListenStream=%t/cri-dockerd.sock" in socket and "SocketGroup=docker" in socket
        assert os.access(node.root / "usr/local/bin/cri-dockerd", os.X_OK)
        assert has(calls, "systemctl", "enable", "cri-docker.socket")
        assert has(calls, "systemctl", "enable", "cri-docker.service")

    assert installed_packages(calls) <= sourced_packages(family)

    # second run: nothing changes
    before = node.snapshot()
    node.clear_calls()
    run_all(node, env)
    second = node.calls()
    assert second, "the second run should still inspect the node"
    assert changing(second) == []
    assert node.snapshot() == before


@pytest.mark.parametrize("script,fail,step", [
    ("prepare.sh", "modprobe ip_vs", "kernel modules"),
    ("prepare.sh", "sysctl -w net.ipv4.ip_forward=1", "sysctl"),
    ("network.sh", "ip -6 addr add", "ipv6 runtime (eth1)"),
    ("runtime.sh", "dnf install", "docker install"),
    ("kubernetes.sh", "systemctl enable kubelet", "kubelet enable"),
    ("control-plane.sh", "kubeadm init", "kubeadm init"),
])
def test_failing_command_stops_with_step_name(tmp_path, script, fail, step):
    node, env, _ = prepare_scenario(tmp_path, "el9-current-docker")
    if script in ("kubernetes.sh", "control-plane.sh"):
        node.run("prepare.sh", env)
    node.update(fail=[fail])
    node.clear_calls()
    result = node.run(script, env, check=False)
    assert result.returncode != 0
    assert f"dslab: step '{step}' failed: {fail}" in result.stderr
    assert "(exit 1)" in result.stderr
    # nothing after the failing call
    calls = node.calls()
    last = " ".join(calls[-1])
    assert last.startswith(fail)


def test_network_sh_runs_as_vagrant_uploads_it(tmp_path):
    """Vagrant uploads network.sh alone as /tmp/vagrant-shell, lib.sh by the file provisioner."""
    node, env, _ = prepare_scenario(tmp_path, "debian-current-docker")
    alone = tmp_path / "vagrant-shell"
    alone.mkdir()
    shutil.copy(PROVISION / "network.sh", alone / "vagrant-shell")
    shutil.copy(PROVISION / "lib.sh", tmp_path / "dslab-lib.sh")
    node.run(str(alone / "vagrant-shell"), {**env, "DSLAB_LIB": str(tmp_path / "dslab-lib.sh")})
    assert has(node.calls(), "hostnamectl", "set-hostname", "k8s-master01")
    assert "iface eth1 inet6 static" in node.read("etc/network/interfaces.d/dslab-ipv6-eth1")


def test_env_file_argument(tmp_path):
    node, env, _ = prepare_scenario(tmp_path, "el9-current-docker")
    env_file = tmp_path / "node.env"
    env_file.write_text(env_file_text(env))
    node.run("network.sh", {}, str(env_file))
    assert has(node.calls(), "hostnamectl", "set-hostname", "k8s-master01")


def test_missing_setting_is_named(tmp_path):
    node, env, _ = prepare_scenario(tmp_path, "el9-current-docker")
    env = {k: v for k, v in env.items() if k != "NODE_IPV6"}
    result = node.run("network.sh", env, check=False)
    assert result.returncode != 0 and "NODE_IPV6 is not set" in result.stderr
    assert changing(node.calls()) == []


# --------------------------------------------------------------------------- details


def test_daemon_json_merge_keeps_other_keys(tmp_path):
    node, env, cfg = prepare_scenario(tmp_path, "el9-current-docker")
    node.write("etc/docker/daemon.json", json.dumps({
        "registry-mirrors": ["https://mirror.example"], "log-opts": {"max-file": "3"}, "ipv6": False}))
    node.run("runtime.sh", env)
    daemon = json.loads(node.read("etc/docker/daemon.json"))
    assert daemon["registry-mirrors"] == ["https://mirror.example"]
    assert daemon["log-opts"] == {"max-file": "3", "max-size": "100m"}
    assert daemon["ipv6"] is True and daemon["fixed-cidr-v6"] == str(cfg.docker_ipv6_cidr)
    assert daemon["exec-opts"] == ["native.cgroupdriver=systemd"]


def test_daemon_json_change_restarts_running_docker_only_then(tmp_path):
    node, env, _ = prepare_scenario(tmp_path, "debian-current-docker")
    node.run("runtime.sh", env)
    assert has(node.calls(), "systemctl", "restart", "docker")
    node.clear_calls()
    node.run("runtime.sh", env)
    assert not contains(node.calls(), "restart")
    # an equivalent file with other formatting is left alone
    data = json.loads(node.read("etc/docker/daemon.json"))
    node.write("etc/docker/daemon.json", json.dumps(data))
    node.clear_calls()
    node.run("runtime.sh", env)
    assert node.read("etc/docker/daemon.json") == json.dumps(data)
    assert changing(node.calls()) == []


def test_hosts_keeps_other_lines_and_names(tmp_path):
    node, env, _ = prepare_scenario(tmp_path, "el9-current-docker")
    node.write("etc/hosts", "127.0.0.1 localhost k8s-master01 k8s-master01.dslab.internal\n"
                            "127.0.1.1 k8s-master01\n::1 localhost k8s-master01\n"
                            "# comment k8s-master01\n192.168.200.11 k8s-master01\n10.0.0.1 k8s-master01x\n")
    node.run("network.sh", env)
    assert node.read("etc/hosts") == ("127.0.0.1 localhost\n::1 localhost\n# comment k8s-master01\n"
                                      "192.168.200.11 k8s-master01\n10.0.0.1 k8s-master01x\n")


def test_el7_creates_ifcfg_when_absent(tmp_path):
    node, env, _ = prepare_scenario(tmp_path, "el7-seed-2020")
    (node.root / "etc/sysconfig/network-scripts/ifcfg-eth1").unlink()
    node.run("network.sh", env)
    ifcfg = node.read("etc/sysconfig/network-scripts/ifcfg-eth1")
    assert ifcfg.startswith("DEVICE=eth1\nBOOTPROTO=dhcp\n") and "IPV6INIT=yes" in ifcfg


def test_interface_not_found(tmp_path):
    node, env, _ = prepare_scenario(tmp_path, "debian-current-docker")
    node.assign_ipv4("192.168.200.99")
    result = node.run("network.sh", env, check=False)
    assert result.returncode != 0
    assert f"step 'detect' failed: no interface has the address {env['NODE_IPV4']}" in result.stderr


INIT = ["kubeadm", "init", "--config", "/opt/dslab/kubeadm-config.yaml"]
JOIN = ["kubeadm", "join", "--config", "/opt/dslab/kubeadm-join.yaml"]


def kubeadm_node(tmp_path, node_name="k8s-master01"):
    node, _, _ = prepare_scenario(tmp_path, "el9-current-docker")
    env, _ = lab_env("current", None, node_name)
    node.write("opt/dslab/kubeadm-join.yaml", "kind: JoinConfiguration\n")
    node.write("etc/cni/net.d/10-calico.conflist", "{}\n")
    return node, env


def test_init_fresh_node_then_done(tmp_path):
    node, env = kubeadm_node(tmp_path)
    node.root.joinpath("etc/cni/net.d/10-calico.conflist").unlink()
    node.run("control-plane.sh", env)
    calls = node.calls()
    assert calls.index(INIT) > calls.index(["kubeadm", "config", "images", "pull", "--config",
                                            "/opt/dslab/kubeadm-config.yaml"])
    assert not contains(calls, "kubeadm", "reset")
    assert node.root.joinpath("var/lib/dslab/kubeadm-init.done").is_file()
    node.clear_calls()
    node.run("control-plane.sh", env)
    assert changing(node.calls()) == []


def test_half_done_init_is_reset_and_run_again(tmp_path):
    """admin.conf is written before wait-control-plane: an init that timed out there is not done."""
    node, env = kubeadm_node(tmp_path)
    node.update(fail=["kubeadm init"])
    node.run("control-plane.sh", env, check=False)  # what kubeadm wrote before failing stays
    node.write("etc/kubernetes/admin.conf", "half-done\n")
    assert not node.root.joinpath("var/lib/dslab/kubeadm-init.done").exists()
    node.update(fail=[])
    node.clear_calls()
    result = node.run("control-plane.sh", env)
    calls = node.calls()
    reset = ["kubeadm", "reset", "-f", "--cri-socket", env["CRI_SOCKET"]]
    assert env["CRI_SOCKET"] == "unix:///var/run/cri-dockerd.sock"
    assert reset in calls and calls.index(reset) < calls.index(INIT)
    assert "did not complete" in result.stderr
    assert not node.root.joinpath("etc/cni/net.d/10-calico.conflist").exists()
    assert node.root.joinpath("var/lib/dslab/kubeadm-init.done").is_file()


def test_admin_conf_without_the_marker_is_a_half_done_init(tmp_path):
    node, env = kubeadm_node(tmp_path)
    node.write("etc/kubernetes/admin.conf", "earlier\n")
    node.write("var/lib/etcd/member/snap/db", "old etcd\n")
    node.run("control-plane.sh", env)
    calls = node.calls()
    assert contains(calls, "kubeadm", "reset") and INIT in calls
    assert not node.root.joinpath("var/lib/etcd/member").exists()  # 1.17's reset may leave it


def test_a_join_past_its_tls_bootstrap_before_the_marker_is_recorded_not_reset(tmp_path):
    node, env = kubeadm_node(tmp_path, "k8s-worker01")
    node.write("etc/kubernetes/kubelet.conf", "joined earlier\n")
    node.write("etc/kubernetes/pki/ca.crt", "joined earlier\n")
    node.run("join.sh", env)
    assert changing(node.calls()) == [] and not contains(node.calls(), "kubeadm", "reset")
    assert node.root.joinpath("var/lib/dslab/kubeadm-join.done").is_file()


def test_join_once(tmp_path):
    node, env = kubeadm_node(tmp_path, "k8s-worker01")
    node.run("join.sh", env)
    assert has(node.calls(), *JOIN) and not contains(node.calls(), "kubeadm", "reset")
    assert node.root.joinpath("var/lib/dslab/kubeadm-join.done").is_file()
    node.clear_calls()
    node.run("join.sh", env)
    assert changing(node.calls()) == []


def test_failed_join_is_reset_and_retried(tmp_path):
    """A failed join leaves pki/ca.crt and bootstrap-kubelet.conf: the retry resets first."""
    node, env = kubeadm_node(tmp_path, "k8s-worker01")
    node.update(fail=["kubeadm join"])
    assert node.run("join.sh", env, check=False).returncode != 0
    node.write("etc/kubernetes/pki/ca.crt", "left by the failed join\n")
    node.write("etc/kubernetes/bootstrap-kubelet.conf", "left by the failed join\n")
    assert not node.root.joinpath("var/lib/dslab/kubeadm-join.done").exists()
    node.update(fail=[])
    node.clear_calls()
    node.run("join.sh", env)
    calls = node.calls()
    reset = ["kubeadm", "reset", "-f", "--cri-socket", env["CRI_SOCKET"]]
    assert reset in calls and calls.index(reset) < calls.index(JOIN)
    assert not node.root.joinpath("etc/cni/net.d/10-calico.conflist").exists()
    assert node.root.joinpath("var/lib/dslab/kubeadm-join.done").is_file()


def test_join_pending_answers_as_a_run_would_act(tmp_path):
    node, env = kubeadm_node(tmp_path, "k8s-worker01")
    assert node.run("join.sh", env, "--pending", check=False).returncode == 0  # fresh: would join
    node.write("etc/kubernetes/pki/ca.crt", "left by a failed join\n")
    assert node.run("join.sh", env, "--pending", check=False).returncode == 0  # partial: would reset and join
    node.run("join.sh", env)
    result = node.run("join.sh", env, "--pending", check=False)
    assert result.returncode == 1 and result.stderr == ""  # joined
    node.root.joinpath("var/lib/dslab/kubeadm-join.done").unlink()
    node.clear_calls()
    assert node.run("join.sh", env, "--pending", check=False).returncode == 1  # past its TLS bootstrap
    assert node.calls() == [] and not node.root.joinpath("var/lib/dslab/kubeadm-join.done").exists()  # only asks


def test_done_markers_are_where_the_lab_looks():
    from lab import nodeenv
    assert f"INIT_DONE={nodeenv.INIT_DONE}\n" in (PROVISION / "control-plane.sh").read_text()
    assert f"JOIN_DONE={nodeenv.JOIN_DONE}\n" in (PROVISION / "join.sh").read_text()


def test_join_without_config_fails_clearly(tmp_path):
    node, env, _ = prepare_scenario(tmp_path, "el9-current-docker")
    result = node.run("join.sh", env, check=False)
    assert result.returncode != 0 and "kubeadm-join.yaml not found" in result.stderr


def test_unsupported_os(tmp_path):
    node, env, _ = prepare_scenario(tmp_path, "el9-current-docker")
    node.write("etc/os-release", 'ID="ubuntu"\nVERSION_ID="24.04"\n')
    result = node.run("prepare.sh", env, check=False)
    assert result.returncode != 0 and "unsupported OS: ID=ubuntu" in result.stderr


# --------------------------------------------------------------------------- fetch.sh


@pytest.fixture
def fetch_node(tmp_path):
    node = Node(tmp_path, "debian")
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"payload\n")
    node.update(downloads={"https://example.invalid/payload.bin": str(payload)})
    return node, payload


@pytest.mark.parametrize("algo", ["sha256", "sha512"])
def test_fetch_downloads_verifies_and_skips(fetch_node, algo):
    node, payload = fetch_node
    digest = hashlib.new(algo, payload.read_bytes()).hexdigest()
    node.run("fetch.sh", {}, "https://example.invalid/payload.bin", digest, "/var/cache/dslab/payload.bin")
    assert node.read("var/cache/dslab/payload.bin") == "payload\n"
    assert contains(node.calls(), "curl", "-fsSL", "--retry")
    node.clear_calls()
    node.run("fetch.sh", {}, "https://example.invalid/payload.bin", digest, "/var/cache/dslab/payload.bin")
    assert node.calls() == []


def test_fetch_mismatch_names_url_and_sums(fetch_node):
    node, payload = fetch_node
    wrong = "0" * 64
    actual = hashlib.sha256(payload.read_bytes()).hexdigest()
    result = node.run("fetch.sh", {}, "https://example.invalid/payload.bin", wrong, "/var/cache/dslab/payload.bin",
                      check=False)
    assert result.returncode != 0
    assert f"checksum mismatch for https://example.invalid/payload.bin: expected {wrong}, got {actual}" in result.stderr
    assert not (node.root / "var/cache/dslab/payload.bin").exists()
    assert list((node.root / "var/cache/dslab").iterdir()) == []  # no partial file left


def test_a_failed_fetch_removes_its_partial_file_and_runs_nothing_of_its_name(fetch_node):
    node, payload = fetch_node
    dest = "/var/cache/dslab/x';echo INJECTED >&2;'.bin"
    result = node.run("fetch.sh", {}, "https://example.invalid/payload.bin", "0" * 64, dest, check=False)
    assert result.returncode != 0 and "INJECTED" not in result.stderr.splitlines(), result.stderr
    assert list((node.root / "var/cache/dslab").iterdir()) == []


def test_fetch_rejects_missing_sum(fetch_node):
    node, _ = fetch_node
    result = node.run("fetch.sh", {}, "https://example.invalid/payload.bin", "", "/tmp/x", check=False)
    assert result.returncode != 0 and "no usable checksum" in result.stderr
    assert node.calls() == []


def test_debian_interfaces_without_source_line_warns(tmp_path):
    node, env, _ = prepare_scenario(tmp_path, "debian-current-docker")
    assert "does not source" not in node.run("network.sh", env).stderr  # Debian's default file does
    node.write("etc/network/interfaces", "auto eth1\niface eth1 inet dhcp\n")
    result = node.run("network.sh", env)
    assert "does not source /etc/network/interfaces.d" in result.stderr


def test_apt_key_must_be_armoured(tmp_path):
    node, env, _ = prepare_scenario(tmp_path, "debian-current-docker")
    state = node.state()
    state["downloads"].pop(f"{env['KUBERNETES_REPO_BASE']}/v{env['KUBERNETES_MINOR']}/deb/Release.key")
    node.save(state)  # the stub then serves a non-key body
    result = node.run("kubernetes.sh", env, check=False)
    assert result.returncode != 0
    assert "is refused: not a single ASCII-armoured OpenPGP public key block" in result.stderr
    assert not (node.root / "etc/apt/keyrings/kubernetes-apt-keyring.asc").exists()
    assert not contains(node.calls(), "apt-get", "install")


def test_debian_docker_repo_key_and_line(tmp_path):
    node, env, _ = prepare_scenario(tmp_path, "debian-current-docker")
    state = node.state()
    state["packages"].pop("docker.io")
    node.save(state)
    for command in ("dockerd", "docker"):
        (node.stub / "bin" / command).unlink()
    node.run("runtime.sh", env)
    assert node.read("etc/apt/keyrings/docker.asc") == (KEYS / "docker-debian.asc").read_text()
    assert node.read("etc/apt/sources.list.d/docker.list") == (
        "deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/debian bookworm stable\n")
    assert contains(node.calls(), "apt-get", "install", "docker-ce", "docker-ce-cli", "containerd.io")


# --------------------------------------------------------------------------- packages, NetworkManager


def without_curl(node):
    state = node.state()
    state["packages"].pop(CURL_PACKAGE[node.family])
    node.save(state)
    (node.stub / "bin" / "curl").unlink()


@pytest.mark.parametrize("scenario,box_curl,installs", [
    # EL9 boxes carry curl-minimal: `rpm -q curl` says missing, `dnf install curl` conflicts
    ("el9-current-docker", "curl-minimal", False),
    ("el7-seed-2020", "curl", False),
    ("debian-current-docker", "curl", False),
    ("el9-current-docker", None, True),
    ("el7-seed-2020", None, True),
    ("debian-current-docker", None, True),
])
def test_curl_is_required_as_a_command(tmp_path, scenario, box_curl, installs):
    node, env, _ = prepare_scenario(tmp_path, scenario)
    if box_curl is None:
        without_curl(node)
    else:
        assert box_curl in node.state()["packages"]
    node.run("prepare.sh", env)
    installed = [c for c in node.calls() if "install" in c and c[0] in ("yum", "dnf", "apt-get")]
    assert any("curl" in c for c in installed) == installs
    assert (node.stub / "bin" / "curl").exists()
    if installs:
        node.clear_calls()
        node.run("prepare.sh", env)
        assert changing(node.calls()) == []


@pytest.mark.parametrize("scenario,nm_active,existing,writes", [
    # EL7 and EL9 without the file: the full runs
    ("el9-current-docker", True, "[keyfile]\nunmanaged-devices=interface-name:cali*\n", True),
    ("el7-seed-2020", True, CALICO_NM_CONF, False),
    ("el9-current-docker", False, None, False),
])
def test_networkmanager_leaves_calico_interfaces_alone(tmp_path, scenario, nm_active, existing, writes):
    node, env, _ = prepare_scenario(tmp_path, scenario)
    state = node.state()
    if nm_active:
        assert state["services"]["NetworkManager"]["active"]
    else:
        state["services"].pop("NetworkManager", None)
        node.save(state)
    path = "etc/NetworkManager/conf.d/calico.conf"
    if existing is not None:
        node.write(path, existing)
    node.run("prepare.sh", env)
    reload = ["systemctl", "reload", "NetworkManager"]
    assert (reload in node.calls()) == writes
    if nm_active:
        assert node.read(path) == CALICO_NM_CONF
        assert (node.root / path).stat().st_mode & 0o777 == 0o644
    else:
        assert not (node.root / path).exists()
    node.clear_calls()
    node.run("prepare.sh", env)
    assert changing(node.calls()) == []


@pytest.mark.parametrize("ignores_setopt,message", [
    # yum told not to skip missing names fails itself
    (False, "Unable to find a match: ipvsadm"),
    # a yum that skips them anyway is caught by the rpm check
    (True, "the package manager exited 0 but did not install: ipvsadm"),
])
def test_el7_yum_missing_package_fails_clearly(tmp_path, ignores_setopt, message):
    node, env, _ = prepare_scenario(tmp_path, "el7-seed-2020")
    node.update(unavailable=["ipvsadm"], yum_ignores_setopt=ignores_setopt)
    result = node.run("prepare.sh", env, check=False)
    assert result.returncode != 0
    assert "dslab: step 'packages' failed" in result.stderr and message in result.stderr
    assert not contains(node.calls(), "modprobe")  # nothing after the failed step


def test_el7_yum_install_checked_by_name_and_version(tmp_path):
    """docker-ce-19.03.5 is installed when rpm knows docker-ce at version 19.03.5."""
    node, env, _ = prepare_scenario(tmp_path, "el7-seed-2020")
    node.run("runtime.sh", env)
    assert node.state()["packages"]["docker-ce"] == "19.03.5"
    assert node.state()["packages"]["containerd.io"] == "1.2.10-3.2.el7"
    rpm_checks = [c[-1] for c in node.calls() if c[:3] == ["rpm", "-q", "--quiet"]]
    assert {"docker-ce-19.03.5", "docker-ce-cli-19.03.5", "containerd.io-1.2.10-3.2.el7"} <= set(rpm_checks)


@pytest.mark.parametrize("scenario,runtime,containerd_version,expected", [
    ("el7-seed-2020", "docker", "1.2.10-3.2.el7", ["yum", "install", "-y", "--setopt=skip_missing_names_on_install=False",
                                                   "docker-ce-19.03.5", "docker-ce-cli-19.03.5",
                                                   "containerd.io-1.2.10-3.2.el7"]),
    ("el7-seed-2020", "docker", "", ["yum", "install", "-y", "--setopt=skip_missing_names_on_install=False",
                                     "docker-ce-19.03.5", "docker-ce-cli-19.03.5", "containerd.io"]),
    ("el7-seed-2020", "containerd", "1.2.10-3.2.el7", ["yum", "install", "-y",
                                                       "--setopt=skip_missing_names_on_install=False",
                                                       "containerd.io-1.2.10-3.2.el7"]),
    ("el9-current-docker", "docker", "", ["dnf", "install", "-y", "docker-ce", "docker-ce-cli", "containerd.io"]),
    ("el9-current-containerd", "containerd", "", ["dnf", "install", "-y", "containerd.io"]),
])
def test_containerd_io_pinned_by_containerd_version(tmp_path, scenario, runtime, containerd_version, expected):
    node, env, _ = prepare_scenario(tmp_path, scenario)
    env = {**env, "RUNTIME": runtime, "CONTAINERD_VERSION": containerd_version}
    node.run("runtime.sh", env)
    installs = [c for c in node.calls() if c[1:2] == ["install"]]
    assert installs == [expected]
    node.clear_calls()
    node.run("runtime.sh", env)
    assert changing(node.calls()) == []


def test_containerd_version_pin_is_el_only(tmp_path):
    node, env, _ = prepare_scenario(tmp_path, "debian-current-docker")
    result = node.run("runtime.sh", {**env, "RUNTIME": "containerd", "CONTAINERD_VERSION": "1.2.10-3.2.el7"},
                      check=False)
    assert result.returncode != 0 and "CONTAINERD_VERSION pinning is only supported on EL" in result.stderr
    assert not contains(node.calls(), "apt-get", "install")


PKG_VERSION_SCRIPT = '''#!/usr/bin/env bash
set -euo pipefail
. "$1/lib.sh"
printf '[%s]' "$(pkg_version "$2" "$3")"
'''


@pytest.mark.parametrize("family,installed,expected", [
    ("el9", None, ""),  # rpm prints "package kubelet is not installed" on stdout
    ("el7", None, ""),
    ("debian", None, ""),
    ("el9", "1.36.0", "1.36.0"),
    ("el7", "1.2.10-3.2.el7", "1.2.10"),  # %{VERSION} only
    ("debian", "1.36.0-1.1", "1.36.0-1.1"),
])
def test_pkg_version(tmp_path, family, installed, expected):
    node = Node(tmp_path, family)
    if installed is not None:
        node.preinstall("kubelet", version=installed)
    script = tmp_path / "pkg-version.sh"
    script.write_text(PKG_VERSION_SCRIPT)
    result = node.run(str(script), {}, str(PROVISION), family, "kubelet")
    assert result.stdout == f"[{expected}]"


# --------------------------------------------------------------------------- network persistence


@pytest.mark.parametrize("nm_active,ifcfg_current,reloads", [
    (True, False, True),
    (True, True, False),   # the file already says it: nothing to reload
    (False, False, False),  # no NetworkManager: the network service reads ifcfg at boot
])
def test_el7_ifcfg_change_reloads_networkmanager(tmp_path, nm_active, ifcfg_current, reloads):
    node, env, _ = prepare_scenario(tmp_path, "el7-seed-2020")
    if not nm_active:
        state = node.state()
        state["services"].pop("NetworkManager")
        node.save(state)
    if ifcfg_current:
        first = Node(tmp_path / "first", "el7")
        first.assign_ipv4(env["NODE_IPV4"])
        first.run("network.sh", env)
        node.write("etc/sysconfig/network-scripts/ifcfg-eth1", first.read("etc/sysconfig/network-scripts/ifcfg-eth1"))
    node.run("network.sh", env)
    calls = node.calls()
    assert has(calls, "nmcli", "connection", "reload") == reloads
    if reloads:
        assert calls.index(["nmcli", "connection", "reload"]) > calls.index(["ip", "-o", "-4", "addr", "show"])
    node.clear_calls()
    node.run("network.sh", env)
    assert not contains(node.calls(), "nmcli")


def test_el9_connection_modified_by_uuid(tmp_path):
    """Two profiles named "System eth1": the one on the device is changed, the other is not."""
    node, env, _ = prepare_scenario(tmp_path, "el9-current-docker")
    state = node.state()
    other = "0c2e1a4b-0000-4000-8000-000000000001"
    profile = {"connection.id": "System eth1", "ipv6.method": "auto", "ipv6.addresses": "", "ipv6.gateway": ""}
    state["nm"]["connections"] = {other: dict(profile), NM_UUID: dict(profile)}
    node.save(state)
    node.run("network.sh", env)
    connections = node.state()["nm"]["connections"]
    assert connections[NM_UUID]["ipv6.method"] == "manual"
    assert connections[NM_UUID]["ipv6.addresses"] == f"{env['NODE_IPV6']}/64"
    assert connections[other] == profile
    assert has(node.calls(), "nmcli", "-g", "ipv6.method,ipv6.addresses,ipv6.gateway", "connection", "show", NM_UUID)
    node.clear_calls()
    node.run("network.sh", env)
    assert changing(node.calls()) == []


# --------------------------------------------------------------------------- package names


def sourced_packages(family: str) -> set:
    """The package names provision/PACKAGES.md records as seen for ``family``."""
    rows = set()
    for line in (PROVISION / "PACKAGES.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 3 and cells[1] in ("el7", "el9", "debian"):
            assert cells[2], f"no source recorded for {cells[0]} on {cells[1]}"
            rows.add((cells[0], cells[1]))
    return {name for name, os_ in rows if os_ == family}


def installed_packages(calls) -> set:
    """Package names (versions dropped) of every install call of yum, dnf and apt-get."""
    names = set()
    for call in calls:
        if call[0] in ("yum", "dnf", "apt-get") and "install" in call:
            for spec in call[call.index("install") + 1:]:
                if spec.startswith("-"):
                    continue
                if call[0] == "apt-get":
                    names.add(spec.partition("=")[0])
                else:
                    names.add(next((spec[:i] for i, c in enumerate(spec)
                                    if c == "-" and spec[i + 1:i + 2].isdigit()), spec))
    return names


def test_installed_packages_are_sourced(tmp_path):
    """Each scenario on a bare box (no curl command, Debian without docker.io) installs the most;
    what they install is exactly the table's rows for their OS."""
    used = {"el7": set(), "el9": set(), "debian": set()}
    for scenario, (family, _, _, _) in SCENARIOS.items():
        node, env, _ = prepare_scenario(tmp_path / scenario, scenario)
        without_curl(node)
        if family == "debian":
            state = node.state()
            state["packages"].pop("docker.io")
            node.save(state)
            for command in ("dockerd", "docker"):
                (node.stub / "bin" / command).unlink()
        run_all(node, env)
        installed = installed_packages(node.calls())
        assert installed <= sourced_packages(family), f"{scenario}: not in provision/PACKAGES.md"
        used[family] |= installed
    for family, names in used.items():
        assert names == sourced_packages(family), f"{family}: rows no scenario installs"


@pytest.mark.parametrize("scenario,timers", [("el9-current-docker", ["dnf-makecache.timer"]),
                                             ("debian-current-docker", ["apt-daily.timer", "apt-daily-upgrade.timer"])])
def test_prepare_stops_the_package_managers_background_refresh(tmp_path, scenario, timers):
    node, env, _ = prepare_scenario(tmp_path, scenario)
    state = node.state()
    for timer in timers:
        state["services"][timer.removesuffix(".service")] = {"enabled": True, "active": True, "masked": False}
    node.save(state)
    node.run("prepare.sh", env)
    calls = node.calls()
    for timer in timers:
        assert ["systemctl", "stop", timer] in calls and ["systemctl", "disable", timer] in calls
        assert node.state()["services"][timer] == {"enabled": False, "active": False, "masked": False}
    node.clear_calls()
    node.run("prepare.sh", env)
    assert changing(node.calls()) == []
