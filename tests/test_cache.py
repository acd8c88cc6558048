"""The host-side cache (lab/cache.py, lab/cache_entries.py, lab/cache_prune.py).

Downloads are served over TLS by a loopback server with a throwaway self-signed certificate
(made with openssl), which the cache is given as its TLS context: the https-only rule is
the one the lab runs with. A full disk and a read-only cache directory are real: a small or
read-only tmpfs in a private mount namespace (root only; the suite runs as root).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.https_server import Server

from lab import cache as labcache
from lab import cache_prune
from lab.cache import Cache, CacheError, DownloadError, SourceError
from lab.profiles import CURRENT, PROFILES, SEED_2020, Download

REPO = Path(__file__).resolve().parent.parent
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


@pytest.fixture
def server(tmp_path):
    try:
        srv = Server(tmp_path).start()
    except FileNotFoundError:
        pytest.skip("openssl is needed to make the test server's certificate")
    yield srv
    srv.close()


def pin(server, path: str, data: bytes, **extra) -> Download:
    server.routes[path] = data
    return Download(url=server.url(path), sha256=hashlib.sha256(data).hexdigest(), **extra)


def tree(root: Path) -> dict:
    """Every file below ``root`` with its bytes (what "unchanged" means)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- downloads


def test_second_lab_downloads_nothing(server, tmp_path):
    payload = os.urandom(3 * (1 << 20) + 17)
    download = pin(server, "/calico.yaml", payload)
    progress, lines = [], []
    first = Cache(tmp_path / "cache", context=server.client())
    path = first.ensure(download, progress=lambda *a: progress.append(a), report=lines.append)
    assert path == tmp_path / "cache" / "files" / "sha256" / download.sha256
    assert path.read_bytes() == payload and server.counts == {"/calico.yaml": 1}
    assert progress[-1][0] == "calico.yaml" and progress[-1][1] == len(payload) and progress[-1][2] == len(payload)
    assert progress[-1][3] > 0 and "fetched 3.0 MiB" in lines[-1]
    second = Cache(tmp_path / "cache", context=server.client())  # the next lab, another process
    assert second.has(download)
    assert second.ensure(download, report=lines.append) == path
    assert server.counts == {"/calico.yaml": 1}
    assert lines[-1] == "calico.yaml: from the cache"
    assert not list((tmp_path / "cache" / "tmp").iterdir())


def test_wrong_sum_is_refused_and_nothing_cached(server, tmp_path):
    download = pin(server, "/x.tgz", b"the pinned bytes")
    server.routes["/x.tgz"] = b"other bytes"
    cache = Cache(tmp_path / "cache", context=server.client())
    with pytest.raises(DownloadError) as err:
        cache.ensure(download)
    assert "checksum mismatch" in str(err.value) and download.sha256 in str(err.value)
    assert "nothing was cached" in str(err.value) and "\n" not in str(err.value)
    assert not cache.has(download)
    assert not list((tmp_path / "cache" / "files").rglob("*")) if (tmp_path / "cache" / "files").exists() else True
    assert not list((tmp_path / "cache" / "tmp").iterdir())


def test_mirrors_are_tried_in_turn_and_the_sum_decides(server, tmp_path):
    good = b"release tarball"
    wrong = pin(server, "/wrong", b"a mirror serving something else")
    download = Download(url=server.url("/gone"), sha256=hashlib.sha256(good).hexdigest(),
                        mirrors=(wrong.url, server.url("/mirror")))
    server.routes["/mirror"] = good
    cache = Cache(tmp_path / "cache", context=server.client())
    assert cache.ensure(download).read_bytes() == good
    assert server.counts == {"/gone": 1, "/wrong": 1, "/mirror": 1}


def test_https_only_also_on_redirects(server, tmp_path):
    data = b"payload"
    plain = Download(url=server.url("/p").replace("https://", "http://"), sha256=hashlib.sha256(data).hexdigest())
    cache = Cache(tmp_path / "cache", context=server.client())
    with pytest.raises(DownloadError, match="not an https URL"):
        cache.ensure(plain)
    server.routes["/redirect"] = ("redirect", plain.url)
    with pytest.raises(DownloadError, match="https only"):
        cache.ensure(Download(url=server.url("/redirect"), sha256=plain.sha256))
    assert server.counts == {"/redirect": 1}
    assert not cache.has(plain)


