"""One file that carries a profile's cache to another host: ``lab.cache --export`` / ``--import``.

A bundle is an uncompressed tar (images and boxes are compressed already), written and read
as a stream. Its first member is ``manifest.json``: the format and its version, the profile,
and every other member with its sha256 and size, plus the index records the cache keeps for
it. The members follow under ``cache/``, each at the path it has in the cache.

Import checks everything before it changes the cache: every member is copied into a
directory under the cache's ``tmp/`` (the same filesystem) and checked against the manifest
as it arrives; only when all are there and right are they renamed into place and the indexes
merged. A damaged, partial or wrong-version bundle is refused with one line, and the cache is
as it was. Members are never extracted by name: each is written to the path its manifest record
gives (checked against :data:`PATHS`), and a member that is not a regular file, or whose name is
absolute or climbs out with ``..``, refuses the bundle.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

from .cache import CHUNK, PROGRESS_EVERY_S, Cache, Progress, file_key, mib, pinned_downloads
from .cache_entries import BOX_NAME, DIGEST, IMAGE_REF, OS_ID, PACKAGE_PATH, PRODUCERS, BoxEntry, ImageEntry
from .errors import LabError
from .profiles import PROFILES
from .settings import shown

FORMAT = "dslab-cache-bundle"
VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_MAX = 64 << 20
PREFIX = "cache/"
RUNTIMES = ("docker", "containerd")
HEX64 = re.compile(r"[0-9a-f]{64}")
#: Where a member may go in the cache, by kind.
PATHS = {
    "file": re.compile(r"files/(sha256/[0-9a-f]{64}|sha512/[0-9a-f]{128})"),
    "image": re.compile(r"images/[A-Za-z0-9._%@-]{1,400}\.tar"),
    "package": re.compile(r"packages/[a-z][a-z0-9.-]{0,31}/.+"),
    "box": re.compile(r"boxes/[A-Za-z0-9._+-]{1,300}\.box"),
}


class BundleError(LabError):
    """A bundle cannot be written (a full disk, a damaged cache entry); the one line says what is wrong."""


class BundleRefused(BundleError):
    """The FILE given is refused: a bundle that is damaged, partial, of another version or no bundle at
    all, or a path that cannot be read or written. The command line has to change, not the host."""


class _Hashing:
    """A file read for tarfile, hashed and reported (every :data:`PROGRESS_EVERY_S`) as it goes."""

    def __init__(self, path: Path, item: str, size: int, progress: Optional[Progress], clock):
        self.handle = open(path, "rb")
        self.digest = hashlib.sha256()
        self.item, self.size, self.progress, self.clock = item, size, progress, clock
        self.done, self.started = 0, clock()
        self.last = self.started

    def read(self, n: int = -1) -> bytes:
        chunk = self.handle.read(n)
        self.digest.update(chunk)
        self.done += len(chunk)
        now = self.clock()
        if self.progress is not None and (now - self.last >= PROGRESS_EVERY_S or self.done == self.size):
            self.progress(self.item, self.done, self.size, self.done / max(now - self.started, 1e-9))
            self.last = now
        return chunk


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def members(cache: Cache, profile: str) -> List[dict]:
    """The manifest records of everything the cache holds for ``profile``."""
    found = []
    for _, download in pinned_downloads(PROFILES[profile]):
        path = cache.file_path(download)
        if path.is_file():
            key = file_key(download)
            sum_ = key.split("/")[1] if key.startswith("sha256/") else _sha256(path)
            found.append({"kind": "file", "path": f"files/{key}", "sha256": sum_, "size": path.stat().st_size})
    for entry in cache.images(profile):
        found.append({"kind": "image", "path": f"images/{entry.file}", "sha256": entry.sha256, "size": entry.size,
                      "record": {"ref": entry.ref, "digest": entry.digest, "producer": entry.producer}})
    for os_id, rels in cache.packages(profile).items():
        for rel, size in rels:
            found.append({"kind": "package", "path": f"packages/{os_id}/{rel}", "size": size,
                          "sha256": _sha256(cache.package_path(os_id, rel))})
    for box in cache.boxes(profile):
        found.append({"kind": "box", "path": f"boxes/{box.file}", "sha256": box.sha256, "size": box.size,
                      "record": {"name": box.name, "runtime": box.runtime}})
    return found


def export(cache: Cache, out_file, profile: str, *, progress: Optional[Progress] = None,
           report=None, clock=time.monotonic) -> dict:
    """Write the bundle of ``profile`` to ``out_file`` (replaced only once complete); return its manifest."""
    report = report or (lambda line: None)
    out = Path(os.path.abspath(out_file))
    if out.is_dir():
        raise BundleRefused(f"lab.cache --export: {out} is a directory; give the path of the bundle FILE to write")
    manifest = {"format": FORMAT, "version": VERSION, "profile": profile,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "members": members(cache, profile),
                "needed": {f"{profile}/{rt}": cache.needed(profile, rt) for rt in RUNTIMES
                           if cache.needed(profile, rt) is not None},
                "collections": {os_id: [rel for rel, _ in rels] for os_id, rels in cache.packages(profile).items()}}
    data = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    try:
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    except OSError as exc:
        raise _write_error(out, exc) from None
    try:
        with os.fdopen(fd, "wb") as handle, tarfile.open(fileobj=handle, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tar.addfile(info, _Bytes(data))
            for record in manifest["members"]:
                path = cache.root / record["path"]
                if not path.is_file() or path.stat().st_size != record["size"]:
                    raise BundleError(f"lab.cache --export: the cached {record['path']} changed or vanished while "
                                      "the bundle was written (another run is using the cache?); export again")
                info = tarfile.TarInfo(PREFIX + record["path"])
                info.size, info.mode, info.mtime = record["size"], 0o644, int(path.stat().st_mtime)
                source = _Hashing(path, record["path"], record["size"], progress, clock)
                with source.handle:
                    tar.addfile(info, source)
                if source.digest.hexdigest() != record["sha256"]:
                    raise BundleError(f"lab.cache --export: the cached {record['path']} is damaged (its sha256 is not "
                                      "the one the cache recorded); run `invoke lab.cache --prune` and fetch it again")
                report(f"{record['path']}: {mib(record['size'])}")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, out)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _write_error(out, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return manifest


def _write_error(out: Path, exc: OSError) -> BundleError:
    """One line for a bundle FILE that cannot be written: a full disk, or a path that cannot take it."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return BundleError(f"lab.cache --export: cannot write {out} (no space left); free space there or give "
                           "another FILE (nothing was written)")
    return BundleRefused(f"lab.cache --export: cannot write {out} ({exc.strerror or exc}); give a FILE in a "
                         "directory you can write (nothing was written)")


