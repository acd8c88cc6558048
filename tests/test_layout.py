"""The state directory's layout: every path the lab writes there is one :mod:`lab.layout` lists,
and destroy on a fully populated state directory leaves nothing."""

from __future__ import annotations

import ast
import io
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from lab import cluster, config, destroy, layout, machines, pipeline, render, statedir
from lab.context import Context, Result, State
from lab.progress import Progress
from lab.remote import control_dir
from lab.verify import e2e

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def short_tmp():
    """A directory with a path short enough for ``<it>/state/ssh/<socket>``."""
    path = Path(tempfile.mkdtemp(prefix="dsll-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


ADMIN_CONF = """apiVersion: v1
kind: Config
clusters:
- name: kubernetes
  cluster: {server: "https://192.168.200.11:6443", certificate-authority-data: Q0E=}
contexts:
- name: kubernetes-admin@kubernetes
  context: {cluster: kubernetes, user: kubernetes-admin}
current-context: kubernetes-admin@kubernetes
users:
- name: kubernetes-admin
  user: {client-certificate-data: Q0VSVA==, client-key-data: S0VZ}
"""


class Nodes:
    def run(self, node, command, **kw):
        return Result(0, ADMIN_CONF)


class FakeVagrant:
    def __init__(self, cfg):
        self.cfg = cfg

    def ssh_config(self):
        return "".join(f"Host {n.name}\n  HostName 127.0.0.1\n" for n in self.cfg.nodes)


def populate(cfg, monkeypatch) -> None:
    """What the lab's modules write into a state directory, by their own code: render, an up, the
    ssh config and kubeconfig, the control sockets, a verify --e2e run, Vagrant's folder, and what
    interrupted writes leave."""
    state = State(layout.Layout(cfg.state_dir).state)
    render.render_all(cfg, cfg.state_dir)
    state.set("ca_cert_hash", "sha256:" + "a" * 64)
    render.render_all(cfg, cfg.state_dir)                      # now with the workers' join configs
    steps = [pipeline.Step(name, "", lambda ctx: None) for name in ("prepare", "runtime")]
    pipeline.up(cfg, progress=Progress(io.StringIO(), animate=False), steps=steps, alive=lambda ctx: True)
    log = statedir.new_log(cfg.state_dir, "verify")
    monkeypatch.setattr(machines, "_vagrant", lambda cfg, log_path: FakeVagrant(cfg))
    machines.ssh_config(cfg, log)
    cluster.fetch_kubeconfig(Context(cfg, state, Nodes()))
    sockets = control_dir(cfg.state_dir)
    assert sockets == cfg.state_dir / layout.CONTROL_DIR
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sockets / ("c" * 40)))
    server.close()

    def hydrophone(command):
        out = Path(command[command.index("--output-dir") + 1])
        (out / "e2e.log").write_text("ok\n")
        (out / "junit_01.xml").write_text("<testsuites/>\n")
        return Result(0, "", "")
    kubeconfig = layout.Layout(cfg.state_dir).kubeconfig
    e2e.run_e2e(cfg, kubeconfig, which=lambda name: "/usr/bin/hydrophone", run=hydrophone)
    assert (cfg.state_dir / "e2e" / "junit_01.xml").is_file()
    (cfg.state_dir / "e2e" / "unrecorded.txt").write_text("written after the record\n")
    machine = cfg.state_dir / ".vagrant" / "machines" / "k8s-master01" / "libvirt"
    machine.mkdir(parents=True)
    (machine / "id").write_text("0f2b8a6e-0000-4000-8000-000000000000")
    (cfg.state_dir / ".state.k3j2l1").write_text("{")               # State._save interrupted
    (cfg.state_dir / "nodes" / ".k8s-master01.env.x8d7f6g5").write_text("")  # write_private interrupted