def test_sha512_only_download_is_kept_under_its_sha512(server, tmp_path):
    data = b"kubernetes-node-linux-amd64.tar.gz of 2020"
    server.routes["/node.tar.gz"] = data
    download = Download(url=server.url("/node.tar.gz"), sha256="", sha512=hashlib.sha512(data).hexdigest())
    cache = Cache(tmp_path / "cache", context=server.client())
    path = cache.ensure(download)
    assert path.relative_to(cache.root).as_posix() == f"files/sha512/{download.sha512}"
    with pytest.raises(ValueError):
        cache.file_path(Download(url=server.url("/x"), sha256=""))


def test_damaged_cached_file_is_fetched_again(server, tmp_path):
    download = pin(server, "/m.yaml", b"manifest")
    cache = Cache(tmp_path / "cache", context=server.client())
    cache.ensure(download).write_bytes(b"bit rot")
    lines = []
    assert cache.ensure(download, report=lines.append).read_bytes() == b"manifest"
    assert server.counts["/m.yaml"] == 2 and "damaged" in lines[0]


def test_default_dir_follows_xdg(monkeypatch, tmp_path):
    assert labcache.default_dir({"XDG_CACHE_HOME": "/srv/c"}) == Path("/srv/c/dslab")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert labcache.default_dir({"XDG_CACHE_HOME": "relative"}) == tmp_path / ".cache" / "dslab"
    assert labcache.default_dir({}) == tmp_path / ".cache" / "dslab"


def test_pinned_downloads_of_each_profile():
    current = {d.url for _, d in labcache.pinned_downloads(CURRENT, "docker")}
    assert CURRENT.cri_dockerd.url in current and CURRENT.calico_manifest.url in current
    assert CURRENT.cri_dockerd.url not in {d.url for _, d in labcache.pinned_downloads(CURRENT, "containerd")}
    seed = labcache.pinned_downloads(SEED_2020)
    assert {d.url for _, d in seed} >= {SEED_2020.kubernetes_node_archive.url, SEED_2020.calico_manifest.url}
    assert all(d.checksum for _, d in seed)


# --------------------------------------------------------------------------- images, packages, boxes


def test_images_added_listed_and_looked_up(tmp_path):
    cache = Cache(tmp_path / "cache")
    tar = tmp_path / "nginx.tar"
    tar.write_bytes(b"docker save of nginx")
    entry = cache.add_image("docker.io/library/nginx:1.30", DIGEST_A, tar, producer="docker", profile="current",
                            sha256=hashlib.sha256(tar.read_bytes()).hexdigest(), size=tar.stat().st_size)
    assert cache.image_path(entry).read_bytes() == b"docker save of nginx"
    assert entry.file == "docker.io%2Flibrary%2Fnginx%3A1.30@sha256-" + "a" * 64 + ".tar"
    again = cache.add_image("docker.io/library/nginx:1.30", DIGEST_A, tar, producer="docker", profile="seed-2020")
    assert again.profiles == ("current", "seed-2020") and len(cache.images()) == 1
    assert cache.lookup("docker.io/library/nginx:1.30").digest == DIGEST_A
    assert cache.lookup("docker.io/library/nginx:1.30", producer="containerd") is None
    assert [e.ref for e in cache.images("seed-2020")] == ["docker.io/library/nginx:1.30"]
    with pytest.raises(ValueError):
        cache.add_image("Bad Ref", DIGEST_A, tar, producer="docker", profile="current")


def test_image_of_wrong_sum_is_not_cached(tmp_path):
    cache = Cache(tmp_path / "cache")
    tar = tmp_path / "x.tar"
    tar.write_bytes(b"cut short")
    with pytest.raises(SourceError, match="nothing was cached"):
        cache.add_image("quay.io/calico/node:v3.31.6", DIGEST_B, tar, producer="containerd", profile="current",
                        sha256="0" * 64)
    assert cache.images() == [] and not list((cache.root / "images").glob("*.tar"))
    assert not list((cache.root / "tmp").iterdir())


