"""Proves the real-VM harness: a private netns, a libvirtd inside it, the
debootstrapped test box, and one VM brought up and destroyed by vagrant."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from harness import libvirtd as libvirtd_mod
from harness.netns import NetNS



def require_tools(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"required tool(s) not installed: {', '.join(missing)}")


def require_root(what):
    if os.geteuid() != 0:
        pytest.fail(f"{what} needs root (ip netns, libvirtd)")


NET_XML = """<network><name>dslabtest-probe</name>
<bridge name='dslabprobe0'/><ip address='192.0.2.1' netmask='255.255.255.0'/></network>
"""

VAGRANTFILE = """\
Vagrant.configure("2") do |config|
  config.vm.box = "{box}"
  config.vm.synced_folder ".", "/vagrant", type: "rsync"
  config.vm.define "smoke"
  config.vm.provider :libvirt do |lv|
    lv.uri = "{uri}"
    lv.driver = "qemu"
    lv.cpu_mode = "custom"
    lv.cpu_model = "qemu64"
    lv.memory = 768
    lv.cpus = 1
    lv.storage_pool_name = "{pool}"
    lv.graphics_type = "none"
    lv.serial :type => "file", :source => {{:path => "{console}"}}
  end
end
"""


@pytest.mark.libvirtd
def test_libvirtd_starts_and_stops_in_netns(tmp_path):
    require_tools("ip", "libvirtd", "virtlogd", "virsh")
    require_root("this test")
    if libvirtd_mod.active():
        pytest.fail("a session libvirtd of these tests is already running; this test "
                    "must run before any test using the `libvirtd` fixture")
    machine_defs = sorted(p.name for p in Path("/etc/libvirt/qemu").rglob("*"))
    ns = NetNS.create()
    try:
        daemon = libvirtd_mod.Libvirtd(ns, tmp_path / "libvirtd")
        try:
            daemon.start()
        except libvirtd_mod.LibvirtdBusy as exc:
            pytest.fail(str(exc), pytrace=False)
        pids = dict(daemon.pids)
        try:
            version = daemon.virsh("version")
            assert "Running hypervisor: QEMU" in version.stdout
            assert set(pids) == {"libvirtd", "virtlogd"}
            # The daemon lives in our namespace, not the machine's.
            assert pids["libvirtd"] in ns.pids()
            assert "running" in daemon.virsh("pool-info", daemon.pool).stdout
            # Definitions go to the namespace's private /etc/libvirt copy.
            daemon.virsh("net-define", "/dev/stdin", input=NET_XML)
            assert (ns.etc_dir / "libvirt/qemu/networks/dslabtest-probe.xml").exists()
        finally:
            daemon.stop()
        for name, pid in pids.items():
            assert not libvirtd_mod._alive(pid, name), f"{name} ({pid}) still running"
        assert not libvirtd_mod.running_daemons()
        assert not daemon.alive()
    finally:
        ns.delete()
    assert not ns.exists()
    assert not ns.etc_dir.exists()
    assert sorted(p.name for p in Path("/etc/libvirt/qemu").rglob("*")) == machine_defs


@pytest.mark.vm
def test_one_vm_up_ssh_destroy(vm_env, libvirtd, tmp_path):
    require_tools("vagrant")
    workdir = tmp_path / "smoke"
    workdir.mkdir()
    console = tmp_path / "console.log"
    log = tmp_path / "vagrant.log"
    (workdir / "Vagrantfile").write_text(VAGRANTFILE.format(
        box=vm_env.box_name, uri=libvirtd.uri, pool=libvirtd.pool, console=console))

    def vagrant(*args, **kw):
        return vm_env.vagrant(*args, cwd=workdir, **kw)

    started = time.monotonic()
    try:
        try:
            vagrant("up", "--provider=libvirt", log=log, timeout=1500)
        except subprocess.CalledProcessError as exc:
            tail = console.read_text(errors="replace")[-3000:] if console.exists() else ""
            pytest.fail(f"vagrant up failed:\n{exc.output}\n--- console ---\n{tail}")
        up_seconds = time.monotonic() - started
        print(f"vagrant up took {up_seconds:.0f}s")

        addrs = vagrant("ssh", "-c", "ip -o addr show dev eth0", timeout=300).stdout
        m = re.search(r"\beth0\s+inet\s+(\d+\.\d+\.\d+\.\d+)/\d+", addrs)
        assert m, f"no IPv4 on eth0:\n{addrs}"
        eth0_ip = ipaddress.ip_address(m.group(1))
        assert not eth0_ip.is_loopback
        assert re.search(r"\beth0\s+inet6\s+fe80:", addrs), f"no IPv6 link-local on eth0:\n{addrs}"

        res = vagrant("ssh", "-c", "getent hosts \"$(hostname)\"; echo rc=$?", timeout=300)
        print(f"eth0: {addrs.strip()}\ngetent hosts $(hostname): {res.stdout.strip()}")
        lines = [ln for ln in res.stdout.splitlines() if ln.strip() and not ln.startswith("rc=")]
        assert lines, f"the guest's hostname does not resolve: {res.stdout}"
        for line in lines:
            addr = ipaddress.ip_address(line.split()[0])
            assert not addr.is_loopback, f"hostname resolves to loopback: {res.stdout}"
    finally:
        vagrant("destroy", "-f", log=log, timeout=600, check=False)
        print(f"up+checks+destroy took {time.monotonic() - started:.0f}s")
    assert libvirtd.domains() == set(), libvirtd.virsh("list", "--all").stdout
