"""What destroy considers the lab's own, on libvirt's test driver (a node file, or the shared
``test:///default`` kept open by the test so every connection sees the same objects)."""

from __future__ import annotations

import io
import shutil
import uuid as uuidlib
from pathlib import Path

import pytest

from lab import config, destroy, identity, network, render, statedir
from lab.errors import LabError
from lab.progress import Progress

BOX_VOLUME = "centos-stream-9_vagrant_box_image_0_box.img"
SHARED = "test:///default"


def domain(name, network_name, disks, lab_id=None, description=None):
    disk_xml = "".join(f"<disk type='file' device='disk'><source file='/pool/{d}'/><target dev='vd{chr(97 + i)}'/></disk>"
                       for i, d in enumerate(disks))
    text = description if description is not None else (identity.description(name.split("_")[0], lab_id)
                                                        if lab_id else "")
    return (f"<domain type='test'><name>{name}</name><description>{text}</description><memory>1048576</memory>"
            f"<os><type>hvm</type></os><devices>{disk_xml}<interface type='network'><source network='{network_name}'/>"
            "</interface></devices></domain>")


def volume(name, backing=None):
    back = f"<backingStore><path>/pool/{backing}</path><format type='qcow2'/></backingStore>" if backing else ""
    return (f"<volume type='file'><name>{name}</name><key>/pool/{name}</key><capacity>1000</capacity>"
            f"<target><path>/pool/{name}</path></target>{back}</volume>")


def run_destroy(cfg, lines=None, out=None):
    """``destroy.destroy`` with its status lines on ``out``; its ``!`` lines (what it reports beside
    its steps) are added to ``lines``."""
    out = out if out is not None else io.StringIO()
    try:
        return destroy.destroy(destroy.context(cfg, Progress(out, animate=False)))
    finally:
        if lines is not None:
            lines.extend(line[2:] for line in out.getvalue().splitlines() if line.startswith("! "))


def lab_at(tmp_path, sub, **extra):
    """A lab config with its state directory, marked and holding its id (as `lab.up` leaves it)."""
    cfg = config.load({"state_dir": str(tmp_path / sub), **extra})
    identity.ensure_id(cfg)
    return cfg, identity.recorded_id(cfg.state_dir)


@pytest.fixture()
def host(tmp_path):
    """A libvirt host (node file) with the lab, a stranger that shares the lab's prefix, and another lab."""
    cfg, lab_id = lab_at(tmp_path, "state", libvirt_uri="test:///placeholder")
    other_id = str(uuidlib.uuid4())
    nodes = [
        # master01 carries a disk the user attached by hand, named like vagrant-libvirt's extra disks.
        domain("dslab_k8s-master01", "dslab_net", ["dslab_k8s-master01.img", "dslab_k8s-master01-vdb.qcow2"], lab_id),
        domain("dslab_k8s-worker01", "dslab_net", ["dslab_k8s-worker01.img", "dslab_k8s-worker01_1.img"], lab_id),
        domain("dslab_k8s-worker03", "dslab_net", ["dslab_k8s-worker03.img"], lab_id),  # from an earlier, larger lab
        domain("dslab_default", "vagrant-libvirt", ["dslab_default.img"]),               # another Vagrant project
        domain("other_k8s-master01", "other_net", ["other_k8s-master01.img"], other_id),
    ]
    volumes = [volume("dslab_k8s-master01.img", BOX_VOLUME), volume("dslab_k8s-master01-vdb.qcow2"),
               volume("dslab_k8s-worker01.img"), volume("dslab_k8s-worker01_1.img"),
               volume("dslab_k8s-worker03.img"), volume("dslab_k8s-worker02.img"),  # domain already gone
               volume("dslab_k8s-master01.img.bak"),                                  # the user's copy
               volume("dslab_default.img"), volume("other_k8s-master01.img", BOX_VOLUME), volume(BOX_VOLUME)]
    uuids = {"dslab_net": lab_id, "other_net": other_id}
    networks = [f"<network><name>{n}</name>{f'<uuid>{uuids[n]}</uuid>' if n in uuids else ''}<bridge name='br{i}'/>"
                f"<ip address='10.{i}.0.1' netmask='255.255.255.0'/></network>"
                for i, n in enumerate(("dslab_net", "other_net", "vagrant-libvirt", "dslab"), start=1)]
    node = (f"<node>{''.join(nodes)}{''.join(networks)}<pool type='dir'><name>default</name>"
            f"<target><path>/pool</path></target>{''.join(volumes)}</pool></node>")
    path = tmp_path / "node.xml"
    path.write_text(node)
    return f"test://{path}"


