"""The lab's state directory: which directory may be claimed, and what the lab wrote there.

A state directory is claimed only when it is new, empty, or already carries the lab's
marker; a system directory or a home directory never is. Every file the lab writes into
it is recorded in a manifest, and destroy removes only recorded files (plus the few that
only the lab ever makes there: ``state.json``, ``ssh_config``, ``kubeconfig``, ``.vagrant``),
so a user's own file in ``logs/`` or ``manifests/`` survives.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path, PurePosixPath
from typing import Iterable, List, Optional

from .errors import ConfigError

MARKER = ".dslab"
MANIFEST = ".dslab-files"

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
