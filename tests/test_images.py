"""Image commands and their output (lab/images.py), against the output shapes of the tools.

The docker lines are what ``docker image ls --digests --no-trunc --format '{{json .}}'``
prints: a JSON object of every zero-argument method of the formatter's image context, keys
sorted by encoding/json (docker/cli cli/command/formatter/image.go and reflect.go at v19.03.5
and v29.7.2; VirtualSize is gone in v29). The ctr table is ``ctr images ls``'s tabwriter
layout (containerd cmd/ctr/commands/images/images.go, v1.2.10 and v2.2.0: header
``REF TYPE DIGEST SIZE PLATFORMS LABELS``, SIZE as "<n> MiB") with the names the CRI plugin
gives an image (tag, repo@digest, bare config id).
"""

from __future__ import annotations

import json

import pytest

from lab import images
from lab.cache import Cache

ID_NGINX = "sha256:" + "1" * 64
ID_PAUSE = "sha256:" + "2" * 64
REPO_DIGEST = "sha256:" + "3" * 64
MANIFEST_CALICO = "sha256:" + "4" * 64
CONFIG_CALICO = "sha256:" + "5" * 64


def docker_row(repo, tag, digest, image_id, v29=False):
    row = {"Containers": "N/A", "CreatedAt": "2020-01-21 04:22:31 +0000 UTC", "CreatedSince": "5 years ago",
           "Digest": digest, "ID": image_id, "Repository": repo, "SharedSize": "N/A", "Size": "127MB",
           "Tag": tag, "UniqueSize": "N/A"}
    if not v29:
        row["VirtualSize"] = "126.8MB"
    return json.dumps(row, sort_keys=True, separators=(",", ":"))


@pytest.mark.parametrize("v29", [False, True], ids=["docker-19.03", "docker-29"])
def test_docker_list_parsed_to_full_references(v29):
    text = "\n".join([
        docker_row("nginx", "1.17", REPO_DIGEST, ID_NGINX, v29),
        docker_row("nginx", "1.17", "sha256:" + "9" * 64, ID_NGINX, v29),  # a second repo digest: same image
        docker_row("registry.k8s.io/pause", "3.1", "<none>", ID_PAUSE, v29),  # loaded: no registry digest
        docker_row("<none>", "<none>", "<none>", "sha256:" + "6" * 64, v29),  # dangling
    ]) + "\n"
    assert images.parse_list("docker", text) == [
        images.NodeImage("docker.io/library/nginx:1.17", ID_NGINX),
        images.NodeImage("registry.k8s.io/pause:3.1", ID_PAUSE),
    ]


@pytest.mark.parametrize("v29", [False, True], ids=["docker-19.03", "docker-29"])
def test_docker_digest_only_rows_are_not_exported(v29):
    """An image Docker knows by a digest only (pulled by digest, or left behind by a newer pull of
    its tag): ``docker save`` of ``repo@sha256:...`` records no name in the tarball (moby
    image/tarexport/save.go, addAssoc returns early for a Canonical reference), so ``docker load``
    gives a nameless image and the load would fail; such rows are not offered for export."""
    text = "\n".join([
        docker_row("calico/node", "<none>", REPO_DIGEST, ID_PAUSE, v29),
        docker_row("quay.io/metallb/speaker", "v0.16.1", "sha256:" + "7" * 64, ID_NGINX, v29),
    ]) + "\n"
    assert images.parse_list("docker", text) == [images.NodeImage("quay.io/metallb/speaker:v0.16.1", ID_NGINX)]


