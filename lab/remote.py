"""Running commands on the lab's nodes over ssh, with the ssh config Vagrant reports.

One ``vagrant ssh-config`` per lab (cached in the state directory) instead of one
``vagrant ssh`` per command: each command is a plain ``ssh -F``, which is fast enough to
run the many small idempotence checks the steps make.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import os
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, Optional

from . import layout
from .context import Command, Result
from .errors import LabError, StepError
from .private import append_private, private_dir, redact

SSH_OPTIONS = ("-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR")
#: One ssh connection per node, reused by every command (a login costs seconds on a slow VM).
CONTROL_PERSIST_S = 60
DEFAULT_TIMEOUT_S = 1800
#: Room for a unix socket path: sun_path is 108 bytes on Linux, 104 on the BSDs and macOS.
SOCKET_PATH_MAX = 104
#: What ssh adds to the control directory: "/" and %C (a SHA-1 in hex), and while the master
#: sets up, "." and 16 random characters (OpenSSH mux.c, muxserver_listen).
CONTROL_NAME = "%C"
CONTROL_SUFFIX_LEN = 1 + 40 + 1 + 16
CONTROL_SUBDIR = layout.CONTROL_DIR
#: Fallback control directories made with mkdtemp, one per state directory, removed at exit.
_FALLBACK_DIRS: Dict[str, Path] = {}


def as_shell(command: Command) -> str:
    """A command list or string as one shell command line."""
    return command if isinstance(command, str) else shlex.join(str(c) for c in command)


#: What ssh takes as it is in ``-o ControlPath=...``: it splits the value at whitespace and
#: expands ``%`` and ``${...}`` in it (ssh_config(5), TOKENS and ENVIRONMENT VARIABLES).
_SSH_LITERAL = re.compile(r"[A-Za-z0-9._/+-]+")


def _fits(directory: Path) -> bool:
    """True when ``directory`` can hold the control sockets: short enough, and read by ssh as written."""
    text = str(directory)
    return len(os.fsencode(text)) + CONTROL_SUFFIX_LEN < SOCKET_PATH_MAX and bool(_SSH_LITERAL.fullmatch(text))


def _fallback_dir(key: str) -> Path:
    """A 0700 directory of the user's for control sockets when the state directory's path is too long."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        try:
            info = os.lstat(runtime)
        except OSError:
            info = None
        # pam_systemd's /run/user/<uid>: the user's own, 0700.
        # One directory per lab: two labs may have nodes at the same address, port and user.
        candidate = Path(runtime) / "dslab-ssh" / hashlib.sha256(key.encode()).hexdigest()[:12]
        if (info is not None and stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
                and not stat.S_IMODE(info.st_mode) & 0o077 and _fits(candidate)):
            private_dir(candidate.parent, owned=True)
            return private_dir(candidate, owned=True)
    if key not in _FALLBACK_DIRS:
        # mkdtemp: a new name, created 0700 by this user, never one someone else prepared.
        path = Path(tempfile.mkdtemp(prefix=f"dslab-{os.getuid()}-", dir="/tmp"))
        private_dir(path, owned=True)
        _FALLBACK_DIRS[key] = path
        atexit.register(shutil.rmtree, path, True)
    return _FALLBACK_DIRS[key]


def control_dir(state_dir: Path) -> Path:
    """Where ssh keeps the lab's control sockets: ``<state_dir>/ssh`` (0700), or a 0700 directory of
    the user's under ``$XDG_RUNTIME_DIR`` or ``/tmp`` when that path is too long for a socket."""
    preferred = Path(os.path.abspath(state_dir)) / CONTROL_SUBDIR
    if _fits(preferred):
        # Inside the user's state directory no one else can create it (private_dir refuses a symlink).
        return private_dir(preferred)
    return _fallback_dir(str(preferred))


