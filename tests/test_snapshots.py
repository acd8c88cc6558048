"""Lab-wide snapshots on libvirt's test driver (``test:///default``, held open so the tasks' own
connections see the test's machines), with a recording fake of the nodes for the clocks.

The tasks run through invoke's real parser and executor (:func:`run_task`)."""

from __future__ import annotations

import json
import re
import stat
import time
import uuid
from pathlib import Path

import libvirt
import pytest
from invoke import Collection, Program

from lab import config, identity, snapshots, statedir
from lab import tasks as lab_tasks
from lab import workshop_tasks
from lab.context import Result
from lab.errors import ConfigError, LabError

SHARED = "test:///default"
WORKSHOP = (workshop_tasks.snapshot, workshop_tasks.restore, workshop_tasks.snapshots, workshop_tasks.ssh,
            workshop_tasks.collect)


def namespace() -> Collection:
    """The project's collection with the workshop tasks in ``lab``, as tasks.py builds it."""
    lab = Collection("lab", *lab_tasks.ns.tasks.values(), *[t for t in WORKSHOP if t.name not in lab_tasks.ns.tasks])
    lab.configure(lab_tasks.ns.configuration())
    root = Collection()
    root.add_collection(lab, name="lab")
    root.configure({"lab": dict(lab_tasks.ns.configuration()["lab"])})
    return root


def run_task(capfd, *argv):
    """``invoke ARGV`` in this process: (exit status, stdout, stderr)."""
    code = 0
    try:
        Program(namespace=namespace(), name="invoke", binary="invoke").run(["invoke", *argv])
    except SystemExit as exc:
        code = exc.code or 0
    out = capfd.readouterr()
    return code, out.out, out.err


def domain_xml(name, description):
    return (f"<domain type='test'><name>{name}</name><description>{description}</description>"
            "<memory>1048576</memory><os><type>hvm</type></os><devices>"
            f"<disk type='file' device='disk'><source file='/pool/{name}.img'/><target dev='vda'/></disk>"
            "</devices></domain>")


class Lab:
    """A lab whose machines are test-driver domains; its settings also as INVOKE_LAB_* for the tasks."""

    def __init__(self, conn, tmp_path, monkeypatch):
        self.conn = conn
        self.name = "s" + uuid.uuid4().hex[:8]
        self.env = {"INVOKE_LAB_NAME": self.name, "INVOKE_LAB_LIBVIRT_URI": SHARED,
                    "INVOKE_LAB_STATE_DIR": str(tmp_path / "state")}
        for key, value in self.env.items():
            monkeypatch.setenv(key, value)
        self.cfg = self.load()
        self.lab_id = identity.ensure_id(self.cfg)
        (self.cfg.state_dir / "ssh_config").write_text("".join(f"Host {n.name}\n  HostName 127.0.0.1\n"
                                                               for n in self.cfg.nodes))
        self.set_state(steps={"prepare": "p1", "runtime": "r1"}, bootstrap_token="abcdef.0123456789abcdef")
        self.domains = {}
        for node in self.cfg.nodes:
            dom = conn.defineXML(domain_xml(self.cfg.domain_name(node), identity.description(self.name, self.lab_id)))
            dom.create()
            self.domains[node.name] = dom

    def load(self, **extra):
        settings = {k[len("INVOKE_LAB_"):].lower(): v for k, v in self.env.items()}
        return config.load({**settings, **extra})

    def set_state(self, **values):
        path = self.cfg.state_dir / "state.json"
        data = json.loads(path.read_text())
        data.update(values)
        path.write_text(json.dumps(data))

    def state(self):
        return json.loads((self.cfg.state_dir / "state.json").read_text())

    def states(self):
        return {n: dom.state()[0] for n, dom in self.domains.items()}

    def snapshot_names(self):
        return {n: sorted(s.getName() for s in dom.listAllSnapshots(0)) for n, dom in self.domains.items()}

    def remove(self):
        for dom in self.domains.values():
            try:
                for snap in dom.listAllSnapshots(0):
                    snap.delete(0)
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
            except libvirt.libvirtError:
                pass