def test_ctr_list_keeps_one_name_per_image():
    text = (
        "REF                                                  TYPE                                                      DIGEST      SIZE      PLATFORMS   LABELS\n"
        f"quay.io/calico/node:v3.31.6                          application/vnd.docker.distribution.manifest.list.v2+json {MANIFEST_CALICO} 145.2 MiB linux/amd64,linux/arm64 io.cri-containerd.image=managed\n"
        f"quay.io/calico/node@{MANIFEST_CALICO} application/vnd.docker.distribution.manifest.list.v2+json {MANIFEST_CALICO} 145.2 MiB linux/amd64,linux/arm64 io.cri-containerd.image=managed\n"
        f"{CONFIG_CALICO} application/vnd.docker.distribution.manifest.list.v2+json {MANIFEST_CALICO} 145.2 MiB linux/amd64 io.cri-containerd.image=managed\n"
        f"registry.k8s.io/pause@{REPO_DIGEST} application/vnd.oci.image.index.v1+json {REPO_DIGEST} 311.6 KiB linux/amd64 -\n"
    )
    assert images.parse_list("containerd", text) == [
        images.NodeImage("quay.io/calico/node:v3.31.6", MANIFEST_CALICO),
        images.NodeImage(f"registry.k8s.io/pause@{REPO_DIGEST}", REPO_DIGEST),
    ]


def test_unreadable_list_is_a_value_error():
    with pytest.raises(ValueError, match="image list of docker"):
        images.parse_list("docker", "Cannot connect to the Docker daemon\n")


@pytest.mark.parametrize("ref, full", [
    ("nginx", "docker.io/library/nginx:latest"),
    ("nginx:1.17", "docker.io/library/nginx:1.17"),
    ("calico/node:v3.11.3", "docker.io/calico/node:v3.11.3"),
    ("index.docker.io/library/nginx:1.30", "docker.io/library/nginx:1.30"),
    ("docker.io/nginx:1.30", "docker.io/library/nginx:1.30"),
    ("quay.io/metallb/speaker:v0.9.8", "quay.io/metallb/speaker:v0.9.8"),
    ("localhost/img:1", "localhost/img:1"),
    (f"registry.k8s.io/pause@{REPO_DIGEST}", f"registry.k8s.io/pause@{REPO_DIGEST}"),
])
def test_normalise_as_docker_does(ref, full):
    assert images.normalise(ref) == full


@pytest.mark.parametrize("runtime, listing, export, load", [
    ("docker", ["docker", "image", "ls", "--digests", "--no-trunc", "--format", "{{json .}}"],
     ["docker", "save", "-o", "/d/x.tar", "nginx:1.17"], ["docker", "load", "-i", "/d/x.tar"]),
    ("containerd", ["ctr", "-n", "k8s.io", "images", "ls"],
     ["ctr", "-n", "k8s.io", "images", "export", "/d/x.tar", "nginx:1.17"],
     ["ctr", "-n", "k8s.io", "images", "import", "/d/x.tar"]),
])
def test_commands(runtime, listing, export, load):
    assert images.list_command(runtime) == listing
    assert images.export_command(runtime, "nginx:1.17", "/d/x.tar") == export
    assert images.load_command(runtime, "/d/x.tar") == load
    with pytest.raises(ValueError):
        images.list_command("cri-o")


def test_docker_load_output():
    text = (f"Loaded image: nginx:1.17\nThe image calico/node:v3.11.3 already exists, renaming the old one with ID "
            f"{ID_PAUSE} to empty string\nLoaded image: calico/node:v3.11.3\nLoaded image ID: {ID_NGINX}\n")
    assert images.parse_docker_load(text) == ["docker.io/library/nginx:1.17", "docker.io/calico/node:v3.11.3", ID_NGINX]


def test_manifest_images_of_pod_templates():
    text = """
apiVersion: apps/v1
kind: DaemonSet
spec:
  template:
    spec:
      initContainers:
        - name: install-cni
          image: quay.io/calico/cni:v3.31.6
      containers:
        - name: calico-node
          image: quay.io/calico/node:v3.31.6
---
apiVersion: v1
kind: ConfigMap
data:
  image: not-a-container
---
kind: Deployment
spec:
  template:
    spec:
      containers:
        - image: nginx:1.17
        - image: quay.io/calico/node:v3.31.6
"""
    assert images.manifest_images(text) == ["quay.io/calico/cni:v3.31.6", "quay.io/calico/node:v3.31.6",
                                            "docker.io/library/nginx:1.17"]


