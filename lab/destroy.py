"""``lab.destroy``: Vagrant first, then whatever libvirt still holds of the lab.

Ownership is by the lab's id (:mod:`lab.identity`), never by name alone: the lab's
domains carry it in their description and its network as its UUID, and destroy works
after ``.vagrant`` and the state directory were deleted by hand and after an ``up`` that
failed at any step. A machine made before labs carried an id (no id in its description)
is the lab's when ``.vagrant`` records its UUID, and a same-named network without the
lab's id (and without any other lab's) is the lab's when such machines are attached to
it and only the lab's machines are.

Removed are the lab's domains, the volumes vagrant-libvirt named for them (``<domain>.img``,
``<domain>_<n>.img``), the lab network, and a box image volume of the lab's box once
nothing is backed by it, and only one that is this lab's to remove: one its machines or
their disks were backed by, or one the lab's own ``up`` logs record vagrant-libvirt
uploading. A disk attached to one of the lab's machines by hand is detached first and
kept. Same-named objects of another lab are left alone; then the state directory is kept
(``state.json``, ``.vagrant``) and destroy fails with one line naming them and the
``virsh`` commands that remove them by hand. Safe to run twice; a part that cannot be
removed does not stop the rest, and every such failure is reported at the end.

Its parts (``machines``, ``libvirt``, ``state directory``) are steps of the run's status lines
(:mod:`lab.progress`); in the state directory it removes what :mod:`lab.layout` lists
(:func:`lab.statedir.remove_state`). :func:`show_plan` says all this without doing any of it.
"""

from __future__ import annotations

import os
import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set

from . import identity, layout, machines, network, statedir
from .config import LabConfig
from .context import Context, State
from .errors import LabError, StepError
from .progress import Progress, Silent


def box_volume_prefix(box: str) -> str:
    """Start of the names vagrant-libvirt gives the volumes of ``box``'s image."""
    return box.replace("/", "-VAGRANTSLASH-") + "_vagrant_box_image_"


def vagrant_volume(name: str, domain_names: Iterable[str]) -> bool:
    """True when vagrant-libvirt names a box disk of one of ``domain_names`` so.

    vagrant-libvirt (0.11, ``resolve_disk_settings.rb``) names the disks it makes from the
    box ``<domain>.img``, ``<domain>_1.img``, ...; additional disks would be
    ``<domain>-<dev>.<type>``, but the lab's Vagrantfile asks for none, so such a volume is
    never the lab's.
    """
    return any(re.fullmatch(re.escape(d) + r"(?:_[1-9][0-9]*)?\.img", name) for d in domain_names)


def _undefine_domain(dom, libvirt) -> None:
    if dom.isActive():
        dom.destroy()
    # The lab's machines boot by BIOS (no NVRAM); saved state and snapshots go with them.
    flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    dom.undefineFlags(flags)


def _pool(conn, name: str):
    """The active storage pool ``name`` (refreshed), or None when it is absent or inactive."""
    import libvirt  # noqa: PLC0415

    try:
        pool = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
            raise
        return None
    if not pool.isActive():
        return None
    pool.refresh(0)
    return pool


def _source(el) -> Optional[str]:
    source = el.find("source")
    if source is None:
        return None
    return source.get("file") or source.get("dev") or source.get("volume")


def _domain_root(dom, flags: int = 0):
    return ET.fromstring(dom.XMLDesc(flags))


def _domain_facts(dom):
    root = _domain_root(dom)
    disks = [s for s in (_source(el) for el in root.findall("./devices/disk")) if s]
    nets = [el.get("network") for el in root.findall("./devices/interface/source") if el.get("network")]
    return disks, nets


def _paths_in_use(conn, pool, skip: Set[str] = frozenset()) -> Set[str]:
    """Every disk and backing file of every domain (but those named in ``skip``) and every
    backing file of the pool's volumes."""
    used = set()
    for dom in conn.listAllDomains(0):
        if dom.name() in skip:
            continue
        for el in _domain_root(dom).iter():
            if el.tag == "source" and (el.get("file") or el.get("dev")):
                used.add(el.get("file") or el.get("dev"))
    if pool is not None:
        for vol in pool.listAllVolumes(0):
            root = ET.fromstring(vol.XMLDesc(0))
            used.update(el.text for el in root.findall("./backingStore/path") if el.text)
    return used


