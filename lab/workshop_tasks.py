"""The workshop tasks of the ``lab`` collection: lab-wide snapshots, a shell on any node, a support bundle.

Thin adapters like :mod:`lab.tasks`: the work is in :mod:`lab.snapshots` and :mod:`lab.collect`;
here their typed exceptions become one line and an exit status (2 for bad input, 1 for a failure).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import List, Optional

from invoke import Exit, task

from . import collect as lab_collect
from . import snapshots as lab_snapshots
from .config import shown
from .errors import ConfigError, LabError, PreflightError
from .taskbase import EXIT_CONFIG, EXIT_FAILED, refuse_dry
from .taskbase import _load as load

SSH_OPTIONS = ("-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR")


def _load(c, task_name: str):
    """The lab's settings for a workshop task, which honours no ``--dry``."""
    refuse_dry(c, task_name)
    return load(c)


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _call(action, task_name: str):
    """Run ``action``; its errors as one line and exit 2 (bad input) or 1 (a failure)."""
    import libvirt  # noqa: PLC0415

    try:
        return action()
    except (ConfigError, PreflightError) as exc:
        raise Exit("\n".join(exc.problems), code=EXIT_CONFIG) from None
    except LabError as exc:
        raise Exit(str(exc), code=EXIT_FAILED) from None
    except libvirt.libvirtError as exc:
        raise Exit(f"lab.{task_name}: libvirt: {exc.get_error_message()}", code=EXIT_FAILED) from None


@task(help={"name": f"the snapshot's name (default: {lab_snapshots.DEFAULT_NAME}); one of the same name is replaced"})
def snapshot(c, name=lab_snapshots.DEFAULT_NAME):
    """Snapshot every node at one moment (all paused, then resumed together), with the lab's state."""
    cfg = _load(c, "snapshot")
    meta = _call(lambda: lab_snapshots.take(cfg, name, report=_err), "snapshot")
    _err(f"✓ {lab_snapshots.summary(meta)}")


@task(help={"name": f"the snapshot to restore (default: {lab_snapshots.DEFAULT_NAME})"})
def restore(c, name=lab_snapshots.DEFAULT_NAME):
    """Bring every node back to a snapshot, resume them together and set their clocks."""
    from .statedir import new_log  # noqa: PLC0415

    cfg = _load(c, "restore")
    done = _call(lambda: lab_snapshots.restore(cfg, name, report=_err,
                                               open_log=lambda: new_log(cfg.state_dir, "restore")), "restore")
    worst = max((abs(v) for v in done["offsets"].values()), default=0.0)
    for node, offset in done["offsets"].items():
        _err(f"✓ {node}: clock set ({offset:+.2f} s from the host's)")
    where = f" (log: {done['log']})" if done.get("log") else ""
    _err(f"✓ lab {cfg.name} restored to snapshot {name} (taken {done['taken']}) in {done['seconds']:.1f} s; "
         f"clocks within {worst:.2f} s{where}")


@task
def snapshots(c):
    """List the lab's snapshots: name, time taken, and the disk space each took per node."""
    from . import network  # noqa: PLC0415

    cfg = load(c)  # a listing: --dry changes nothing here
    try:
        with network.connect(cfg.libvirt_uri) as conn:
            lines = _call(lambda: lab_snapshots.listing(cfg, conn), "snapshots")
    except LabError:  # libvirt unreachable: what the state directory records
        lines = lab_snapshots.listing(cfg)
    if not lines:
        _err(f"lab {cfg.name} has no snapshots; take one with `invoke lab.snapshot`")
        return
    print(f"{'NAME':<16} {'TAKEN (UTC)':<21} {'NODE':<16} {'SIZE':>9}")
    for line in lines:
        print(line)


def ssh_argv(ssh_config: Path, node: str, command: str, control: Optional[str]) -> List[str]:
    """The ssh command line of ``lab.ssh``: the lab's ssh config, its shared connection, ``command`` after ``--``."""
    argv = ["ssh", "-F", str(ssh_config), *SSH_OPTIONS]
    if control:
        argv += ["-o", "ControlMaster=auto", "-o", f"ControlPath={control}", "-o", "ControlPersist=60"]
    argv.append(node)
    if command.strip():
        argv += ["--", command]  # like ssh: the words after -- are run by the node's shell
    return argv


@task(help={"node": "the node to log in to; `invoke lab.ssh NODE -- COMMAND` runs COMMAND there instead"})
def ssh(c, node):
    """A shell on a node, or one command given after `--`, with the lab's ssh config; exits with its status."""
    from .remote import SshRunner  # noqa: PLC0415

    cfg = _load(c, "ssh")
    names = [n.name for n in cfg.nodes]
    if node not in names:
        raise Exit(f"lab.ssh: {shown(node)} is not a node of lab {cfg.name}; nodes: {', '.join(names)}",
                   code=EXIT_CONFIG)
    ssh_config = cfg.state_dir / "ssh_config"
    if not ssh_config.is_file():
        raise Exit(f"lab.ssh: no lab machines known in {cfg.state_dir}; run `invoke lab.up --until machines` first",
                   code=EXIT_FAILED)
    try:
        control = SshRunner(ssh_config).control_path()
    except LabError:
        control = None  # no private place for the shared connection: one connection of its own
    try:
        code = subprocess.call(ssh_argv(ssh_config, node, c.remainder or "", control))
    except OSError as exc:
        raise Exit(f"lab.ssh: cannot run ssh: {exc.strerror}", code=EXIT_FAILED) from None
    if code:
        raise Exit(code=code)


@task(help={"out": "the archive to write (default: dslab-<lab>-collect-<time>.tar.gz in this directory)"})
def collect(c, out=None):
    """Write one archive with everything about the lab (nodes, cluster, settings, logs), secrets redacted."""
    if out is not None:
        _call(lambda: lab_collect.check_out(out), "collect")
    cfg = _load(c, "collect")
    path = _call(lambda: lab_collect.check_out(out, name=cfg.name), "collect")
    try:
        lab_collect.collect(cfg, path, report=lambda line: _err(f"✓ {line}"))
    except OSError as exc:
        raise Exit(f"lab.collect: cannot write {path}: {exc.strerror}", code=EXIT_FAILED) from None
    print(path)