@pytest.fixture()
def lab(tmp_path, monkeypatch):
    conn = libvirt.open(SHARED)
    lab = Lab(conn, tmp_path, monkeypatch)
    yield lab
    lab.remove()
    conn.close()


class Clocks:
    """A recording fake of the nodes over ssh: each node's clock runs ``behind`` seconds late until set."""

    def __init__(self, nodes, behind=3600.0, settable=True):
        self.offset = {n: -behind for n in nodes}
        self.settable = settable
        self.calls = []
        self.ssh_config = Path("/nonexistent/ssh_config")

    def control_path(self):
        return "/nonexistent/%C"

    def run(self, node, command, *, input=None, timeout=None, check=True, secret=False):
        self.calls.append((node, command))
        text = command if isinstance(command, str) else " ".join(command)
        found = re.match(r"date -u -s @([0-9]+\.[0-9]{3}) ", text)
        if found and self.settable:
            self.offset[node] = float(found.group(1)) - time.time()
        if command == ["date", "-u", "+%s.%N"]:
            return Result(0, f"{time.time() + self.offset[node]:.9f}\n")
        return Result(0)


@pytest.fixture(autouse=True)
def no_real_ssh(monkeypatch):
    closed = []
    monkeypatch.setattr(snapshots, "close_connections", lambda runner, nodes: closed.append(list(nodes)))
    return closed


# ---------------------------------------------------------------- take


class Recorder:
    """Wraps the lab's domains; records suspend, snapshot and resume in one sequence."""

    def __init__(self, domains, fail_on=None):
        self.events = []
        self.fail_on = fail_on
        self.proxies = {n: self.Proxy(self, n, d) for n, d in domains.items()}

    class Proxy:
        def __init__(self, rec, node, dom):
            self._rec, self._node, self._dom = rec, node, dom

        def __getattr__(self, name):
            attr = getattr(self._dom, name)
            if name not in ("suspend", "resume", "snapshotCreateXML", "revertToSnapshot"):
                return attr

            def call(*args):
                self._rec.events.append((name, self._node))
                if name == "snapshotCreateXML" and self._node == self._rec.fail_on:
                    raise libvirt.libvirtError("disk is not qcow2")
                return attr(*args)
            return call


def test_snapshot_pauses_every_node_then_snapshots_then_resumes_them_together(lab, monkeypatch):
    rec = Recorder(lab.domains)
    monkeypatch.setattr(snapshots, "lab_domains", lambda cfg, conn: rec.proxies)
    meta = snapshots.take(lab.cfg, "ready")
    kinds = [e[0] for e in rec.events]
    n = len(lab.cfg.nodes)
    assert kinds == ["suspend"] * n + ["snapshotCreateXML"] * n + ["resume"] * n
    assert set(lab.states().values()) == {libvirt.VIR_DOMAIN_RUNNING}
    assert set(meta["nodes"]) == {node.name for node in lab.cfg.nodes}