#: What vagrant-libvirt (0.11, ``handle_box_image.rb``, its en locale) writes when it uploads a box image.
UPLOAD_LINE = "Uploading base box image as volume into Libvirt storage"


class Survey:
    """What libvirt holds under the lab's names, split into the lab's own and other labs'.

    ``adopt`` maps the domain UUIDs ``.vagrant`` records to their machine names (read from it
    when None): a domain without any lab id, with one of those UUIDs and the name the lab gives
    that machine, was made by this lab before labs carried an id, and is the lab's. A domain is
    the lab's only under the lab's prefix: whatever its description says, destroy never removes
    another name's machine or disks.
    """

    def __init__(self, cfg: LabConfig, conn, owner: identity.Owner, adopt: Optional[Dict[str, str]] = None):
        if adopt is None:
            adopt = {uuid: name for name, uuid in machines.recorded_machines(cfg).items()}
        self.adopt = dict(adopt)
        self.domains: Dict[str, object] = {}
        self.foreign: List[str] = []
        planned = {cfg.domain_name(n) for n in cfg.nodes}
        present = set()
        lab_ids = set()    # every lab id some domain on the host carries
        attached = set()   # the domains attached to a network named like the lab's
        adopted_names = set()  # the lab's machines made before labs carried an id
        for dom in conn.listAllDomains(0):
            name = dom.name()
            present.add(name)
            found = identity.id_in(_domain_root(dom).findtext("description"))
            on_net = cfg.network_name in _domain_facts(dom)[1]
            if found:
                lab_ids.add(found)
            if on_net:
                attached.add(name)
            adopted = found is None and name == cfg.domain_prefix + self.adopt.get(dom.UUIDString(), "\0")
            if name.startswith(cfg.domain_prefix) and (owner.owns(found) or adopted):
                self.domains[name] = dom
                if adopted:
                    adopted_names.add(name)
            elif name in planned or (name.startswith(cfg.domain_prefix) and on_net):
                self.foreign.append(name)
        net, owned = network.owned_network(cfg, conn, owner)
        if net is not None and not owned and net.UUIDString() not in lab_ids:
            # A network made before labs carried an id: the lab's when only the lab's machines of that
            # time (adopted by their .vagrant UUIDs) use it.
            owned = bool(attached) and attached <= adopted_names
        self.network = net if owned else None
        self.network_uuid = net.UUIDString() if owned else None
        if net is not None and not owned:
            self.foreign.insert(0, cfg.network_name)
        # Disks of planned machines whose domain is gone are the lab's, unless another lab holds its name.
        orphans = set() if net is not None and not owned else planned - present
        self.names = set(self.domains) | orphans

    def foreign_line(self, cfg: LabConfig) -> str:
        """One line naming what is left alone, and how to remove it by hand if it is the lab's after all."""
        virsh = f"virsh -c {shlex.quote(cfg.libvirt_uri)}"
        kept = f", and the lab's state in {cfg.state_dir} kept" if cfg.state_dir.exists() else ""
        commands = []
        for name in sorted(self.foreign):
            q = shlex.quote(name)
            if name == cfg.network_name:
                commands.append(f"{virsh} net-destroy {q}; {virsh} net-undefine {q}")
            else:
                commands.append(f"{virsh} destroy {q}; {virsh} undefine --remove-all-storage {q}")
        return (f"lab.name: {', '.join(sorted(self.foreign))} are not this lab's (another checkout's or another "
                "state directory's, made by hand, or made before labs carried an id and not recorded in .vagrant): left "
                f"alone{kept}; if they are really this lab's, remove them "
                "by hand (detach your own disks first: --remove-all-storage deletes every disk of the domain) "
                f"and run `invoke lab.destroy` again: {'; '.join(commands)}")


def owned_domains(cfg: LabConfig, conn, owner: Optional[identity.Owner] = None) -> Dict[str, object]:
    """The lab's domains: those whose description carries the lab's id, and those without any lab id
    whose UUID ``.vagrant`` records."""
    return Survey(cfg, conn, owner or identity.Owner(cfg.state_dir)).domains