class SshRunner:
    """A :class:`~lab.context.Runner` over ssh, logging every command and its output, redacted.

    A command run with ``secret=True`` has its output (and its input, as always) kept out of
    the log; every line that reaches the log or an error message is passed through
    :func:`lab.private.redact` first.
    """

    def __init__(self, ssh_config: Path, log_path: Optional[Path] = None, step: str = "ssh",
                 control: Optional[Path] = None):
        self.ssh_config = Path(ssh_config)
        self.log_path = log_path
        self.step = step
        self._control = control

    def control_path(self) -> str:
        """The ssh ControlPath of this lab's connections (in a 0700 directory of the lab's)."""
        if self._control is None:
            try:
                self._control = control_dir(self.ssh_config.parent)
            except LabError as exc:
                raise StepError(self.step, f"no private directory for the ssh control sockets: {exc}",
                                self.log_path) from exc
        return str(self._control / CONTROL_NAME)

    def _multiplex(self):
        # %C is a hash of the connection, so the socket path stays short.
        return ("-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_path()}",
                "-o", f"ControlPersist={CONTROL_PERSIST_S}")

    def _log(self, text: str) -> None:
        if self.log_path is not None:
            append_private(self.log_path, text)

    def run(self, node: str, command: Command, *, input=None, timeout: Optional[float] = None,
            check: bool = True, secret: bool = False) -> Result:
        """Run ``command`` as root on ``node``; see :class:`~lab.context.Runner`.

        ``secret``: the command handles a secret; its output is not logged.
        """
        line = as_shell(command)
        shown = redact(line)
        argv = ["ssh", "-F", str(self.ssh_config), *SSH_OPTIONS, *self._multiplex(), node,
                "sudo", "bash", "-c", shlex.quote(line)]
        self._log(f"[{node}] $ {shown}" + (" (output not logged)" if secret else ""))
        binary = isinstance(input, bytes)
        try:
            # No input: stdin is /dev/null, never the user's terminal (ssh would read it).
            proc = subprocess.run(argv, input=input, capture_output=True, text=not binary,
                                  stdin=subprocess.DEVNULL if input is None else None,
                                  timeout=timeout or DEFAULT_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            self._log(f"[{node}] timed out after {exc.timeout} s")
            raise StepError(self.step, f"{node}: `{shown}` timed out after {exc.timeout:.0f} s", self.log_path) from exc
        stdout = proc.stdout.decode(errors="replace") if binary else proc.stdout
        stderr = proc.stderr.decode(errors="replace") if binary else proc.stderr
        if not secret:
            for text in (stdout, stderr):
                if text:
                    self._log(text)
        self._log(f"[{node}] exit {proc.returncode}")
        result = Result(proc.returncode, stdout, stderr)
        if check and not result.ok:
            said = stderr.strip() if secret else (stderr.strip() or stdout.strip())
            last = redact((said or "no output").splitlines()[-1])
            raise StepError(self.step, f"{node}: `{shown}` exited {proc.returncode}: {last}", self.log_path)
        return result

    def put_text(self, node: str, text: str, remote: str, mode: str = "0644", secret: bool = False) -> None:
        """Write ``text`` to ``remote`` on ``node``; a file of mode 0600 or ``secret`` is a secret's."""
        self.run(node, ["install", "-D", "-m", mode, "/dev/stdin", remote], input=text.encode(),
                 secret=secret or not int(mode, 8) & 0o077)

    def put_tree(self, node: str, local_dir: Path, remote_dir: str) -> None:
        """Copy a directory to ``remote_dir`` on ``node`` in one ssh call, modes kept.

        The node may have no tar yet (EL9 images without it: prepare.sh installs it later), so
        the tree goes as one bash script on stdin that writes each file with ``base64 -d`` and
        sets its mode: bash and coreutils only. Every path is single-quoted in the script; each
        file is written beside its final name and renamed into place.
        """
        local_dir, quote = Path(local_dir), shlex.quote
        root = remote_dir.rstrip("/") or "/"
        lines = ["set -euo pipefail", "umask 022", f"mkdir -p -- {quote(root)}"]
        for path in sorted(local_dir.rglob("*")):
            target = f"{root}/{path.relative_to(local_dir).as_posix()}"
            if path.is_symlink() or not (path.is_dir() or path.is_file()):
                raise ValueError(f"{path}: only directories and regular files can be copied to a node")
            mode = f"{stat.S_IMODE(path.stat().st_mode):04o}"
            if path.is_dir():
                lines.append(f"mkdir -p -- {quote(target)} && chmod {mode} -- {quote(target)}")
                continue
            data = base64.b64encode(path.read_bytes()).decode("ascii")  # [A-Za-z0-9+/=]: no quoting needed
            tmp = quote(f"{target}.dslab-upload")
            lines.append(f"printf '%s' '{data}' | base64 -d > {tmp}")
            lines.append(f"chmod {mode} -- {tmp} && mv -f -- {tmp} {quote(target)}")
        self.run(node, ["bash", "-s"], input=("\n".join(lines) + "\n").encode())
