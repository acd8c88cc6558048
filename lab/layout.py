"""The state directory's layout: every file and folder the lab writes there, and the keys of its state.

``lab.destroy`` removes what :data:`ENTRIES` lists, each in the way its entry says, and
:class:`Layout` gives the paths; ``tests/test_layout.py`` fills a state directory through the
real code and fails on any path written there that is not listed, so a new file of the lab is
either listed here (and removed by destroy) or caught by the tests.

How an entry is removed (:attr:`Entry.removal`):

``recorded``
    only the files the lab recorded writing in its manifest (:data:`MANIFEST`): a user's own
    file beside them (in ``logs/`` or ``manifests/``) stays.
``lab``
    always: a name only the lab ever makes there (``state.json``, ``ssh_config``, ...).
``tree``
    the whole folder, whatever is in it (made by Vagrant or hydrophone for the lab).
``sockets``
    the unix sockets in the folder (ssh's control sockets), nothing else.
``bookkeeping``
    the marker and the manifest: last, and the marker only when nothing of the user's is left.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Optional, Tuple

MARKER = ".dslab"
MANIFEST = ".dslab-files"
STATE = "state.json"
SSH_CONFIG = "ssh_config"
KUBECONFIG = "kubeconfig"
VAGRANTFILE = "Vagrantfile"
NETWORK_XML = "network.xml"
KUBEADM_CONFIG = "kubeadm-config.yaml"
VAGRANT_DIR = ".vagrant"
LOGS_DIR = "logs"
NODES_DIR = "nodes"
MANIFESTS_DIR = "manifests"
E2E_DIR = "e2e"
CONTROL_DIR = "ssh"
SNAPSHOTS_DIR = "snapshots"
#: What :class:`~lab.context.State` writes beside ``state.json`` before it replaces it.
STATE_TEMP = ".state.*"


@dataclass(frozen=True)
class Entry:
    """One kind of file or folder of the state directory."""

    pattern: str   # relative to the state directory, fnmatch-style ("nodes/*.env")
    what: str
    removal: str   # recorded, lab, tree, sockets or bookkeeping (see the module docstring)
    writer: str    # the module that writes it

    @property
    def temp(self) -> Optional[str]:
        """The pattern of the temporary file written beside a rendered file before it is renamed
        into place (:func:`lab.private.write_private`), or None."""
        if self.removal != "recorded" or self.pattern.startswith(LOGS_DIR + "/"):
            return None
        path = PurePosixPath(self.pattern)
        return str(path.parent / f".{path.name}.*") if str(path.parent) != "." else f".{path.name}.*"


ENTRIES: Tuple[Entry, ...] = (
    Entry(MARKER, "marks the directory as a lab's state directory", "bookkeeping", "render"),
    Entry(MANIFEST, "the files the lab wrote here, one per line", "bookkeeping", "statedir"),
    Entry(STATE, "what the lab has done: its id, tokens, step fingerprints", "lab", "context"),
    Entry(STATE_TEMP, "state.json being replaced", "lab", "context"),
    Entry(SSH_CONFIG, "`vagrant ssh-config` of every machine", "lab", "machines"),
    Entry(KUBECONFIG, "the admin kubeconfig (0600)", "lab", "cluster"),
    Entry(VAGRANTFILE, "the Vagrant project of the lab's machines", "recorded", "render"),
    Entry(NETWORK_XML, "the lab network's libvirt definition", "recorded", "render"),
    Entry(KUBEADM_CONFIG, "kubeadm init's configuration (0600: the bootstrap token)", "recorded", "render"),
    Entry(f"{NODES_DIR}/*.env", "each node's inputs for provision/*.sh", "recorded", "render"),
    Entry(f"{NODES_DIR}/*-join.yaml", "each worker's kubeadm join configuration (0600)", "recorded", "render"),
    Entry(f"{MANIFESTS_DIR}/*.yaml", "the workloads' manifests", "recorded", "render"),
    Entry(f"{LOGS_DIR}/*.log", "one log per run of up, verify, destroy and the workshop tasks", "recorded",
          "statedir"),
    Entry(f"{SNAPSHOTS_DIR}/*/snapshot.json", "what a snapshot of the machines holds (lab.snapshot)", "recorded",
          "snapshots"),
    Entry(f"{SNAPSHOTS_DIR}/*/{STATE}", "the lab's state when the snapshot was taken", "recorded", "snapshots"),
    Entry(f"{SNAPSHOTS_DIR}/*/{KUBECONFIG}", "the admin kubeconfig when the snapshot was taken", "recorded",
          "snapshots"),
    Entry(VAGRANT_DIR, "Vagrant's record of the machines", "tree", "vagrant"),
    Entry(E2E_DIR, "the results of `lab.verify --e2e` (hydrophone)", "tree", "verify.e2e"),
    Entry(CONTROL_DIR, "ssh's control sockets", "sockets", "remote"),
)

#: Folders that hold entries of their own; removed once empty.
FOLDERS = (NODES_DIR, MANIFESTS_DIR, LOGS_DIR, SNAPSHOTS_DIR, f"{SNAPSHOTS_DIR}/*")

#: The keys of ``state.json``: name -> what it holds. A key ending in "." is a prefix.
STATE_KEYS = {
    "lab_id": "the lab's id (lab.identity)",
    "profile": "the profile lab.up was run with, which every later task uses (lab.tasks)",
    "steps": "step name -> fingerprint of what it depended on when it was done (lab.pipeline)",
    "bootstrap_token": "the token of kubeadm init (lab.render)",
    "join_token": "the token the workers join with now (lab.cluster)",
    "ca_cert_hash": "the cluster CA's public key hash that joins pin (lab.cluster)",
    "kubeadm_applied": "digest of the kubeadm configuration init ran with (lab.cluster)",
    "calico_applied": "digest of the Calico manifest applied (lab.cluster)",
    "vagrantfile_applied": "digest of the Vagrantfile the machines were made with (lab.pipeline)",
    "workloads.applied.": "digest of each manifest set applied (lab.workloads)",
}


def state_key_known(key: str) -> bool:
    """True when ``key`` is one of :data:`STATE_KEYS` (or starts with one of its prefixes)."""
    return (key in STATE_KEYS and not key.endswith(".")) or any(
        p.endswith(".") and key.startswith(p) and key != p for p in STATE_KEYS)


def entry_for(rel: str) -> Optional[Entry]:
    """The entry that lists ``rel`` (a path relative to the state directory), or None.

    A path inside a ``tree`` or ``sockets`` folder belongs to that folder's entry; a folder
    of :data:`FOLDERS` to the folder itself; a temporary file beside a rendered one to its entry.
    """
    rel = PurePosixPath(rel).as_posix()
    for entry in ENTRIES:
        if entry.removal in ("tree", "sockets") and (rel == entry.pattern or rel.startswith(entry.pattern + "/")):
            return entry
        if _matches(rel, entry.pattern) or (entry.temp and _matches(rel, entry.temp)):
            return entry
    for folder in FOLDERS:
        if _matches(rel, folder):
            return Entry(folder, "a folder of the lab's files", "folder", "")
    return None


def _matches(rel: str, pattern: str) -> bool:
    """``rel`` matches ``pattern`` component by component (a ``*`` never spans a ``/``)."""
    return rel.count("/") == pattern.count("/") and fnmatch.fnmatchcase(rel, pattern)


_LOG_KIND = re.compile(r"[a-z][a-z0-9-]*")


class Layout:
    """The paths of one state directory."""

    def __init__(self, state_dir):
        self.root = Path(state_dir)

    def path(self, rel: str) -> Path:
        """The path of ``rel`` inside the state directory."""
        return self.root / rel

    @property
    def marker(self) -> Path:
        return self.root / MARKER

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def state(self) -> Path:
        return self.root / STATE

    @property
    def ssh_config(self) -> Path:
        return self.root / SSH_CONFIG

    @property
    def kubeconfig(self) -> Path:
        return self.root / KUBECONFIG

    @property
    def vagrantfile(self) -> Path:
        return self.root / VAGRANTFILE

    @property
    def vagrant_dir(self) -> Path:
        return self.root / VAGRANT_DIR

    @property
    def logs(self) -> Path:
        return self.root / LOGS_DIR

    @property
    def e2e(self) -> Path:
        return self.root / E2E_DIR

    @property
    def control_dir(self) -> Path:
        return self.root / CONTROL_DIR

    def node_env(self, node: str) -> Path:
        return self.root / NODES_DIR / f"{node}.env"

    def node_join(self, node: str) -> Path:
        return self.root / NODES_DIR / f"{node}-join.yaml"

    def manifest_file(self, name: str) -> Path:
        return self.root / MANIFESTS_DIR / name

    def log(self, kind: str, when: Optional[datetime] = None, n: int = 1) -> Path:
        """``logs/<kind>-<time>[-<n>].log``: the ``n``-th log of a ``kind`` of run started at ``when``."""
        if not _LOG_KIND.fullmatch(kind):
            raise ValueError(f"{kind!r} is not a log kind")
        stamp = (when or datetime.now()).strftime("%Y%m%d-%H%M%S")
        return self.logs / (f"{kind}-{stamp}.log" if n == 1 else f"{kind}-{stamp}-{n}.log")

    def listed(self, path: Path) -> Optional[Entry]:
        """The entry that lists ``path`` (inside the state directory), or None."""
        try:
            rel = Path(path).relative_to(self.root)
        except ValueError:
            return None
        return entry_for(rel.as_posix()) if rel.parts else None
