"""The lab's machines: Vagrant (through python-vagrant) for their life cycle, libvirt to look.

A fresh :class:`vagrant.Vagrant` object is made for every operation, since python-vagrant
caches ssh configuration across calls; its ``env`` replaces the environment, so it gets a
full copy. Vagrant's output goes to the log file of the run.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

from . import statedir
from .config import LabConfig
from .errors import StepError

LOG_TAIL_LINES = 5


def vagrant_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment Vagrant runs with: ours, with libvirt as the default provider."""
    env = dict(os.environ)
    env["VAGRANT_DEFAULT_PROVIDER"] = "libvirt"
    env.setdefault("VAGRANT_CHECKPOINT_DISABLE", "1")
    env.update(extra or {})
    return env


#: What python-vagrant raises: a failed vagrant (CalledProcessError), no vagrant at all
#: (RuntimeError), or an unrunnable one (OSError).
VAGRANT_ERRORS = (subprocess.CalledProcessError, RuntimeError, OSError)


def _vagrant(cfg: LabConfig, log_path: Path):
    import vagrant  # noqa: PLC0415 - python-vagrant warns at import when vagrant is missing

    log_path.parent.mkdir(parents=True, exist_ok=True)
    statedir.record(cfg.state_dir, [log_path])
    return vagrant.Vagrant(
        root=str(cfg.state_dir.resolve()),
        env=vagrant_env(),
        out_cm=vagrant.make_file_cm(str(log_path)),
        err_cm=vagrant.make_file_cm(str(log_path)),
    )


def tail(path: Optional[Path], lines: int = LOG_TAIL_LINES) -> str:
    """The last non-empty lines of a log file, joined with ' | '."""
    if path is None or not Path(path).exists():
        return ""
    text = [line.strip() for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    return " | ".join(text[-lines:])


def up(cfg: LabConfig, log_path: Path) -> None:
    """``vagrant up`` every machine (vagrant-libvirt brings them up in parallel)."""
    try:
        _vagrant(cfg, log_path).up(provider="libvirt")
    except VAGRANT_ERRORS as exc:
        raise StepError("machines", f"vagrant up failed ({tail(log_path, 2) or exc})", log_path) from exc


def ssh_config(cfg: LabConfig, log_path: Path) -> Path:
    """Write ``vagrant ssh-config`` of every machine to the state directory; return its path."""
    try:
        text = _vagrant(cfg, log_path).ssh_config()
    except VAGRANT_ERRORS as exc:
        raise StepError("machines", "vagrant ssh-config failed; are the machines up?", log_path) from exc
    missing = [n.name for n in cfg.nodes if f"Host {n.name}\n" not in text]
    if missing:
        raise StepError("machines", f"vagrant reports no ssh configuration for {', '.join(missing)}", log_path)
    path = cfg.state_dir / "ssh_config"
    path.write_text(text)
    statedir.record(cfg.state_dir, [path])
    return path


def recorded_machines(cfg: LabConfig) -> Dict[str, str]:
    """Machine name → libvirt domain UUID, as ``.vagrant`` records them (what ``vagrant destroy`` acts on).

    Only ids that are UUIDs count (lower-cased, as libvirt writes them); a damaged id file names nothing.
    """
    found = {}
    for id_file in sorted((cfg.state_dir / ".vagrant" / "machines").glob("*/libvirt/id")):
        try:
            value = id_file.read_text(errors="replace").strip().lower()
        except OSError:
            continue
        if re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", value):
            found[id_file.parent.parent.name] = value
    return found


def destroy(cfg: LabConfig, log_path: Path) -> None:
    """``vagrant destroy -f`` of every machine (nothing happens without a Vagrantfile)."""
    if not (cfg.state_dir / "Vagrantfile").exists():
        return
    try:
        _vagrant(cfg, log_path).destroy()
    except VAGRANT_ERRORS as exc:
        raise StepError("destroy", f"vagrant destroy failed ({tail(log_path, 2) or exc})", log_path) from exc


def lookup(conn, name: str):
    """The libvirt domain called ``name``, or None when there is none."""
    import libvirt  # noqa: PLC0415

    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def domains_running(cfg: LabConfig, conn) -> List[str]:
    """Names of the lab's nodes whose libvirt domain is running."""
    running = []
    for node in cfg.nodes:
        dom = lookup(conn, cfg.domain_name(node))
        if dom is not None and dom.isActive():
            running.append(node.name)
    return running
