"""``invoke lab.cache`` through invoke's own parser and executor, with ``lab.cache_dir`` set by
``INVOKE_LAB_CACHE_DIR``: the listing, the bundle round trip, every refusal leaving the cache as
it was, ``--prune``, and bad input (a cache directory that cannot be written, a full disk).

A refused bundle is exit 2: the FILE given on the command line is what is wrong, and the same
command can never succeed; a disk that fills up while exporting is exit 1: the host failed on
the way, and the same command succeeds once there is room.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from invoke import Program

from lab import bundle
from lab import tasks as lab_tasks
from lab.cache import Cache
from lab.cache_tasks import CopyProgress, size_text
from lab.progress import CLEAR_LINE, Progress
from test_bundle import DIGEST_A, FILES, filled, profile, rewrite  # noqa: F401 - profile is a fixture

CURRENT_MEMBERS = 8  # what filled() puts in the cache for the current profile


@pytest.fixture()
def env(tmp_path, monkeypatch, profile):  # noqa: F811 - the fixture of test_bundle
    """A lab's settings as INVOKE_LAB_* (none of the caller's), run from an empty directory."""
    for key in [k for k in os.environ if k.startswith("INVOKE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("INVOKE_LAB_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("INVOKE_LAB_LIBVIRT_URI", "test:///default")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return monkeypatch


def lab_cache(capfd, env, cache_dir, *args):
    """``invoke lab.cache ARGS`` with ``lab.cache_dir`` at ``cache_dir``: (exit status, stdout, stderr)."""
    env.setenv("INVOKE_LAB_CACHE_DIR", str(cache_dir))
    code = 0
    try:
        Program(namespace=lab_tasks.namespace(), name="invoke", binary="invoke").run(["invoke", "lab.cache", *args])
    except SystemExit as exc:
        code = exc.code or 0
    out = capfd.readouterr()
    assert "Traceback" not in out.out + out.err
    return code, out.out, out.err


def snapshot(root: Path):
    """Every entry under ``root``: its type, mode and (for a file) sha256; None when ``root`` is absent."""
    if not os.path.lexists(root):
        return None
    found = {}
    for path in sorted([root, *root.rglob("*")]):
        info = path.lstat()
        rel = str(path.relative_to(root))
        if stat.S_ISLNK(info.st_mode):
            found[rel] = ("link", os.readlink(path))
        elif stat.S_ISDIR(info.st_mode):
            found[rel] = ("dir", stat.S_IMODE(info.st_mode))
        else:
            found[rel] = ("file", stat.S_IMODE(info.st_mode), hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def one_failure(err: str, step: str, text: str) -> str:
    """The one line of a failed step (its ✗ line), checked: every other line is the step's start or
    one of its items."""
    lines = [line for line in err.splitlines() if line.strip()]
    failures = [line for line in lines if line.startswith("✗ ")]
    assert len(failures) == 1 and text in failures[0], lines
    assert all(line == f"→ {step}" or line.startswith(f"  {step}: ") for line in lines if line not in failures), lines
    return failures[0]


def one_line(err: str, text: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and text in lines[0], lines
    return lines[0]


@pytest.fixture()
def source(tmp_path, profile):  # noqa: F811
    """A cache with every kind of entry of the current profile, and one image of seed-2020."""
    work = tmp_path / "work"
    work.mkdir()
    return filled(tmp_path / "cache", profile, work)


@pytest.fixture()
def exported(capfd, env, tmp_path, source):
    out = tmp_path / "current.bundle"
    code, _, err = lab_cache(capfd, env, source.root, "--export", str(out))
    assert code == 0, err
    return out


def manifest_of(path: Path) -> dict:
    with tarfile.open(path) as tar:
        return json.loads(tar.extractfile(bundle.MANIFEST).read())


# ------------------------------------------------------------------ the listing


def test_listing_per_profile_with_sizes(capfd, env, source, profile):  # noqa: F811
    code, out, _ = lab_cache(capfd, env, source.root, "--json")
    assert code == 0
    listing = json.loads(out)
    assert listing["profile"] == "current" and listing["cache_dir"] == str(source.root)
    files = {f["name"]: f["size"] for f in listing["files"]}
    assert files == {name: len(data) for name, data in FILES.items()}
    assert {(i["ref"], i["size"]) for i in listing["images"]} == {(e.ref, e.size) for e in source.images("current")}
    assert listing["packages"] == {"el9": [{"path": rel, "size": size} for rel, size in source.packages()["el9"]]}
    assert [(b["name"], b["runtime"], b["size"]) for b in listing["boxes"]] == [
        ("dslab/current-docker", "docker", source.box("dslab/current-docker").size)]
    sizes = [*files.values(), *(i["size"] for i in listing["images"]), *(b["size"] for b in listing["boxes"]),
             *(p["size"] for p in listing["packages"]["el9"])]
    assert listing["total"] == sum(sizes)

    code, out, _ = lab_cache(capfd, env, source.root)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"cache {source.root}, profile current: {size_text(listing['total'])}"
    calico = next(line for line in lines if "calico.yaml" in line)
    assert calico.split()[1:] == ["cni", *size_text(len(FILES["calico.yaml"])).split()]
    assert "images: 2" in lines and "packages: 1" in lines and "boxes: 1" in lines
    assert any(line.split()[:2] == ["docker.io/library/nginx:1.30", "docker"] for line in lines)

    code, out, _ = lab_cache(capfd, env, source.root, "--profile", "seed-2020", "--json")
    seed = json.loads(out)
    assert code == 0 and seed["profile"] == "seed-2020"
    assert [i["ref"] for i in seed["images"]] == ["docker.io/library/nginx:1.17"]
    assert seed["files"] and all(f["size"] is None for f in seed["files"])  # none of its pins is cached
    assert seed["boxes"] == [] and seed["packages"] == {}


def test_listing_an_absent_cache_creates_nothing(capfd, env, tmp_path):
    code, out, _ = lab_cache(capfd, env, tmp_path / "none" / "cache", "--json")
    assert code == 0 and json.loads(out)["total"] == 0
    assert not (tmp_path / "none").exists()


# ------------------------------------------------------------------ the round trip


def test_export_then_import_into_an_empty_cache(capfd, env, tmp_path, source, exported):
    manifest = manifest_of(exported)
    assert len(manifest["members"]) == CURRENT_MEMBERS
    empty = tmp_path / "other" / "cache"
    code, _, err = lab_cache(capfd, env, empty, "--import", str(exported))
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[0] == "→ lab.cache --import"
    assert sorted(lines[1:-1]) == sorted(f"  lab.cache --import: {m['path']}: {m['size'] / (1 << 20):.1f} MiB, "
                                         "sha256 checked" for m in manifest["members"])
    assert lines[-1].startswith(f"✓ bundle {exported}: {CURRENT_MEMBERS} members of profile current added")

    listings = []
    for root in (source.root, empty):
        code, out, _ = lab_cache(capfd, env, root, "--json")
        assert code == 0
        listings.append({k: v for k, v in json.loads(out).items() if k != "cache_dir"})
    assert listings[0] == listings[1]
    # the same bytes, and nothing else: no index names the other profile's image, nothing left in tmp/
    imported = snapshot(empty)
    data = {rel: entry for rel, entry in imported.items()
            if entry[0] == "file" and not rel.endswith(".json") and rel != ".lock"}
    assert data == {m["path"]: ("file", 0o644, hashlib.sha256((source.root / m["path"]).read_bytes()).hexdigest())
                    for m in manifest["members"]}
    assert not list((empty / "tmp").iterdir())


def test_export_again_replaces_the_bundle_and_leaves_no_temporary_file(capfd, env, source, exported):
    members = manifest_of(exported)["members"]
    code, _, err = lab_cache(capfd, env, source.root, "--export", str(exported))
    assert code == 0, err
    assert manifest_of(exported)["members"] == members
    assert [p.name for p in exported.parent.iterdir() if p.name.startswith(f".{exported.name}")] == []


# ------------------------------------------------------------------ refused bundles


def one_byte_changed(out: Path, dest: Path) -> None:
    data = bytearray(out.read_bytes())
    box = next(m for m in manifest_of(out)["members"] if m["kind"] == "box")
    with tarfile.open(out) as tar:
        member = tar.getmember("cache/" + box["path"])
    data[member.offset_data + member.size // 2] ^= 0x01
    dest.write_bytes(bytes(data))


def member_missing(out: Path, dest: Path) -> None:
    gone = "cache/" + next(m for m in manifest_of(out)["members"] if m["kind"] == "image")["path"]
    rewrite(out, dest, keep=lambda m: m.name != gone)


def cut_in_a_member(out: Path, dest: Path) -> None:
    with tarfile.open(out) as tar:
        last = tar.getmembers()[-1]
    dest.write_bytes(out.read_bytes()[: last.offset_data + last.size // 2])


def cut_between_members(out: Path, dest: Path) -> None:
    with tarfile.open(out) as tar:
        last = tar.getmembers()[-1]
    dest.write_bytes(out.read_bytes()[: last.offset])


def not_a_bundle(out: Path, dest: Path) -> None:
    dest.write_bytes(hashlib.sha512(b"no tar").digest() * 64)


def another_tar(out: Path, dest: Path) -> None:
    with tarfile.open(dest, "w") as tar:
        tar.add(__file__, arcname="notes.txt")


REFUSALS = [
    ("one-byte-changed", one_byte_changed, "is damaged (its sha256 is "),
    ("member-missing", member_missing, f"is partial or damaged: 1 of its {CURRENT_MEMBERS} members are missing"),
    ("wrong-version", lambda out, dest: rewrite(out, dest, change=lambda m: m.update(version=bundle.VERSION + 1)),
     f"is a bundle of format version {bundle.VERSION + 1}; this lab reads version {bundle.VERSION}"),
    ("cut-in-a-member", cut_in_a_member, "is damaged or cut short"),
    ("cut-between-members", cut_between_members, "is partial or damaged: 1 of its"),
    ("not-a-tar", not_a_bundle, "is not a dslab cache bundle (not a tar archive"),
    ("another-tar", another_tar, f"is not a dslab cache bundle (it does not begin with {bundle.MANIFEST})"),
]


@pytest.mark.parametrize("make, text", [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_a_bad_bundle_is_refused_with_one_line_and_the_cache_unchanged(capfd, env, tmp_path, exported, make, text):
    target = Cache(tmp_path / "target")
    (tmp_path / "mine.tar").write_bytes(b"already cached")
    target.add_image("docker.io/library/busybox:1", DIGEST_A, tmp_path / "mine.tar", producer="docker",
                     profile="current")
    bad = tmp_path / "bad.bundle"
    make(exported, bad)
    before = snapshot(target.root)
    code, out, err = lab_cache(capfd, env, target.root, "--import", str(bad))
    assert code == 2, err
    line = one_failure(err, "lab.cache --import", text)
    assert str(bad) in line and out == ""
    assert snapshot(target.root) == before


def test_a_bad_bundle_into_a_new_cache_dir_creates_nothing(capfd, env, tmp_path, exported):
    bad = tmp_path / "bad.bundle"
    member_missing(exported, bad)
    code, _, err = lab_cache(capfd, env, tmp_path / "new" / "cache", "--import", str(bad))
    assert code == 2
    one_failure(err, "lab.cache --import", "is partial or damaged")
    assert not (tmp_path / "new").exists()


def test_a_bundle_that_is_not_there(capfd, env, tmp_path):
    code, _, err = lab_cache(capfd, env, tmp_path / "cache", "--import", str(tmp_path / "nowhere.bundle"))
    assert code == 2
    one_failure(err, "lab.cache --import", "nowhere.bundle does not exist; give the path of a bundle")
    assert not (tmp_path / "cache").exists()


# ------------------------------------------------------------------ prune, and the command line


def test_prune_removes_what_no_profile_uses(capfd, env, source):
    stray = source.root / "files" / "sha256" / ("0" * 64)
    stray.write_bytes(b"an old pin")
    stale = source.directory("tmp") / "left-behind"
    stale.write_bytes(b"partial")
    os.utime(stale, (1, 1))
    kept = {rel: entry for rel, entry in snapshot(source.root).items() if rel not in ("files/sha256/" + "0" * 64,
                                                                                      "tmp/left-behind")}
    code, out, err = lab_cache(capfd, env, source.root, "--prune")
    assert code == 0, err
    assert sorted(out.splitlines()) == [f"removed files/sha256/{'0' * 64} ({size_text(10)})",
                                        f"removed tmp/left-behind ({size_text(7)})"]
    assert err.splitlines()[-1].startswith(f"✓ pruned 2 entries from {source.root}, {size_text(17)} freed")
    assert {rel: e for rel, e in snapshot(source.root).items() if e[0] == "file"} == {
        rel: e for rel, e in kept.items() if e[0] == "file"}
    code, out, err = lab_cache(capfd, env, source.root, "--prune")
    assert code == 0 and out == "" and "✓ pruned 0 entries" in err


TWO_AT_ONCE = [
    (("--export", "a.bundle", "--import", "b.bundle"), "--export and --import cannot be given together"),
    (("--export", "a.bundle", "--prune"), "--export and --prune cannot be given together"),
    (("--import", "b.bundle", "--prune"), "--import and --prune cannot be given together"),
    (("--prune", "--json"), "--prune and --json cannot be given together"),
    (("--export", ""), "lab.cache --export: give the path of the bundle file"),
    (("--import", "b.bundle", "--profile", "seed-2020"), "the bundle names its profile; drop --profile"),
    (("--profile", "tomorrow"), "lab.profile: "),
]


@pytest.mark.parametrize("args, text", TWO_AT_ONCE, ids=[" ".join(a) or "empty" for a, _ in TWO_AT_ONCE])
def test_bad_command_lines_are_one_line_and_touch_nothing(capfd, env, tmp_path, args, text):
    code, out, err = lab_cache(capfd, env, tmp_path / "cache", *args)
    assert code == 2 and out == ""
    assert one_line(err, text).startswith("lab")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "elsewhere" / "a.bundle").exists()


# ------------------------------------------------------------------ a cache directory that cannot be written

ACTIONS = [("list",), ("--prune",), ("--export", "out.bundle"), ("--import", "in.bundle")]


@contextlib.contextmanager
def mounted(path: Path, options: str):
    """A tmpfs at ``path`` (made for the test), unmounted afterwards; skipped where mounting is not permitted."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        why = proc.stderr.lower()
        if any(text in why for text in ("permission denied", "not permitted", "must be superuser")):
            pytest.skip(f"mount is not permitted here: {proc.stderr.strip()}")
        raise AssertionError(proc.stderr)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def refused_everywhere(capfd, env, tmp_path, exported, cache_dir: Path, text: str, watch: Path):
    """Every action refuses ``cache_dir`` with one line naming lab.cache_dir; nothing under ``watch`` changes."""
    (tmp_path / "elsewhere" / "in.bundle").write_bytes(exported.read_bytes())
    before = snapshot(watch)
    for action in ACTIONS:
        code, out, err = lab_cache(capfd, env, cache_dir, *[a for a in action if a != "list"])
        assert code == 2, (action, err)
        assert one_line(err, text).startswith("lab.cache_dir: "), action
        assert out == ""
        assert snapshot(watch) == before, action
        assert not (tmp_path / "elsewhere" / "out.bundle").exists()


