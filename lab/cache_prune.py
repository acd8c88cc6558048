"""What the cache holds per profile (``lab.cache``), and what ``lab.cache --prune`` removes.

``prune`` keeps exactly what a lab of some profile of :data:`lab.profiles.PROFILES` can use,
and removes the rest:

- ``files/``: every file that is not a pinned download (by its sum) of some profile;
- ``images/``: entries of no known profile, and for one reference made by one runtime all but
  the newest (a tag that moved leaves its old image behind); tarballs no entry names;
- ``packages/``: the collections of unknown profiles, and package files no collection names
  (each lab's collection replaces the previous one of its profile);
- ``boxes/``: boxes of unknown profiles, and box files no entry names;
- ``tmp/``: what a run left there more than :data:`TMP_STALE_S` ago (a younger file may be
  another run's write in progress).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import List, Tuple

from .cache import Cache, download_name, file_key, pinned_downloads
from .profiles import PROFILES

TMP_STALE_S = 3600


def listing(cache: Cache, profile: str) -> dict:
    """Files, images, packages and boxes the cache holds for ``profile``, with sizes in bytes
    (a pinned file not in the cache has ``size`` None)."""
    files = []
    for step, download in pinned_downloads(PROFILES[profile]):
        path = cache.file_path(download)
        files.append({"name": download_name(download), "step": step, "key": file_key(download),
                      "size": path.stat().st_size if path.is_file() else None})
    images = [{"ref": e.ref, "digest": e.digest, "producer": e.producer, "size": e.size}
              for e in cache.images(profile)]
    packages = {os_id: [{"path": rel, "size": size} for rel, size in rels]
                for os_id, rels in cache.packages(profile).items() if rels}
    boxes = [{"name": b.name, "runtime": b.runtime, "size": b.size} for b in cache.boxes(profile)]
    total = (sum(f["size"] or 0 for f in files) + sum(i["size"] for i in images) + sum(b["size"] for b in boxes)
             + sum(p["size"] for rels in packages.values() for p in rels))
    return {"profile": profile, "cache_dir": str(cache.root), "files": files, "images": images,
            "packages": packages, "boxes": boxes, "total": total}


def _size(path: Path) -> int:
    if path.is_dir() and not path.is_symlink():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    return path.lstat().st_size


def _remove(cache: Cache, path: Path, removed: List[Tuple[str, int]]) -> None:
    size = _size(path)
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError as exc:
        raise cache.error(exc, str(path)) from None
    removed.append((str(path.relative_to(cache.root)), size))


def _prune_files(cache: Cache, removed) -> None:
    pinned = {file_key(d) for p in PROFILES.values() for _, d in pinned_downloads(p)}
    base = cache.root / "files"
    for path in sorted(base.glob("*/*")) + sorted(p for p in base.glob("*") if not p.is_dir()):
        if f"{path.parent.name}/{path.name}" not in pinned or not path.is_file() or path.parent.parent != base:
            _remove(cache, path, removed)


def _prune_images(cache: Cache, removed) -> None:
    path = cache.root / "images" / "index.json"
    data = cache.image_index()
    keep, seen = {}, set()
    for at, record in sorted(enumerate(data["images"]), key=lambda item: -item[1].get("added", 0)):
        profiles = [p for p in record.get("profiles", ()) if p in PROFILES]
        key = (record["ref"], record["producer"])
        if profiles and key not in seen and (cache.root / "images" / record["file"]).is_file():
            seen.add(key)
            keep[at] = {**record, "profiles": profiles}
    kept = [keep[at] for at in sorted(keep)]  # in the index's order: an index with nothing to prune is not rewritten
    if kept != data["images"]:
        cache.write_index(path, {**data, "images": kept})
    files = {r["file"] for r in kept}
    for tar in sorted((cache.root / "images").glob("*.tar")):
        if tar.name not in files:
            _remove(cache, tar, removed)
    needed_path = cache.root / "images" / "needed.json"
    needed = cache.read_index(needed_path, {"needed": {}})
    known = {k: v for k, v in needed["needed"].items() if k.split("/")[0] in PROFILES}
    if known != needed["needed"]:
        cache.write_index(needed_path, {**needed, "needed": known})


def _prune_packages(cache: Cache, removed) -> None:
    for index in sorted((cache.root / "packages").glob("*/index.json")):
        data = cache.read_index(index, {"collections": {}})
        collections = {p: rels for p, rels in data["collections"].items() if p in PROFILES}
        if collections != data["collections"]:
            cache.write_index(index, {**data, "collections": collections})
        keep = {rel for rels in collections.values() for rel in rels}
        base = index.parent
        for path in sorted(base.rglob("*"), key=lambda p: -len(p.parts)):
            rel = path.relative_to(base).as_posix()
            if path == index:
                continue
            if path.is_dir() and not path.is_symlink():
                if not any(path.iterdir()):
                    path.rmdir()
            elif rel not in keep:
                _remove(cache, path, removed)


def _prune_boxes(cache: Cache, removed) -> None:
    path = cache.root / "boxes" / "index.json"
    data = cache.box_index()
    kept = [b for b in data["boxes"] if b["profile"] in PROFILES and (cache.root / "boxes" / b["file"]).is_file()]
    if kept != data["boxes"]:
        cache.write_index(path, {**data, "boxes": kept})
    files = {b["file"] for b in kept}
    for box in sorted((cache.root / "boxes").glob("*.box")):
        if box.name not in files:
            _remove(cache, box, removed)


def prune(cache: Cache) -> List[Tuple[str, int]]:
    """Remove what no profile pins or uses (see the module's docstring); (path, size) of each removal."""
    removed: List[Tuple[str, int]] = []
    if not cache.root.is_dir():
        return removed
    with cache.locked():
        _prune_files(cache, removed)
        _prune_images(cache, removed)
        _prune_packages(cache, removed)
        _prune_boxes(cache, removed)
        now = time.time()
        for path in sorted((cache.root / "tmp").glob("*")):
            if now - os.lstat(path).st_mtime > TMP_STALE_S:
                _remove(cache, path, removed)
    return removed
