"""Cache bundles (lab/bundle.py): the round trip, and every refusal leaving the cache as it was.

The profile's pins are replaced by pins of test bytes (the real files cannot be had here), so
the sums a bundle carries are real sums of what it holds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from lab import bundle, cache_prune
from lab.bundle import BundleError
from lab.cache import Cache, mib
from lab.profiles import CURRENT, PROFILES, Download

REPO = Path(__file__).resolve().parent.parent
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


def pinned(name: str, data: bytes, sha512_only: bool = False) -> Download:
    url = f"https://example.invalid/{name}"
    if sha512_only:
        return Download(url=url, sha256="", sha512=hashlib.sha512(data).hexdigest())
    return Download(url=url, sha256=hashlib.sha256(data).hexdigest())


FILES = {"calico.yaml": b"calico manifest\n" * 100, "metallb-native.yaml": b"metallb\n",
         "cri-dockerd.tgz": os.urandom(5000), "node.tar.gz": os.urandom(3000)}


@pytest.fixture
def profile(monkeypatch):
    """The current profile with its downloads pinned to the test bytes of FILES."""
    fake = dataclasses.replace(
        CURRENT, calico_manifest=pinned("calico.yaml", FILES["calico.yaml"]),
        metallb_manifests=(pinned("metallb-native.yaml", FILES["metallb-native.yaml"]),),
        cri_dockerd=pinned("cri-dockerd.tgz", FILES["cri-dockerd.tgz"]),
        kubernetes_node_archive=pinned("node.tar.gz", FILES["node.tar.gz"], sha512_only=True))
    monkeypatch.setitem(PROFILES, "current", fake)
    return fake


def filled(root: Path, profile, tmp: Path) -> Cache:
    """A cache with every kind of entry of the profile (and one image of another profile)."""
    cache = Cache(root)
    for download in (profile.calico_manifest, *profile.metallb_manifests, profile.cri_dockerd,
                     profile.kubernetes_node_archive):
        path = cache.file_path(download)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(FILES[download.url.rsplit("/", 1)[1]])
    for ref, digest, data in (("docker.io/library/nginx:1.30", DIGEST_A, os.urandom(20000)),
                              ("quay.io/calico/node:v3.31.6", DIGEST_B, os.urandom(7000))):
        (tmp / "i.tar").write_bytes(data)
        cache.add_image(ref, digest, tmp / "i.tar", producer="docker", profile="current")
    (tmp / "o.tar").write_bytes(b"seed-2020 only")
    cache.add_image("docker.io/library/nginx:1.17", DIGEST_A, tmp / "o.tar", producer="docker", profile="seed-2020")
    rel = "baseos-0123456789abcdef/packages/ipset-7.11-8.el9.x86_64.rpm"
    (tmp / "p.rpm").write_bytes(b"rpm bytes")
    cache.add_package("el9", rel, tmp / "p.rpm")
    cache.set_collection("el9", "current", [rel])
    (tmp / "b.box").write_bytes(os.urandom(4000))
    cache.add_box("dslab/current-docker", tmp / "b.box", profile="current", runtime="docker")
    cache.record_needed("current", "docker", ["registry.k8s.io/pause:3.10", "docker.io/library/nginx:1.30"])
    return cache


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def comparable(listing: dict) -> dict:
    return {k: v for k, v in listing.items() if k != "cache_dir"}


@pytest.fixture
def made(tmp_path, profile):
    source = filled(tmp_path / "a", profile, tmp_path)
    out = tmp_path / "current.bundle"
    progress = []
    manifest = bundle.export(source, out, "current", progress=lambda *a: progress.append(a))
    return source, out, manifest, progress


def test_round_trip(tmp_path, made):
    source, out, manifest, progress = made
    assert manifest["version"] == bundle.VERSION and manifest["profile"] == "current"
    kinds = sorted(m["kind"] for m in manifest["members"])
    assert kinds == ["box", "file", "file", "file", "file", "image", "image", "package"]
    assert all(len(m["sha256"]) == 64 and m["size"] > 0 for m in manifest["members"])
    assert progress and all(p[3] > 0 for p in progress) and progress[-1][1] == progress[-1][2]
    target = Cache(tmp_path / "b")
    lines = []
    bundle.import_(target, out, report=lines.append)
    listed = comparable(cache_prune.listing(source, "current"))
    assert comparable(cache_prune.listing(target, "current")) == listed
    assert {(e.ref, e.digest, e.sha256) for e in target.images()} == {(e.ref, e.digest, e.sha256)
                                                                      for e in source.images("current")}
    assert target.needed("current", "docker") == source.needed("current", "docker")
    assert target.box("dslab/current-docker").sha256 == source.box("dslab/current-docker").sha256
    for member in manifest["members"]:
        assert (target.root / member["path"]).read_bytes() == (source.root / member["path"]).read_bytes()
    assert target.images("seed-2020") == []  # another profile's image stays out of this bundle
    assert not list((target.root / "tmp").iterdir())
    assert sorted(lines) == sorted(f"{m['path']}: {mib(m['size'])}, sha256 checked" for m in manifest["members"])
    # importing again changes nothing but the entries' time, and keeps what was there
    before = tree(target.root)
    bundle.import_(target, out)
    assert set(tree(target.root)) == set(before)


def test_import_keeps_what_the_cache_had(tmp_path, made, profile):
    _, out, _, _ = made
    target = Cache(tmp_path / "b")
    (tmp_path / "x.tar").write_bytes(b"mine")
    target.add_image("docker.io/library/busybox:1", DIGEST_A, tmp_path / "x.tar", producer="containerd",
                     profile="current")
    bundle.import_(target, out)
    assert "docker.io/library/busybox:1" in {e.ref for e in target.images("current")}
    assert len(target.images("current")) == 3


def refused(target: Cache, path: Path, match: str) -> str:
    before = tree(target.root)
    with pytest.raises(BundleError) as err:
        bundle.import_(target, path)
    message = str(err.value)
    assert "\n" not in message and match in message, message
    assert tree(target.root) == before
    assert not list((target.root / "tmp").iterdir())
    return message


def target_cache(tmp_path) -> Cache:
    target = Cache(tmp_path / "b")
    (tmp_path / "mine.tar").write_bytes(b"already cached")
    target.add_image("docker.io/library/busybox:1", DIGEST_A, tmp_path / "mine.tar", producer="docker",
                     profile="current")
    return target


def test_one_byte_changed_in_a_member(tmp_path, made):
    _, out, manifest, _ = made
    data = bytearray(out.read_bytes())
    box = next(m for m in manifest["members"] if m["kind"] == "box")
    start = data.index(os.urandom(0) + (tmp_path / "b.box").read_bytes()[:64])
    data[start + 100] ^= 0xFF
    damaged = tmp_path / "damaged.bundle"
    damaged.write_bytes(bytes(data))
    message = refused(target_cache(tmp_path), damaged, "is damaged")
    assert f"cache/{box['path']}" in message


def test_one_byte_changed_in_the_manifest(tmp_path, made):
    _, out, manifest, _ = made
    data = bytearray(out.read_bytes())
    sum_ = manifest["members"][-1]["sha256"].encode()
    at = data.index(sum_)
    data[at] = ord("0") if data[at] != ord("0") else ord("1")
    damaged = tmp_path / "damaged.bundle"
    damaged.write_bytes(bytes(data))
    refused(target_cache(tmp_path), damaged, "is damaged")


def rewrite(source: Path, dest: Path, keep=lambda member: True, change=None) -> None:
    """Copy the tar ``source`` to ``dest`` with only the members ``keep`` accepts (the manifest
    changed by ``change``)."""
    with tarfile.open(source) as old, tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as new:
        for member in old.getmembers():
            if not keep(member):
                continue
            data = old.extractfile(member).read()
            if member.name == bundle.MANIFEST and change is not None:
                manifest = json.loads(data)
                change(manifest)
                data = json.dumps(manifest).encode()
                member.size = len(data)
            new.addfile(member, io.BytesIO(data))


def test_a_member_missing(tmp_path, made):
    _, out, manifest, _ = made
    gone = "cache/" + next(m for m in manifest["members"] if m["kind"] == "image")["path"]
    partial = tmp_path / "partial.bundle"
    rewrite(out, partial, keep=lambda m: m.name != gone)
    message = refused(target_cache(tmp_path), partial, "is partial or damaged: 1 of its 8 members are missing")
    assert gone in message


def test_a_bundle_cut_short(tmp_path, made):
    _, out, _, _ = made
    cut = tmp_path / "cut.bundle"
    cut.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    message = refused(target_cache(tmp_path), cut, "bundle")
    assert "cut short" in message or "partial" in message


def test_wrong_version(tmp_path, made):
    _, out, _, _ = made
    newer = tmp_path / "newer.bundle"
    rewrite(out, newer, change=lambda m: m.update(version=2))
    refused(target_cache(tmp_path), newer, "format version 2; this lab reads version 1")


@pytest.mark.parametrize("change, match", [
    (lambda m: m.update(format="something else"), "not a dslab cache bundle"),
    (lambda m: m.update(profile="tomorrow"), "which this lab does not know"),
    (lambda m: m["members"][0].update(path="files/../../../etc/passwd"), "damaged member record"),
    (lambda m: m["members"].pop(), "is not in its manifest"),
])
def test_refused_manifests(tmp_path, made, change, match):
    _, out, _, _ = made
    bad = tmp_path / "bad.bundle"
    rewrite(out, bad, change=change)
    refused(target_cache(tmp_path), bad, match)


def with_member(source: Path, dest: Path, member: tarfile.TarInfo, data: bytes = b"", replace: str = "") -> None:
    """Copy the bundle ``source`` to ``dest`` with ``member`` right after the manifest (in place of the
    member called ``replace``, when given)."""
    with tarfile.open(source) as old, tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as new:
        for each in old.getmembers():
            if each.name == replace:
                continue
            new.addfile(each, old.extractfile(each))
            if each.name == bundle.MANIFEST:
                new.addfile(member, io.BytesIO(data) if member.isreg() else None)


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o644
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info


@pytest.mark.parametrize("name", ["cache/../../escaped", "../escaped", "/tmp/escaped-absolute",
                                  "cache/images/../../../escaped"])
def test_member_names_that_escape_are_refused(tmp_path, made, name):
    _, out, _, _ = made
    info = tarfile.TarInfo(name)
    info.size = 7
    bad = tmp_path / "escape.bundle"
    with_member(out, bad, info, b"escaped")
    target = target_cache(tmp_path)
    message = refused(target, bad, "points outside the bundle")
    assert repr(name) in message or name in message
    assert not Path("/tmp/escaped-absolute").exists()
    assert not [p for p in tmp_path.rglob("escaped*")]


@pytest.mark.parametrize("kind, what", [(tarfile.SYMTYPE, "a symbolic link"), (tarfile.LNKTYPE, "a hard link"),
                                        (tarfile.CHRTYPE, "a character device"), (tarfile.BLKTYPE, "a block device"),
                                        (tarfile.FIFOTYPE, "a FIFO"), (tarfile.DIRTYPE, "a directory")],
                         ids=["symlink", "hardlink", "chardev", "blockdev", "fifo", "directory"])
def test_members_that_are_not_regular_files_are_refused(tmp_path, made, kind, what):
    """A link, device or FIFO in place of a member the manifest lists (its very name) is refused, and
    nothing it points at is read or written."""
    _, out, manifest, _ = made
    name = "cache/" + next(m for m in manifest["members"] if m["kind"] == "box")["path"]
    outside = tmp_path / "outside"
    outside.write_bytes(b"not to be touched")
    bad = tmp_path / "special.bundle"
    with_member(out, bad, special(name, kind, str(outside)), replace=name)
    message = refused(target_cache(tmp_path), bad, f"is {what}, not a regular file")
    assert name in message
    assert outside.read_bytes() == b"not to be touched"


def test_an_oversize_manifest_is_refused_before_it_is_read(tmp_path):
    """The header alone claims a manifest over the limit: refused without reading (or holding) it."""
    info = tarfile.TarInfo(bundle.MANIFEST)
    info.size = bundle.MANIFEST_MAX + 1
    huge = tmp_path / "huge.bundle"
    huge.write_bytes(info.tobuf(tarfile.PAX_FORMAT))
    refused(target_cache(tmp_path), huge, f"its {bundle.MANIFEST} is 64.0 MiB, more than a manifest can be")


def test_a_refused_import_into_a_new_cache_dir_creates_nothing(tmp_path, made):
    _, out, _, _ = made
    new = tmp_path / "new" / "cache"
    bad = tmp_path / "bad.bundle"
    rewrite(out, bad, change=lambda m: m.update(version=2))
    with pytest.raises(BundleError):
        bundle.import_(Cache(new), bad)
    assert not (tmp_path / "new").exists()


def test_not_a_bundle_at_all(tmp_path):
    other = tmp_path / "other.tar"
    with tarfile.open(other, "w") as tar:
        tar.add(__file__, arcname="test.py")
    refused(target_cache(tmp_path), other, "not a dslab cache bundle")
    (tmp_path / "junk").write_bytes(b"not a tar file at all" * 100)
    refused(target_cache(tmp_path), tmp_path / "junk", "is not a dslab cache bundle (not a tar archive")
    with pytest.raises(BundleError, match="does not exist"):
        bundle.import_(target_cache(tmp_path), tmp_path / "missing.bundle")


def test_export_refuses_a_damaged_cache_entry_and_writes_nothing(tmp_path, profile):
    source = filled(tmp_path / "a", profile, tmp_path)
    entry = source.images("current")[0]
    data = bytearray(source.image_path(entry).read_bytes())
    data[0] ^= 1
    source.image_path(entry).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="is damaged"):
        bundle.export(source, tmp_path / "out.bundle", "current")
    assert not (tmp_path / "out.bundle").exists() and not list(tmp_path.glob(".out.bundle.*"))


def test_prune_after_import_keeps_the_bundle(tmp_path, made):
    _, out, _, _ = made
    target = Cache(tmp_path / "b")
    bundle.import_(target, out)
    assert cache_prune.prune(target) == []


# --------------------------------------------------------------------------- a full disk

FULL_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {repo!r})
    from pathlib import Path
    from lab import bundle
    from lab.cache import Cache, CacheError
    action, cache_dir, path = sys.argv[1:4]
    try:
        if action == "export":
            bundle.export(Cache(cache_dir), Path(path), "seed-2020")
        else:
            bundle.import_(Cache(cache_dir), Path(path))
        print(json.dumps({{"ok": True}}))
    except (CacheError, bundle.BundleError) as exc:
        print(json.dumps({{"error": str(exc)}}))
""")