def test_what_to_export_and_what_to_load(tmp_path):
    cache = Cache(tmp_path / "cache")
    tar = tmp_path / "t.tar"
    tar.write_bytes(b"t")
    cache.add_image("docker.io/library/nginx:1.30", ID_NGINX, tar, producer="docker", profile="current")
    cache.add_image("quay.io/calico/node:v3.31.6", MANIFEST_CALICO, tar, producer="containerd", profile="current")
    cache.add_image("registry.k8s.io/pause:3.1", ID_PAUSE, tar, producer="docker", profile="seed-2020")
    node = [images.NodeImage("docker.io/library/nginx:1.30", ID_NGINX),
            images.NodeImage("registry.k8s.io/pause:3.10", ID_PAUSE)]
    assert images.to_export(node, cache, "docker") == [node[1]]
    assert images.to_export(node, cache, "containerd") == node  # the cache's nginx was made by docker
    loads = images.to_load(cache, "current", "docker", node)
    assert [e.ref for e in loads] == ["quay.io/calico/node:v3.31.6"]
    assert images.to_load(cache, "current", "docker", node, refs=["docker.io/library/nginx:1.30"]) == []
    assert images.remote_path(loads[0]).startswith(images.REMOTE_SPOOL + "/quay.io%2Fcalico%2Fnode")


# --------------------------------------------------------------------------- host <-> node (lab/cache_sync.py)

import hashlib  # noqa: E402
from pathlib import Path  # noqa: E402

from lab import cache_sync  # noqa: E402
from lab.context import Result  # noqa: E402
from lab.errors import StepError  # noqa: E402

NGINX = "docker.io/library/nginx:1.30"
PAUSE = "registry.k8s.io/pause:3.10"


def local_transfer(node_root: Path) -> cache_sync.Transfer:
    """A Transfer whose "node" is the directory ``node_root`` (absolute node paths below it)."""
    return cache_sync.Transfer(lambda node, line: ["bash", "-c", line.replace("/var/cache/dslab", f"{node_root}/var/cache/dslab")])


class NodeRunner:
    """The node side of the image scripts, on ``root``: list, export (writes the tarball), load, rm."""

    def __init__(self, root: Path, on_node: dict, report_size=None):
        self.root, self.initial, self.calls, self.report_size = root, dict(on_node), [], report_size
        self.nodes = {}  # node -> its images (each node starts with ``on_node``)

    def images_of(self, node) -> dict:
        return self.nodes.setdefault(node, dict(self.initial))

    def run(self, node, command, *, input=None, timeout=None, check=True, secret=False):
        self.calls.append(command)
        if command == cache_sync.script("cache-images.sh", "list"):
            return Result(0, "\n".join(json.dumps({"Repository": r.rsplit(":", 1)[0], "Tag": r.rsplit(":", 1)[1],
                                                   "ID": d, "Digest": "<none>"}) for r, d in self.images_of(node).items()))
        if command[:4] == cache_sync.script("cache-images.sh", "export"):
            path = self.root / command[-1].lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"tarball of {command[-2]}".encode() * 1000)
            size = self.report_size or path.stat().st_size
            return Result(0, f"{hashlib.sha256(path.read_bytes()).hexdigest()} {size}\n")
        if command[:4] == cache_sync.script("cache-images.sh", "load"):
            self.images_of(node)[command[-1]] = "sha256:" + "f" * 64
        if isinstance(command, str) and command.startswith("sha256sum"):
            dest = self.root / shlex_split(command)[2].lstrip("/")
            return Result(0, hashlib.sha256(dest.read_bytes()).hexdigest() + "\n" if dest.is_file() else "")
        return Result(0)


def shlex_split(text):
    import shlex
    return shlex.split(text)


