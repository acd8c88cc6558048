"""Running commands on the lab's nodes over ssh, with the ssh config Vagrant reports.

One ``vagrant ssh-config`` per lab (cached in the state directory) instead of one
``vagrant ssh`` per command: each command is a plain ``ssh -F``, which is fast enough to
run the many small idempotence checks the steps make.
"""

from __future__ import annotations

import io
import shlex
import subprocess
import tarfile
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
        """Copy a directory (one tar stream) to ``remote_dir`` on ``node``."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            tar.add(str(local_dir), arcname=".")
        self.run(node, f"mkdir -p {shlex.quote(remote_dir)} && tar -xzf - -C {shlex.quote(remote_dir)} --no-same-owner",
                 input=buffer.getvalue())

    def get(self, node: str, remote: str, local: Path) -> None:
        """Copy ``remote`` from ``node`` to ``local``."""
        result = self.run(node, ["cat", remote], input=b"")
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        Path(local).write_text(result.stdout)