def test_leftovers_are_exactly_the_labs(host, tmp_path):
    cfg = config.load({"libvirt_uri": host, "state_dir": str(tmp_path / "state")})
    with network.connect(host) as conn:
        found = destroy.libvirt_leftovers(cfg, conn)
    assert found == {
        "domains": ["dslab_k8s-master01", "dslab_k8s-worker01", "dslab_k8s-worker03"],
        "volumes": ["dslab_k8s-master01.img", "dslab_k8s-worker01.img", "dslab_k8s-worker01_1.img",
                    "dslab_k8s-worker02.img", "dslab_k8s-worker03.img"],
        "networks": ["dslab_net"],
    }


def test_destroy_removes_the_lab_and_nothing_else(host, tmp_path):
    cfg = config.load({"libvirt_uri": host, "state_dir": str(tmp_path / "state")})
    render.render_all(cfg, cfg.state_dir)
    lines = []
    removed = run_destroy(cfg, lines)
    assert sorted(removed["domains"]) == ["dslab_k8s-master01", "dslab_k8s-worker01", "dslab_k8s-worker03"]
    # Its disks; not the user's disk on master01 nor their copy; the box image stays: another lab's
    # disk is still backed by it.
    assert sorted(removed["volumes"]) == ["dslab_k8s-master01.img", "dslab_k8s-worker01.img",
                                          "dslab_k8s-worker01_1.img", "dslab_k8s-worker02.img",
                                          "dslab_k8s-worker03.img"]
    assert removed["networks"] == ["dslab_net"]    # not "dslab", "other_net" or "vagrant-libvirt"
    assert ("dslab_k8s-master01: disk /pool/dslab_k8s-master01-vdb.qcow2 was not made by vagrant-libvirt "
            "for it: detached and kept") in lines
    assert not cfg.state_dir.exists()


@pytest.mark.parametrize("name, expected", [
    ("dslab_k8s-master01.img", True),
    ("dslab_k8s-master01_2.img", True),
    ("dslab_k8s-master01-vdb.qcow2", False),   # an additional disk: the lab's Vagrantfile makes none
    ("dslab_k8s-master01_0.img", False),
    ("dslab_k8s-master01.img.bak", False),
    ("xdslab_k8s-master01.img", False),
    ("dslab_k8s-master011.img", False),
])
def test_only_names_vagrant_libvirt_gives_box_disks_are_the_labs(name, expected):
    assert destroy.vagrant_volume(name, ["dslab_k8s-master01"]) is expected


# ------------------------------------------------------------------ one host, two checkouts


class Host:
    """The shared test:///default host, with a pool the test makes and removes again."""

    def __init__(self, conn, pool_name):
        self.conn = conn
        self.pool = conn.storagePoolDefineXML(
            f"<pool type='dir'><name>{pool_name}</name><target><path>/{pool_name}</path></target></pool>", 0)
        self.pool.create(0)
        self.path = f"/{pool_name}"

    def volume(self, name, backing=None):
        back = (f"<backingStore><path>{self.path}/{backing}</path><format type='qcow2'/></backingStore>"
                if backing else "")
        self.pool.createXML(f"<volume><name>{name}</name><capacity>1000</capacity>{back}</volume>", 0)

    def domain(self, name, network_name, disks, description):
        disk_xml = "".join(f"<disk type='file' device='disk'><source file='{self.path}/{d}'/>"
                           f"<target dev='vd{chr(97 + i)}'/></disk>" for i, d in enumerate(disks))
        dom = self.conn.defineXML(
            f"<domain type='test'><name>{name}</name><description>{description}</description><memory>1024</memory>"
            f"<os><type>hvm</type></os><devices>{disk_xml}<interface type='network'>"
            f"<source network='{network_name}'/></interface></devices></domain>")
        dom.create()

    def build_lab(self, cfg, lab_id, box=BOX_VOLUME):
        """What `lab.up` leaves: the network, a running domain per node on the box, its disk."""
        network.ensure_network(cfg, self.conn, lab_id)
        if box not in self.volume_names():
            self.volume(box)
        for node in cfg.nodes:
            name = cfg.domain_name(node)
            self.volume(f"{name}.img", box)
            self.domain(name, cfg.network_name, [f"{name}.img"], identity.description(cfg.name, lab_id))

    def volume_names(self):
        self.pool.refresh(0)
        return sorted(v.name() for v in self.pool.listAllVolumes(0))

    def domain_names(self):
        return sorted(d.name() for d in self.conn.listAllDomains(0))

    def network_uuids(self):
        return {n.name(): n.UUIDString() for n in self.conn.listAllNetworks(0)}

    def clean(self):
        for dom in self.conn.listAllDomains(0):
            if dom.name() != "test":
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
        for net in self.conn.listAllNetworks(0):
            if net.name() != "default":
                if net.isActive():
                    net.destroy()
                net.undefine()
        for vol in self.pool.listAllVolumes(0):
            vol.delete(0)
        self.pool.destroy()
        self.pool.undefine()