def test_every_path_written_is_listed_and_destroy_leaves_nothing(short_tmp, monkeypatch):
    cfg = config.load({"state_dir": str(short_tmp / "state"), "libvirt_uri": "test:///default"})
    populate(cfg, monkeypatch)
    where = layout.Layout(cfg.state_dir)
    written = sorted(cfg.state_dir.rglob("*"))
    kinds = {where.listed(path).removal for path in written if where.listed(path)}
    assert [p for p in written if where.listed(p) is None] == []
    assert {"recorded", "lab", "tree", "sockets", "bookkeeping", "folder"} <= kinds
    monkeypatch.setattr(destroy.machines, "destroy", lambda cfg, log_path: None)
    destroy.destroy(destroy.context(cfg, Progress(io.StringIO(), animate=False)))
    assert not cfg.state_dir.exists()


def test_a_users_files_beside_the_labs_stay(short_tmp, monkeypatch):
    cfg = config.load({"state_dir": str(short_tmp / "state"), "libvirt_uri": "test:///default"})
    populate(cfg, monkeypatch)
    mine = {"logs/diary.log": "mine", "manifests/my-app.yaml": "kind: Mine\n", "notes.txt": "mine",
            "ssh/config-of-mine": "Host x\n"}
    for rel, text in mine.items():
        (cfg.state_dir / rel).write_text(text)
    statedir.remove_state(cfg.state_dir)
    assert sorted(p.relative_to(cfg.state_dir).as_posix() for p in cfg.state_dir.rglob("*") if p.is_file()) == sorted(
        [*mine, layout.MARKER])


def test_paths_joined_to_a_state_directory_in_lab_are_listed():
    """Every literal name lab/ joins to a state directory (``state_dir / "..."``) is one the layout lists."""
    import importlib

    unlisted, checked = [], 0
    for path in sorted((ROOT / "lab").rglob("*.py")):
        module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)):
                continue
            left = ast.unparse(node.left)
            nested = isinstance(node.left, ast.BinOp) and isinstance(node.left.op, ast.Div)
            if nested or not ("state_dir" in left or "out_dir" in left):
                continue
            right = node.right
            name = (right.value if isinstance(right, ast.Constant)
                    else getattr(module, right.id, None) if isinstance(right, ast.Name) else None)
            if not isinstance(name, str):
                continue   # a path made at run time (a Layout's, a manifest entry)
            checked += 1
            if layout.entry_for(name) is None and layout.entry_for(name + "/x") is None:
                unlisted.append(f"{path.relative_to(ROOT)}:{node.lineno}: {left} / {name!r}")
    assert checked and unlisted == []


@pytest.mark.parametrize("rel, removal", [
    ("state.json", "lab"), (".state.abc123", "lab"), ("Vagrantfile", "recorded"), (".Vagrantfile.x1y2z3", "recorded"),
    ("nodes/k8s-master01.env", "recorded"), ("nodes/.k8s-master01.env.q", "recorded"),
    ("nodes/k8s-worker01-join.yaml", "recorded"), ("manifests/nginx.yaml", "recorded"),
    ("logs/up-20260101-000000.log", "recorded"), (".vagrant/machines/x/libvirt/id", "tree"),
    ("e2e/plugins/results.tar.gz", "tree"), ("ssh/abc", "sockets"), (".dslab", "bookkeeping"), ("nodes", "folder"),
    ("snapshots/ready/snapshot.json", "recorded"), ("snapshots/ready/.state.json.abc", "recorded"),
    ("snapshots/ready", "folder"),
])
def test_entries(rel, removal):
    assert layout.entry_for(rel).removal == removal


@pytest.mark.parametrize("rel", ["notes.txt", "nodes/deeper/x.env", "manifests/x.json", "logs/diary.txt",
                                 "logs/sub/up.log", "e2ex", "snapshots/a/b/snapshot.json", "snapshots/a/notes"])
def test_what_the_layout_does_not_list(rel):
    assert layout.entry_for(rel) is None


def test_state_keys():
    assert layout.state_key_known("workloads.applied.nginx")
    assert not layout.state_key_known("workloads.applied.")
    assert not layout.state_key_known("stepz")