def test_packages_and_boxes(tmp_path):
    cache = Cache(tmp_path / "cache")
    rpm = tmp_path / "ipset-7.11-8.el9.x86_64.rpm"
    rpm.write_bytes(b"rpm")
    rel = "baseos-0123456789abcdef/packages/ipset-7.11-8.el9.x86_64.rpm"
    cache.add_package("el9", rel, rpm)
    cache.set_collection("el9", "current", [rel])
    assert cache.packages("current") == {"el9": [(rel, 3)]} and cache.packages("seed-2020") == {"el9": []}
    with pytest.raises(ValueError):
        cache.package_path("el9", "../../etc/passwd.rpm")
    box = tmp_path / "package.box"
    box.write_bytes(b"box")
    entry = cache.add_box("dslab/current-docker", box, profile="current", runtime="docker")
    assert cache.box_path(entry).read_bytes() == b"box" and cache.box("dslab/current-docker") == entry
    assert cache.boxes("seed-2020") == []


def test_damaged_index_is_one_line(tmp_path):
    cache = Cache(tmp_path / "cache")
    (cache.directory("images") / "index.json").write_text("{not json")
    with pytest.raises(CacheError) as err:
        cache.images()
    assert str(err.value).startswith("lab.cache_dir: ") and "remove it" in str(err.value)
    (cache.root / "images" / "index.json").write_text(json.dumps({"version": 1, "images": [{"ref": "x"}]}))
    with pytest.raises(CacheError, match="damaged entry"):
        cache.lookup("x")
    (cache.root / "images" / "index.json").write_text(json.dumps({"version": 1, "images": [
        {"ref": "x", "digest": DIGEST_A, "file": "../../escape", "size": 1, "sha256": "0" * 64, "producer": "docker"}]}))
    with pytest.raises(CacheError, match="damaged entry"):
        cache.images()


def test_listing_and_prune(server, tmp_path):
    cache = Cache(tmp_path / "cache", context=server.client())
    profile = PROFILES["current"]
    # a pinned file (stands in for the profile's Calico manifest) and one no profile pins
    kept = cache.file_path(profile.calico_manifest)
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"calico")
    stray = pin(server, "/old.yaml", b"an old pin")
    cache.ensure(stray)
    tar = tmp_path / "i.tar"
    tar.write_bytes(b"image")
    old = cache.add_image("docker.io/library/nginx:1.30", DIGEST_A, tar, producer="docker", profile="current")
    new = cache.add_image("docker.io/library/nginx:1.30", DIGEST_B, tar, producer="docker", profile="current")
    (cache.root / "images" / "orphan.tar").write_bytes(b"no entry names me")
    listing = cache_prune.listing(cache, "current")
    by_name = {f["name"]: f for f in listing["files"]}
    assert by_name["calico.yaml"]["size"] == 6 and by_name["metallb-native.yaml"]["size"] is None
    assert {i["digest"] for i in listing["images"]} == {DIGEST_A, DIGEST_B}
    assert listing["total"] == 6 + 5 + 5
    removed = dict(cache_prune.prune(cache))
    assert set(removed) == {f"files/{labcache.file_key(stray)}", f"images/{old.file}", "images/orphan.tar"}
    assert kept.is_file() and cache.image_path(new).is_file() and not cache.image_path(old).exists()
    assert [e.digest for e in cache.images()] == [DIGEST_B]
    assert cache_prune.prune(cache) == []


def test_prune_keeps_young_temporary_files(tmp_path):
    cache = Cache(tmp_path / "cache")
    young = cache.directory("tmp") / "being-written"
    young.write_bytes(b"x")
    stale = cache.root / "tmp" / "left-behind"
    stale.write_bytes(b"y")
    os.utime(stale, (1, 1))
    assert [p for p, _ in cache_prune.prune(cache)] == ["tmp/left-behind"] and young.exists()


# --------------------------------------------------------------------------- a full disk, a read-only directory

NAMESPACE_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {repo!r})
    from pathlib import Path
    from lab.cache import Cache, CacheError
    root, source, action = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    cache = Cache(root)
    try:
        if action == "seed":
            (source / "old.tar").write_bytes(b"old image")
            cache.add_image("docker.io/library/nginx:1.30", "sha256:" + "a" * 64, source / "old.tar",
                            producer="docker", profile="current")
        else:
            (source / "big.tar").write_bytes(b"x" * (256 * 1024))
            cache.add_image("docker.io/library/nginx:1.30", "sha256:" + "b" * 64, source / "big.tar",
                            producer="docker", profile="current")
        print(json.dumps({{"ok": True}}))
    except CacheError as exc:
        print(json.dumps({{"error": str(exc)}}))