class _Bytes:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        chunk, self.pos = self.data[self.pos:end], min(end, len(self.data))
        return chunk


def _check_manifest(manifest, where: str) -> List[dict]:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleRefused(f"{where} is not a dslab cache bundle (its manifest.json names no {FORMAT})")
    if manifest.get("version") != VERSION:
        raise BundleRefused(f"{where} is a bundle of format version {shown(manifest.get('version'))}; this lab reads "
                            f"version {VERSION}: export it again with this version of the lab")
    if manifest.get("profile") not in PROFILES:
        raise BundleRefused(f"{where} is a bundle of profile {shown(manifest.get('profile'))}, which this lab does not know")
    records, seen = manifest.get("members"), set()
    if not isinstance(records, list):
        raise BundleRefused(f"{where}: its manifest lists no members")
    for record in records:
        if not _valid(record) or record["path"] in seen:
            raise BundleRefused(f"{where}: its manifest has a damaged member record ({json.dumps(record)[:120]})")
        seen.add(record["path"])
    return records


def _valid(record) -> bool:
    if not isinstance(record, dict) or record.get("kind") not in PATHS or not isinstance(record.get("path"), str):
        return False
    if not PATHS[record["kind"]].fullmatch(record["path"]) or not HEX64.fullmatch(str(record.get("sha256"))):
        return False
    if not isinstance(record.get("size"), int) or isinstance(record["size"], bool) or record["size"] < 0:
        return False
    if record["path"].startswith("files/sha256/") and record["path"][13:] != record["sha256"]:
        return False
    extra = record.get("record") if record["kind"] in ("image", "box") else {}
    if not isinstance(extra, dict):
        return False
    if record["kind"] == "image":
        return (IMAGE_REF.fullmatch(str(extra.get("ref"))) is not None and DIGEST.fullmatch(str(extra.get("digest")))
                is not None and extra.get("producer") in PRODUCERS)
    if record["kind"] == "package":
        os_id, _, rel = record["path"][len("packages/"):].partition("/")
        return OS_ID.fullmatch(os_id) is not None and PACKAGE_PATH.fullmatch(rel) is not None and ".." not in rel.split("/")
    if record["kind"] == "box":
        return BOX_NAME.fullmatch(str(extra.get("name"))) is not None and isinstance(extra.get("runtime", ""), str)
    return True


def _named(name: str) -> str:
    """A member's name for a message: as it is when printable, else quoted; one line, at most 300 characters."""
    return name if name.isprintable() and len(name) <= 300 else repr(name[:300])


#: What a tar member that is not a regular file is, by type.
_NOT_FILES = ((tarfile.TarInfo.issym, "a symbolic link"), (tarfile.TarInfo.islnk, "a hard link"),
              (tarfile.TarInfo.isdir, "a directory"), (tarfile.TarInfo.ischr, "a character device"),
              (tarfile.TarInfo.isblk, "a block device"), (tarfile.TarInfo.isfifo, "a FIFO"))


