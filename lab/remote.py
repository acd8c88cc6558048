"""Running commands on the lab's nodes over ssh, with the ssh config Vagrant reports.

One ``vagrant ssh-config`` per lab (cached in the state directory) instead of one
``vagrant ssh`` per command: each command is a plain ``ssh -F``, which is fast enough to
run the many small idempotence checks the steps make.
"""

from __future__ import annotations

import base64
import shlex
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

from .context import Command, Result
from .errors import StepError

SSH_OPTIONS = ("-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR")
#: One ssh connection per node, reused by every command (a login costs seconds on a slow VM).
CONTROL_PERSIST_S = 60
DEFAULT_TIMEOUT_S = 1800


def as_shell(command: Command) -> str:
    """A command list or string as one shell command line."""
    return command if isinstance(command, str) else shlex.join(str(c) for c in command)


class SshRunner:
    """A :class:`~lab.context.Runner` over ssh, logging every command and its output."""

    def __init__(self, ssh_config: Path, log_path: Optional[Path] = None, step: str = "ssh"):
        self.ssh_config = Path(ssh_config)
        self.log_path = log_path
        self.step = step

    def _multiplex(self):
        # %C is a hash of the connection, so the socket path stays short whatever the state dir.
        path = Path(tempfile.gettempdir()) / "dslab-ssh-%C"
        return ("-o", "ControlMaster=auto", "-o", f"ControlPath={path}", "-o", f"ControlPersist={CONTROL_PERSIST_S}")

    def _log(self, text: str) -> None:
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a", encoding="utf-8", errors="replace") as handle:
                handle.write(text if text.endswith("\n") else text + "\n")

    def run(self, node: str, command: Command, *, input=None, timeout: Optional[float] = None,
            check: bool = True) -> Result:
        """Run ``command`` as root on ``node``; see :class:`~lab.context.Runner`."""
        line = as_shell(command)
        argv = ["ssh", "-F", str(self.ssh_config), *SSH_OPTIONS, *self._multiplex(), node,
                "sudo", "bash", "-c", shlex.quote(line)]
        self._log(f"[{node}] $ {line}")
        binary = isinstance(input, bytes)
        try:
            # No input: stdin is /dev/null, never the user's terminal (ssh would read it).
            proc = subprocess.run(argv, input=input, capture_output=True, text=not binary,
                                  stdin=subprocess.DEVNULL if input is None else None,
                                  timeout=timeout or DEFAULT_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            self._log(f"[{node}] timed out after {exc.timeout} s")
            raise StepError(self.step, f"{node}: `{line}` timed out after {exc.timeout:.0f} s", self.log_path) from exc
        stdout = proc.stdout.decode(errors="replace") if binary else proc.stdout
        stderr = proc.stderr.decode(errors="replace") if binary else proc.stderr
        for text in (stdout, stderr):
            if text:
                self._log(text)
        self._log(f"[{node}] exit {proc.returncode}")
        result = Result(proc.returncode, stdout, stderr)
        if check and not result.ok:
            last = (stderr.strip() or stdout.strip() or "no output").splitlines()[-1]
            raise StepError(self.step, f"{node}: `{line}` exited {proc.returncode}: {last}", self.log_path)
        return result

    def put(self, node: str, local: Path, remote: str) -> None:
        """Copy a local file to ``remote`` (as root, parent directories created)."""
        self.run(node, ["install", "-D", "-m", "0644", "/dev/stdin", remote], input=Path(local).read_bytes())

    def put_text(self, node: str, text: str, remote: str, mode: str = "0644") -> None:
        """Write ``text`` to ``remote`` on ``node``."""
        self.run(node, ["install", "-D", "-m", mode, "/dev/stdin", remote], input=text.encode())

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

    def get(self, node: str, remote: str, local: Path) -> None:
        """Copy ``remote`` from ``node`` to ``local``."""
        result = self.run(node, ["cat", remote], input=b"")
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        Path(local).write_text(result.stdout)