@pytest.fixture()
def shared(request):
    name = "dslabpool" + uuidlib.uuid4().hex[:8]
    with network.connect(SHARED) as conn:
        host = Host(conn, name)
        try:
            yield host
        finally:
            host.clean()


#: Another lab on the same host, with its own name and ranges.
OTHER_LAB = {"name": "other", "network_ipv4": "192.168.201.0/24", "network_ipv6": "fd00:db2::/64",
             "dhcp_ipv4_range": "192.168.201.100-192.168.201.139", "dhcp_ipv6_range": "fd00:db2::1000-fd00:db2::10ff",
             "metallb_ipv4_range": "192.168.201.240-192.168.201.250",
             "metallb_ipv6_range": "fd00:db2::240-fd00:db2::250",
             "external_ipv4": "192.168.201.145", "external_ipv6": "fd00:db2::120"}


def shared_lab(tmp_path, sub, shared, **extra):
    return lab_at(tmp_path, sub, libvirt_uri=SHARED, storage_pool=shared.pool.name(), **extra)


@pytest.mark.parametrize("second_state", ["its own state", "no state at all", "rendered"])
def test_a_second_checkout_with_the_same_lab_name_leaves_the_first_lab_whole(shared, tmp_path, second_state):
    first, first_id = shared_lab(tmp_path, "first", shared)
    shared.build_lab(first, first_id)
    shared.volume("mine.qcow2")  # a disk the user attached to the first lab's control plane
    dom = shared.conn.lookupByName(first.domain_name(first.control_plane))
    xml = dom.XMLDesc(0).replace("</devices>", f"<disk type='file' device='disk'><source file='{shared.path}/mine.qcow2'/>"
                                               "<target dev='vdz'/></disk></devices>")
    shared.conn.defineXML(xml)
    before = (shared.domain_names(), shared.volume_names(), shared.network_uuids())

    second = config.load({"libvirt_uri": SHARED, "storage_pool": shared.pool.name(),
                          "state_dir": str(tmp_path / "second")})
    if second_state == "its own state":
        identity.ensure_id(second)
    elif second_state == "rendered":
        render.render_all(second, second.state_dir)
    lines = []
    with pytest.raises(LabError) as refused:
        run_destroy(second, lines)

    assert (shared.domain_names(), shared.volume_names(), shared.network_uuids()) == before
    message = refused.value.reason
    assert lines == [] and "\n" not in message
    assert message.startswith("lab.name: ") and "not this lab's" in message
    for node in first.nodes:
        assert f"virsh -c {SHARED} undefine --remove-all-storage {first.domain_name(node)}" in message
    assert f"virsh -c {SHARED} net-undefine {first.network_name}" in message
    if second_state == "no state at all":
        assert not second.state_dir.exists()
    else:   # the state directory is kept: the objects may be its own after all
        assert identity.recorded_id(second.state_dir) is not None
    with pytest.raises(Exception, match="lab.name: libvirt network dslab_net exists but is not this lab's"):
        network.ensure_network(second, shared.conn)
    assert shared.network_uuids()[first.network_name] == first_id

    # The first lab's own destroy removes all of it, but the user's disk and (still used elsewhere) nothing more.
    removed = run_destroy(first, lines)
    assert sorted(removed["domains"]) == sorted(first.domain_name(n) for n in first.nodes)
    assert first.network_name in removed["networks"]
    assert shared.volume_names() == ["mine.qcow2"]   # the box image too: nothing is backed by it any more
    assert [d for d in shared.domain_names() if d != "test"] == []


def test_destroy_after_the_state_directory_was_deleted_finds_its_own_objects_only(shared, tmp_path):
    lab, lab_id = shared_lab(tmp_path, "lab", shared)
    shared.build_lab(lab, lab_id)
    other, other_id = shared_lab(tmp_path, "other", shared, **OTHER_LAB)
    shared.build_lab(other, other_id)
    shared.volume("dslab_stranger.img")
    shared.domain("dslab_stranger", "vagrant-libvirt", ["dslab_stranger.img"], "Source: /elsewhere/Vagrantfile")
    shutil.rmtree(lab.state_dir)  # .vagrant and state.json with it

    with network.connect(SHARED) as conn:
        assert destroy.libvirt_leftovers(lab, conn)["domains"] == sorted(lab.domain_name(n) for n in lab.nodes)
    lines = []
    removed = run_destroy(lab, lines)
    assert sorted(removed["domains"]) == sorted(lab.domain_name(n) for n in lab.nodes)
    assert removed["networks"] == [lab.network_name]
    assert lines == []
    assert not lab.state_dir.exists()   # destroy never made the directory it found gone
    assert sorted(d for d in shared.domain_names() if d != "test") == sorted(
        [other.domain_name(n) for n in other.nodes] + ["dslab_stranger"])
    assert shared.volume_names() == sorted([BOX_VOLUME, "dslab_stranger.img"]
                                           + [f"{other.domain_name(n)}.img" for n in other.nodes])
    assert shared.network_uuids()[other.network_name] == other_id