def test_cache_dir_below_a_file(capfd, env, tmp_path, exported):
    """A path below a regular file fails for every user, root included."""
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"a file")
    refused_everywhere(capfd, env, tmp_path, exported, blocker / "cache", f"lies under {blocker}, which is a file",
                       blocker)


@pytest.mark.parametrize("existing", [False, True], ids=["to-be-made", "existing"])
def test_cache_dir_not_writable(capfd, env, tmp_path, exported, existing):
    """A read-only tmpfs as root (a mode does not stop root), a directory of mode 0500 otherwise."""
    parent = tmp_path / "locked"
    parent.mkdir()
    cache_dir = parent if existing else parent / "cache"
    text = "is not writable; give a directory you can write" if existing else f"cannot be created: {parent} is not " \
                                                                                "writable"
    if os.geteuid() == 0:
        with mounted(parent, "ro,size=64k"):
            refused_everywhere(capfd, env, tmp_path, exported, cache_dir, text, parent)
    else:
        parent.chmod(0o500)
        try:
            refused_everywhere(capfd, env, tmp_path, exported, cache_dir, text, parent)
        finally:
            parent.chmod(0o700)


# ------------------------------------------------------------------ a full disk while exporting


def big(source: Cache, tmp_path: Path) -> None:
    """One more image, larger than the small filesystems of these tests."""
    (tmp_path / "big.tar").write_bytes(os.urandom(256 * 1024))
    source.add_image("docker.io/library/big:1", "sha256:" + "c" * 64, tmp_path / "big.tar", producer="docker",
                     profile="current")


