"""The ``lab.cache`` task: a thin adapter from invoke to the cache modules.

Library code raises typed exceptions; here they become ``invoke.Exit`` with one line: 2 for a
usage or setting error and for a bundle FILE that is refused (the command line has to change),
1 when the host fails on the way (a full disk, a damaged cache entry).
"""

from __future__ import annotations

import json as jsonlib
import sys
from pathlib import Path

from invoke import Exit, task

from . import bundle
from . import cache as labcache
from . import cache_prune
from .cache import CopyProgress
from .errors import LabError
from .progress import Progress, for_task
from .taskbase import EXIT_CONFIG, EXIT_FAILED, _fail, _load, refuse_dry


def size_text(size: int) -> str:
    """A size in the unit that suits it: ``512 B``, ``1.6 KiB``, ``12.3 MiB``, ``1.2 GiB``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def listing_text(listing: dict) -> str:
    """The listing of :func:`lab.cache_prune.listing` as lines for a terminal."""
    size = size_text
    lines = [f"cache {listing['cache_dir']}, profile {listing['profile']}: {size(listing['total'])}"]
    lines.append("files:")
    for f in listing["files"]:
        state = size(f["size"]) if f["size"] is not None else "not cached"
        lines.append(f"  {f['name']:<44} {f['step']:<11} {state}")
    lines.append(f"images: {len(listing['images'])}")
    for i in listing["images"]:
        lines.append(f"  {i['ref']:<60} {i['producer']:<10} {size(i['size'])}")
    lines.append(f"packages: {sum(len(v) for v in listing['packages'].values())}")
    for os_id, rels in listing["packages"].items():
        lines.append(f"  {os_id}: {len(rels)} files, {size(sum(p['size'] for p in rels))}")
    lines.append(f"boxes: {len(listing['boxes'])}")
    for b in listing["boxes"]:
        lines.append(f"  {b['name']:<40} {b['runtime']:<10} {size(b['size'])}")
    return "\n".join(lines)


def _code(exc: LabError) -> int:
    """2 when the command line or a setting has to change, 1 when the host failed on the way."""
    return EXIT_CONFIG if isinstance(exc, (bundle.BundleRefused, labcache.CacheDirError)) else EXIT_FAILED


def _run(progress: Progress, step: str, work) -> None:
    """``work()`` as the step ``step``; it returns the step's ✓ line. A failure is its one ✗ line."""
    with progress:
        progress.start(step)
        try:
            text = work()
        except LabError as exc:
            failed = _fail(exc, _code(exc))
            progress.fail(failed.message)
            raise Exit(code=failed.code) from None
        progress.done(text)


@task(help={"export": "write the profile's cache (files, images, packages, boxes) and a manifest of sha256 "
                      "sums to this one file",
            "import_": "add the bundle in this file to the cache; every sum is checked first, a damaged or "
                       "partial bundle is refused and the cache kept as it was",
            "prune": "remove what no profile pins or uses (see lab/cache_prune.py); prints each removal",
            "profile": "profile to list or export (default: lab.profile)",
            "json": "print the listing as JSON"})
def cache(c, export=None, import_=None, prune=False, profile=None, json=False):
    """List what the host's cache (lab.cache_dir) holds for a profile; or export, import or prune it."""
    refuse_dry(c, "cache")
    chosen = [name for name, value in (("--export", export), ("--import", import_), ("--prune", prune),
                                       ("--json", json)) if value]
    if len(chosen) > 1:
        raise Exit(f"lab.cache: {' and '.join(chosen)} cannot be given together; give one", code=EXIT_CONFIG)
    for name, value in (("--export", export), ("--import", import_)):
        if value is not None and not str(value).strip():
            raise Exit(f"lab.cache {name}: give the path of the bundle file", code=EXIT_CONFIG)
    if profile is not None and import_:
        raise Exit("lab.cache --import: the bundle names its profile; drop --profile", code=EXIT_CONFIG)
    cfg = _load(c, profile=profile)
    store = labcache.for_config(cfg)
    name = cfg.profile.name
    progress = for_task()
    copying = CopyProgress(progress)
    if export:
        def work() -> str:
            manifest = bundle.export(store, Path(export), name, progress=copying, report=copying.line)
            total = sum(m["size"] for m in manifest["members"])
            return f"bundle {export}: profile {name}, {len(manifest['members'])} members, {size_text(total)}"
        _run(progress, "lab.cache --export", work)
    elif import_:
        def work() -> str:
            manifest = bundle.import_(store, Path(import_), progress=copying, report=copying.line)
            total = sum(m["size"] for m in manifest["members"])
            return (f"bundle {import_}: {len(manifest['members'])} members of profile {manifest['profile']} "
                    f"added to {store.root} ({size_text(total)})")
        _run(progress, "lab.cache --import", work)
    elif prune:
        removed = []

        def work() -> str:
            removed.extend(cache_prune.prune(store))
            return f"pruned {len(removed)} entries from {store.root}, {size_text(sum(s for _, s in removed))} freed"
        _run(progress, "lab.cache --prune", work)
        for path, size in removed:  # after the status line is done: stdout and stderr may share a terminal
            print(f"removed {path} ({size_text(size)})")
    else:
        try:
            listing = cache_prune.listing(store, name)
        except LabError as exc:
            raise _fail(exc, _code(exc)) from None
        print(jsonlib.dumps(listing, indent=2) if json else listing_text(listing))
        sys.stdout.flush()
