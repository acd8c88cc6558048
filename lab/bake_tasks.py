"""The ``lab.bake`` task: a box of a lab node, cleaned, into the host's cache (see :mod:`lab.bake`)."""

from __future__ import annotations

import sys
from pathlib import Path

from invoke import Exit, task

from .errors import LabError, StepError
from .taskbase import EXIT_CONFIG, EXIT_FAILED, _fail, _load

#: The steps a node must have been through to be baked; ``kubernetes`` is baked in when it is done too.
BAKE_AFTER = ("prepare", "runtime")


@task(help={"out": "also write the box to this file",
            "node": "the node to bake (default: the control plane); it is left reset and powered off"})
def bake(c, out=None, node=None):
    """Bake a node of this lab (after `lab.up --until kubernetes`) into a box in the host's cache, with every
    cached image of the profile loaded and nothing of the lab or its cluster left in it."""
    from . import bake as lab_bake  # noqa: PLC0415
    from . import cache_sync, pipeline  # noqa: PLC0415
    from .cache import CopyProgress  # noqa: PLC0415
    from .nodefiles import upload_inputs  # noqa: PLC0415
    from .progress import for_task  # noqa: PLC0415

    if out is not None and not str(out).strip():
        raise Exit("lab.bake --out: give the path of the box file to write", code=EXIT_CONFIG)
    cfg = _load(c)
    names = [n.name for n in cfg.nodes]
    if node is not None and node not in names:
        raise Exit(f"lab.bake --node: {node!r} is not a node of this lab; use one of {', '.join(names)}",
                   code=EXIT_CONFIG)
    target = cfg.node(node) if node else cfg.control_plane
    from .context import State  # noqa: PLC0415
    from .layout import Layout  # noqa: PLC0415

    where = Layout(cfg.state_dir)
    done = State(where.state).get("steps", {}) if where.state.exists() else {}
    missing = [step for step in BAKE_AFTER if step not in done]
    if missing or not where.ssh_config.exists():
        raise Exit(f"lab.bake: {target.name} has not been through {' and '.join(missing or BAKE_AFTER)}; run "
                   "`invoke lab.up --until kubernetes` first", code=EXIT_FAILED)
    progress = for_task()
    try:
        with progress:
            ctx = pipeline.open_context(cfg, "bake", progress)
            if "kubernetes" not in done:
                progress.warn(f"lab.bake: {target.name} has not been through kubernetes: the box has what prepare "
                              "and runtime installed, and a lab made from it installs Kubernetes itself")
            progress.start("bake")
            try:
                entry = lab_bake.bake(cfg, ctx.cache, ctx.runner, cache_sync.SshTransfer(ctx.runner, "bake"),
                                      node=target, out=Path(out) if out else None,
                                      upload=lambda n: upload_inputs(ctx, n), report=ctx.log,
                                      progress=CopyProgress(progress), log_path=ctx.log_path, action=progress.action)
            except LabError as exc:
                reason = exc.reason if isinstance(exc, StepError) else str(exc)
                progress.fail(f"bake: {reason} (log: {ctx.log_path})")
                raise Exit(code=EXIT_FAILED) from None
            progress.done(f"bake: box {entry.name}, {entry.size / (1 << 20):.0f} MiB")
    except LabError as exc:
        raise _fail(exc) from None
    print(f"box {entry.name} is in the host's cache ({ctx.cache.box_path(entry)}); a lab with lab.box: {entry.name} "
          f"boots from it. {target.name} is cleaned and off: run `invoke lab.destroy`", file=sys.stderr)
