"""What every step and check shares: the config, the lab state, and ways to run commands.

Steps of ``lab.up`` and checks of ``lab.verify`` only ever talk to the outside world
through a :class:`Context`, so tests can hand them a recording fake instead.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol, Sequence, Union

from .config import LabConfig

Command = Union[str, Sequence[str]]


@dataclass(frozen=True)
class Result:
    """The outcome of one command: exit status and captured output."""

    returncode: int
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        """True when the command exited 0."""
        return self.returncode == 0


class Runner(Protocol):
    """Runs commands on lab nodes (over ssh) and on the host."""

    def run(self, node: str, command: Command, *, input: Optional[str] = None,
            timeout: Optional[float] = None, check: bool = True) -> Result:
        """Run ``command`` on ``node`` as root; a string runs under ``bash -c``.

        With ``check`` a non-zero exit raises :class:`~lab.errors.StepError`.
        """

    def put(self, node: str, local: Path, remote: str) -> None:
        """Copy a local file to ``remote`` on ``node``."""

    def get(self, node: str, remote: str, local: Path) -> None:
        """Copy ``remote`` from ``node`` to a local file."""


class State:
    """Small persistent key/value record of what the lab has done (``state.json``)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._data = json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, key: str, default=None):
        """The recorded value of ``key``."""
        return self._data.get(key, default)

    def _reload(self) -> None:
        # Other State objects on the same file may have written since: never drop their keys.
        if self.path.exists():
            self._data = json.loads(self.path.read_text())

    def set(self, key: str, value) -> None:
        """Record ``key`` and write the file atomically."""
        self._reload()
        self._data[key] = value
        self._save()

    def delete(self, key: str) -> None:
        """Forget ``key``."""
        self._reload()
        if self._data.pop(key, None) is not None:
            self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state.")
        with os.fdopen(fd, "w") as handle:
            json.dump(self._data, handle, indent=2, sort_keys=True)
        os.replace(tmp, self.path)


@dataclass
class Context:
    """Shared by every step and check."""

    cfg: LabConfig
    state: State
    runner: Runner
    log_path: Optional[Path] = None

    @property
    def state_dir(self) -> Path:
        """The lab's state directory."""
        return self.cfg.state_dir

    def kubectl(self, args: Sequence[str], *, input: Optional[str] = None, check: bool = True,
                timeout: Optional[float] = None) -> Result:
        """Run ``kubectl`` with the admin kubeconfig on the control-plane node."""
        command = ["kubectl", "--kubeconfig", "/etc/kubernetes/admin.conf", *args]
        return self.runner.run(self.cfg.control_plane.name, command, input=input, check=check, timeout=timeout)

    def kubectl_json(self, args: Sequence[str]) -> dict:
        """``kubectl ... -o json`` parsed."""
        return json.loads(self.kubectl([*args, "-o", "json"]).stdout)
