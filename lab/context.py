"""What every step and check shares: the config, the lab state, ways to run commands, the status lines.

Steps of ``lab.up``, the parts of ``lab.destroy`` and checks of ``lab.verify`` only ever talk
to the outside world through a :class:`Context`, so tests can hand them a recording fake instead.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence, Tuple, Union

from . import layout
from .config import LabConfig, shown
from .errors import ConfigError
from .private import append_private
from .progress import Progress, Silent

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
            timeout: Optional[float] = None, check: bool = True, secret: bool = False) -> Result:
        """Run ``command`` on ``node`` as root; a string runs under ``bash -c``.

        With ``check`` a non-zero exit raises :class:`~lab.errors.StepError`. With ``secret``
        the command handles a secret (a token, a key): its output is never logged.
        """

    def put_text(self, node: str, text: str, remote: str, mode: str = "0644", secret: bool = False) -> None:
        """Write ``text`` to ``remote`` on ``node`` (parent directories created)."""

    def put_tree(self, node: str, local_dir: Path, remote_dir: str) -> None:
        """Copy a local directory to ``remote_dir`` on ``node``, modes kept."""


class StateError(ConfigError):
    """``state.json`` cannot be read; the one problem line says how to recover."""


#: What each recorded value must look like; keys not listed here are kept as they are.
STATE_FORMATS = {
    "bootstrap_token": (re.compile(r"[a-z0-9]{6}\.[a-z0-9]{16}"), "a bootstrap token"),
    "join_token": (re.compile(r"[a-z0-9]{6}\.[a-z0-9]{16}"), "a bootstrap token"),
    "ca_cert_hash": (re.compile(r"sha256:[0-9a-f]{64}"), "a CA hash sha256:<64 hex digits>"),
    "kubeadm_applied": (re.compile(r"(?s).{0,200}"), "a digest"),
    "calico_applied": (re.compile(r"(?s).{0,200}"), "a digest"),
    "vagrantfile_applied": (re.compile(r"(?s).{0,200}"), "a digest"),
}


def read_state(path: Path) -> dict:
    """The record in ``path`` ({} when there is none), or one :class:`StateError` line."""
    if not path.exists():
        return {}
    afresh = (f"move it aside (mv {path} {path}.damaged) and run `invoke lab.destroy`, then `invoke lab.up`, "
              "to start the lab afresh")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        where = f" at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise StateError([f"lab.state_dir: {path} is damaged (not JSON{where}); {afresh}"]) from None
    except OSError as exc:
        raise StateError([f"lab.state_dir: {path} cannot be read ({exc.strerror}); fix its permissions"]) from None
    if not isinstance(data, dict):
        raise StateError([f"lab.state_dir: {path} is damaged (a JSON {type(data).__name__}, not an object); {afresh}"])
    for key, (form, what) in STATE_FORMATS.items():
        value = data.get(key)
        if value is not None and not (isinstance(value, str) and form.fullmatch(value)):
            raise StateError([f"lab.state_dir: {path} is damaged ({key} is {shown(value)}, not {what}); "
                              f"delete the \"{key}\" entry from it and run the task again (lab.up records it anew)"])
    steps = data.get("steps")
    if steps is not None and not (isinstance(steps, dict) and all(isinstance(v, str) for v in steps.values())):
        raise StateError([f"lab.state_dir: {path} is damaged (steps is {shown(steps)}, not an object of step "
                          "fingerprints); delete the \"steps\" entry from it and run `invoke lab.up` again"])
    return data


class State:
    """Small persistent key/value record of what the lab has done (``state.json``; its keys are
    :data:`lab.layout.STATE_KEYS`). The file is read on first use, never before."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._data: Optional[dict] = None

    def get(self, key: str, default=None):
        """The recorded value of ``key``."""
        if self._data is None:
            self._data = read_state(self.path)
        return self._data.get(key, default)

    def _reload(self) -> None:
        # Other State objects on the same file may have written since: never drop their keys.
        if self.path.exists() or self._data is None:
            self._data = read_state(self.path)

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


class DryState(State):
    """The lab's state as a dry run sees it: read from ``state.json``, changed in memory only."""

    def _reload(self) -> None:
        if self._data is None:
            self._data = read_state(self.path)

    def _save(self) -> None:
        pass


@dataclass
class Context:
    """Shared by every step of ``lab.up``, every part of ``lab.destroy`` and every check of ``lab.verify``.

    ``runner`` runs commands on the nodes (None where no node is reached); ``log_path`` is the
    run's log; ``progress`` its status lines; ``steps`` the names of the steps the run goes
    through and ``step`` the one running now; ``cache`` the host's cache (a
    :class:`lab.cache.Cache`) the steps take pinned files and images from, None where none is used;
    ``summary`` what the running step has to say on its ``✓`` line (what it took from the cache).
    """

    cfg: LabConfig
    state: State
    runner: Optional[Runner] = None
    log_path: Optional[Path] = None
    progress: Progress = field(default_factory=Silent)
    steps: Tuple[str, ...] = ()
    step: str = ""
    cache: Optional[Any] = None
    summary: str = ""

    @property
    def state_dir(self) -> Path:
        """The lab's state directory."""
        return self.cfg.state_dir

    @property
    def layout(self) -> layout.Layout:
        """The paths of the lab's state directory."""
        return layout.Layout(self.cfg.state_dir)

    def log(self, text: str) -> None:
        """Append a line to the run's log, redacted (:func:`lab.private.redact`); nothing without a log."""
        if self.log_path is not None:
            append_private(self.log_path, text.rstrip("\n"))

    def kubectl(self, args: Sequence[str], *, input: Optional[str] = None, check: bool = True,
                timeout: Optional[float] = None) -> Result:
        """Run ``kubectl`` with the admin kubeconfig on the control-plane node."""
        command = ["kubectl", "--kubeconfig", "/etc/kubernetes/admin.conf", *args]
        return self.runner.run(self.cfg.control_plane.name, command, input=input, check=check, timeout=timeout)

    def kubectl_json(self, args: Sequence[str]) -> dict:
        """``kubectl ... -o json`` parsed."""
        return json.loads(self.kubectl([*args, "-o", "json"]).stdout)
