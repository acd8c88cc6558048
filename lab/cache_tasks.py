"""The ``lab.cache`` and ``lab.bake`` tasks: thin adapters from invoke to the cache modules.

Library code raises typed exceptions; here they become ``invoke.Exit`` with one line.
"""

from __future__ import annotations

import json as jsonlib
import sys
import time
from pathlib import Path
from typing import Optional, TextIO

from invoke import Exit, task

from . import cache as labcache
from .errors import LabError

EXIT_FAILED = 1
EXIT_CONFIG = 2


class Progress:
    """Bytes and rate of a long copy on one rewritten line of a terminal; nothing elsewhere
    (the item's one line then comes from the caller's report)."""

    EVERY_S = 0.5

    def __init__(self, stream: TextIO = None, clock=time.monotonic):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.clock, self.last, self.shown = clock, float("-inf"), False

    def __call__(self, item: str, done: int, total: Optional[int], rate: float) -> None:
        if not self.tty:
            return
        finished = total is not None and done >= total
        now = self.clock()
        if not finished and now - self.last < self.EVERY_S:
            return
        self.last = now
        self.stream.write(f"\r\033[K{labcache.progress_text(item, done, total, rate)}")
        self.shown = not finished
        if finished:
            self.stream.write("\r\033[K")
        self.stream.flush()

    def line(self, text: str) -> None:
        """One line for an item (after clearing a progress line)."""
        if self.tty and self.shown:
            self.stream.write("\r\033[K")
            self.shown = False
        print(text, file=self.stream, flush=True)


def _load(c, **overrides):
    from .tasks import _load as load  # noqa: PLC0415 - tasks registers these tasks

    return load(c, **overrides)


def _fail(exc: LabError):
    from .tasks import _fail as fail  # noqa: PLC0415

    return fail(exc)


def listing_text(listing: dict) -> str:
    """The listing of :meth:`lab.cache.Cache.listing` as lines for a terminal."""
    size = labcache.mib
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


@task(help={"export": "write the profile's cache (files, images, packages, boxes) and a manifest of sha256 "
                      "sums to this one file",
            "import_": "add the bundle in this file to the cache; every sum is checked first, a damaged or "
                       "partial bundle is refused and the cache kept as it was",
            "prune": "remove what no profile pins or uses (see lab/cache_prune.py)",
            "profile": "profile to list or export (default: lab.profile)",
            "json": "print the listing as JSON"})
def cache(c, export=None, import_=None, prune=False, profile=None, json=False):
    """List what the host's cache holds for a profile; or export, import or prune it."""
    from . import bundle  # noqa: PLC0415

    chosen = [name for name, value in (("--export", export), ("--import", import_), ("--prune", prune)) if value]
    if len(chosen) > 1:
        raise Exit(f"lab.cache: {' and '.join(chosen)} cannot be given together; give one", code=EXIT_CONFIG)
    for name, value in (("--export", export), ("--import", import_)):
        if value is not None and not str(value).strip():
            raise Exit(f"lab.cache {name}: give the path of the bundle file", code=EXIT_CONFIG)
    cfg = _load(c, profile=profile)
    store = labcache.for_config(cfg)
    progress = Progress()
    try:
        if export:
            manifest = bundle.export(store, Path(export), cfg.profile.name, progress=progress, report=progress.line)
            total = sum(m["size"] for m in manifest["members"])
            print(f"bundle {export}: profile {cfg.profile.name}, {len(manifest['members'])} members, "
                  f"{labcache.mib(total)}", file=sys.stderr)
        elif import_:
            bundle.import_(store, Path(import_), progress=progress, report=progress.line)
        elif prune:
            removed = store.prune()
            for path, size in removed:
                progress.line(f"removed {path} ({labcache.mib(size)})")
            print(f"pruned {len(removed)} entries, {labcache.mib(sum(s for _, s in removed))} freed", file=sys.stderr)
        else:
            listing = store.listing(cfg.profile.name)
            print(jsonlib.dumps(listing, indent=2) if json else listing_text(listing))
    except LabError as exc:
        raise _fail(exc) from None


@task(help={"out": "also write the box to this file",
            "node": "the node to bake (default: the control plane); it is left reset and powered off"})
def bake(c, out=None, node=None):
    """Bake a node of this lab (after lab.up --until kubernetes) into a box in the cache, images loaded."""
    from . import bake as lab_bake  # noqa: PLC0415
    from . import cache_sync, cluster, pipeline  # noqa: PLC0415
    from .context import Context, State  # noqa: PLC0415
    from .remote import SshRunner  # noqa: PLC0415

    if out is not None and not str(out).strip():
        raise Exit("lab.bake --out: give the path of the box file to write", code=EXIT_CONFIG)
    cfg = _load(c)
    names = [n.name for n in cfg.nodes]
    if node is not None and node not in names:
        raise Exit(f"lab.bake --node: {node!r} is not a node of this lab; use one of {', '.join(names)}",
                   code=EXIT_CONFIG)
    target = cfg.node(node) if node else cfg.control_plane
    ssh_config = cfg.state_dir / "ssh_config"
    state = State(cfg.state_dir / "state.json")
    if not ssh_config.exists() or "kubernetes" not in state.get("steps", {}):
        raise Exit(f"lab.bake: {target.name} has not been through prepare, runtime and kubernetes; run "
                   "`invoke lab.up --until kubernetes` first", code=EXIT_FAILED)
    progress = Progress()
    try:
        log = pipeline.new_log(cfg.state_dir, "bake")
        runner = SshRunner(ssh_config, log, "bake")
        ctx = Context(cfg, state, runner, log)
        entry = lab_bake.bake(cfg, labcache.for_config(cfg), runner, cache_sync.SshTransfer(runner, "bake"),
                              node=target, out=Path(out) if out else None,
                              upload=lambda n: cluster.upload_inputs(ctx, n), report=progress.line,
                              progress=progress, log_path=log)
    except LabError as exc:
        raise _fail(exc) from None
    print(f"box {entry.name} is in the cache; use it with lab.box: {entry.name} and lab.box_url: "
          f"file://{labcache.for_config(cfg).box_path(entry)}; {target.name} is reset and off: "
          "run `invoke lab.destroy`", file=sys.stderr)
