"""Lab-wide snapshots: every node's machine captured at one moment, the lab's state kept beside them.

``take`` pauses every node, takes each one's internal snapshot with its memory (libvirt's
``virDomainSnapshotCreateXML`` on the paused domain: qemu's ``savevm`` into the node's qcow2
disk, as vagrant-libvirt makes every box disk) and resumes them together, so etcd and the
kubelets are from the same moment. ``restore`` reverts every node (paused), resumes them
together and sets each node's clock (a reverted guest resumes with its old time), then reads
the clocks back. A snapshot's libvirt name carries the lab's id (``dslab-<lab id>-<name>``):
another lab's snapshot or one made by hand is never touched. ``<state_dir>/snapshots/<name>/``
keeps ``snapshot.json`` (when, which machines, the disk space each took, the lab's settings)
and copies of ``state.json`` and the kubeconfig (0600): after a restore ``lab.up`` knows what
is done, and a snapshot of a lab built with other settings is refused.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from . import config as lab_config
from . import identity, machines, network, statedir
from .context import read_state
from .errors import ConfigError, LabError
from .private import private_dir, write_private
from .remote import SshRunner

DEFAULT_NAME = "ready"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}")
SNAPSHOT_DIR = "snapshots"
META = "snapshot.json"
STATE_COPY = "state.json"
KUBECONFIG_COPY = "kubeconfig"
#: The settings a snapshot belongs to: a lab built with other values of any of them is another lab.
SETTINGS = ("name", "profile", "box", "domain", "nodes", "network_ipv4", "network_ipv6", "dhcp_ipv4_range",
            "dhcp_ipv6_range", "pod_subnets", "service_subnets", "docker_ipv6_cidr", "node_cidr_mask_ipv4",
            "node_cidr_mask_ipv6", "metallb_ipv4_range", "metallb_ipv6_range", "external_ipv4", "external_ipv6",
            "runtime", "kube_proxy_mode")
#: A restored node's clock may be off by at most this much once set (seconds).
CLOCK_TOLERANCE_S = 2.0
#: How long a resumed node may take to answer ssh again.
SSH_BACK_S = 120

Report = Callable[[str], None]


def check_name(name, task: str) -> str:
    """``name`` when it is a snapshot name, else a one-line :class:`ConfigError` naming ``lab.<task> --name``."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ConfigError([f"lab.{task} --name: {lab_config.shown(name)} is not a snapshot name; use up to 40 "
                           "letters, digits, '.', '_' or '-', starting with a letter or digit"])
    return name


def libvirt_name(lab_id: str, name: str) -> str:
    """The libvirt name of the lab's snapshot ``name``: it carries the lab's id."""
    return f"dslab-{lab_id}-{name}"


def settings(cfg) -> Dict[str, object]:
    """The effective values of :data:`SETTINGS` (as ``lab.config`` prints them)."""
    described = json.loads(lab_config.describe(cfg))
    return {key: described.get(key) for key in SETTINGS}


def directory(cfg, name: str) -> Path:
    """Where the lab keeps what belongs with its snapshot ``name``."""
    return cfg.state_dir / SNAPSHOT_DIR / name


# ---------------------------------------------------------------- the lab's machines


def _libvirt():
    import libvirt  # noqa: PLC0415

    return libvirt


def lab_domains(cfg, conn) -> Dict[str, object]:
    """Node name → libvirt domain of every node whose machine exists and is the lab's.

    A machine is the lab's when its description carries the lab's id, or, made before labs
    carried one, when ``.vagrant`` records its UUID under that node. A same-named machine of
    another lab is a :class:`LabError`.
    """
    owner = identity.Owner(cfg.state_dir)
    recorded = machines.recorded_machines(cfg)
    found, foreign = {}, []
    for node in cfg.nodes:
        dom = machines.lookup(conn, cfg.domain_name(node))
        if dom is None:
            continue
        lab_id = identity.id_in(ET.fromstring(dom.XMLDesc(0)).findtext("description"))
        if owner.owns(lab_id) or (lab_id is None and recorded.get(node.name) == dom.UUIDString()):
            found[node.name] = dom
        else:
            foreign.append(cfg.domain_name(node))
    if foreign:
        raise LabError(f"lab.name: {', '.join(foreign)} exist but are not this lab's machines; nothing done "
                       "(choose another lab.name, or run the task where that lab was made)")
    return found