def test_export_images_copies_what_the_cache_lacks(tmp_path):
    cache = Cache(tmp_path / "cache")
    (tmp_path / "n.tar").write_bytes(b"nginx")
    cache.add_image(NGINX, ID_NGINX, tmp_path / "n.tar", producer="docker", profile="current")
    node = tmp_path / "node"
    runner, lines = NodeRunner(node, {NGINX: ID_NGINX, PAUSE: ID_PAUSE}), []
    refs = cache_sync.export_images(runner, local_transfer(node), "k8s-master01", cache, "current", "docker", lines.append)
    assert refs == [NGINX, PAUSE]
    exported = [c for c in runner.calls if c[:4] == cache_sync.script("cache-images.sh", "export")]
    assert [c[4] for c in exported] == [PAUSE]
    entry = cache.lookup(PAUSE)
    assert entry.digest == ID_PAUSE and cache.image_path(entry).read_bytes() == f"tarball of {PAUSE}".encode() * 1000
    assert ["rm", "-f", exported[0][5]] in runner.calls and lines == [
        f"k8s-master01: {PAUSE} exported to the host's cache (0.0 MiB)"]


def test_export_of_a_damaged_transfer_caches_nothing(tmp_path):
    cache = Cache(tmp_path / "cache")
    node = tmp_path / "node"
    runner = NodeRunner(node, {PAUSE: ID_PAUSE}, report_size=3)
    with pytest.raises(StepError, match="nothing was cached"):
        cache_sync.export_images(runner, local_transfer(node), "k8s-master01", cache, "current", "docker", print)
    assert cache.images() == [] and any(c[:2] == ["rm", "-f"] for c in runner.calls if isinstance(c, list))


def test_load_images_sends_and_loads_what_the_node_lacks(tmp_path):
    cache = Cache(tmp_path / "cache")
    for ref, digest in ((NGINX, ID_NGINX), (PAUSE, ID_PAUSE)):
        (tmp_path / "i.tar").write_bytes(f"image {ref}".encode())
        cache.add_image(ref, digest, tmp_path / "i.tar", producer="docker", profile="current")
    node = tmp_path / "node"
    runner = NodeRunner(node, {NGINX: ID_NGINX})
    count = cache_sync.load_images(runner, local_transfer(node), "k8s-worker01", cache, "current", "docker", print)
    dest = images.remote_path(cache.lookup(PAUSE))
    assert count == 1 and (node / dest.lstrip("/")).read_bytes() == f"image {PAUSE}".encode()
    assert cache_sync.script("cache-images.sh", "load", dest, PAUSE) in runner.calls
    assert cache_sync.load_images(runner, local_transfer(node), "k8s-worker01", cache, "current", "docker", print) == 0


def test_push_download_copies_once(tmp_path):
    cache = Cache(tmp_path / "cache")
    data = b"cri-dockerd tarball"
    from lab.profiles import Download
    download = Download(url="https://example.invalid/cri-dockerd.tgz", sha256=hashlib.sha256(data).hexdigest())
    cache.file_path(download).parent.mkdir(parents=True)
    cache.file_path(download).write_bytes(data)
    node = tmp_path / "node"
    runner, lines = NodeRunner(node, {}), []
    dest = cache_sync.remote_download(download)
    assert dest == "/var/cache/dslab/cri-dockerd.tgz"
    cache_sync.push_download(runner, local_transfer(node), "n1", cache, download, dest, lines.append)
    assert (node / dest.lstrip("/")).read_bytes() == data and "copied from the host's cache" in lines[-1]
    cache_sync.push_download(runner, local_transfer(node), "n1", cache, download, dest, lines.append)
    assert len([line for line in lines if "copied" in line]) == 1


def test_transfer_failures_are_one_line(tmp_path):
    transfer = cache_sync.Transfer(lambda node, line: ["bash", "-c", line])
    with pytest.raises(StepError) as err:
        with transfer.receive("n1", str(tmp_path / "missing.tar")) as stream:
            stream.read()
    assert "reading" in str(err.value) and "No such file" in str(err.value)
    (tmp_path / "f").write_bytes(b"12345")
    (tmp_path / "plain").write_text("a file where the directory should be")
    target = tmp_path / "plain" / "x"
    with pytest.raises(StepError, match="copying f to"):
        cache_sync.Transfer(lambda node, line: ["bash", "-c", line]).send("n1", tmp_path / "f", str(target))
    cache_sync.Transfer(lambda node, line: ["bash", "-c", line]).send("n1", tmp_path / "f", str(tmp_path / "d" / "g"))
    assert (tmp_path / "d" / "g").read_bytes() == b"12345" and not list((tmp_path / "d").glob("*.part.*"))