def test_a_snapshot_carries_the_labs_id_memory_and_the_labs_state(lab):
    lab.conn.lookupByName(lab.cfg.domain_name(lab.cfg.control_plane)).snapshotCreateXML(
        "<domainsnapshot><name>ready</name></domainsnapshot>", 0)  # made by hand: left alone
    snapshots.take(lab.cfg, "ready")
    wanted = f"dslab-{lab.lab_id}-ready"
    names = lab.snapshot_names()
    assert all(wanted in found for found in names.values())
    assert "ready" in names[lab.cfg.control_plane.name]
    xml = lab.domains[lab.cfg.control_plane.name].snapshotLookupByName(wanted).getXMLDesc(0)
    assert "<memory snapshot='internal'/>" in xml and f"dslab-lab-id={lab.lab_id}" in xml
    where = lab.cfg.state_dir / "snapshots" / "ready"
    meta = json.loads((where / "snapshot.json").read_text())
    assert meta["settings"]["pod_subnets"] == "10.244.0.0/16,fd00:2::/48"
    assert json.loads((where / "state.json").read_text()) == lab.state()
    for path in (where / "snapshot.json", where / "state.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.relative_to(lab.cfg.state_dir).as_posix() in statedir.recorded_names(lab.cfg.state_dir)
    assert stat.S_IMODE(where.stat().st_mode) == 0o700


def test_a_failed_snapshot_of_one_node_keeps_none_and_resumes_every_node(lab, monkeypatch):
    worker = lab.cfg.workers[0].name
    rec = Recorder(lab.domains, fail_on=worker)
    monkeypatch.setattr(snapshots, "lab_domains", lambda cfg, conn: rec.proxies)
    with pytest.raises(LabError, match=f"could not snapshot {worker}: .*disk is not qcow2"):
        snapshots.take(lab.cfg, "ready")
    assert set(lab.states().values()) == {libvirt.VIR_DOMAIN_RUNNING}
    assert all(names == [] for names in lab.snapshot_names().values())
    assert not (lab.cfg.state_dir / "snapshots" / "ready").exists()


def test_taking_a_snapshot_again_replaces_it(lab):
    snapshots.take(lab.cfg, "ready")
    lab.set_state(steps={"prepare": "p2"})
    snapshots.take(lab.cfg, "ready")
    assert all(names == [f"dslab-{lab.lab_id}-ready"] for names in lab.snapshot_names().values())
    assert json.loads((lab.cfg.state_dir / "snapshots/ready/state.json").read_text())["steps"] == {"prepare": "p2"}


@pytest.mark.parametrize("name", ["", "a b", "../x", "-x", "x" * 41, "ready\n", "na/me"])
def test_a_bad_snapshot_name_is_one_line_and_changes_nothing(lab, capfd, name):
    before = (lab.states(), lab.snapshot_names())
    for task in ("snapshot", "restore"):
        code, out, err = run_task(capfd, f"lab.{task}", "--name", name)
        assert code == 2, err
        assert err.strip().count("\n") == 0 and err.startswith(f"lab.{task} --name: ") and "Traceback" not in err
    assert (lab.states(), lab.snapshot_names()) == before
    assert not (lab.cfg.state_dir / "snapshots").exists()


def test_a_snapshot_needs_every_node_running(lab, capfd):
    lab.domains[lab.cfg.workers[-1].name].destroy()
    code, _, err = run_task(capfd, "lab.snapshot")
    stopped = lab.cfg.workers[-1].name
    assert code == 1 and err.strip() == f"lab.snapshot: {stopped} not running; run `invoke lab.up` first"
    assert all(names == [] for names in lab.snapshot_names().values())
    assert lab.states()[lab.cfg.control_plane.name] == libvirt.VIR_DOMAIN_RUNNING


def test_a_machine_of_another_lab_is_never_snapshotted(lab):
    other = lab.domains[lab.cfg.workers[0].name]
    other.destroy()
    other.undefine()
    stranger = lab.conn.defineXML(domain_xml(lab.cfg.domain_name(lab.cfg.workers[0]),
                                             identity.description(lab.name, str(uuid.uuid4()))))
    stranger.create()
    lab.domains[lab.cfg.workers[0].name] = stranger
    with pytest.raises(LabError, match="are not this lab's machines; nothing done"):
        snapshots.take(lab.cfg, "ready")
    assert all(names == [] for names in lab.snapshot_names().values())


# ---------------------------------------------------------------- restore


def test_restore_reverts_every_node_resumes_them_and_sets_their_clocks(lab, monkeypatch, no_real_ssh):
    snapshots.take(lab.cfg, "ready")
    taken_state = lab.state()
    lab.set_state(steps={"prepare": "p1", "runtime": "r1", "kubernetes": "k1"})
    lab.domains[lab.cfg.workers[0].name].destroy()   # one node shut off since
    lab.domains[lab.cfg.workers[1].name].suspend()   # one paused
    (lab.cfg.state_dir / "kubeconfig").write_text("of a cluster the snapshot does not have")
    rec = Recorder(lab.domains)
    monkeypatch.setattr(snapshots, "lab_domains", lambda cfg, conn: rec.proxies)
    clocks = Clocks([n.name for n in lab.cfg.nodes])
    done = snapshots.restore(lab.cfg, "ready", runner=clocks)
    kinds = [e[0] for e in rec.events]
    assert kinds[:len(lab.cfg.nodes)] == ["revertToSnapshot"] * len(lab.cfg.nodes)
    assert set(lab.states().values()) == {libvirt.VIR_DOMAIN_RUNNING}
    assert lab.state() == taken_state
    assert not (lab.cfg.state_dir / "kubeconfig").exists()
    assert no_real_ssh == [[n.name for n in lab.cfg.nodes]]
    assert set(done["offsets"]) == {n.name for n in lab.cfg.nodes}
    assert all(abs(v) < 1 for v in done["offsets"].values())
    for node in lab.cfg.nodes:
        sent = [c for n, c in clocks.calls if n == node.name]
        assert sent[:2] == [["true"], ["true"]]
        assert re.fullmatch(r"date -u -s @[0-9]+\.[0-9]{3} >/dev/null && .*hwclock --systohc.*chronyc -a makestep.*",
                            sent[2])
        assert sent[3] == ["date", "-u", "+%s.%N"]


def test_restore_fails_when_a_clock_cannot_be_set(lab):
    snapshots.take(lab.cfg, "ready")
    with pytest.raises(LabError, match=r"the machines are restored, but not every clock could be set: "
                                       rf"{lab.cfg.control_plane.name}: clock is -3600\.0 s off"):
        snapshots.restore(lab.cfg, "ready", runner=Clocks([n.name for n in lab.cfg.nodes], settable=False))


def test_restoring_an_unknown_snapshot_is_one_line_and_changes_nothing(lab, capfd):
    snapshots.take(lab.cfg, "ready")
    snapshots.take(lab.cfg, "before-cni")
    lab.set_state(steps={"prepare": "changed"})
    before = (lab.states(), lab.state())
    code, _, err = run_task(capfd, "lab.restore", "--name", "readdy")
    assert code == 2
    assert err.strip() == (f"lab.restore --name: lab {lab.name} has no snapshot 'readdy'; snapshots: before-cni, "
                           "ready")
    assert (lab.states(), lab.state()) == before


def test_restoring_without_any_snapshot_says_how_to_take_one(lab, capfd):
    code, _, err = run_task(capfd, "lab.restore")
    assert code == 2
    assert err.strip() == (f"lab.restore --name: lab {lab.name} has no snapshot 'ready'; it has none: take one "
                           "with `invoke lab.snapshot`")


@pytest.mark.parametrize("setting, value, named", [
    ("INVOKE_LAB_POD_SUBNETS", "10.245.0.0/16,fd00:2::/48", "lab.pod_subnets"),
    ("INVOKE_LAB_WORKERS", "1", "lab.nodes"),
    ("INVOKE_LAB_PROFILE", "seed-2020", "lab.profile"),
    ("INVOKE_LAB_NETWORK_IPV6", "fd00:db2::/64", "lab.network_ipv6"),
])
def test_restoring_a_snapshot_of_another_configuration_is_refused(lab, capfd, monkeypatch, setting, value, named):
    snapshots.take(lab.cfg, "ready")
    lab.set_state(steps={"prepare": "changed"})
    before = (lab.states(), lab.state())
    monkeypatch.setenv(setting, value)
    if setting == "INVOKE_LAB_NETWORK_IPV6":
        monkeypatch.setenv("INVOKE_LAB_DHCP_IPV6_RANGE", "fd00:db2::1000-fd00:db2::10ff")
        monkeypatch.setenv("INVOKE_LAB_METALLB_IPV6_RANGE", "fd00:db2::240-fd00:db2::250")
        monkeypatch.setenv("INVOKE_LAB_EXTERNAL_IPV6", "fd00:db2::120")
    code, _, err = run_task(capfd, "lab.restore")
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("lab.restore: snapshot ready is of another lab configuration (")
    assert named in err and "nothing restored" in err
    assert (lab.states(), lab.state()) == before


def test_restoring_without_machines_is_one_line_and_changes_nothing(lab, capfd):
    snapshots.take(lab.cfg, "ready")
    lab.set_state(steps={"prepare": "changed"})
    lab.remove()
    before = lab.state()
    code, _, err = run_task(capfd, "lab.restore")
    assert code == 1
    assert err.strip() == (f"lab.restore: lab {lab.name} has no machines; run `invoke lab.up --until machines` "
                           "first; a snapshot lives in the machines' disks and went with them")
    assert lab.state() == before


def test_restoring_onto_machines_made_after_the_snapshot_is_refused(lab):
    snapshots.take(lab.cfg, "ready")
    worker = lab.domains[lab.cfg.workers[0].name]
    for snap in worker.listAllSnapshots(0):
        snap.delete(0)
    with pytest.raises(LabError, match=f"{lab.cfg.workers[0].name} have no snapshot ready .*nothing restored"):
        snapshots.restore(lab.cfg, "ready", runner=Clocks([n.name for n in lab.cfg.nodes]))


def test_a_snapshot_taken_by_another_state_directory_is_refused(lab, tmp_path):
    snapshots.take(lab.cfg, "ready")
    meta_path = lab.cfg.state_dir / "snapshots/ready/snapshot.json"
    meta = json.loads(meta_path.read_text())
    meta["lab_id"] = str(uuid.uuid4())
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="was taken by another lab"):
        snapshots.restore(lab.cfg, "ready", runner=Clocks([n.name for n in lab.cfg.nodes]))