def disk_bytes(dom) -> int:
    """The space the domain's disks take on the host (libvirt's ``physical`` size, summed)."""
    targets = ET.fromstring(dom.XMLDesc(0)).findall("./devices/disk[@device='disk']/target")
    return sum(dom.blockInfo(el.get("dev"))[2] for el in targets if el.get("dev"))


def _snapshot_of(dom, snapshot_name: str):
    libvirt = _libvirt()
    try:
        return dom.snapshotLookupByName(snapshot_name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
            return None
        raise


def delete_all(dom) -> List[str]:
    """Delete every snapshot of ``dom``, a machine about to be destroyed (libvirt refuses to undefine a
    domain that has any; those not made by the lab go with it too); return their names."""
    names = []
    for snap in dom.listAllSnapshots(0):
        names.append(snap.getName())
        snap.delete(0)
    return names


def _on_all(items: Dict[str, object], action) -> Tuple[Dict[str, object], Dict[str, Exception]]:
    """Run ``action(name, item)`` for every item in parallel: (results, failures), by name."""
    with ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        futures = {name: pool.submit(action, name, item) for name, item in items.items()}
    failures = {name: f.exception() for name, f in futures.items() if f.exception() is not None}
    return {name: f.result() for name, f in futures.items() if name not in failures}, failures


def _message(exc: Exception) -> str:
    get = getattr(exc, "get_error_message", None)
    return (get() if get else None) or str(exc) or type(exc).__name__


def _resume(domains: Dict[str, object]) -> List[str]:
    """Resume every paused domain; the lines of those that could not be resumed."""
    libvirt = _libvirt()
    problems = []
    for name, dom in domains.items():
        try:
            if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()
        except libvirt.libvirtError as exc:
            problems.append(f"{name} could not be resumed ({exc.get_error_message()}): "
                            f"virsh resume {shlex.quote(dom.name())}")
    return problems


def _machines(cfg, conn, task: str) -> Dict[str, object]:
    domains = lab_domains(cfg, conn)
    missing = [n.name for n in cfg.nodes if n.name not in domains]
    if missing:
        what = "no machines" if len(missing) == len(cfg.nodes) else f"no machine for {', '.join(missing)}"
        raise LabError(f"lab.{task}: lab {cfg.name} has {what}; run `invoke lab.up --until machines` first"
                       + ("; a snapshot lives in the machines' disks and went with them" if task == "restore" else ""))
    return domains


# ---------------------------------------------------------------- snapshot


def _snapshot_xml(cfg, lab_id: str, name: str) -> str:
    root = ET.Element("domainsnapshot")
    ET.SubElement(root, "name").text = libvirt_name(lab_id, name)
    tag = identity.DESCRIPTION_TAG + lab_id
    ET.SubElement(root, "description").text = f"dslab lab {cfg.name} snapshot {name}; {tag}"
    # The memory of the running (paused) domain, saved inside its qcow2 disk with the disk's state.
    ET.SubElement(root, "memory", snapshot="internal")
    return ET.tostring(root, encoding="unicode")


def take(cfg, name: str = DEFAULT_NAME, report: Report = lambda line: None, clock=time.monotonic) -> dict:
    """Snapshot every node of the lab at one moment; return what was recorded (``snapshot.json``).

    A snapshot of the same name is replaced. Every node must be running. Raises
    :class:`ConfigError` (a bad name) before anything, :class:`LabError` on a failure; the
    nodes are resumed whatever happens.
    """
    libvirt = _libvirt()
    check_name(name, "snapshot")
    lab_id = identity.recorded_id(cfg.state_dir)
    if lab_id is None:
        raise LabError(f"lab.snapshot: no lab machines known in {cfg.state_dir}; run `invoke lab.up --until "
                       "machines` first")
    state = read_state(cfg.state_dir / "state.json")
    started = clock()
    snap_name = libvirt_name(lab_id, name)
    with network.connect(cfg.libvirt_uri) as conn:
        domains = _machines(cfg, conn, "snapshot")
        stopped = [n for n, dom in domains.items() if dom.state()[0] != libvirt.VIR_DOMAIN_RUNNING]
        if stopped:
            raise LabError(f"lab.snapshot: {', '.join(stopped)} not running; run `invoke lab.up` first")
        old = [s for s in (_snapshot_of(dom, snap_name) for dom in domains.values()) if s is not None]
        if old:
            report(f"replacing snapshot {name}")
        for snap in old:
            snap.delete(0)
        before = {n: disk_bytes(dom) for n, dom in domains.items()}
        xml = _snapshot_xml(cfg, lab_id, name)
        paused, failures = {}, {}
        pause_started = clock()
        try:
            for node, dom in domains.items():
                try:
                    dom.suspend()
                except libvirt.libvirtError as exc:
                    failures[node] = exc
                    break
                paused[node] = dom
            if not failures:
                failures = _on_all(domains, lambda node, dom: dom.snapshotCreateXML(xml, 0))[1]
            if failures:  # all nodes or none: drop the snapshots the others got
                for dom in domains.values():
                    made = _snapshot_of(dom, snap_name)
                    if made is not None:
                        made.delete(0)
        finally:
            problems = _resume(paused)
        paused_s = clock() - pause_started
        _refuse_failures("lab.snapshot", "snapshot", failures, problems, f"no snapshot {name} was kept")
        nodes = {n: {"domain": dom.name(), "uuid": dom.UUIDString(), "bytes": max(0, disk_bytes(dom) - before[n])}
                 for n, dom in domains.items()}
    taken = datetime.now(timezone.utc)
    meta = {"name": name, "libvirt_name": snap_name, "lab_id": lab_id, "taken": taken.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "settings": settings(cfg), "nodes": nodes, "paused_s": round(paused_s, 3),
            "kubeconfig": (cfg.state_dir / "kubeconfig").is_file()}
    _keep(cfg, name, meta, state)
    meta["seconds"] = round(clock() - started, 3)
    return meta


def _keep(cfg, name: str, meta: dict, state: dict) -> None:
    """Write ``snapshot.json`` and the copies of the lab's state and kubeconfig (all 0600)."""
    where = private_dir(directory(cfg, name))
    private_dir(where.parent)
    files = [where / META, where / STATE_COPY]
    write_private(where / STATE_COPY, json.dumps(state, indent=2, sort_keys=True))
    kubeconfig = cfg.state_dir / "kubeconfig"
    if meta["kubeconfig"]:
        write_private(where / KUBECONFIG_COPY, kubeconfig.read_text())
        files.append(where / KUBECONFIG_COPY)
    else:
        (where / KUBECONFIG_COPY).unlink(missing_ok=True)
    write_private(where / META, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    statedir.record(cfg.state_dir, files)


def _refuse_failures(task: str, verb: str, failures: Dict[str, Exception], problems: List[str], then: str) -> None:
    """One :class:`LabError` line for what libvirt could not do on some nodes (``failures``) and
    for the nodes that could not be resumed (``problems``); nothing when all went well."""
    if failures:
        lines = "; ".join(f"{n}: {_message(e)}" for n, e in failures.items())
        raise LabError(f"{task}: libvirt could not {verb} {lines}; {then}"
                       + (f"; {'; '.join(problems)}" if problems else ""))
    if problems:
        raise LabError(f"{task}: " + "; ".join(problems))


# ---------------------------------------------------------------- what is kept


def recorded(cfg) -> Dict[str, Optional[dict]]:
    """Name → ``snapshot.json`` of every snapshot the lab keeps (None when it cannot be read)."""
    found, root = {}, cfg.state_dir / SNAPSHOT_DIR
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if not (NAME_RE.fullmatch(path.name) and (path / META).is_file()):
            continue
        try:
            meta = json.loads((path / META).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = None
        found[path.name] = meta if isinstance(meta, dict) and isinstance(meta.get("nodes"), dict) else None
    return found


def _mib(count: int) -> str:
    return f"{count / 2**20:.0f} MiB"


def summary(meta: dict) -> str:
    """One line about a snapshot just taken."""
    sizes = ", ".join(f"{n} {_mib(v['bytes'])}" for n, v in meta["nodes"].items())
    return (f"snapshot {meta['name']} of {len(meta['nodes'])} nodes taken in {meta.get('seconds', 0):.1f} s "
            f"(nodes paused {meta['paused_s']:.1f} s; disk space: {sizes})")


def listing(cfg, conn=None) -> List[str]:
    """Lines of ``lab.snapshots``: per snapshot and node, the time taken and the disk space it took.

    With ``conn``, a snapshot that libvirt no longer holds for a node is marked so.
    """
    lines = []
    metas = recorded(cfg)
    for name, meta in sorted(metas.items(), key=lambda item: (item[1] or {}).get("taken", "")):
        if meta is None:
            lines.append(f"{name:<16} damaged: {directory(cfg, name) / META} cannot be read")
        for node, info in (meta or {}).get("nodes", {}).items():
            there = conn is None or _still_there(conn, info, meta.get("libvirt_name", ""))
            gone = "" if there else "  (gone from libvirt)"
            lines.append(f"{name:<16} {meta.get('taken', '?'):<21} {node:<16} {_mib(info.get('bytes', 0)):>9}{gone}")
    return lines


def _still_there(conn, info: dict, snapshot_name: str) -> bool:
    libvirt = _libvirt()
    try:
        dom = conn.lookupByUUIDString(info.get("uuid", ""))
    except libvirt.libvirtError:
        return False
    return _snapshot_of(dom, snapshot_name) is not None


# ---------------------------------------------------------------- restore


def _known(cfg, name: str) -> dict:
    metas = recorded(cfg)
    if name not in metas:
        names = ", ".join(sorted(metas))
        more = f"snapshots: {names}" if names else "it has none: take one with `invoke lab.snapshot`"
        raise ConfigError([f"lab.restore --name: lab {cfg.name} has no snapshot {lab_config.shown(name)}; {more}"])
    meta = metas[name]
    if meta is None:
        raise ConfigError([f"lab.restore --name: {directory(cfg, name) / META} cannot be read; take snapshot "
                           f"{name} again"])
    return meta


def check_restorable(cfg, name: str) -> dict:
    """The recorded snapshot ``name`` when this lab's configuration may restore it, else a one-line ConfigError."""
    check_name(name, "restore")
    meta = _known(cfg, name)
    read_state(cfg.state_dir / "state.json")  # a damaged record is one line, before anything
    differ = [key for key in SETTINGS if meta.get("settings", {}).get(key) != settings(cfg).get(key)]
    if differ:
        raise ConfigError([f"lab.restore: snapshot {name} is of another lab configuration "
                           f"({', '.join('lab.' + k for k in differ)} differ); nothing restored: restore it with "
                           "the settings it was taken with, or take a new snapshot"])
    if meta.get("lab_id") != identity.recorded_id(cfg.state_dir):
        raise ConfigError([f"lab.restore: snapshot {name} was taken by another lab (another state directory or "
                           "lab id); nothing restored"])
    read_state(directory(cfg, name) / STATE_COPY)  # a damaged copy is refused before any machine is touched
    return meta


def _revert(dom, snap) -> None:
    libvirt = _libvirt()
    flags = libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED
    try:
        dom.revertToSnapshot(snap, flags)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_SNAPSHOT_REVERT_RISKY:
            raise
        # libvirt asks for FORCE when it cannot prove the saved configuration matches; the
        # snapshot is of this very machine (vagrant-libvirt always forces its reverts).
        dom.revertToSnapshot(snap, flags | libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_FORCE)


def close_connections(runner: SshRunner, nodes: List[str]) -> None:
    """End the lab's shared ssh connections to ``nodes``: a reverted node knows nothing of them."""
    for node in nodes:
        try:
            subprocess.run(["ssh", "-F", str(runner.ssh_config), "-o", f"ControlPath={runner.control_path()}",
                            "-O", "exit", node], capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            pass


def restore(cfg, name: str = DEFAULT_NAME, report: Report = lambda line: None, runner: Optional[SshRunner] = None,
            open_log: Optional[Callable[[], Path]] = None, clock=time.monotonic, now=time.time) -> dict:
    """Bring every node back to snapshot ``name``, restore the lab's state, set and check the clocks.

    Returns ``{"seconds", "offsets": {node: seconds}, "taken", "log"}``. Bad input (unknown
    name, another configuration) is a :class:`ConfigError`, found before anything changes; no
    machines, or a machine without that snapshot, is a :class:`LabError`, also before. The
    clocks are set over ssh with ``runner``, else with one logging to ``open_log()``.
    """
    meta = check_restorable(cfg, name)
    ssh_config = cfg.state_dir / "ssh_config"
    if runner is None and not ssh_config.is_file():
        raise LabError(f"lab.restore: no lab machines known in {cfg.state_dir}; run `invoke lab.up --until machines` "
                       "first")
    started = clock()
    with network.connect(cfg.libvirt_uri) as conn:
        domains = _machines(cfg, conn, "restore")
        snaps = {n: _snapshot_of(dom, meta["libvirt_name"]) for n, dom in domains.items()}
        lacking = [n for n, s in snaps.items() if s is None]
        if lacking:
            raise LabError(f"lab.restore: {', '.join(lacking)} have no snapshot {name} (their machines were made "
                           "after it was taken); nothing restored: take a new snapshot")
        log = open_log() if runner is None and open_log else None
        runner = runner or SshRunner(ssh_config, log, "restore")
        report(f"reverting {len(domains)} nodes to snapshot {name} (taken {meta.get('taken')})")
        close_connections(runner, list(domains))
        failures = _on_all(domains, lambda node, dom: _revert(dom, snaps[node]))[1]
        problems = _resume(domains)
    _refuse_failures("lab.restore", "revert", failures, problems, "run `invoke lab.restore` again")
    _put_back(cfg, name, meta)
    offsets = set_clocks(runner, list(domains), now=now, clock=clock)
    return {"seconds": round(clock() - started, 3), "offsets": offsets, "taken": meta.get("taken"), "log": log}


def _put_back(cfg, name: str, meta: dict) -> None:
    """The lab's state and kubeconfig as they were when the snapshot was taken."""
    where = directory(cfg, name)
    write_private(cfg.state_dir / "state.json", (where / STATE_COPY).read_text())
    kubeconfig = cfg.state_dir / "kubeconfig"
    if meta.get("kubeconfig") and (where / KUBECONFIG_COPY).is_file():
        write_private(kubeconfig, (where / KUBECONFIG_COPY).read_text())
    else:
        kubeconfig.unlink(missing_ok=True)  # of a cluster the restore took away


# ---------------------------------------------------------------- clocks


def clock_command(epoch: float) -> str:
    """Set the node's clock to ``epoch`` (UTC seconds), then its RTC, then let chrony step if it runs."""
    return (f"date -u -s @{epoch:.3f} >/dev/null"
            " && { ! command -v hwclock >/dev/null || hwclock --systohc >/dev/null 2>&1 || true; }"
            " && { ! command -v chronyc >/dev/null || chronyc -a makestep >/dev/null 2>&1 || true; }")


def _answering(runner: SshRunner, node: str, clock, deadline: float) -> None:
    last = "no answer"
    while True:
        try:
            result = runner.run(node, ["true"], check=False, timeout=30)
        except LabError as exc:
            last = str(exc)
        else:
            if result.ok:
                return
            last = (result.stderr or result.stdout).strip() or f"exit {result.returncode}"
        if clock() >= deadline:
            raise LabError(f"{node} does not answer ssh after the restore ({last.splitlines()[-1]})")
        time.sleep(2)


def set_clocks(runner: SshRunner, nodes: List[str], now=time.time, clock=time.monotonic,
               tolerance: float = CLOCK_TOLERANCE_S) -> Dict[str, float]:
    """Set every node's clock to the host's, read it back; node → offset in seconds.

    The time sent is the host's plus half a measured round trip; the check reads the node's
    clock between two host readings. A node off by more than ``tolerance`` is a :class:`LabError`.
    """
    deadline = clock() + SSH_BACK_S

    def one(node: str) -> float:
        _answering(runner, node, clock, deadline)
        sent = now()
        runner.run(node, ["true"], timeout=60)
        half_trip = (now() - sent) / 2
        runner.run(node, clock_command(now() + half_trip), timeout=60)
        before = now()
        seen = runner.run(node, ["date", "-u", "+%s.%N"], timeout=60).stdout.strip()
        after = now()
        try:
            return float(seen) - (before + after) / 2
        except ValueError:
            raise LabError(f"{node}: `date -u +%s.%N` printed {lab_config.shown(seen)}, not a time") from None

    offsets, failures = _on_all({node: None for node in nodes}, lambda node, _: one(node))
    problems = [f"{n}: {_message(e)}" for n, e in failures.items()]
    problems += [f"{n}: clock is {v:+.1f} s off the host's after setting it" for n, v in offsets.items()
                 if abs(v) > tolerance]
    if problems:
        raise LabError("lab.restore: the machines are restored, but not every clock could be set: "
                       + "; ".join(problems))
    return offsets
