"""``lab.bake``: a Vagrant box of a node that went through prepare, runtime and kubernetes,
with every cached image of its profile loaded, and nothing of its lab or cluster left.

The node is cleaned by ``provision/bake-clean.sh`` (which powers it off), then packaged with
``vagrant package <machine> --output FILE`` in the lab's Vagrant directory. vagrant-libvirt's
package action (lib/vagrant-libvirt/action/package_domain.rb, 0.11) halts a running machine,
downloads its root volume through libvirt, runs ``virt-sysprep`` on it when that is installed
(operations ``defaults,-ssh-userdir,-ssh-hostkeys,-customize``) and ``virt-sparsify``, both in
Ruby backticks that raise when the command is missing: where libguestfs is not installed they
are given stand-ins that do nothing, as the node has cleaned itself (:func:`stand_ins`), and writes ``box.img``,
``metadata.json`` and a ``Vagrantfile``. Vagrant's Package middleware (lib/vagrant/action/
general/package.rb, 2.3.4, ``setup_private_key``) would add the machine's generated ssh key as
``vagrant_private_key``, one key every lab made from the box (on every laptop a bundle reaches)
would accept: the key is removed before packaging, and the node's vagrant user accepts Vagrant's
insecure public key only, which a new lab replaces with a key of its own, as with any public box.
A lab booting a baked box ignores the box's Vagrantfile (``config.vm.ignore_box_vagrantfile``):
what a bundle brings is never run as Ruby on the host. ``--base`` is VirtualBox's.

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
from .cache_offline import vagrant_has_box, vagrant_home
from .errors import StepError

SHUTOFF_TIMEOUT_S = 300
#: Where a Vagrant installation keeps its insecure public key (``keys/vagrant.pub`` of its source
#: root): Debian's vagrant package, HashiCorp's packages (/opt/vagrant), a gem install.
INSECURE_KEY_GLOBS = ("/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub",
                      "/usr/share/vagrant/keys/vagrant.pub",
                      "/opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub",
                      "/opt/vagrant/embedded/gems/*/gems/vagrant-*/keys/vagrant.pub",
                      "/var/lib/gems/*/gems/vagrant-*/keys/vagrant.pub")
#: Where bake-clean.sh reads the key the box's vagrant user is to accept.
REMOTE_LOGIN_KEY = "/opt/dslab/login.pub"
PACKAGE_TIMEOUT_S = 3 * 3600


def insecure_public_key(globs=INSECURE_KEY_GLOBS) -> str:
    """Vagrant's insecure public key, read from the Vagrant installation (the newest one found)."""
    import glob  # noqa: PLC0415

    found = sorted({path for pattern in globs for path in glob.glob(pattern)})
    if not found:
        raise StepError("bake", "Vagrant's insecure public key (keys/vagrant.pub of the Vagrant installation) was "
                        "not found; install Vagrant from Debian's or HashiCorp's packages")
    return Path(found[-1]).read_text(encoding="ascii", errors="replace")


def generated_key(cfg, node) -> Path:
    """The key Vagrant made for ``node`` at its first ``vagrant up`` (``.vagrant/machines/<node>/libvirt``)."""
    return Path(cfg.state_dir) / ".vagrant" / "machines" / node.name / "libvirt" / "private_key"


def box_name(cfg) -> str:
    """The cache's name of the box baked for ``cfg``'s profile and runtime."""
    return f"dslab/{cfg.profile.name}-{cfg.runtime}"


def package_command(machine: str, output: Path) -> List[str]:
    """``vagrant package`` of one machine of the lab's Vagrantfile into ``output`` (which must not exist)."""
    return ["vagrant", "package", machine, "--output", str(output)]


#: What vagrant-libvirt's package action runs on the downloaded disk (package_domain.rb, 0.11.2):
#: in Ruby backticks, so a missing command raises ENOENT and the package fails.
GUESTFS_TOOLS = ("virt-sysprep", "virt-sparsify")


def stand_ins(directory: Path, environ=os.environ) -> List[str]:
    """For each of :data:`GUESTFS_TOOLS` that is not installed, a command in ``directory`` that does
    nothing: bake-clean.sh has cleaned the node already (virt-sparsify would only make the box smaller)."""
    missing = [tool for tool in GUESTFS_TOOLS if shutil.which(tool, path=environ.get("PATH")) is None]
    for tool in missing:
        stand_in = directory / tool
        stand_in.write_text("#!/bin/sh\n# lab.bake: libguestfs is not installed; the node cleaned itself\nexit 0\n")
        stand_in.chmod(0o755)
    return missing