def full_disk_export(capfd, env, source: Cache, out: Path) -> None:
    """Export onto a disk that fills up: one ✗ line, exit 1, the bundle already there kept, no partial file
    left, the cache unchanged."""
    out.write_bytes(b"the bundle of yesterday")
    before_cache, before_dir = snapshot(source.root), snapshot(out.parent)
    code, stdout, err = lab_cache(capfd, env, source.root, "--export", str(out))
    assert code == 1, err
    line = one_failure(err, "lab.cache --export", f"lab.cache --export: cannot write {out} (no space left)")
    assert "free space there or give another FILE (nothing was written)" in line and stdout == ""
    assert snapshot(out.parent) == before_dir  # the older bundle as it was, no partial one beside it
    assert snapshot(source.root) == before_cache


def test_full_disk_while_exporting_on_a_small_filesystem(capfd, env, tmp_path, source):
    big(source, tmp_path)
    small = tmp_path / "small"
    small.mkdir()
    with mounted(small, "size=64k"):
        full_disk_export(capfd, env, source, small / "current.bundle")


class FillsUp:
    """A file that takes ``room`` bytes, then fails as a full disk does (writing what still fits)."""

    def __init__(self, real, room: int):
        self.real, self.room, self.written = real, room, 0

    def write(self, data) -> int:
        if self.written + len(data) > self.room:
            self.real.write(data[: self.room - self.written])
            self.written = self.room
            self.real.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(data)
        return self.real.write(data)

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.real.close()


