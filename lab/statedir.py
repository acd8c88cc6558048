"""The lab's state directory: which directory may be claimed, what the lab wrote there, and its removal.

A state directory is claimed only when it is new, empty, or already carries the lab's
marker; a system directory or a home directory never is. Every file the lab writes into
it is recorded in a manifest, and destroy removes what :mod:`lab.layout` lists, each as its
entry says: recorded files only where a user may keep files of their own (``logs/``,
``manifests/``), the names and folders only the lab makes there whole.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Iterable, List, Optional, Tuple

from . import layout
from .errors import ConfigError
from .private import create_private

MARKER = layout.MARKER
MANIFEST = layout.MANIFEST

#: Never a state directory: the root, the top-level system directories, and these below them.
SYSTEM_DIRS = ("/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/media",
               "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/snap", "/srv", "/sys", "/tmp", "/usr", "/var",
               "/usr/bin", "/usr/lib", "/usr/local", "/usr/sbin", "/usr/share", "/var/lib", "/var/log",
               "/var/tmp", "/run/user")
#: Nothing inside these is ever a state directory.
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/sbin", "/sys", "/usr")


def _homes() -> List[Path]:
    homes = {Path.home()}
    for user in (os.environ.get("SUDO_USER"), os.environ.get("USER")):
        if user:
            try:
                homes.add(Path(pwd.getpwnam(user).pw_dir))
            except KeyError:
                pass
    return [h.resolve() for h in homes]


def refusal(path: Path) -> Optional[str]:
    """Why ``path`` can never be a state directory, or None."""
    where = Path(os.path.abspath(path)).resolve()
    if any(where == Path(d).resolve() for d in SYSTEM_DIRS):
        return "a system directory"
    if any(Path(tree).resolve() in where.parents for tree in SYSTEM_TREES):
        return "inside a system directory"
    for home in _homes():
        if where == home:
            return "a home directory"
        if where in home.parents:
            return "a directory that holds home directories"
    return None


def check(path: Path, setting: str) -> None:
    """Raise :class:`ConfigError` (one line naming ``setting``) unless the lab may claim ``path``."""
    path = Path(path)
    reason = refusal(path)
    fix = f"set {setting} to a new or empty directory, or to one the lab made"
    if reason:
        raise ConfigError([f"{setting}: {path} is {reason}, never the lab's; {fix}"])
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise ConfigError([f"{setting}: {path} exists and is not a directory; {fix}"])
    if path.is_dir() and not (path / MARKER).is_file():
        try:
            empty = next(path.iterdir(), None) is None
        except OSError as exc:
            raise ConfigError([f"{setting}: cannot read {path} ({exc.strerror}); {fix}"]) from None
        if not empty:
            raise ConfigError([f"{setting}: {path} is not empty and is not a dslab state directory (no {MARKER} "
                               f"in it); {fix}"])


def _relative(state_dir: Path, path: Path) -> Optional[str]:
    try:
        rel = Path(os.path.abspath(path)).relative_to(Path(os.path.abspath(state_dir)))
    except ValueError:
        return None
    return rel.as_posix() if rel.parts else None


def record(state_dir: Path, paths: Iterable[Path]) -> None:
    """Add ``paths`` (files the lab wrote under ``state_dir``) to its manifest."""
    state_dir = Path(state_dir)
    if not (state_dir / MARKER).is_file():
        return  # not a directory the lab marked as its own
    known = set(recorded_names(state_dir))
    new = [rel for rel in (_relative(state_dir, p) for p in paths) if rel and rel not in known]
    if not new:
        return
    fd = os.open(state_dir / MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as handle:
        handle.write("".join(f"{rel}\n" for rel in dict.fromkeys(new)))


def recorded_names(state_dir: Path) -> List[str]:
    """The manifest's entries: relative paths inside ``state_dir`` (anything else is ignored)."""
    try:
        lines = (Path(state_dir) / MANIFEST).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    names = []
    for line in lines:
        rel = PurePosixPath(line)
        if line and not rel.is_absolute() and ".." not in rel.parts and line not in names:
            names.append(line)
    return names