def run_vagrant(cfg, command: List[str], log_path: Optional[Path]) -> None:
    """Run a Vagrant command in the lab's Vagrant directory, its output appended to the log."""
    from .machines import vagrant_env  # noqa: PLC0415
    from .private import append_private  # noqa: PLC0415

    env = vagrant_env()
    with tempfile.TemporaryDirectory(prefix="dslab-bake-") as tools:
        if command[:2] == ["vagrant", "package"] and stand_ins(Path(tools), env):
            env = {**env, "PATH": f"{tools}{os.pathsep}{env.get('PATH', os.defpath)}"}
        proc = subprocess.run(command, cwd=cfg.state_dir, env=env, capture_output=True, text=True,
                              timeout=PACKAGE_TIMEOUT_S)
    if log_path is not None:
        append_private(log_path, f"$ {' '.join(command)}\n{proc.stdout}{proc.stderr}exit {proc.returncode}")
    if proc.returncode != 0:
        # the first line: Vagrant's own message, or the exception of a Ruby backtrace
        said = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[0]
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
         action: Callable[[str], None] = lambda text: None, login_key: Callable[[], str] = insecure_public_key) -> BoxEntry:
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
    from .cache_steps import wanted_refs  # noqa: PLC0415

    loaded = cache_sync.load_images(runner, transfer, node.name, cache, cfg.profile.name, cfg.runtime, report, progress,
                                    wanted_refs(cfg, cache))
    report(f"{node.name}: {loaded} cached images loaded; cleaning it for the box")
    action(f"cleaning {node.name} and powering it off")
    runner.put_text(node.name, login_key(), REMOTE_LOGIN_KEY)
    runner.run(node.name, cache_sync.script("bake-clean.sh", "--poweroff"))
    wait(cfg, node)
    # Vagrant's Package middleware puts the machine's generated key into the box (setup_private_key)
    # when it finds one: without it, the box's vagrant user accepts Vagrant's insecure key only.
    generated_key(cfg, node).unlink(missing_ok=True)
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


# ------------------------------------------------------------------ the box in Vagrant's store

def _added_path(cache: Cache) -> Path:
    return cache.root / "boxes" / "vagrant.json"


def store_is_stale(cache: Cache, entry: BoxEntry, environ=os.environ, has_box: Callable[..., bool] = vagrant_has_box) -> bool:
    """True when Vagrant's box store holds a box of ``entry``'s name that is not the cache's bytes.

    Vagrant adds an unversioned box from its URL once and never looks at the URL again
    (lib/vagrant/action/builtin/handle_box.rb, 2.3.4): after a new bake, or a bundle with a newer
    box imported, its store would keep booting the old one. The cache records which sum it
    handed to each Vagrant home (``boxes/vagrant.json``)."""
    if not has_box(entry.name, environ):
        return False
    added = cache.read_index(_added_path(cache), {"version": 1, "homes": {}})
    return added["homes"].get(str(vagrant_home(environ)), {}).get(entry.name) != entry.sha256


def remember_in_store(cache: Cache, entry: BoxEntry, environ=os.environ) -> None:
    """Record that the Vagrant home of ``environ`` holds ``entry`` as the cache has it."""
    with cache.locked():
        added = cache.read_index(_added_path(cache), {"version": 1, "homes": {}})
        added["homes"].setdefault(str(vagrant_home(environ)), {})[entry.name] = entry.sha256
        cache.write_index(_added_path(cache), added)


def refresh_store(cfg, cache: Cache, entry: BoxEntry, log_path: Optional[Path], vagrant: Callable = run_vagrant,
                  environ=os.environ, has_box: Callable[..., bool] = vagrant_has_box) -> bool:
    """Remove a stale copy of the baked box from Vagrant's store, so ``vagrant up`` adds the cache's; True if removed."""
    if not store_is_stale(cache, entry, environ, has_box):
        return False
    vagrant(cfg, ["vagrant", "box", "remove", entry.name, "--all", "--force"], log_path)
    return True

