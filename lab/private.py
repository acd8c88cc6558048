"""What keeps the lab's secrets to the user: redaction of every log line, private files and directories.

The secrets are the bootstrap tokens, the cluster-admin client key and certificate of the
kubeconfig, and any PEM private key. :func:`redact` removes them from text before it reaches a
log or a status line; :func:`private_dir`, :func:`append_private` and :func:`write_private`
make the directories 0700 and the files 0600 that hold them.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Union

from .errors import LabError

DIR_MODE = 0o700
FILE_MODE = 0o600

#: A bootstrap token, ``[a-z0-9]{6}.[a-z0-9]{16}``, wherever it stands in a line.
TOKEN = re.compile(r"(?<![a-z0-9])[a-z0-9]{6}\.[a-z0-9]{16}(?![a-z0-9])")
#: A PEM private key block (RSA, EC, PKCS#8, encrypted...), or its start when the end is cut off.
PEM_KEY = re.compile(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(?:-----END \1PRIVATE KEY-----|\Z)", re.S)
#: The credentials of a kubeconfig user, in YAML or JSON.
KUBECONFIG_CREDENTIAL = re.compile(r"((?:client-key-data|client-certificate-data)\"?\s*:\s*\"?)[A-Za-z0-9+/=]+")

REDACTED_TOKEN = "<redacted token>"
REDACTED_KEY = "<redacted private key>"
REDACTED = "<redacted>"

PathLike = Union[str, os.PathLike]


def redact(text: str) -> str:
    """``text`` with every bootstrap token, PEM private key and kubeconfig credential replaced."""
    text = PEM_KEY.sub(REDACTED_KEY, text)
    text = KUBECONFIG_CREDENTIAL.sub(lambda m: m.group(1) + REDACTED, text)
    return TOKEN.sub(REDACTED_TOKEN, text)


def private_dir(path: PathLike, *, owned: bool = False) -> Path:
    """Create ``path`` (and its parents) and make it mode 0700; return it.

    A symlink or a non-directory there is refused; with ``owned`` so is a directory owned by
    another user (for directories in places others can write to).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise LabError(f"{path}: expected a directory of the lab's, found a symlink or a file; remove it")
    if owned and info.st_uid != os.getuid():
        raise LabError(f"{path}: owned by uid {info.st_uid}, not by you (uid {os.getuid()}); remove it")
    if stat.S_IMODE(info.st_mode) != DIR_MODE:
        try:
            os.chmod(path, DIR_MODE)
        except OSError as exc:
            raise LabError(f"{path}: cannot make it private (mode 0700): {exc.strerror}") from exc
    return path


def _private_fd(path: Path, flags: int) -> int:
    fd = os.open(path, flags | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), FILE_MODE)
    if stat.S_IMODE(os.fstat(fd).st_mode) != FILE_MODE:
        os.fchmod(fd, FILE_MODE)
    return fd


def create_private(path: PathLike) -> Path:
    """Create ``path`` empty if missing, mode 0600 either way (its directory 0700)."""
    path = Path(path)
    private_dir(path.parent)
    os.close(_private_fd(path, os.O_WRONLY | os.O_APPEND))
    return path


def append_private(path: PathLike, text: str) -> None:
    """Append ``text`` (redacted, newline-terminated) to the log ``path``, mode 0600."""
    path = Path(path)
    private_dir(path.parent)
    text = redact(text)
    with os.fdopen(_private_fd(path, os.O_WRONLY | os.O_APPEND), "a", encoding="utf-8", errors="replace") as handle:
        handle.write(text if text.endswith("\n") else text + "\n")


def write_private(path: PathLike, text: str, mode: int = FILE_MODE) -> None:
    """Replace ``path`` atomically with ``text``; the file never exists with a wider mode than ``mode``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            os.fchmod(handle.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