def test_ssh_argv_is_the_runners(tmp_path):
    from lab.remote import SshRunner
    runner = SshRunner(tmp_path / "ssh_config", control=tmp_path)
    argv = cache_sync.ssh_argv(runner, "k8s-master01", "cat -- '/var/cache/dslab/x y.tar'")
    assert argv[:3] == ["ssh", "-F", str(tmp_path / "ssh_config")]
    assert f"ControlPath={tmp_path}/%C" in argv and argv[-4:-1] == ["sudo", "bash", "-c"]
    assert shlex_split(argv[-1]) == ["cat -- '/var/cache/dslab/x y.tar'"]


# --------------------------------------------------------------------------- the lab.up hooks (lab/cache_steps.py)

from types import SimpleNamespace  # noqa: E402

from lab import cache_steps  # noqa: E402
from lab import config as labconfig  # noqa: E402


class StepRunner(NodeRunner):
    """NodeRunner that also takes the uploads and answers the package script."""

    def __init__(self, root, on_node):
        super().__init__(root, on_node)
        self.uploads = []

    def put_tree(self, node, local, remote):
        self.uploads.append((node, remote))

    def put_text(self, node, text, remote, mode="0644", secret=False):
        self.uploads.append((node, remote))

    def run(self, node, command, **kwargs):
        if command == cache_sync.script("cache-packages.sh", "os"):
            self.calls.append(command)
            return Result(0, "el9\n")
        if list(command[:2]) == ["docker", "pull"]:  # the registry answers: the image is on the node then
            self.calls.append(command)
            self.images_of(node)[command[-1]] = "sha256:" + "e" * 64
            return Result(0)
        return super().run(node, command, **kwargs)


def step_context(tmp_path, runner):
    cfg = labconfig.load({"state_dir": str(tmp_path / "lab")})
    object.__setattr__(cfg, "cache_dir", tmp_path / "cache")  # as the wired settings give it
    return SimpleNamespace(cfg=cfg, runner=runner, log_path=tmp_path / "up.log", progress=None, step="images",
                           transfer=local_transfer(runner.root), cache=Cache(tmp_path / "cache"), summary="")


def test_export_then_load_across_two_labs(tmp_path):
    first = StepRunner(tmp_path / "node1", {NGINX: ID_NGINX, PAUSE: ID_PAUSE})
    ctx = step_context(tmp_path, first)
    cache_steps.export_images(ctx)  # a run --until an early step: kept, but no record of what a lab uses
    cache = Cache(tmp_path / "cache")
    assert {e.ref for e in cache.images("current")} == {NGINX, PAUSE}
    assert cache.needed("current", "docker") is None
    assert not [c for c in first.calls if list(c[:2]) == ["docker", "pull"]]
    exports = [c for c in first.calls if c[:4] == cache_sync.script("cache-images.sh", "export")]
    assert len(exports) == 2  # three nodes hold both images: each is copied once
    log = (tmp_path / "up.log").read_text()
    assert f"cache: k8s-master01: {PAUSE} exported to the host's cache" in log
    assert ctx.summary == "2 images and 0 packages added to the host's cache"
    cache_steps.export_images(ctx := step_context(tmp_path, first))
    assert ctx.summary == "the host's cache had everything already"
    # the next lab: every node gets both, before any pull
    second = StepRunner(tmp_path / "node2", {})
    ctx = step_context(tmp_path, second)
    cache_steps.load_images(ctx)
    loads = [c for c in second.calls if c[:4] == cache_sync.script("cache-images.sh", "load")]
    assert len(loads) == 2 * len(ctx.cfg.nodes)
    assert ctx.summary == f"{2 * len(ctx.cfg.nodes)} images loaded from the host's cache"
    cache_steps.load_images(ctx := step_context(tmp_path, second))
    assert ctx.summary == "every one of the 2 cached images is on the nodes"
    assert {("k8s-worker01", "/opt/dslab/provision")} <= set(second.uploads)