def test_vagrant_is_not_run_on_machines_of_another_lab(shared, tmp_path, monkeypatch):
    first, first_id = shared_lab(tmp_path, "first", shared, **OTHER_LAB)
    shared.build_lab(first, first_id)
    copy, _ = shared_lab(tmp_path, "copy", shared)
    # A .vagrant copied from another lab's state directory, naming that lab's machine.
    dom = shared.conn.lookupByName(first.domain_name(first.control_plane))
    id_file = copy.state_dir / ".vagrant" / "machines" / first.control_plane.name / "libvirt" / "id"
    id_file.parent.mkdir(parents=True)
    id_file.write_text(dom.UUIDString())
    calls = []
    monkeypatch.setattr(destroy.machines, "destroy", lambda cfg, log: calls.append(cfg.state_dir))
    out = io.StringIO()
    run_destroy(copy, out=out)
    assert calls == []
    assert "vagrant destroy skipped" in out.getvalue(), out.getvalue()
    assert first.domain_name(first.control_plane) in shared.domain_names()


def old_lab(shared, tmp_path, sub="old", box=BOX_VOLUME):
    """A lab as `lab.up` left it before labs carried an id: no id in its state, on its machines or
    as its network's UUID (libvirt made that one up); .vagrant records the machines' UUIDs."""
    cfg, _ = shared_lab(tmp_path, sub, shared)
    (cfg.state_dir / "state.json").write_text('{"steps": {}}')
    (cfg.state_dir / "Vagrantfile").write_text("# the lab's Vagrant project\n")
    statedir.record(cfg.state_dir, [cfg.state_dir / "Vagrantfile"])
    net = shared.conn.networkDefineXML(network.network_xml(cfg))
    net.create()
    if box not in shared.volume_names():
        shared.volume(box)
    for node in cfg.nodes:
        name = cfg.domain_name(node)
        shared.volume(f"{name}.img", box)
        shared.domain(name, cfg.network_name, [f"{name}.img"], "")
        id_file = cfg.state_dir / ".vagrant" / "machines" / node.name / "libvirt" / "id"
        id_file.parent.mkdir(parents=True)
        id_file.write_text(shared.conn.lookupByName(name).UUIDString())
    return cfg


@pytest.mark.parametrize("case", [".vagrant kept", ".vagrant gone", "a stranger on its network"])
def test_a_lab_made_before_labs_carried_an_id(shared, tmp_path, monkeypatch, case):
    lab = old_lab(shared, tmp_path)
    names = sorted(lab.domain_name(n) for n in lab.nodes)
    if case == ".vagrant gone":
        shutil.rmtree(lab.state_dir / ".vagrant")
    elif case == "a stranger on its network":
        shared.domain("someone", lab.network_name, [], "made by hand")
    before = (shared.domain_names(), shared.volume_names(), shared.network_uuids())
    calls = []
    monkeypatch.setattr(destroy.machines, "destroy", lambda cfg, log: calls.append(cfg.state_dir))
    lines = []

    if case == ".vagrant kept":
        # Its machines are the ones .vagrant records; its network is used by them alone.
        removed = run_destroy(lab, lines)
        assert calls == [lab.state_dir]
        assert sorted(removed["domains"]) == names and removed["networks"] == [lab.network_name]
        assert [d for d in shared.domain_names() if d != "test"] == []
        assert shared.volume_names() == []
        assert lab.network_name not in shared.network_uuids()
        assert not lab.state_dir.exists()
        return

    with pytest.raises(LabError) as refused:
        run_destroy(lab, lines)
    message = refused.value.reason
    assert calls == [] and lines == [] and "\n" not in message
    assert message.startswith("lab.name: ")
    assert f"virsh -c {SHARED} net-destroy {lab.network_name}; virsh -c {SHARED} net-undefine {lab.network_name}" \
        in message
    # Nothing that is not provably the lab's is removed, and its state stays for the next try.
    assert (lab.state_dir / "state.json").exists()
    if case == ".vagrant gone":
        assert (shared.domain_names(), shared.volume_names(), shared.network_uuids()) == before
        for name in names:
            assert f"virsh -c {SHARED} destroy {name}; virsh -c {SHARED} undefine --remove-all-storage {name}" in message
    else:
        # Its machines are still its own (.vagrant names them); the network others use is not.
        assert (lab.state_dir / ".vagrant").is_dir()
        assert [d for d in shared.domain_names() if d != "test"] == ["someone"]
        assert "undefine --remove-all-storage" not in message
        assert shared.network_uuids()[lab.network_name] == before[2][lab.network_name]
        assert shared.volume_names() == []   # its disks, and the box image they alone were backed by