def libvirt_leftovers(cfg: LabConfig, conn) -> Dict[str, List[str]]:
    """What libvirt holds of the lab: domains, volumes and networks, by name."""
    survey = Survey(cfg, conn, identity.Owner(cfg.state_dir))
    pool = _pool(conn, cfg.storage_pool)
    volumes = []
    if pool is not None:
        others = _paths_in_use(conn, None, skip=set(survey.domains))
        volumes = sorted(v.name() for v in pool.listAllVolumes(0)
                         if vagrant_volume(v.name(), survey.names) and v.path() not in others)
    return {
        "domains": sorted(survey.domains),
        "volumes": volumes,
        "networks": [cfg.network_name] if survey.network is not None else [],
    }


def foreign_disks(root, name: str) -> List[object]:
    """The disk elements of the domain ``name``'s definition ``root`` that vagrant-libvirt did not make for it."""
    devices = root.find("devices")
    return [el for el in (devices.findall("disk") if devices is not None else [])
            if _source(el) and not vagrant_volume(os.path.basename(_source(el)), [name])]


def release_foreign_disks(dom, conn) -> List[str]:
    """Detach from ``dom`` (stopped first) every disk vagrant-libvirt did not make for it; return them.

    ``vagrant destroy`` deletes every volume attached to a machine (fog-libvirt's
    ``destroy_volumes``), so a disk the user attached must be gone from the domain first.
    """
    import libvirt  # noqa: PLC0415

    root = _domain_root(dom, libvirt.VIR_DOMAIN_XML_INACTIVE)
    foreign = foreign_disks(root, dom.name())
    if not foreign:
        return []
    if dom.isActive():
        dom.destroy()
    for el in foreign:
        root.find("devices").remove(el)
    conn.defineXML(ET.tostring(root, encoding="unicode"))
    return [_source(el) for el in foreign]


def _vagrant_may_destroy(conn, survey: Survey) -> bool:
    """False when ``.vagrant`` names a machine that exists and is not the lab's."""
    import libvirt  # noqa: PLC0415

    ours = {dom.UUIDString() for dom in survey.domains.values()}
    for uuid in survey.adopt:
        try:
            dom = conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError:
            continue
        if dom.UUIDString() not in ours:
            return False
    return True


def _backing_paths(survey: Survey, pool) -> Set[str]:
    """What the lab's own box disks (of its domains, and those left by machines already gone) are backed by."""
    disks, backing = set(), set()
    for name, dom in survey.domains.items():
        for el in _domain_root(dom).findall("./devices/disk"):
            if _source(el) and vagrant_volume(os.path.basename(_source(el)), [name]):
                disks.add(_source(el))
                backing.update(_source(b) for b in el.iter("backingStore") if _source(b))
    if pool is not None:
        for vol in pool.listAllVolumes(0):
            if vol.path() in disks or vagrant_volume(vol.name(), survey.names):
                root = ET.fromstring(vol.XMLDesc(0))
                backing.update(el.text for el in root.findall("./backingStore/path") if el.text)
    return backing


def uploaded_box(state_dir: Path) -> bool:
    """True when one of the lab's own recorded logs shows vagrant-libvirt uploading a box image for it."""
    state_dir = Path(state_dir)
    if not layout.Layout(state_dir).marker.is_file() or state_dir.is_symlink():
        return False
    for rel in statedir.recorded_names(state_dir):
        path = state_dir / rel
        if not (rel.startswith(layout.LOGS_DIR + "/") and statedir.inside(state_dir, path) and path.is_file()
                and not path.is_symlink()):
            continue
        try:
            with open(path, errors="replace") as handle:
                if any(UPLOAD_LINE in line for line in handle):
                    return True
        except OSError:
            continue
    return False


def _remove_network(conn, survey: Survey, libvirt) -> bool:
    """Stop and undefine the network the survey found to be the lab's (False when it is gone)."""
    try:
        net = conn.networkLookupByUUIDString(survey.network_uuid)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
            return False
        raise
    if net.isActive():
        net.destroy()
    net.undefine()
    return True


def context(cfg: LabConfig, progress: Optional[Progress] = None) -> Context:
    """The context destroy runs with: no runner on the nodes, and ``state.json`` never read (destroy
    works with a damaged one); the log is made when Vagrant runs."""
    return Context(cfg, State(layout.Layout(cfg.state_dir).state), progress=progress or Silent())