""")


def in_namespace(tmp_path: Path, read_only: bool) -> tuple:
    """Seed a cache on a 64 KiB tmpfs in a private mount namespace, make it read-only when asked,
    then add an image of 256 KiB: (seed result, tree before, add result, tree after)."""
    if os.getuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private tmpfs")
    root, source = tmp_path / "cache", tmp_path / "source"
    root.mkdir()
    source.mkdir()
    script = tmp_path / "run.py"
    script.write_text(NAMESPACE_SCRIPT.format(repo=str(REPO)))
    listing = f"echo ==; find {root} -type f -exec sha256sum {{}} + | sort; echo =="
    parts = [f"mount -t tmpfs -o size=64k tmpfs {root}", f"{sys.executable} {script} {root} {source} seed", listing]
    if read_only:
        parts.append(f"mount -o remount,ro {root}")
    parts += [f"{sys.executable} {script} {root} {source} add", listing]
    proc = subprocess.run(["unshare", "-m", "sh", "-c", " && ".join(parts)], capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0 and "permission denied" in proc.stderr.lower():
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    seeded, before, added, after, _ = proc.stdout.split("==\n")
    return json.loads(seeded), before, json.loads(added), after


def test_full_disk_while_caching_an_image(tmp_path):
    seeded, before, added, after = in_namespace(tmp_path, read_only=False)
    assert seeded == {"ok": True} and "a" * 64 in before
    error = added["error"]
    assert error.startswith("lab.cache_dir: no space left in ") and "free space there" in error and "\n" not in error
    # the old image and its index are there, byte for byte; nothing of the new one, no temporary file
    assert after == before


def test_read_only_cache_dir(tmp_path):
    seeded, before, added, after = in_namespace(tmp_path, read_only=True)
    assert seeded == {"ok": True}
    assert added["error"].startswith("lab.cache_dir: ") and "not writable" in added["error"]
    assert after == before


# --------------------------------------------------------------------------- lab.offline (lab/cache_offline.py)

import dataclasses  # noqa: E402

from lab import cache_offline  # noqa: E402
from lab import config as labconfig  # noqa: E402

CALICO_MANIFEST = b"""kind: DaemonSet
spec:
  template:
    spec:
      initContainers: [{name: install-cni, image: quay.io/calico/cni:v3.31.6}]
      containers: [{name: calico-node, image: quay.io/calico/node:v3.31.6}]