# ---------------------------------------------------------------- listing, destroy, lab.up


def test_listing_shows_name_time_and_size_per_node(lab, capfd):
    snapshots.take(lab.cfg, "ready")
    worker = lab.domains[lab.cfg.workers[0].name]
    worker.snapshotLookupByName(f"dslab-{lab.lab_id}-ready").delete(0)
    code, out, _ = run_task(capfd, "lab.snapshots")
    assert code == 0
    rows = out.splitlines()
    assert rows[0].split() == ["NAME", "TAKEN", "(UTC)", "NODE", "SIZE"]
    assert len(rows) == 1 + len(lab.cfg.nodes)
    for row, node in zip(rows[1:], lab.cfg.nodes):
        words = row.split()
        assert words[0] == "ready" and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", words[1])
        assert words[2] == node.name and words[4] == "MiB" and words[3].isdigit()
        assert row.endswith("(gone from libvirt)") is (node.name == lab.cfg.workers[0].name)


def test_listing_without_snapshots_says_so(lab, capfd):
    code, out, err = run_task(capfd, "lab.snapshots")
    assert code == 0 and out == ""
    assert err.strip() == f"lab {lab.name} has no snapshots; take one with `invoke lab.snapshot`"


def test_delete_all_removes_every_snapshot_so_libvirt_can_undefine(lab):
    snapshots.take(lab.cfg, "ready")
    dom = lab.domains[lab.cfg.control_plane.name]
    dom.snapshotCreateXML("<domainsnapshot><name>by-hand</name></domainsnapshot>", 0)
    dom.destroy()
    with pytest.raises(libvirt.libvirtError):
        dom.undefine()  # libvirt refuses a domain that has snapshots
    assert sorted(snapshots.delete_all(dom)) == sorted([f"dslab-{lab.lab_id}-ready", "by-hand"])
    dom.undefine()
    assert dom.name() not in [d.name() for d in lab.conn.listAllDomains(0)]


def test_destroy_after_snapshots_leaves_no_machine_and_no_snapshot_record(lab, capfd):
    snapshots.take(lab.cfg, "ready")
    snapshots.take(lab.cfg, "second")
    code, _, err = run_task(capfd, "lab.destroy")
    assert code == 0, err
    names = [d.name() for d in lab.conn.listAllDomains(0)]
    assert not [n for n in names if n.startswith(lab.cfg.domain_prefix)]
    assert not (lab.cfg.state_dir / "snapshots").exists()