def test_destroy_of_a_lab_made_before_ids_without_its_machines_exits_1_and_keeps_its_state(tmp_path):
    """Through the real invoke: exit 1, one line with the commands, state.json and .vagrant kept."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    cfg, _ = lab_at(tmp_path, "state")
    (cfg.state_dir / "state.json").write_text('{"steps": {}}')
    (cfg.state_dir / ".vagrant" / "machines").mkdir(parents=True)
    nodes = "".join(domain(cfg.domain_name(n), cfg.network_name, [f"{cfg.domain_name(n)}.img"]) for n in cfg.nodes)
    net = network.network_xml(cfg).replace("<network>", f"<network><uuid>{uuidlib.uuid4()}</uuid>", 1)
    (tmp_path / "node.xml").write_text(f"<node>{nodes}{net}<pool type='dir'><name>default</name><target>"
                                       "<path>/pool</path></target></pool></node>")
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    env.update(PYTHONPATH=str(root), INVOKE_LAB_STATE_DIR=str(cfg.state_dir),
               INVOKE_LAB_LIBVIRT_URI=f"test://{tmp_path / 'node.xml'}")
    shutil.copy(root / "tasks.py", tmp_path / "tasks.py")
    for quiet in ((), ("--quiet",)):
        result = subprocess.run([sys.executable, "-m", "invoke", "lab.destroy", *quiet], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr and "destroyed" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 if quiet else len(lines) > 1, lines   # quiet: the failure alone
        line = lines[-1]
        assert line.startswith("✗ libvirt: lab.name: ") and f"net-undefine {cfg.network_name}" in line
        assert f"undefine --remove-all-storage {cfg.domain_name(cfg.control_plane)}" in line
    assert (cfg.state_dir / "state.json").read_text() == '{"steps": {}}'
    assert (cfg.state_dir / ".vagrant" / "machines").is_dir()


OTHER_VERSION = "centos-stream-9_vagrant_box_image_1_box.img"
UPLOAD = "==> k8s-master01: Uploading base box image as volume into Libvirt storage...\n"


@pytest.mark.parametrize("case, kept", [
    ("never ran up", [BOX_VOLUME]),                      # uploaded by another Vagrant project
    ("built on one version", [OTHER_VERSION]),           # the other version is another project's
    ("lost state, built on one version", [OTHER_VERSION]),
    ("its up uploaded it, its machines gone", []),       # vagrant-libvirt's own cleanup of an interrupted up
])
def test_the_box_image_is_removed_only_by_the_lab_that_used_it(shared, tmp_path, case, kept):
    lab, lab_id = shared_lab(tmp_path, "lab", shared)
    shared.volume(BOX_VOLUME)
    if case == "never ran up":
        render.render_all(lab, lab.state_dir)
    elif case == "its up uploaded it, its machines gone":
        render.render_all(lab, lab.state_dir)
        log = lab.state_dir / "logs" / "up-20250101-000000.log"
        log.parent.mkdir(exist_ok=True)
        log.write_text(UPLOAD)
        statedir.record(lab.state_dir, [log])
        network.ensure_network(lab, shared.conn, lab_id)
    else:
        shared.volume(OTHER_VERSION)
        shared.build_lab(lab, lab_id)
        if case.startswith("lost state"):
            shutil.rmtree(lab.state_dir)
    run_destroy(lab)
    assert shared.volume_names() == kept
    assert [d for d in shared.domain_names() if d != "test"] == []


# ------------------------------------------------------------------ the state directory


def test_a_directory_without_the_marker_is_never_cleaned(tmp_path):
    precious = tmp_path / "home"
    (precious / "logs").mkdir(parents=True)
    (precious / "logs" / "diary.txt").write_text("mine")
    (precious / "Vagrantfile").write_text("# someone else's")
    statedir.remove_state(precious)
    assert (precious / "logs" / "diary.txt").read_text() == "mine"
    assert (precious / "Vagrantfile").exists()


def test_marked_directory_keeps_what_the_lab_did_not_write(tmp_path):
    cfg = config.load({"state_dir": str(tmp_path / "state")})
    render.render_all(cfg, cfg.state_dir)
    (cfg.state_dir / "notes.txt").write_text("keep me")
    statedir.remove_state(cfg.state_dir)
    assert (cfg.state_dir / "notes.txt").read_text() == "keep me"
    assert not (cfg.state_dir / "Vagrantfile").exists()


def test_destroy_removes_only_the_files_the_lab_recorded_writing(tmp_path):
    cfg = config.load({"state_dir": str(tmp_path / "state")})
    written = render.render_all(cfg, cfg.state_dir)
    lab_log = cfg.state_dir / "logs" / "up-20250101-000000.log"
    lab_log.parent.mkdir()
    lab_log.write_text("the lab's\n")
    statedir.record(cfg.state_dir, [lab_log])
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "kept.log").write_text("not the lab's")
    mine = {"logs/diary.txt": "mine", "manifests/my-app.yaml": "kind: Mine\n", "nodes/notes": "mine"}
    for rel, text in mine.items():
        (cfg.state_dir / rel).write_text(text)
    # A manifest entry that leads out of the state directory is never followed.
    with open(cfg.state_dir / statedir.MANIFEST, "a") as handle:
        handle.write("../outside/kept.log\n")
    (cfg.state_dir / "elsewhere").symlink_to(outside)
    with open(cfg.state_dir / statedir.MANIFEST, "a") as handle:
        handle.write("elsewhere/kept.log\n")

    statedir.remove_state(cfg.state_dir)

    assert not lab_log.exists()
    assert not any(p.exists() for p in written)
    for rel, text in mine.items():
        assert (cfg.state_dir / rel).read_text() == text
    assert (outside / "kept.log").read_text() == "not the lab's"
    assert (cfg.state_dir / statedir.MARKER).is_file()   # still the lab's, so a later `lab.up` may use it
    assert not (cfg.state_dir / "state.json").exists()


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


def test_machines_carry_the_labs_id_in_their_libvirt_description(tmp_path):
    """vagrant-libvirt's ``description`` option (its config.rb; domain.xml.erb puts it in
    ``<description>``), with the id of the lab's state; Vagrant knows the option."""
    import os
    import subprocess

    if shutil.which("vagrant") is None:
        pytest.skip("vagrant is not installed")
    cfg = config.load({"state_dir": str(tmp_path / "lab")})
    render.render_all(cfg, cfg.state_dir)
    lab_id = identity.recorded_id(cfg.state_dir)
    text = (cfg.state_dir / "Vagrantfile").read_text()
    line = f'    libvirt.description = "{identity.description(cfg.name, lab_id)}"\n'
    assert line in text
    assert identity.id_in(identity.description(cfg.name, lab_id)) == lab_id
    env = dict(os.environ, VAGRANT_HOME=str(tmp_path / "vagrant.d"), VAGRANT_DEFAULT_PROVIDER="libvirt",
               VAGRANT_CHECKPOINT_DISABLE="1")

    def validate():
        return subprocess.run(["vagrant", "validate"], cwd=cfg.state_dir, env=env, capture_output=True, text=True,
                              timeout=300)

    assert validate().returncode == 0
    (cfg.state_dir / "Vagrantfile").write_text(text.replace("libvirt.description", "libvirt.descriptionx"))
    misspelt = validate()
    assert misspelt.returncode != 0 and "descriptionx" in misspelt.stdout + misspelt.stderr


