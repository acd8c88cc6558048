"""``lab.offline``: what a run would download that the host's cache (or Vagrant) does not hold.

:func:`offline_problems` lists, one line each, everything ``lab.up`` would fetch from outside
the lab network and the host: the box, every pinned file, every container image the nodes
would pull, and the OS packages (which only a box made by ``lab.bake`` has installed already).
Preflight prints them and stops before anything is created.

The images of a run are those its pinned manifests and settings name (Calico's and MetalLB's
manifests as cached, nginx, lab.verify's client) and those the nodes of an earlier lab of the
same profile and runtime held (kubeadm's control-plane images, the runtime's pause image),
which the cache records when it exports them (``images/needed.json``).
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import List, Optional, Tuple

from .cache import Cache, download_name, pinned_downloads
from .images import manifest_images, normalise
from .profiles import Download

#: Vagrant's box store keeps ``org/name`` under this name (lib/vagrant/box_collection.rb, dir_name).
VAGRANT_SLASH = "-VAGRANTSLASH-"


def vagrant_home(environ=os.environ) -> Path:
    """Vagrant's home directory: ``$VAGRANT_HOME``, default ``~/.vagrant.d`` (absolute)."""
    return Path(os.path.abspath(environ.get("VAGRANT_HOME") or Path.home() / ".vagrant.d"))


def vagrant_has_box(name: str, environ=os.environ) -> bool:
    """True when Vagrant's box store (``$VAGRANT_HOME``, default ``~/.vagrant.d``) has a libvirt box
    ``name``: ``boxes/<name>/<version>/[<architecture>/]libvirt/metadata.json`` (Vagrant 2.3, 2.4)."""
    base = vagrant_home(environ) / "boxes" / name.replace("/", VAGRANT_SLASH)
    return any(base.glob("*/libvirt/metadata.json")) or any(base.glob("*/*/libvirt/metadata.json"))


def _manifest_text(cache: Cache, pin: Download) -> Optional[str]:
    path = cache.file_path(pin)
    if not path.is_file():
        return None
    if not pin.member:
        return path.read_text(encoding="utf-8", errors="replace")
    try:
        with tarfile.open(path) as archive:
            member = archive.extractfile(pin.member)
            return member.read().decode("utf-8", errors="replace") if member else None
    except (tarfile.TarError, KeyError, OSError):
        return None


def required_images(cfg, cache: Cache) -> Tuple[List[str], bool]:
    """(every image the nodes of a run of ``cfg`` pull, whether an earlier lab's record completed the list)."""
    profile = cfg.profile
    refs = [normalise(profile.nginx_image), normalise(profile.client_image)]
    manifests = list(profile.metallb_manifests)
    if not profile.calico_images:  # seed-2020's Calico images come with its release archive
        manifests.insert(0, profile.calico_manifest)
    for pin in manifests:
        text = _manifest_text(cache, pin)
        refs += manifest_images(text) if text else []
    recorded = cache.needed(profile.name, cfg.runtime)
    refs += recorded or []
    return sorted(set(refs)), recorded is not None


def baked_box(cfg, cache: Cache):
    """The cached box ``lab.box`` names when ``lab.bake`` made it for this profile and runtime (and
    ``lab.box_url`` is unset, so the Vagrantfile boots it from the cache), else None."""
    box = cache.box(cfg.box) if cfg.box_url is None else None
    return box if box is not None and box.profile == cfg.profile.name and box.runtime == cfg.runtime else None


def offline_problems(cfg, cache: Cache, environ=os.environ) -> List[str]:
    """One line per thing a run of ``cfg`` would download that the cache lacks (empty: it needs nothing)."""
    problems = []
    where = f"the cache ({cache.root})"
    url = cfg.box_url or ""
    local_box = url.startswith("file://") and Path(url[len("file://"):]).is_file()
    cached_box = cfg.box_url is None and cache.box(cfg.box) is not None  # what the Vagrantfile then boots
    if not (local_box or cached_box or vagrant_has_box(cfg.box, environ)):
        source = url or "Vagrant Cloud"
        problems.append(f"lab.offline: the box {cfg.box} is neither in Vagrant's box store nor in {where}; Vagrant "
                        f"would download it from {source}: add it (`vagrant box add`), or import a bundle that has it "
                        "(`invoke lab.cache --import FILE`)")
    for step, download in pinned_downloads(cfg.profile, cfg.runtime):
        if not cache.has(download):
            problems.append(f"lab.offline: step {step} needs {download_name(download)} ({download.url}), which is not "
                            f"in {where}")
    refs, complete = required_images(cfg, cache)
    if not complete:
        problems.append(f"lab.offline: which images kubeadm and {cfg.runtime} pull for Kubernetes "
                        f"{cfg.profile.kubernetes_version} is known once a lab of profile {cfg.profile.name} with "
                        f"runtime {cfg.runtime} ran online with this cache, or a bundle of one was imported")
    for ref in refs:
        if cache.lookup(ref) is None:
            problems.append(f"lab.offline: the image {ref} is not in {where}")
    if baked_box(cfg, cache) is None:
        problems.append(f"lab.offline: steps prepare, runtime and kubernetes install OS packages from the network "
                        f"unless lab.box is a box made by `invoke lab.bake` for profile {cfg.profile.name} and runtime "
                        f"{cfg.runtime}; bake one online (or import a bundle that has one) and set lab.box to it")
    if problems:
        problems.append("lab.offline: nothing was created; run online once, or `invoke lab.cache --import FILE` with a "
                        "bundle of this profile, or set lab.offline to false")
    return problems