def _box_volumes(cfg: LabConfig, pool, used: Set[str], backing: Set[str], uploaded: bool) -> list:
    return [vol for vol in pool.listAllVolumes(0)
            if vol.name().startswith(box_volume_prefix(cfg.box)) and vol.path() not in used
            and (vol.path() in backing or uploaded)]


def _vagrant_runs(cfg: LabConfig, conn, survey: Survey) -> Optional[str]:
    """Why ``vagrant destroy`` is not run (None: it is)."""
    if survey.foreign:
        return "same-named objects of another lab exist"
    if not _vagrant_may_destroy(conn, survey):
        return f"{cfg.state_dir}/.vagrant names machines that are not this lab's"
    if not layout.Layout(cfg.state_dir).marker.is_file() or not layout.Layout(cfg.state_dir).vagrantfile.exists():
        return "no Vagrant project of the lab's here"
    return None


def plan(ctx: Context) -> Dict[str, List[str]]:
    """What :func:`destroy` would remove, changing nothing: libvirt's domains, volumes and networks,
    the disks it would detach and keep, the state directory's paths, and what it would leave."""
    cfg = ctx.cfg
    with network.connect(cfg.libvirt_uri) as conn:
        survey = Survey(cfg, conn, identity.Owner(cfg.state_dir))
        pool = _pool(conn, cfg.storage_pool)
        found = {"domains": sorted(survey.domains), "volumes": [], "networks": [], "kept disks": [], "state": [],
                 "left": [survey.foreign_line(cfg)] if survey.foreign else []}
        for name, dom in sorted(survey.domains.items()):
            found["kept disks"] += [f"{name}: {_source(el)}" for el in foreign_disks(_domain_root(dom), name)]
        if pool is not None:
            others = _paths_in_use(conn, None, skip=set(survey.domains))
            gone = [v for v in pool.listAllVolumes(0) if vagrant_volume(v.name(), survey.names) and v.path() not in others]
            used = set(others)
            for vol in pool.listAllVolumes(0):
                if vol.path() not in {v.path() for v in gone}:
                    used.update(el.text for el in ET.fromstring(vol.XMLDesc(0)).findall("./backingStore/path") if el.text)
            boxes = _box_volumes(cfg, pool, used, _backing_paths(survey, pool), uploaded_box(cfg.state_dir))
            found["volumes"] = sorted(v.name() for v in gone + boxes)
        if survey.network is not None:
            found["networks"] = [cfg.network_name]
        why = _vagrant_runs(cfg, conn, survey)
    if not survey.foreign:
        found["state"] = [f"{path}{'/' if kind != 'file' else ''}" for kind, path in statedir.removals(cfg.state_dir)
                          if kind != "dir"]
    found["vagrant"] = [f"would skip vagrant destroy: {why}" if why else "would run vagrant destroy -f"]
    return found


def show_plan(ctx: Context) -> Dict[str, List[str]]:
    """Print what :func:`destroy` would do (``invoke --dry lab.destroy``) and return it."""
    found, say = plan(ctx), ctx.progress.plan
    say(found["vagrant"][0])
    for kind in ("domains", "volumes", "networks"):
        say(f"would remove {len(found[kind])} {kind}" + (f": {', '.join(found[kind])}" if found[kind] else ""))
    for disk in found["kept disks"]:
        say(f"would detach and keep the disk {disk}")
    for path in found["state"]:
        say(f"would remove {path}")
    if found["state"]:
        say(f"would remove {ctx.cfg.state_dir} with its marker, unless files of yours are left in it")
    for line in found["left"]:
        say(f"would leave: {line}")
    say("dry run: nothing was changed")
    return found