def _node_file(tmp_path, domains, volumes, networks):
    nets = "".join(f"<network><name>{n}</name>{f'<uuid>{u}</uuid>' if u else ''}<bridge name='br{i}'/>"
                   f"<ip address='10.{i}.0.1' netmask='255.255.255.0'/></network>"
                   for i, (n, u) in enumerate(networks, start=1))
    path = tmp_path / "node.xml"
    path.write_text(f"<node>{''.join(domains)}{nets}<pool type='dir'><name>default</name>"
                    f"<target><path>/pool</path></target>{''.join(volume(v) for v in volumes)}</pool></node>")
    return f"test://{path}"


def test_a_claimed_domain_outside_the_labs_prefix_is_never_the_labs(tmp_path):
    """Whatever its description says, a machine named otherwise keeps itself and its disks."""
    cfg, lab_id = lab_at(tmp_path, "state")
    uri = _node_file(tmp_path, [domain("precious", "dslab_net", [], lab_id)], ["precious.img"],
                     [("dslab_net", lab_id)])
    cfg = config.load({"libvirt_uri": uri, "state_dir": str(cfg.state_dir)})
    with network.connect(uri) as conn:
        found = destroy.libvirt_leftovers(cfg, conn)
    assert found["domains"] == [] and "precious.img" not in found["volumes"]