def _member_problem(member: tarfile.TarInfo, record: Optional[dict], arrived) -> Optional[str]:
    """Why ``member`` (``record``: its manifest entry, if any) refuses the bundle, or None."""
    name = _named(member.name)
    if member.name.startswith("/") or ".." in member.name.split("/"):
        return f"its member {name} points outside the bundle"
    if not member.isreg():
        kind = next((what for test, what in _NOT_FILES if test(member)), "not a regular file")
        return f"its member {name} is {kind}, not a regular file"
    if record is None or member.name in arrived:
        return f"{name} is not in its manifest (or comes twice); the bundle is damaged"
    if member.size != record["size"]:
        return f"{name} is damaged ({member.size} bytes, the manifest says {record['size']})"
    return None


def _receive(cache: Cache, tar: tarfile.TarFile, where: str, records: List[dict], staging: Path,
             progress: Optional[Progress], report, clock) -> None:
    wanted: Dict[str, dict] = {PREFIX + r["path"]: r for r in records}
    arrived = set()
    while True:
        member = tar.next()  # not `for member in tar`: that yields the manifest, read already, again
        if member is None:
            break
        record = wanted.get(member.name)
        problem = _member_problem(member, record, arrived)
        if problem:
            raise BundleRefused(f"{where}: {problem}; nothing was imported")
        source = tar.extractfile(member)
        digest, sha512 = hashlib.sha256(), hashlib.sha512()
        check512 = record["path"].startswith("files/sha512/")
        done, started = 0, clock()
        last = started
        try:
            target = staging / record["path"]  # the record's path, checked against PATHS; never the member's name
            target.parent.mkdir(parents=True, exist_ok=True)
            handle = open(target, "xb")
        except OSError as exc:
            raise cache.error(exc, f"the bundle's {record['path']}") from None
        with handle:
            while True:
                chunk = source.read(CHUNK)  # a read error is the bundle's (tarfile.TarError, OSError: see import_)
                if not chunk:
                    break
                try:
                    handle.write(chunk)
                except OSError as exc:
                    raise cache.error(exc, f"the bundle's {record['path']}") from None
                digest.update(chunk)
                if check512:
                    sha512.update(chunk)
                done += len(chunk)
                now = clock()
                if progress is not None and (now - last >= PROGRESS_EVERY_S or done == record["size"]):
                    progress(record["path"], done, record["size"], done / max(now - started, 1e-9))
                    last = now
        if digest.hexdigest() != record["sha256"] or (check512 and sha512.hexdigest() != record["path"][13:]):
            raise BundleRefused(f"{where}: {_named(member.name)} is damaged (its sha256 is {digest.hexdigest()}, the "
                                f"manifest says {record['sha256']}); nothing was imported")
        arrived.add(member.name)
        report(f"{record['path']}: {mib(record['size'])}, sha256 checked")
    missing = [name for name in wanted if name not in arrived]
    if missing:
        raise BundleRefused(f"{where} is partial or damaged: {len(missing)} of its {len(wanted)} members are "
                            f"missing, first {_named(missing[0])}; nothing was imported")


def _open_tar(raw, where: str) -> tarfile.TarFile:
    """The bundle read as an uncompressed tar stream (opening it reads its first header)."""
    try:
        return tarfile.open(fileobj=raw, mode="r|")
    except (tarfile.TarError, EOFError) as exc:
        raise BundleRefused(f"{where} is not a dslab cache bundle (not a tar archive: {exc}); give a file "
                            "`invoke lab.cache --export` wrote") from None


