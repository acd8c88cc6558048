"""The cache's container images, OS packages and boxes: the parts of :class:`lab.cache.Cache`
with an index each (``images/index.json``, ``packages/<os-id>/index.json``, ``boxes/index.json``).

:class:`EntriesMixin` is mixed into :class:`~lab.cache.Cache`, whose safe writes (``put``,
``staged``), lock and index files it uses.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Dict, List, Optional, Tuple, Union
from urllib.parse import quote

from .profiles import PROFILES

INDEX_VERSION = 1
#: ``progress(item, bytes_done, bytes_total_or_None, bytes_per_second)``, called while a long copy runs.
Progress = Callable[[str, int, Optional[int], float], None]
#: ``report(line)``: one line per item (fetched, taken from the cache, exported...).
Report = Callable[[str], None]
#: What is copied into the cache: a file, or a binary stream read to its end.
Source = Union[Path, BinaryIO]
#: A reference the cache keeps an image under (registry/path:tag or @digest), and its digest.
IMAGE_REF = re.compile(r"[a-z0-9][a-z0-9._/-]{0,254}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
OS_ID = re.compile(r"[a-z][a-z0-9.-]{0,31}")
#: A kept package: up to three path components of package-file characters, ending .rpm or .deb.
PACKAGE_PATH = re.compile(r"([A-Za-z0-9_+~%:][A-Za-z0-9._+~%:-]{0,200}/){0,2}[A-Za-z0-9_+~%:][A-Za-z0-9._+~%:-]{0,200}\.(rpm|deb)")
BOX_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}(/[A-Za-z0-9][A-Za-z0-9._-]{0,99})?")
#: What made an image tarball: ``docker save`` or ``ctr images export``.
PRODUCERS = ("docker", "containerd")


@dataclass(frozen=True)
class ImageEntry:
    """An image tarball in the cache."""

    ref: str
    digest: str
    file: str
    size: int
    sha256: str
    producer: str
    profiles: Tuple[str, ...] = ()
    added: float = 0.0


@dataclass(frozen=True)
class BoxEntry:
    """A box in the cache."""

    name: str
    file: str
    size: int
    sha256: str
    profile: str
    runtime: str = ""
    added: float = 0.0


class EntriesMixin:
    """Images, packages and boxes of the cache (mixed into :class:`lab.cache.Cache`)."""

    # ------------------------------------------------------------------ images

    def _index(self, path: Path, key: str, kind) -> dict:
        """The index at ``path``; every record of its ``key`` list a valid ``kind`` (else one line)."""
        data = self.read_index(path, {"version": INDEX_VERSION, key: []})
        records = data.get(key)
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            records = [None]
        for record in records:
            self.entry(kind, record, path)
        return data

    def image_index(self) -> dict:
        """``images/index.json``, every record checked."""
        return self._index(self.root / "images" / "index.json", "images", ImageEntry)

    def images(self, profile: Optional[str] = None) -> List[ImageEntry]:
        """The cached images (of ``profile`` only, when given), newest first."""
        path = self.root / "images" / "index.json"
        entries = [self.entry(ImageEntry, e, path) for e in self.image_index()["images"]]
        entries = [e for e in entries if profile is None or profile in e.profiles]
        return sorted(entries, key=lambda e: -e.added)

    def lookup(self, ref: str, producer: Optional[str] = None) -> Optional[ImageEntry]:
        """The newest cached image of ``ref`` (made by ``producer``, when given), or None."""
        return next((e for e in self.images() if e.ref == ref and producer in (None, e.producer)), None)

    def image_path(self, entry: ImageEntry) -> Path:
        """The tarball of ``entry``."""
        return self.root / "images" / entry.file

    def add_image(self, ref: str, digest: str, source: Source, *, producer: str, profile: str,
                  sha256: Optional[str] = None, size: Optional[int] = None,
                  progress: Optional[Progress] = None) -> ImageEntry:
        """Keep the tarball ``source`` of image ``ref`` (``digest`` as its runtime reports it),
        checked against ``sha256`` and ``size`` when given; record it for ``profile``."""
        if not IMAGE_REF.fullmatch(ref) or not DIGEST.fullmatch(digest) or producer not in PRODUCERS:
            raise ValueError(f"not an image the cache keeps: {ref!r} {digest!r} ({producer})")
        file = f"{quote(ref, safe='._-')}@{digest.replace(':', '-')}.tar"
        got, sum_ = self.put(self.directory("images") / file, source, ref, progress=progress, sha256=sha256, size=size)
        with self.locked():
            data = self.image_index()
            old = next((e for e in data["images"] if e["ref"] == ref and e["digest"] == digest), None)
            profiles = sorted({profile, *(old or {}).get("profiles", ())})
            entry = {"ref": ref, "digest": digest, "file": file, "size": got, "sha256": sum_, "producer": producer,
                     "profiles": profiles, "added": time.time()}
            data["images"] = [e for e in data["images"] if e is not old] + [entry]
            self.write_index(self.root / "images" / "index.json", data)
        return ImageEntry(**{**entry, "profiles": tuple(profiles)})

    def share_image(self, ref: str, digest: str, producer: str, profile: str) -> bool:
        """Record the cached image ``ref`` (``digest``, made by ``producer``) for ``profile`` too (an
        image two profiles use is kept once, and loaded and bundled for both); True when it changed."""
        with self.locked():
            data = self.image_index()
            old = next((e for e in data["images"] if e["ref"] == ref and e["digest"] == digest
                        and e["producer"] == producer), None)
            if old is None or profile in old.get("profiles", ()):
                return False
            old["profiles"] = sorted({profile, *old.get("profiles", ())})
            self.write_index(self.root / "images" / "index.json", data)
        return True

    def record_needed(self, profile: str, runtime: str, refs) -> None:
        """Remember the images a lab of ``profile`` and ``runtime`` had on its nodes."""
        path = self.root / "images" / "needed.json"
        with self.locked():
            data = self.read_index(path, {"version": INDEX_VERSION, "needed": {}})
            data["needed"][f"{profile}/{runtime}"] = sorted(set(refs))
            self.directory("images")
            self.write_index(path, data)

    def needed(self, profile: str, runtime: str) -> Optional[List[str]]:
        """What :meth:`record_needed` recorded, or None when no lab of that kind has run."""
        data = self.read_index(self.root / "images" / "needed.json", {"version": INDEX_VERSION, "needed": {}})
        return data["needed"].get(f"{profile}/{runtime}")

    # ------------------------------------------------------------------ OS packages

    def package_path(self, os_id: str, rel: str) -> Path:
        """Where the cache keeps the package ``rel`` of ``os_id``."""
        if not OS_ID.fullmatch(os_id) or not PACKAGE_PATH.fullmatch(rel) or ".." in rel.split("/"):
            raise ValueError(f"not a package the cache keeps: {os_id!r} {rel!r}")
        return self.root / "packages" / os_id / rel

    def add_package(self, os_id: str, rel: str, source: Source, *, sha256: Optional[str] = None,
                    size: Optional[int] = None) -> Path:
        """Keep the package file ``source`` as ``packages/<os_id>/<rel>``."""
        path = self.package_path(os_id, rel)
        if path.is_file() and size is not None and path.stat().st_size == size:
            return path  # package files are named by name, version and architecture: the same file
        self.put(path, source, rel, sha256=sha256, size=size)
        return path

    def set_collection(self, os_id: str, profile: str, rels) -> None:
        """Record the packages the nodes of ``profile`` on ``os_id`` kept (what the next lab puts back)."""
        rels = sorted(set(rels))
        for rel in rels:
            self.package_path(os_id, rel)
        path = self.root / "packages" / os_id / "index.json"
        with self.locked():
            data = self.read_index(path, {"version": INDEX_VERSION, "collections": {}})
            data["collections"][profile] = rels
            self.directory("packages", os_id)
            self.write_index(path, data)

    def packages(self, profile: Optional[str] = None) -> Dict[str, List[Tuple[str, int]]]:
        """os-id -> [(path, size)] of the cached packages (those collected for ``profile``, when given)."""
        found: Dict[str, List[Tuple[str, int]]] = {}
        base = self.root / "packages"
        for index in sorted(base.glob("*/index.json")):
            os_id = index.parent.name
            collections = self.read_index(index, {"version": INDEX_VERSION, "collections": {}})["collections"]
            rels = sorted({r for p, rs in collections.items() if profile in (None, p) for r in rs})
            found[os_id] = [(r, (base / os_id / r).stat().st_size) for r in rels if (base / os_id / r).is_file()]
        return found

    # ------------------------------------------------------------------ boxes

    def box_index(self) -> dict:
        """``boxes/index.json``, every record checked."""
        return self._index(self.root / "boxes" / "index.json", "boxes", BoxEntry)

    def boxes(self, profile: Optional[str] = None) -> List[BoxEntry]:
        """The cached boxes (of ``profile`` only, when given), newest first."""
        path = self.root / "boxes" / "index.json"
        entries = [self.entry(BoxEntry, e, path) for e in self.box_index()["boxes"]]
        return sorted([e for e in entries if profile in (None, e.profile)], key=lambda e: -e.added)

    def box(self, name: str) -> Optional[BoxEntry]:
        """The cached box called ``name``, or None."""
        return next((b for b in self.boxes() if b.name == name), None)

    def box_path(self, entry: BoxEntry) -> Path:
        """The box file of ``entry``."""
        return self.root / "boxes" / entry.file

    def add_box(self, name: str, source: Source, *, profile: str, runtime: str = "",
                progress: Optional[Progress] = None) -> BoxEntry:
        """Keep the box file ``source`` as the box ``name`` of ``profile`` (replacing one of that name)."""
        if not BOX_NAME.fullmatch(name) or profile not in PROFILES:
            raise ValueError(f"not a box the cache keeps: {name!r} ({profile!r})")
        file = name.replace("/", "+") + ".box"  # "+" is in no box name, and a file:// URL keeps it as it is
        got, sum_ = self.put(self.directory("boxes") / file, source, f"box {name}", progress=progress)
        with self.locked():
            data = self.box_index()
            entry = {"name": name, "file": file, "size": got, "sha256": sum_, "profile": profile,
                     "runtime": runtime, "added": time.time()}
            data["boxes"] = [b for b in data["boxes"] if b["name"] != name] + [entry]
            self.write_index(self.root / "boxes" / "index.json", data)
        return BoxEntry(**entry)

