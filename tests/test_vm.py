"""The VM rehearsal: the real `invoke lab.up` / `lab.verify` / `lab.destroy` on three VMs.

Everything runs inside the session's network namespace (libvirtd, its bridge and
dnsmasq, vagrant, the VMs), with the Debian 12 test box built by the harness and
QEMU's software emulation. Tests in this module run in order and share one lab.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parent.parent
LAB = "dslabvm"
UP_TIMEOUT_S = 1800
NOOP_UP_MAX_S = 60
MODULES = ("br_netfilter", "overlay", "ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "nf_conntrack")
SYSCTLS = {"net.bridge.bridge-nf-call-iptables": "1", "net.bridge.bridge-nf-call-ip6tables": "1",
           "net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"}


class Lab:
    """One lab in the namespace, driven through the project's own invoke tasks."""

    def __init__(self, vm_env, state_dir: Path):
        self.vm_env = vm_env
        self.state_dir = state_dir
        self.settings = {
            "INVOKE_LAB_NAME": LAB,
            "INVOKE_LAB_BOX": vm_env.box_name,
            "INVOKE_LAB_LIBVIRT_URI": vm_env.uri,
            "INVOKE_LAB_LIBVIRT_DRIVER": "qemu",
            "INVOKE_LAB_STORAGE_POOL": vm_env.pool,
            "INVOKE_LAB_MEMORY_MB": "1024",
            "INVOKE_LAB_CPUS": "1",
            "INVOKE_LAB_STATE_DIR": str(state_dir),
        }
        from lab import config  # noqa: PLC0415

        self.cfg = config.load({k[len("INVOKE_LAB_"):].lower(): v for k, v in self.settings.items()})
        self.log = state_dir.parent / "invoke.log"

    def invoke(self, *args, check=True, timeout=UP_TIMEOUT_S):
        result = self.vm_env.run_in_ns([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=self.settings,
                                       check=False, timeout=timeout)
        with open(self.log, "a") as handle:
            handle.write(f"### invoke {' '.join(args)} -> {result.returncode}\n{result.stdout}\n{result.stderr}\n")
        if check:
            assert result.returncode == 0, f"invoke {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result

    def popen_invoke(self, *args):
        env = self.vm_env.with_env(**self.settings)
        return subprocess.Popen(self.vm_env.ns.wrap([sys.executable, "-m", "invoke", *args]), cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def ssh(self, node, command, check=True):
        cfg_file = self.state_dir / "ssh_config"
        result = self.vm_env.run_in_ns(["ssh", "-F", str(cfg_file), "-o", "BatchMode=yes", node, command],
                                       check=False, timeout=300)
        if check:
            assert result.returncode == 0, f"{node}: {command}: {result.stdout}{result.stderr}"
        return result.stdout

    def leftovers(self):
        from lab import destroy  # noqa: PLC0415
        from lab.network import connect  # noqa: PLC0415

        with connect(self.vm_env.uri) as conn:
            return destroy.libvirt_leftovers(self.cfg, conn)

    def box_volumes(self):
        from lab import destroy  # noqa: PLC0415

        result = self.vm_env.run_in_ns(["virsh", "-c", self.vm_env.uri, "vol-list", self.vm_env.pool, "--name"],
                                       check=False)
        return [v for v in result.stdout.split() if v.startswith(destroy.box_volume_prefix(self.cfg.box))]


def assert_nothing_left(lab):
    assert lab.leftovers() == {"domains": [], "volumes": [], "networks": []}
    assert lab.box_volumes() == []
    assert not (lab.state_dir / "Vagrantfile").exists()
    assert not (lab.state_dir / ".vagrant").exists()


@pytest.fixture(scope="module")
def lab(vm_env, tmp_path_factory):
    lab = Lab(vm_env, tmp_path_factory.mktemp("vmlab") / "state")
    yield lab
    lab.invoke("lab.destroy", check=False)


def test_up_until_runtime_creates_three_machines(lab):
    started = time.monotonic()
    result = lab.invoke("lab.up", "--until", "runtime")
    lab.first_up_s = time.monotonic() - started
    for step in ("preflight", "network", "render", "machines", "prepare", "runtime"):
        assert f"✓ {step}" in result.stderr, result.stderr
    assert "kubernetes" not in result.stderr.replace("--until", "")
    assert sorted(lab.leftovers()["domains"]) == sorted(lab.cfg.domain_name(n) for n in lab.cfg.nodes)


def test_every_node_has_its_planned_addresses_on_one_nic(lab):
    for node in lab.cfg.nodes:
        addrs = lab.ssh(node.name, "ip -o addr show scope global")
        nic4 = [line.split()[1] for line in addrs.splitlines() if f" {node.ipv4}/24 " in line]
        nic6 = [line.split()[1] for line in addrs.splitlines() if f" {node.ipv6}/64 " in line]
        assert nic4 and nic6 and nic4 == nic6, addrs
        inet = [line for line in addrs.splitlines() if " inet " in line and "docker" not in line]
        assert len(inet) == 1, f"{node.name} has another IPv4 NIC that could be picked: {addrs}"


def test_every_node_resolves_and_reaches_every_other_in_both_families(lab):
    for node in lab.cfg.nodes:
        hosts = lab.ssh(node.name, "cat /etc/hosts")
        assert node.name not in hosts, f"{node.name} maps its own name in /etc/hosts:\n{hosts}"
        for other in lab.cfg.nodes:
            for name in (other.name, other.fqdn(lab.cfg.domain)):
                answer = lab.ssh(node.name, f"getent ahosts {name}").split()
                assert str(other.ipv4) in answer and str(other.ipv6) in answer, (node.name, name, answer)
                assert not any(a.startswith("127.") for a in answer), answer
            lab.ssh(node.name, f"ping -4 -c1 -W5 {other.name}")
            lab.ssh(node.name, f"ping -6 -c1 -W5 {other.name}")


def test_runtime_step_prepared_every_node(lab):
    fixed_cidr = str(lab.cfg.docker_ipv6_cidr)
    for node in lab.cfg.nodes:
        loaded = lab.ssh(node.name, "cut -d' ' -f1 /proc/modules").split()
        for module in MODULES:
            assert module in loaded or lab.ssh(node.name, f"test -d /sys/module/{module} && echo builtin",
                                                check=False).strip() == "builtin", (node.name, module)
        for key, value in SYSCTLS.items():
            assert lab.ssh(node.name, f"sudo sysctl -n {key}").strip() == value, (node.name, key)
        assert lab.ssh(node.name, "sudo swapon --show --noheadings").strip() == ""
        daemon = json.loads(lab.ssh(node.name, "sudo cat /etc/docker/daemon.json"))
        assert daemon["ipv6"] is True and daemon["fixed-cidr-v6"] == fixed_cidr
        assert daemon["exec-opts"] == ["native.cgroupdriver=systemd"]
        bridge = json.loads(lab.ssh(node.name, "sudo docker network inspect bridge"))[0]
        assert bridge["EnableIPv6"] is True
        assert fixed_cidr in [c.get("Subnet") for c in bridge["IPAM"]["Config"]]
        for tool in ("ipset", "ipvsadm"):
            lab.ssh(node.name, f"sudo sh -c 'command -v {tool}'")


def test_rerunning_the_scripts_changes_nothing(lab):
    probe = ("sudo stat -c '%n %Y' /etc/docker/daemon.json /etc/sysctl.d/*dslab* /etc/modules-load.d/*dslab* "
             "&& systemctl show -p MainPID --value docker")
    before = {n.name: lab.ssh(n.name, probe) for n in lab.cfg.nodes}
    for node in lab.cfg.nodes:
        for script in ("prepare.sh", "runtime.sh"):
            lab.ssh(node.name, f"sudo bash /opt/dslab/provision/{script} /opt/dslab/node.env")
    after = {n.name: lab.ssh(n.name, probe) for n in lab.cfg.nodes}
    assert before == after


def test_second_up_is_a_fast_noop(lab):
    domains_before = lab.vm_env.run_in_ns(["virsh", "-c", lab.vm_env.uri, "list", "--uuid"]).stdout
    started = time.monotonic()
    result = lab.invoke("lab.up", "--until", "runtime")
    elapsed = time.monotonic() - started
    assert elapsed < NOOP_UP_MAX_S, result.stderr
    assert "prepare: already done" in result.stderr and "runtime: already done" in result.stderr
    assert lab.vm_env.run_in_ns(["virsh", "-c", lab.vm_env.uri, "list", "--uuid"]).stdout == domains_before


def test_verify_network_layer_passes(lab, tmp_path):
    report = tmp_path / "verify.json"
    result = lab.invoke("lab.verify", "--layer", "network", "--json", str(report), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 failed" in result.stdout
    data = json.loads(report.read_text())
    assert data["checks"] and all(c["status"] == "pass" for c in data["checks"])


def test_verify_network_layer_fails_without_a_node_ipv6(lab):
    node = lab.cfg.workers[-1]
    lab.ssh(node.name, f"sudo ip -6 addr del {node.ipv6}/64 dev $(ip -o -4 addr show | awk '/ {node.ipv4}\\//{{print $2}}')")
    try:
        result = lab.invoke("lab.verify", "--layer", "network", check=False)
        assert result.returncode != 0
        failed = [line for line in result.stdout.splitlines() if line.startswith("✗")]
        assert failed, result.stdout
        assert node.name in result.stdout and "IPv6" in result.stdout
    finally:
        lab.ssh(node.name, "sudo bash /opt/dslab/provision/network.sh /opt/dslab/node.env", check=False)


def test_destroy_leaves_nothing(lab):
    lab.invoke("lab.destroy")
    assert_nothing_left(lab)
    lab.invoke("lab.destroy")  # twice is safe
    assert_nothing_left(lab)


def test_destroy_after_dot_vagrant_was_deleted(lab):
    lab.invoke("lab.up", "--until", "machines")
    subprocess.run(["rm", "-rf", str(lab.state_dir / ".vagrant")], check=True)
    lab.invoke("lab.destroy")
    assert_nothing_left(lab)


def test_destroy_after_an_interrupted_up(lab):
    proc = lab.popen_invoke("lab.up", "--until", "machines")
    deadline = time.monotonic() + UP_TIMEOUT_S
    try:
        while time.monotonic() < deadline and not lab.leftovers()["domains"]:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(2)
        assert lab.leftovers()["domains"], "no domain appeared"
    finally:
        import os  # noqa: PLC0415

        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    lab.invoke("lab.destroy")
    assert_nothing_left(lab)