def test_a_recorded_uuid_adopts_only_the_machine_of_that_name(tmp_path):
    cfg, _lab_id = lab_at(tmp_path, "state")
    recorded = str(uuidlib.uuid4())
    vagrant = cfg.state_dir / ".vagrant" / "machines" / "k8s-master01" / "libvirt"
    vagrant.mkdir(parents=True)
    (vagrant / "id").write_text(recorded)
    legacy = domain("dslab_k8s-worker01", "dslab_net", [], description="").replace(
        "<name>", f"<uuid>{recorded}</uuid><name>")  # the recorded UUID on another machine's name
    uri = _node_file(tmp_path, [legacy], ["dslab_k8s-worker01.img"], [("dslab_net", str(uuidlib.uuid4()))])
    cfg = config.load({"libvirt_uri": uri, "state_dir": str(cfg.state_dir)})
    with network.connect(uri) as conn:
        found = destroy.libvirt_leftovers(cfg, conn)
    assert found["domains"] == [] and found["networks"] == []


def test_a_same_named_network_is_not_adopted_through_machines_that_carry_an_id(tmp_path):
    """Only machines made before ids (adopted by .vagrant) make an id-less network the lab's."""
    cfg, lab_id = lab_at(tmp_path, "state")
    uri = _node_file(tmp_path, [domain("dslab_k8s-master01", "dslab_net", [], lab_id)], [],
                     [("dslab_net", str(uuidlib.uuid4()))])  # another checkout's network, same name
    cfg = config.load({"libvirt_uri": uri, "state_dir": str(cfg.state_dir)})
    with network.connect(uri) as conn:
        found = destroy.libvirt_leftovers(cfg, conn)
    assert found["domains"] == ["dslab_k8s-master01"] and found["networks"] == []


def test_a_copied_state_directory_owns_nothing_of_the_original(tmp_path):
    cfg, lab_id = lab_at(tmp_path, "state")
    shutil.copytree(cfg.state_dir, tmp_path / "copy")
    copy = config.load({"state_dir": str(tmp_path / "copy")})
    assert identity.recorded_id(copy.state_dir) is None
    assert not identity.Owner(copy.state_dir).owns(lab_id)
    with pytest.raises(config.ConfigError) as err:
        identity.ensure_id(copy)
    assert "was copied or moved from another state directory" in str(err.value)


# ------------------------------------------------------------------ --dry, and the log of vagrant destroy


def test_the_plan_is_what_destroy_then_removes_and_changes_nothing(shared, tmp_path):
    lab, lab_id = shared_lab(tmp_path, "lab", shared)
    render.render_all(lab, lab.state_dir)
    shared.build_lab(lab, lab_id)
    shared.volume("dslab_stranger.img")   # not the lab's
    out = io.StringIO()
    before = (shared.domain_names(), shared.volume_names(), shared.network_uuids(), sorted(lab.state_dir.rglob("*")))
    plan = destroy.show_plan(destroy.context(lab, Progress(out, animate=False)))
    assert (shared.domain_names(), shared.volume_names(), shared.network_uuids(),
            sorted(lab.state_dir.rglob("*"))) == before
    removed = run_destroy(lab)
    assert plan["domains"] == sorted(removed["domains"])
    assert plan["volumes"] == sorted(removed["volumes"]) and BOX_VOLUME in plan["volumes"]
    assert plan["networks"] == removed["networks"] == [lab.network_name]
    assert {Path(p.rstrip("/")) for p in plan["state"]} >= {lab.state_dir / "Vagrantfile", lab.state_dir / "state.json"}
    lines = out.getvalue().splitlines()
    assert "· would run vagrant destroy -f" in lines and lines[-1] == "· dry run: nothing was changed"
    assert f"· would remove 1 networks: {lab.network_name}" in lines


