"""``lab.bake``: a Vagrant box of a node that went through prepare, runtime and kubernetes,
with every cached image of its profile loaded, and nothing of its lab or cluster left.

The node is cleaned by ``provision/bake-clean.sh`` (which powers it off), then packaged with
``vagrant package <machine> --output FILE`` in the lab's Vagrant directory. vagrant-libvirt's
package action (lib/vagrant-libvirt/action/package_domain.rb, 0.11) halts a running machine,
downloads its root volume through libvirt, runs ``virt-sysprep`` on it when that is installed
(operations ``defaults,-ssh-userdir,-ssh-hostkeys,-customize``; without it nothing is run, which
is why the node cleans itself), ``virt-sparsify`` likewise, and writes ``box.img``,
``metadata.json`` and a ``Vagrantfile``. Vagrant's Package middleware (lib/vagrant/action/
general/package.rb, 2.3.4) then adds the machine's generated ssh key as ``vagrant_private_key``
with a Vagrantfile line pointing at it, as it does for every packaged box: labs made from the
box log in with that key, as others do with Vagrant's insecure key. ``--base`` is VirtualBox's.

The box goes into the cache's ``boxes/`` as ``dslab/<profile>-<runtime>`` (and to ``--out``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Optional

from . import cache_sync
from .cache import Cache, Progress, Report, mib
from .cache_entries import BoxEntry
from .cache_offline import vagrant_has_box
from .errors import StepError

SHUTOFF_TIMEOUT_S = 300
PACKAGE_TIMEOUT_S = 3 * 3600


def box_name(cfg) -> str:
    """The cache's name of the box baked for ``cfg``'s profile and runtime."""
    return f"dslab/{cfg.profile.name}-{cfg.runtime}"


def package_command(machine: str, output: Path) -> List[str]:
    """``vagrant package`` of one machine of the lab's Vagrantfile into ``output`` (which must not exist)."""
    return ["vagrant", "package", machine, "--output", str(output)]


def run_vagrant(cfg, command: List[str], log_path: Optional[Path]) -> None:
    """Run a Vagrant command in the lab's Vagrant directory, its output appended to the log."""
    from .machines import vagrant_env  # noqa: PLC0415
    from .private import append_private  # noqa: PLC0415

    proc = subprocess.run(command, cwd=cfg.state_dir, env=vagrant_env(), capture_output=True, text=True,
                          timeout=PACKAGE_TIMEOUT_S)
    if log_path is not None:
        append_private(log_path, f"$ {' '.join(command)}\n{proc.stdout}{proc.stderr}exit {proc.returncode}")
    if proc.returncode != 0:
        said = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise StepError("bake", f"`{' '.join(command)}` exited {proc.returncode}: {said}", log_path)


def wait_shutoff(cfg, node, timeout: float = SHUTOFF_TIMEOUT_S, sleep=time.sleep, clock=time.monotonic) -> None:
    """Wait until libvirt reports the node's domain shut off."""
    import libvirt  # noqa: PLC0415

    from .network import connect  # noqa: PLC0415

    deadline = clock() + timeout
    with connect(cfg.libvirt_uri) as conn:
        domain = conn.lookupByName(cfg.domain_name(node))
        while domain.state()[0] != libvirt.VIR_DOMAIN_SHUTOFF:
            if clock() > deadline:
                raise StepError("bake", f"{node.name} did not power off within {timeout:.0f} s after it was cleaned")
            sleep(2)


def bake(cfg, cache: Cache, runner, transfer: cache_sync.Transfer, *, node=None, out: Optional[Path] = None,
         upload: Callable[[object], None], report: Report, progress: Optional[Progress] = None,
         wait: Callable = wait_shutoff, vagrant: Callable = run_vagrant, log_path: Optional[Path] = None,
         action: Callable[[str], None] = lambda text: None, has_box: Callable[[str], bool] = vagrant_has_box) -> BoxEntry:
    """Bake ``node`` (default: the control plane) into the cache's box of ``cfg``; return it.

    ``upload(node)`` puts ``provision/`` and the node's env file on it. The node is left reset and
    powered off: the lab is to be destroyed afterwards.
    """
    node = node or cfg.control_plane
    if out is not None and out.exists() and not out.is_file():
        raise StepError("bake", f"lab.bake --out: {out} is not a file; give the path of the box to write")
    action(f"cached images of profile {cfg.profile.name} on {node.name}")
    upload(node)
    # The node's kept packages go into the cache first: the cleaning removes them from the box.
    cache_sync.collect_packages(runner, transfer, node.name, cache, cfg.profile.name, report)
    loaded = cache_sync.load_images(runner, transfer, node.name, cache, cfg.profile.name, cfg.runtime, report, progress)
    report(f"{node.name}: {loaded} cached images loaded; cleaning it for the box")
    action(f"cleaning {node.name} and powering it off")
    runner.run(node.name, cache_sync.script("bake-clean.sh", "--poweroff"))
    wait(cfg, node)
    work = Path(tempfile.mkdtemp(prefix="bake-", dir=cache.directory("tmp")))
    try:
        box = work / "package.box"
        started = time.monotonic()
        action(f"vagrant package {node.name}")
        vagrant(cfg, package_command(node.name, box), log_path)
        if not box.is_file():
            raise StepError("bake", f"`vagrant package` wrote no {box}", log_path)
        entry = cache.add_box(box_name(cfg), box, profile=cfg.profile.name, runtime=cfg.runtime, progress=progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(f"box {entry.name}: {mib(entry.size)} in {time.monotonic() - started:.0f} s, {cache.box_path(entry)}")
    if has_box(entry.name):
        # Vagrant keeps an unversioned box it added once and never looks at its URL again: the
        # copy of an earlier bake would be used in place of this one.
        vagrant(cfg, ["vagrant", "box", "remove", entry.name, "--all", "--force"], log_path)
        report(f"box {entry.name}: the earlier bake removed from Vagrant's box store")
    if out is not None:
        _copy_out(cache.box_path(entry), out)
        report(f"box {entry.name} written to {out}")
    return entry


def _copy_out(source: Path, out: Path) -> None:
    out = Path(os.path.abspath(out))
    try:
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    except OSError as exc:
        raise StepError("bake", f"lab.bake --out: cannot write {out} ({exc.strerror}); give a path you can write") from None
    try:
        with os.fdopen(fd, "wb") as handle, open(source, "rb") as box:
            shutil.copyfileobj(box, handle, 1 << 20)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise StepError("bake", f"lab.bake --out: cannot write {out} ({exc.strerror}); the box stays in the cache") from None