def new_log(state_dir: Path, kind: str) -> Path:
    """A new, empty log of this run (``logs/<kind>-<time>[-<n>].log``, 0600), recorded as the lab's."""
    where, now, n = layout.Layout(state_dir), datetime.now(), 1
    path = where.log(kind, now)
    while path.exists():  # two runs within one second: each keeps its own log
        n += 1
        path = where.log(kind, now, n)
    create_private(path)
    record(state_dir, [path])
    return path


def inside(state_dir: Path, path: Path) -> bool:
    """True when ``path``'s directory is really inside ``state_dir`` (no symlinked parent)."""
    real = Path(os.path.realpath(state_dir))
    try:
        rel = Path(os.path.abspath(path)).relative_to(Path(os.path.abspath(state_dir)))
    except ValueError:
        return False
    return Path(os.path.realpath(path.parent)) == (real / rel).parent


def _is_file(path: Path) -> bool:
    try:
        return not stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def removals(state_dir: Path) -> List[Tuple[str, Path]]:
    """What :func:`remove_state` removes from ``state_dir``, in order: ("file", path), ("tree", path),
    ("dir", path) for a folder that is removed when it is empty then; [] when it is not the lab's."""
    state_dir = Path(state_dir)
    if not (state_dir / MARKER).is_file() or state_dir.is_symlink():
        return []
    trees = [state_dir / e.pattern for e in layout.ENTRIES if e.removal == "tree"]
    trees = [p for p in trees if p.is_dir() and not p.is_symlink()]
    files, parents = [], set()

    def add_file(path: Path) -> None:
        if (path not in files and inside(state_dir, path) and _is_file(path)
                and not any(tree in path.parents for tree in trees)):
            files.append(path)
            parents.update(p for p in path.parents if p != state_dir and state_dir in p.parents)

    for rel in recorded_names(state_dir):
        add_file(state_dir / rel)
    for entry in layout.ENTRIES:
        if entry.removal == "lab":
            for path in sorted(state_dir.glob(entry.pattern)):
                add_file(path)
        elif entry.removal == "recorded" and entry.temp:
            for path in sorted(state_dir.glob(entry.temp)):
                add_file(path)  # left by a write that was interrupted
        elif entry.removal == "sockets":
            path = state_dir / entry.pattern
            if path.is_dir() and not path.is_symlink():
                files.extend(item for item in sorted(path.iterdir()) if stat.S_ISSOCK(os.lstat(item).st_mode))
                parents.add(path)
    dirs = sorted(parents, key=lambda p: len(p.parts), reverse=True)
    return [("file", p) for p in files] + [("tree", p) for p in trees] + [("dir", p) for p in dirs]


def remove_state(state_dir: Path) -> None:
    """Remove what the lab wrote into ``state_dir`` (and the directory, if then empty).

    Only a directory with the lab's marker is touched, and in it what :func:`removals` lists:
    a user's own file, in ``logs/`` or anywhere else, stays, and so does the marker beside it.
    """
    state_dir = Path(state_dir)
    plan = removals(state_dir)
    if not plan:
        return
    for kind, path in plan:
        if kind == "file":
            if _is_file(path):
                path.unlink()
        elif kind == "tree":
            shutil.rmtree(path)
        else:
            try:
                path.rmdir()
            except OSError:
                pass  # not empty: someone else's files are in it
    bookkeeping = {MARKER, MANIFEST}
    if all(entry.name in bookkeeping for entry in state_dir.iterdir()):
        for name in bookkeeping:
            if _is_file(state_dir / name):
                (state_dir / name).unlink()
        state_dir.rmdir()
    elif _is_file(state_dir / MANIFEST):
        (state_dir / MANIFEST).unlink()  # what it listed is gone; the marker stays with the rest


def mark(out_dir: Path, cfg) -> None:
    """Create ``out_dir`` with the lab's marker in it.

    A system or home directory, or a non-empty one without the marker, is refused
    (:class:`~lab.errors.ConfigError` naming ``lab.state_dir``, or ``--out`` for another
    directory) before anything is written.
    """
    out_dir = Path(out_dir)
    same = Path(os.path.abspath(out_dir)) == Path(os.path.abspath(cfg.state_dir))
    check(out_dir, "lab.state_dir" if same else "--out")
    out_dir.mkdir(parents=True, exist_ok=True)
    marker = out_dir / MARKER
    if not marker.exists():
        marker.write_text(f"state directory of dslab lab {cfg.name}\n")