"""
METALLB_MANIFEST = b"""kind: Deployment
spec: {template: {spec: {containers: [{name: controller, image: quay.io/metallb/controller:v0.16.1}]}}}
"""


@pytest.fixture
def pinned_profile(monkeypatch):
    fake = dataclasses.replace(
        CURRENT,
        calico_manifest=Download(url="https://example.invalid/calico.yaml", sha256=hashlib.sha256(CALICO_MANIFEST).hexdigest()),
        metallb_manifests=(Download(url="https://example.invalid/metallb-native.yaml",
                                    sha256=hashlib.sha256(METALLB_MANIFEST).hexdigest()),),
        cri_dockerd=Download(url="https://example.invalid/cri-dockerd.tgz", sha256=hashlib.sha256(b"cri").hexdigest()))
    monkeypatch.setitem(PROFILES, "current", fake)
    return fake


def offline_cfg(profile, **settings):
    cfg = labconfig.load(settings)
    object.__setattr__(cfg, "profile", profile)  # the pinned test profile (LabConfig is frozen)
    return cfg


def test_offline_with_an_empty_cache_names_everything(tmp_path, pinned_profile):
    cfg = offline_cfg(pinned_profile)
    problems = cache_offline.offline_problems(cfg, Cache(tmp_path / "cache"), environ={"VAGRANT_HOME": str(tmp_path)})
    assert all(p.startswith("lab.offline: ") and "\n" not in p for p in problems)
    text = "\n".join(problems)
    assert f"the box {cfg.box} is neither in Vagrant's box store" in text
    for name in ("calico.yaml", "metallb-native.yaml", "cri-dockerd.tgz"):
        assert f"needs {name} (https://example.invalid/{name})" in text
    assert "which images kubeadm and docker pull for Kubernetes 1.36.0" in text
    assert "the image docker.io/library/nginx:1.30 is not in" in text
    assert "install OS packages from the network unless lab.box is a box made by `invoke lab.bake`" in text
    assert problems[-1].startswith("lab.offline: nothing was created")


def test_offline_with_a_full_cache_needs_nothing(tmp_path, pinned_profile):
    cache = Cache(tmp_path / "cache")
    for download, data in ((pinned_profile.calico_manifest, CALICO_MANIFEST),
                           (pinned_profile.metallb_manifests[0], METALLB_MANIFEST), (pinned_profile.cri_dockerd, b"cri")):
        cache.file_path(download).parent.mkdir(parents=True, exist_ok=True)
        cache.file_path(download).write_bytes(data)
    cache.record_needed("current", "docker", ["registry.k8s.io/pause:3.10", "registry.k8s.io/kube-apiserver:v1.36.0"])
    cfg = offline_cfg(pinned_profile, box="dslab/current-docker")
    refs, complete = cache_offline.required_images(cfg, cache)
    assert complete and {"quay.io/calico/cni:v3.31.6", "quay.io/calico/node:v3.31.6", "quay.io/metallb/controller:v0.16.1",
                         "docker.io/library/nginx:1.30", "registry.k8s.io/e2e-test-images/agnhost:2.53",
                         "registry.k8s.io/pause:3.10", "registry.k8s.io/kube-apiserver:v1.36.0"} == set(refs)
    (tmp_path / "i.tar").write_bytes(b"i")
    for ref in refs[:-1]:
        cache.add_image(ref, DIGEST_A, tmp_path / "i.tar", producer="docker", profile="current")
    (tmp_path / "b.box").write_bytes(b"box")
    cache.add_box("dslab/current-docker", tmp_path / "b.box", profile="current", runtime="docker")
    problems = cache_offline.offline_problems(cfg, cache, environ={"VAGRANT_HOME": str(tmp_path)})
    assert problems[:-1] == [f"lab.offline: the image {refs[-1]} is not in the cache ({cache.root})"]
    cache.add_image(refs[-1], DIGEST_A, tmp_path / "i.tar", producer="docker", profile="current")
    assert cache_offline.offline_problems(cfg, cache, environ={"VAGRANT_HOME": str(tmp_path)}) == []
    # a box baked for another runtime does not count
    assert cache_offline.baked_box(offline_cfg(pinned_profile, box="dslab/current-docker", runtime="containerd"),
                                   cache) is None


def test_vagrant_box_store_layouts(tmp_path):
    assert not cache_offline.vagrant_has_box("centos/7", {"VAGRANT_HOME": str(tmp_path)})
    meta = tmp_path / "boxes" / "centos-VAGRANTSLASH-7" / "2004.01" / "libvirt" / "metadata.json"
    meta.parent.mkdir(parents=True)
    meta.write_text("{}")
    assert cache_offline.vagrant_has_box("centos/7", {"VAGRANT_HOME": str(tmp_path)})
    arch = tmp_path / "boxes" / "centos-stream-9" / "0" / "amd64" / "libvirt" / "metadata.json"
    arch.parent.mkdir(parents=True)
    arch.write_text("{}")
    assert cache_offline.vagrant_has_box("centos-stream-9", {"VAGRANT_HOME": str(tmp_path)})


def test_seed_profile_calico_images_come_with_its_archive(tmp_path):
    cfg = labconfig.load({"profile": "seed-2020"})
    refs, complete = cache_offline.required_images(cfg, Cache(tmp_path / "cache"))
    assert not complete and refs == sorted({"docker.io/library/nginx:1.17", "registry.k8s.io/e2e-test-images/agnhost:2.39"})


def test_progress_text_puts_the_numbers_first():
    """A narrow terminal cuts the end of the line: the bytes and rate come before the item's name."""
    assert labcache.progress_text("calico.yaml", 1 << 20, 4 << 20, 2 << 20) == \
        "1.0 MiB/4.0 MiB (25%) at 2.0 MiB/s: calico.yaml"
    assert labcache.progress_text("node.tar.gz", 3 << 20, None, 1 << 20) == "3.0 MiB at 1.0 MiB/s: node.tar.gz"