def test_full_disk_while_exporting_anywhere(capfd, env, tmp_path, source, monkeypatch):
    big(source, tmp_path)
    real = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: FillsUp(real(fd, mode, *a, **k), 50_000)
                        if mode == "wb" else real(fd, mode, *a, **k))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    full_disk_export(capfd, env, source, out_dir / "current.bundle")


def test_export_to_a_directory_that_is_not_there(capfd, env, tmp_path, source):
    before = snapshot(source.root)
    code, _, err = lab_cache(capfd, env, source.root, "--export", str(tmp_path / "nowhere" / "b.bundle"))
    assert code == 2
    one_failure(err, "lab.cache --export", "give a FILE in a directory you can write (nothing was written)")
    assert snapshot(source.root) == before and not (tmp_path / "nowhere").exists()


# ------------------------------------------------------------------ progress


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


RATE = re.compile(r"[0-9]+\.[0-9] MiB/[0-9]+\.[0-9] MiB \([0-9]+%\) at [0-9]+\.[0-9] MiB/s")


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "log"])
def test_bytes_and_rate_on_a_terminal_one_line_per_item_elsewhere(tmp_path, source, terminal):
    stream = FakeTTY() if terminal else io.StringIO()
    progress = Progress(stream, env={"TERM": "xterm"}, animate=False)
    copying = CopyProgress(progress)
    progress.start("lab.cache --export")
    manifest = bundle.export(source, tmp_path / "b.bundle", "current", progress=copying, report=copying.line)
    progress.done("exported")
    text = stream.getvalue()
    items = [f"{m['path']}: {m['size'] / (1 << 20):.1f} MiB" for m in manifest["members"]]
    if terminal:
        drawn = [part for part in text.split(CLEAR_LINE) if part and "\n" not in part]
        assert any(RATE.search(part) for part in drawn)   # bytes and rate, redrawn in place
        assert text.count("\n") == 1                        # the one line is the step's ✓
    else:
        assert not RATE.search(text)
        assert text.splitlines() == ["→ lab.cache --export", *(f"  lab.cache --export: {i}" for i in items),
                                     "✓ exported (0 s)"]
