"""lab.bake (lab/bake.py) and the lab.cache / lab.bake tasks (lab/cache_tasks.py), with recording
fakes for the nodes and Vagrant (the VM tier bakes a real node)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from invoke import Context, Exit

from lab import bake, bake_tasks, cache_sync, images
from lab import config as labconfig
from lab.cache import Cache
from lab.context import Result
from lab.errors import StepError

NGINX = "docker.io/library/nginx:1.30"
PAUSE = "registry.k8s.io/pause:3.10"
ID_A = "sha256:" + "a" * 64
ID_B = "sha256:" + "b" * 64


class FakeRunner:
    """Answers the node commands bake makes; records every command."""

    def __init__(self, on_node):
        self.on_node, self.calls = dict(on_node), []

    def run(self, node, command, *, input=None, timeout=None, check=True, secret=False):
        self.calls.append((node, list(command) if not isinstance(command, str) else command))
        if command == cache_sync.script("cache-images.sh", "list"):
            rows = [json.dumps({"Repository": ref.rsplit(":", 1)[0], "Tag": ref.rsplit(":", 1)[1], "ID": digest,
                                "Digest": "<none>"}) for ref, digest in self.on_node.items()]
            return Result(0, "\n".join(rows) + "\n")
        if list(command[:3]) == cache_sync.script("cache-images.sh", "load")[:3] and "load" in command:
            self.on_node[command[-1]] = "sha256:" + "c" * 64
        return Result(0)

    def put_text(self, node, text, remote, mode="0644", secret=False):
        self.calls.append((node, ["put", remote, text]))


class FakeTransfer(cache_sync.Transfer):
    def __init__(self):
        super().__init__(lambda node, line: ["false"])
        self.sent = []

    def send(self, node, local, remote, progress=None):
        self.sent.append((node, Path(local).read_bytes(), remote))


@pytest.fixture
def cfg(tmp_path):
    return labconfig.load({"state_dir": str(tmp_path / "lab")})


@pytest.fixture
def cache(tmp_path):
    store = Cache(tmp_path / "cache")
    (tmp_path / "t.tar").write_bytes(b"pause image")
    store.add_image(PAUSE, ID_B, tmp_path / "t.tar", producer="docker", profile="current")
    (tmp_path / "n.tar").write_bytes(b"nginx image")
    store.add_image(NGINX, ID_A, tmp_path / "n.tar", producer="docker", profile="current")
    return store


def test_box_name_and_package_command(cfg):
    assert bake.box_name(cfg) == "dslab/current-docker"
    assert bake.package_command("k8s-master01", Path("/c/tmp/package.box")) == [
        "vagrant", "package", "k8s-master01", "--output", "/c/tmp/package.box"]


def test_bake_loads_cleans_packages_and_keeps_the_box(tmp_path, cfg, cache):
    runner, transfer, steps = FakeRunner({NGINX: ID_A}), FakeTransfer(), []

    def vagrant(cfg_, command, log):
        steps.append(("vagrant", command))
        if command[1] == "package":
            Path(command[-1]).write_bytes(b"the packaged box")

    key = bake.generated_key(cfg, cfg.control_plane)
    key.parent.mkdir(parents=True)
    key.write_text("the lab's generated private key")
    seen = []

    def wait(cfg_, node_):
        seen.append(key.exists())
        steps.append(("wait", node_.name))

    entry = bake.bake(cfg, cache, runner, transfer, out=tmp_path / "out.box", upload=lambda n: steps.append(("upload", n.name)),
                      report=lambda line: steps.append(("report", line)), wait=wait,
                      vagrant=vagrant,
                      login_key=lambda: "ssh-rsa AAAA vagrant insecure public key\n")
    node = "k8s-master01"
    # the box's vagrant user accepts Vagrant's insecure key only; the lab's generated key is not packaged
    clean = runner.calls.index((node, cache_sync.script("bake-clean.sh", "--poweroff")))
    assert runner.calls[clean - 1] == (node, ["put", bake.REMOTE_LOGIN_KEY, "ssh-rsa AAAA vagrant insecure public key\n"])
    assert seen == [True] and not key.exists()
    # the image the node lacks goes over and is loaded; the one it has does not
    assert transfer.sent == [(node, b"pause image", images.remote_path(cache.lookup(PAUSE)))]
    assert (node, cache_sync.script("cache-images.sh", "load", images.remote_path(cache.lookup(PAUSE)), PAUSE)) in runner.calls
    assert runner.calls[-1] == (node, cache_sync.script("bake-clean.sh", "--poweroff"))
    assert not [c for c in runner.calls if "vagrant_private_key" in str(c)]
    kinds = [s[0] for s in steps if s[0] != "report"]
    assert kinds == ["upload", "wait", "vagrant"]
    package = next(s[1] for s in steps if s[0] == "vagrant")
    assert package[:4] == ["vagrant", "package", node, "--output"]
    assert Path(package[-1]).parent.parent == cache.root / "tmp" and not Path(package[-1]).parent.exists()
    assert entry.name == "dslab/current-docker" and entry.profile == "current" and entry.runtime == "docker"
    assert cache.box_path(entry).read_bytes() == b"the packaged box" == (tmp_path / "out.box").read_bytes()
    assert cache.box_path(entry).name == "dslab+current-docker.box"


def test_a_failed_package_keeps_no_box(tmp_path, cfg, cache):
    def vagrant(cfg_, command, log):
        Path(command[-1]).write_bytes(b"half")
        raise StepError("bake", "`vagrant package` exited 1: no space")

    with pytest.raises(StepError, match="exited 1"):
        bake.bake(cfg, cache, FakeRunner({}), FakeTransfer(), upload=lambda n: None, report=lambda line: None,
                  wait=lambda c, n: None, vagrant=vagrant, login_key=lambda: "ssh-rsa AAAA k\n")
    assert cache.boxes() == [] and not list((cache.root / "tmp").iterdir())


def test_run_vagrant_in_the_lab_directory(tmp_path, cfg, monkeypatch):
    fake = tmp_path / "bin" / "vagrant"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\npwd > "$OUT.cwd"; printf "%s " "$@" > "$OUT.args"\n'
                    'if [ "$1" = package ]; then\n'
                    '  virt-sysprep --no-logfile -a box.img && virt-sparsify --in-place box.img && echo ran > "$OUT.tools"\n'
                    '  command -v virt-sysprep > "$OUT.where"; echo "==> k8s-master01: Packaging"; exit 0\nfi\n'
                    'echo "The box file already exists" >&2; echo "second line" >&2; exit 1\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("OUT", str(tmp_path / "o"))
    cfg.state_dir.mkdir(parents=True)
    log = tmp_path / "bake.log"
    bake.run_vagrant(cfg, ["vagrant", "package", "k8s-master01", "--output", "/x.box"], log)
    assert (tmp_path / "o.cwd").read_text().strip() == str(cfg.state_dir)
    assert (tmp_path / "o.args").read_text() == "package k8s-master01 --output /x.box "
    assert "Packaging" in log.read_text()
    # vagrant-libvirt runs virt-sysprep and virt-sparsify in backticks: stand-ins where libguestfs is missing
    if all(shutil.which(tool) is None for tool in bake.GUESTFS_TOOLS):
        assert (tmp_path / "o.tools").read_text() == "ran\n"
        assert not Path((tmp_path / "o.where").read_text().strip()).exists()  # gone after the package
    with pytest.raises(StepError) as err:
        bake.run_vagrant(cfg, ["vagrant", "box", "add"], log)
    assert "The box file already exists" in str(err.value) and "second line" not in str(err.value)


def test_out_that_is_a_directory_is_refused_first(tmp_path, cfg, cache):
    runner = FakeRunner({})
    with pytest.raises(StepError, match="is not a file"):
        bake.bake(cfg, cache, runner, FakeTransfer(), out=tmp_path, upload=lambda n: None, report=lambda line: None,
                  wait=lambda c, n: None, vagrant=lambda *a: None)
    assert runner.calls == []


# --------------------------------------------------------------------------- the task


def test_bake_task_refuses_an_unknown_node_and_an_unprepared_lab(tmp_path):
    c = Context(config={"lab": {"state_dir": str(tmp_path / "lab"), "cache_dir": str(tmp_path / "cache")}})
    with pytest.raises(Exit) as err:
        bake_tasks.bake(c, node="k8s-nope")
    assert err.value.code == 2 and "k8s-master01" in err.value.message and "\n" not in err.value.message
    with pytest.raises(Exit) as err:
        bake_tasks.bake(c)
    assert err.value.code == 1 and "lab.up --until kubernetes" in err.value.message
    with pytest.raises(Exit) as err:
        bake_tasks.bake(c, out=" ")
    assert err.value.code == 2 and "--out" in err.value.message
    assert not (tmp_path / "lab").exists() and not (tmp_path / "cache").exists()


def test_the_insecure_key_is_read_from_the_vagrant_installation(tmp_path):
    newer = tmp_path / "gems" / "vagrant-2.3.4" / "keys"
    older = tmp_path / "gems" / "vagrant-2.2.19" / "keys"
    for where, text in ((newer, "ssh-rsa NEW vagrant insecure public key\n"), (older, "ssh-rsa OLD\n")):
        where.mkdir(parents=True)
        (where / "vagrant.pub").write_text(text)
    assert bake.insecure_public_key((str(tmp_path / "gems" / "vagrant-*" / "keys" / "vagrant.pub"),)).startswith(
        "ssh-rsa NEW")
    with pytest.raises(StepError, match="insecure public key"):
        bake.insecure_public_key((str(tmp_path / "none" / "*.pub"),))
    if Path("/usr/share/rubygems-integration/all/gems").is_dir():  # Debian's vagrant, as CI installs it
        assert bake.insecure_public_key().startswith("ssh-rsa ")


def test_a_stale_copy_in_vagrants_store_is_removed_before_the_next_up(tmp_path, cfg, cache):
    (tmp_path / "b1").write_bytes(b"first bake")
    first = cache.add_box("dslab/current-docker", tmp_path / "b1", profile="current", runtime="docker")
    env = {"VAGRANT_HOME": str(tmp_path / "vagrant.d")}
    calls = []

    def vagrant(cfg_, command, log):
        calls.append(command)

    def refresh(entry, in_store=True):
        return bake.refresh_store(cfg, cache, entry, None, vagrant=vagrant, environ=env,
                                  has_box=lambda name, environ: in_store)
    assert refresh(first, in_store=False) is False  # not in the store: vagrant up adds it
    bake.remember_in_store(cache, first, environ=env)
    assert refresh(first) is False and calls == []  # the store holds the cache's bytes
    (tmp_path / "b2").write_bytes(b"second bake")
    second = cache.add_box("dslab/current-docker", tmp_path / "b2", profile="current", runtime="docker")
    assert refresh(second) is True
    assert calls == [["vagrant", "box", "remove", "dslab/current-docker", "--all", "--force"]]
    other_home = {"VAGRANT_HOME": str(tmp_path / "other.d")}
    bake.remember_in_store(cache, second, environ=env)
    assert bake.store_is_stale(cache, second, environ=other_home, has_box=lambda name, environ: True)