def _read_manifest(tar: tarfile.TarFile, where: str) -> dict:
    first = tar.next()
    if first is None or first.name != MANIFEST or not first.isreg():
        raise BundleRefused(f"{where} is not a dslab cache bundle (it does not begin with {MANIFEST})")
    if first.size > MANIFEST_MAX:
        raise BundleRefused(f"{where} is refused: its {MANIFEST} is {mib(first.size)}, more than a manifest can be "
                            f"({mib(MANIFEST_MAX)})")
    try:
        return json.loads(tar.extractfile(first).read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise BundleRefused(f"{where} is damaged (its {MANIFEST} is not JSON)") from None


def _missing_dirs(path: Path) -> List[Path]:
    """``path`` and those of its parents that do not exist yet, innermost first."""
    found = []
    while not path.exists() and path != path.parent:
        found.append(path)
        path = path.parent
    return found


def import_(cache: Cache, file, *, progress: Optional[Progress] = None, report=None, clock=time.monotonic) -> dict:
    """Check the bundle ``file`` whole, then add its members to the cache; return its manifest.
    ``report`` gets one line per member checked.

    Raises :class:`BundleRefused` (one line) for a damaged, partial, wrong-version or foreign bundle,
    and :class:`~lab.cache.CacheError` when the cache cannot take it; the cache is as it was then
    (directories the import made for it are removed again).
    """
    report = report or (lambda line: None)
    where = f"bundle {file}"
    made, staging = _missing_dirs(cache.root / "tmp"), None
    try:
        try:
            staging = Path(tempfile.mkdtemp(prefix="import-", dir=cache.directory("tmp")))
        except OSError as exc:
            raise cache.error(exc, "the bundle") from None
        try:
            with open(file, "rb") as raw:
                tar = _open_tar(raw, where)
                with tar:
                    manifest = _read_manifest(tar, where)
                    records = _check_manifest(manifest, where)
                    _receive(cache, tar, where, records, staging, progress, report, clock)
        except FileNotFoundError:
            raise BundleRefused(f"lab.cache --import: {file} does not exist; give the path of a bundle") from None
        except IsADirectoryError:
            raise BundleRefused(f"lab.cache --import: {file} is a directory; give the path of a bundle") from None
        except (tarfile.TarError, EOFError) as exc:
            raise BundleRefused(f"{where} is damaged or cut short ({exc}); copy it again (nothing was "
                                "imported)") from None
        except OSError as exc:
            raise BundleRefused(f"lab.cache --import: cannot read {file} ({exc.strerror or exc})") from None
        _apply(cache, manifest, records, staging)
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for path in made:  # innermost first; a directory something else put an entry in stays
            try:
                path.rmdir()
            except OSError:
                break
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _merged_indexes(cache: Cache, manifest: dict, records: List[dict]) -> Dict[str, dict]:
    """cache-relative path -> the new content of every index the import changes."""
    profile, now = manifest["profile"], time.time()
    images, boxes = cache.image_index(), cache.box_index()  # a damaged index refuses before any change
    for record in records:
        name, extra = record["path"].split("/", 1)[1], record.get("record", {})
        if record["kind"] == "image":
            old = next((e for e in images["images"] if e["ref"] == extra["ref"] and e["digest"] == extra["digest"]), None)
            entry = ImageEntry(extra["ref"], extra["digest"], name, record["size"], record["sha256"], extra["producer"],
                               tuple(sorted({profile, *(old or {}).get("profiles", ())})), now)
            images["images"] = [e for e in images["images"] if e is not old] + [
                {**entry.__dict__, "profiles": list(entry.profiles)}]
        elif record["kind"] == "box":
            entry = BoxEntry(extra["name"], name, record["size"], record["sha256"], profile, extra.get("runtime", ""), now)
            boxes["boxes"] = [b for b in boxes["boxes"] if b["name"] != entry.name] + [dict(entry.__dict__)]
    changed = {"images/index.json": images, "boxes/index.json": boxes}
    needed = cache.read_index(cache.root / "images" / "needed.json", {"version": VERSION, "needed": {}})
    for key, refs in (manifest.get("needed") or {}).items():
        prof, _, runtime = key.partition("/")
        if prof == profile and runtime in RUNTIMES and isinstance(refs, list):
            needed["needed"][key] = sorted({r for r in refs if isinstance(r, str) and IMAGE_REF.fullmatch(r)})
    changed["images/needed.json"] = needed
    arrived = {r["path"] for r in records if r["kind"] == "package"}
    for os_id, rels in (manifest.get("collections") or {}).items():
        if OS_ID.fullmatch(str(os_id)) and isinstance(rels, list):
            path = f"packages/{os_id}/index.json"
            index = cache.read_index(cache.root / path, {"version": VERSION, "collections": {}})
            index["collections"][profile] = sorted({r for r in rels if isinstance(r, str)
                                                    and f"packages/{os_id}/{r}" in arrived})
            changed[path] = index
    return changed


def _apply(cache: Cache, manifest: dict, records: List[dict], staging: Path) -> None:
    """Write the merged indexes beside the checked members, then rename all of them into the cache.

    Everything that needs space is written before the first rename, so a full disk leaves the
    cache as it was; renames within one filesystem need none.
    """
    with cache.locked():
        indexes = _merged_indexes(cache, manifest, records)
        moves = [record["path"] for record in records]
        for rel, data in indexes.items():
            try:
                (staging / "index" / rel).parent.mkdir(parents=True, exist_ok=True)
                with open(staging / "index" / rel, "wb") as handle:
                    handle.write((json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError as exc:
                raise cache.error(exc, rel) from None
        try:
            for rel in [*moves, *(f"index/{r}" for r in indexes)]:
                target = cache.root / (rel[len("index/"):] if rel.startswith("index/") else rel)
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                os.chmod(staging / rel, 0o644)
                os.replace(staging / rel, target)
        except OSError as exc:
            raise cache.error(exc, rel) from None