def destroy(ctx: Context) -> Dict[str, List[str]]:
    """Destroy the lab; return what was removed from libvirt beyond Vagrant's own work.

    Its parts (``machines``, ``libvirt``, ``state directory``) are steps of ``ctx.progress``.
    Raises :class:`~lab.errors.StepError` (its line already printed) listing what could not be
    removed, after trying everything, and when same-named objects that are not the lab's were
    left: then the state directory is kept as it is, and so is the log of ``vagrant destroy``
    (in the state directory's ``logs/``, removed with the rest when destroy succeeds).
    """
    import libvirt  # noqa: PLC0415

    cfg, progress = ctx.cfg, ctx.progress
    removed = {"domains": [], "volumes": [], "networks": []}
    failures = []

    def attempt(kind, name, action):
        try:
            action()
            removed[kind].append(name)
        except libvirt.libvirtError as exc:
            failures.append(f"cannot remove {kind[:-1]} {name}: {exc.get_error_message()}")

    def fail(part: str, message: str):
        if ctx.log_path is not None:
            message += f" (vagrant destroy's log: {ctx.log_path})"
        progress.fail(f"{part}: {message}")
        return StepError(part, message, ctx.log_path)

    owner = identity.Owner(cfg.state_dir)
    with network.connect(cfg.libvirt_uri) as conn:
        survey = Survey(cfg, conn, owner)
        progress.start("machines")
        for name, dom in survey.domains.items():
            try:
                for disk in release_foreign_disks(dom, conn):
                    progress.warn(f"{name}: disk {disk} was not made by vagrant-libvirt for it: detached and kept")
            except libvirt.libvirtError as exc:
                failures.append(f"cannot detach the disks attached by hand to {name}: {exc.get_error_message()}")
        if failures:
            raise fail("machines", "; ".join(failures) + "; nothing was destroyed; run `invoke lab.destroy` again "
                       "once the cause is fixed")
        # Box images this destroy may remove: those the lab's disks are backed by, found before
        # vagrant removes them, and any the lab's own `up` uploaded.
        backing = _backing_paths(survey, _pool(conn, cfg.storage_pool))
        uploaded = uploaded_box(cfg.state_dir)

        # vagrant destroy of a machine it has no record of deletes the volume named for it
        # (vagrant-libvirt's RemoveStaleVolume): never while another lab holds the lab's names.
        why = _vagrant_runs(cfg, conn, survey)
        if why is None:
            ctx.log_path = statedir.new_log(cfg.state_dir, "destroy")
            progress.follow(ctx.log_path)
            progress.action(f"vagrant destroy -f ({len(survey.domains)} machines)")
            try:
                machines.destroy(cfg, ctx.log_path)
            except LabError as exc:
                reason = exc.reason if isinstance(exc, StepError) else f"vagrant destroy failed ({exc})"
                progress.warn(f"{reason}; removing the lab's machines by their id instead")
            progress.done("machines: vagrant destroy")
        elif survey.foreign:
            progress.skip(f"machines: vagrant destroy skipped ({why})")
        else:
            progress.skip(f"machines: {why}: vagrant destroy skipped, removing the lab's machines by their id")

        progress.start("libvirt")
        for name, dom in Survey(cfg, conn, owner, adopt=survey.adopt).domains.items():
            progress.action(f"domain {name}")
            attempt("domains", name, lambda dom=dom: _undefine_domain(dom, libvirt))
        pool = _pool(conn, cfg.storage_pool)
        if pool is not None:
            progress.action(f"volumes in pool {cfg.storage_pool}")
            used = _paths_in_use(conn, None)
            for vol in pool.listAllVolumes(0):
                if vagrant_volume(vol.name(), survey.names) and vol.path() not in used:
                    attempt("volumes", vol.name(), lambda vol=vol: vol.delete(0))
            for vol in _box_volumes(cfg, pool, _paths_in_use(conn, pool), backing, uploaded):
                attempt("volumes", vol.name(), lambda vol=vol: vol.delete(0))
        if survey.network is not None:
            progress.action(f"network {cfg.network_name}")
            try:
                if _remove_network(conn, survey, libvirt):
                    removed["networks"].append(cfg.network_name)
            except libvirt.libvirtError as exc:
                failures.append(f"cannot remove network {cfg.network_name}: {exc.get_error_message()}")
    if survey.foreign:
        raise fail("libvirt", "; ".join([*failures, survey.foreign_line(cfg)]))
    if failures:
        raise fail("libvirt", "; ".join(failures) + "; run `invoke lab.destroy` again once the cause is fixed")
    progress.done("libvirt: " + ", ".join(f"{len(v)} {k}" for k, v in removed.items()) + " removed")
    progress.start("state directory")
    progress.follow(None)
    statedir.remove_state(cfg.state_dir)
    ctx.log_path = None  # removed with the rest
    progress.done()
    return removed