def test_a_whole_lab_records_what_it_uses_and_keeps_the_verify_client(tmp_path):
    from lab import pipeline  # noqa: PLC0415

    node = StepRunner(tmp_path / "node1", {NGINX: ID_NGINX, PAUSE: ID_PAUSE})
    ctx = step_context(tmp_path, node)
    ctx.steps = tuple(pipeline.STEP_NAMES)
    cache_steps.export_images(ctx)
    cache = Cache(tmp_path / "cache")
    client = images.normalise(ctx.cfg.profile.client_image)
    assert [c for c in node.calls if list(c[:2]) == ["docker", "pull"]] == [["docker", "pull", "--", client]]
    assert cache.needed("current", "docker") == sorted([NGINX, PAUSE, client]) and cache.lookup(client) is not None
    # the next lab loads what a lab uses, not every image the profile ever had
    (tmp_path / "old.tar").write_bytes(b"an image of an earlier lab")
    cache.add_image("docker.io/library/old:1", "sha256:" + "9" * 64, tmp_path / "old.tar", producer="docker",
                    profile="current")
    second = StepRunner(tmp_path / "node2", {})
    cache_steps.load_images(step_context(tmp_path, second))
    loaded = {c[-1] for c in second.calls if c[:4] == cache_sync.script("cache-images.sh", "load")}
    assert "docker.io/library/old:1" not in loaded and {NGINX, PAUSE, client} <= loaded


def test_restore_packages_keeps_first(tmp_path):
    runner = StepRunner(tmp_path / "node", {})
    cache_steps.restore_packages(step_context(tmp_path, runner))
    keeps = [c for c in runner.calls if c == cache_sync.script("cache-packages.sh", "keep")]
    assert len(keeps) == 3


def test_push_kubernetes_files_from_the_cache(tmp_path, monkeypatch):
    from lab.profiles import CURRENT, Download
    data = b"cri-dockerd"
    pin = Download(url="https://example.invalid/cri-dockerd-0.3.24.amd64.tgz", sha256=hashlib.sha256(data).hexdigest())
    runner = StepRunner(tmp_path / "node", {})
    ctx = step_context(tmp_path, runner)
    object.__setattr__(ctx.cfg, "profile", dataclasses_replace(CURRENT, cri_dockerd=pin))
    cache = Cache(tmp_path / "cache")
    cache.file_path(pin).parent.mkdir(parents=True)
    cache.file_path(pin).write_bytes(data)
    cache_steps.push_kubernetes_files(ctx)
    assert (runner.root / "var/cache/dslab/cri-dockerd-0.3.24.amd64.tgz").read_bytes() == data


def dataclasses_replace(obj, **changes):
    import dataclasses
    return dataclasses.replace(obj, **changes)


def test_a_context_without_a_cache_does_nothing(tmp_path):
    runner = StepRunner(tmp_path / "node", {NGINX: ID_NGINX})
    ctx = step_context(tmp_path, runner)
    ctx.cache = None
    for hook in (cache_steps.load_images, cache_steps.export_images, cache_steps.restore_packages,
                 cache_steps.push_kubernetes_files):
        hook(ctx)
    cache_steps.push(ctx, "k8s-master01", ctx.cfg.profile.calico_manifest, "/opt/dslab/calico-upstream.yaml")
    assert runner.calls == [] and runner.uploads == []


def test_an_image_two_profiles_use_is_kept_once_for_both(tmp_path):
    node = StepRunner(tmp_path / "node1", {NGINX: ID_NGINX})
    ctx = step_context(tmp_path, node)
    cache_steps.export_images(ctx)
    seed = labconfig.load({"profile": "seed-2020", "state_dir": str(tmp_path / "lab")})
    cache_steps.export_images(SimpleNamespace(**{**vars(step_context(tmp_path, node)), "cfg": seed}))
    cache = Cache(tmp_path / "cache")
    (entry,) = cache.images()
    assert entry.profiles == ("current", "seed-2020") and [e.ref for e in cache.images("seed-2020")] == [NGINX]
    exports = [c for c in node.calls if c[:4] == cache_sync.script("cache-images.sh", "export")]
    assert len(exports) == 1