def on_full_disk(tmp_path, action, cache_dir, path, mount) -> tuple:
    if os.getuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a small tmpfs")
    script = tmp_path / "full.py"
    script.write_text(FULL_SCRIPT.format(repo=str(REPO)))
    listing = f"echo ==; find {mount} -type f ! -name .lock -exec sha256sum {{}} + | sort; echo =="
    command = (f"mount -t tmpfs -o size=64k tmpfs {mount} && {listing} && "
               f"{sys.executable} {script} {action} {cache_dir} {path} && {listing}")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and "permission denied" in proc.stderr.lower():
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, proc.stderr
    _, before, result, after, _ = proc.stdout.split("==\n")
    return json.loads(result), before, after


def test_full_disk_while_exporting(tmp_path):
    cache = Cache(tmp_path / "cache")
    (tmp_path / "big.tar").write_bytes(os.urandom(200 * 1024))
    cache.add_image("docker.io/library/nginx:1.17", DIGEST_A, tmp_path / "big.tar", producer="docker",
                    profile="seed-2020")
    mount = tmp_path / "small"
    mount.mkdir()
    result, before, after = on_full_disk(tmp_path, "export", cache.root, mount / "seed.bundle", mount)
    assert result["error"].startswith("lab.cache --export: cannot write ") and "no space left" in result["error"]
    assert after == before  # no partial bundle left behind
    assert len(cache.images()) == 1 and cache.image_path(cache.images()[0]).is_file()


@pytest.mark.parametrize("extra", [0, 100 * 1024], ids=["indexes-do-not-fit", "members-do-not-fit"])
def test_full_disk_while_importing(tmp_path, profile, extra):
    source = filled(tmp_path / "a", profile, tmp_path)
    if extra:
        (tmp_path / "big.tar").write_bytes(os.urandom(extra))
        source.add_image("docker.io/library/big:1", DIGEST_A, tmp_path / "big.tar", producer="docker", profile="current")
    out = tmp_path / "current.bundle"
    bundle.export(source, out, "current")
    mount = tmp_path / "small"
    mount.mkdir()
    result, before, after = on_full_disk(tmp_path, "import", mount / "cache", out, mount)
    assert result["error"].startswith("lab.cache_dir: no space left in ") and "\n" not in result["error"]
    assert after == before
