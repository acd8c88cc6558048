"""What destroy considers the lab's own, on libvirt's test driver loaded from a node file."""

from __future__ import annotations

import pytest

from lab import config, destroy, render

BOX_VOLUME = "centos-stream-9_vagrant_box_image_0_box.img"


def domain(name, network, disks):
    disk_xml = "".join(f"<disk type='file' device='disk'><source file='/pool/{d}'/><target dev='vd{chr(97 + i)}'/></disk>"
                       for i, d in enumerate(disks))
    return (f"<domain type='test'><name>{name}</name><memory>1048576</memory><os><type>hvm</type></os>"
            f"<devices>{disk_xml}<interface type='network'><source network='{network}'/></interface></devices></domain>")


def volume(name, backing=None):
    back = f"<backingStore><path>/pool/{backing}</path><format type='qcow2'/></backingStore>" if backing else ""
    return (f"<volume type='file'><name>{name}</name><key>/pool/{name}</key><capacity>1000</capacity>"
            f"<target><path>/pool/{name}</path></target>{back}</volume>")


@pytest.fixture()
def host(tmp_path):
    """A libvirt host with the lab, a stranger that shares the lab's prefix, and another lab."""
    nodes = [
        domain("dslab_k8s-master01", "dslab_net", ["dslab_k8s-master01.img", BOX_VOLUME]),
        domain("dslab_k8s-worker01", "dslab_net", ["dslab_k8s-worker01.img"]),
        domain("dslab_k8s-worker03", "dslab_net", ["dslab_k8s-worker03.img"]),   # from an earlier, larger lab
        domain("dslab_default", "vagrant-libvirt", ["dslab_default.img"]),        # another Vagrant project
        domain("other_k8s-master01", "other_net", ["other_k8s-master01.img", BOX_VOLUME]),
    ]
    volumes = [volume("dslab_k8s-master01.img", BOX_VOLUME), volume("dslab_k8s-worker01.img"),
               volume("dslab_k8s-worker03.img"), volume("dslab_k8s-worker02.img"),  # domain already gone
               volume("dslab_default.img"), volume("other_k8s-master01.img", BOX_VOLUME), volume(BOX_VOLUME)]
    networks = [f"<network><name>{n}</name><bridge name='br{i}'/><ip address='10.{i}.0.1' netmask='255.255.255.0'/>"
                "</network>" for i, n in enumerate(("dslab_net", "other_net", "vagrant-libvirt", "dslab"), start=1)]
    node = (f"<node>{''.join(nodes)}{''.join(networks)}<pool type='dir'><name>default</name>"
            f"<target><path>/pool</path></target>{''.join(volumes)}</pool></node>")
    path = tmp_path / "node.xml"
    path.write_text(node)
    return f"test://{path}"


def test_leftovers_are_exactly_the_labs(host, tmp_path):
    cfg = config.load({"libvirt_uri": host, "state_dir": str(tmp_path / "state")})
    from lab.network import connect

    with connect(host) as conn:
        found = destroy.libvirt_leftovers(cfg, conn)
    assert found == {
        "domains": ["dslab_k8s-master01", "dslab_k8s-worker01", "dslab_k8s-worker03"],
        "volumes": ["dslab_k8s-master01.img", "dslab_k8s-worker01.img", "dslab_k8s-worker02.img",
                    "dslab_k8s-worker03.img"],
        "networks": ["dslab_net"],
    }


def test_destroy_removes_the_lab_and_nothing_else(host, tmp_path):
    cfg = config.load({"libvirt_uri": host, "state_dir": str(tmp_path / "state")})
    render.render_all(cfg, cfg.state_dir)
    removed = destroy.destroy(cfg, tmp_path / "destroy.log", report=lambda line: None)
    assert sorted(removed["domains"]) == ["dslab_k8s-master01", "dslab_k8s-worker01", "dslab_k8s-worker03"]
    # Its disks; the box image stays: another lab's disk is still backed by it.
    assert sorted(removed["volumes"]) == ["dslab_k8s-master01.img", "dslab_k8s-worker01.img",
                                          "dslab_k8s-worker02.img", "dslab_k8s-worker03.img"]
    assert removed["networks"] == ["dslab_net"]    # not "dslab", "other_net" or "vagrant-libvirt"
    assert not cfg.state_dir.exists()


def test_a_directory_without_the_marker_is_never_cleaned(tmp_path):
    precious = tmp_path / "home"
    (precious / "logs").mkdir(parents=True)
    (precious / "logs" / "diary.txt").write_text("mine")
    (precious / "Vagrantfile").write_text("# someone else's")
    destroy.remove_state(precious)
    assert (precious / "logs" / "diary.txt").read_text() == "mine"
    assert (precious / "Vagrantfile").exists()


def test_marked_directory_keeps_what_the_lab_did_not_write(tmp_path):
    cfg = config.load({"state_dir": str(tmp_path / "state")})
    render.render_all(cfg, cfg.state_dir)
    (cfg.state_dir / "notes.txt").write_text("keep me")
    destroy.remove_state(cfg.state_dir)
    assert (cfg.state_dir / "notes.txt").read_text() == "keep me"
    assert not (cfg.state_dir / "Vagrantfile").exists()


def test_expected_libvirt_errors_print_nothing():
    """Looking up what does not exist yet is routine; libvirt's own handler must not print it."""
    import subprocess
    import sys
    code = (
        "import libvirt\n"
        "from lab import network\n"
        "with network.connect('test:///default') as conn:\n"
        "    for look in (conn.lookupByName, conn.networkLookupByName, conn.storageVolLookupByPath):\n"
        "        try:\n"
        "            look('dslab-not-there')\n"
        "        except libvirt.libvirtError as exc:\n"
        "            print(exc.get_error_code())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.split()) == 3  # each lookup did fail, as a libvirtError
    assert proc.stderr == ""