def test_dry_destroy_through_invoke_removes_nothing(host, tmp_path):
    """``invoke --dry lab.destroy`` (invoke's core flag sets run.dry): what would go, and nothing goes."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    cfg = config.load({"libvirt_uri": host, "state_dir": str(tmp_path / "state")})
    render.render_all(cfg, cfg.state_dir)
    before = sorted((p, p.read_bytes() if p.is_file() else None) for p in cfg.state_dir.rglob("*"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    env.update(PYTHONPATH=str(root), INVOKE_LAB_STATE_DIR=str(cfg.state_dir), INVOKE_LAB_LIBVIRT_URI=host)
    shutil.copy(root / "tasks.py", tmp_path / "tasks.py")
    for flag in ("--dry", "-R"):
        result = subprocess.run([sys.executable, "-m", "invoke", flag, "lab.destroy"], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        lines = result.stderr.splitlines()
        assert "· would remove 3 domains: dslab_k8s-master01, dslab_k8s-worker01, dslab_k8s-worker03" in lines
        assert "· would detach and keep the disk dslab_k8s-master01: /pool/dslab_k8s-master01-vdb.qcow2" in lines
        assert f"· would remove {cfg.state_dir / 'Vagrantfile'}" in lines
        assert "destroyed" not in result.stderr
        assert sorted((p, p.read_bytes() if p.is_file() else None) for p in cfg.state_dir.rglob("*")) == before


@pytest.fixture()
def failing_vagrant(monkeypatch):
    """vagrant destroy that writes to its log and fails."""
    from lab.errors import StepError

    def vagrant_destroy(cfg, log_path):
        log_path.write_text("==> k8s-master01: the provider said no\n")
        raise StepError("destroy", "vagrant destroy failed (the provider said no)", log_path)
    monkeypatch.setattr(destroy.machines, "destroy", vagrant_destroy)


def destroy_task(cfg, capsys):
    """The real ``lab.destroy`` task body, in this process; its exit code and stderr lines."""
    from invoke import Config, Context as InvokeContext, Exit

    from lab import tasks

    c = InvokeContext(Config(overrides={"lab": {"state_dir": str(cfg.state_dir), "libvirt_uri": cfg.libvirt_uri,
                                                "storage_pool": cfg.storage_pool}}))
    try:
        tasks.destroy.body(c)
        code = 0
    except Exit as exc:
        code = exc.code
    return code, capsys.readouterr().err.splitlines()


def test_the_log_of_a_failed_destroy_stays_where_its_line_points(shared, tmp_path, failing_vagrant, monkeypatch,
                                                                  capsys):
    import libvirt

    lab, lab_id = shared_lab(tmp_path, "lab", shared)
    render.render_all(lab, lab.state_dir)
    shared.build_lab(lab, lab_id)

    def cannot(*args):
        raise libvirt.libvirtError("the network is busy")
    monkeypatch.setattr(destroy, "_remove_network", cannot)
    code, lines = destroy_task(lab, capsys)
    assert code == 1
    assert lines[-1].startswith("✗ libvirt: cannot remove network dslab_net"), lines
    log = Path(lines[-1].rsplit("vagrant destroy's log: ", 1)[1].rstrip(")"))
    assert log.parent == lab.state_dir / "logs" and log.name.startswith("destroy-")
    assert log.read_text() == "==> k8s-master01: the provider said no\n"   # it is still there to read
    assert str(log.relative_to(lab.state_dir)) in statedir.recorded_names(lab.state_dir)


def test_the_log_of_a_destroy_that_succeeds_goes_with_the_state(shared, tmp_path, failing_vagrant, capsys):
    lab, lab_id = shared_lab(tmp_path, "lab", shared)
    render.render_all(lab, lab.state_dir)
    shared.build_lab(lab, lab_id)
    code, lines = destroy_task(lab, capsys)
    assert code == 0, lines
    assert ("! vagrant destroy failed (the provider said no); removing the lab's machines by their id instead"
            in lines)
    assert not any("log" in line for line in lines), lines
    assert not lab.state_dir.exists()
    assert [d for d in shared.domain_names() if d != "test"] == []


def test_destroy_removes_the_e2e_results_recorded_or_not(tmp_path):
    """hydrophone's output (``lab.verify --e2e``), also when the run was interrupted before it was recorded."""
    cfg = config.load({"state_dir": str(tmp_path / "state")})
    render.render_all(cfg, cfg.state_dir)
    e2e = cfg.state_dir / "e2e"
    (e2e / "plugins").mkdir(parents=True)
    (e2e / "e2e.log").write_text("recorded\n")
    statedir.record(cfg.state_dir, [e2e / "e2e.log"])
    (e2e / "junit_01.xml").write_text("<testsuite/>\n")         # written after the record, by an interrupted run
    (e2e / "plugins" / "results.tar.gz").write_bytes(b"\0")
    statedir.remove_state(cfg.state_dir)
    assert not cfg.state_dir.exists()
    # An e2e run that wrote nothing leaves an empty folder: that goes too.
    render.render_all(cfg, cfg.state_dir)
    (cfg.state_dir / "e2e").mkdir()
    statedir.remove_state(cfg.state_dir)
    assert not cfg.state_dir.exists()
