"""What a test needs to run vagrant (or ``invoke lab.up``) against the lab.

:func:`make_vm_env` combines the session's namespace, its libvirtd and the
test box into a :class:`VMEnv`: an environment dict (VAGRANT_HOME of the
tests' own, VAGRANT_DEFAULT_PROVIDER=libvirt, LIBVIRT_DEFAULT_URI, PATH, ...)
and :meth:`VMEnv.run_in_ns`, which runs a command inside the namespace with
that environment, so every packet it sends stays there.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Union

from .netns import Cmd, NetNS


@dataclass
class VMEnv:
    ns: NetNS
    env: dict = field(repr=False)
    box_name: str
    uri: str = "qemu:///system"
    pool: str = "default"
    vagrant_home: Optional[Path] = None

    def with_env(self, **extra: str) -> dict:
        env = dict(self.env)
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def run_in_ns(self, cmd: Cmd, *, cwd: Union[str, Path, None] = None,
                  check: bool = True, timeout: Optional[float] = None,
                  env: Optional[Mapping[str, str]] = None,
                  log: Union[str, Path, None] = None,
                  capture: bool = True, input: Optional[str] = None
                  ) -> subprocess.CompletedProcess:
        """Run ``cmd`` (argv list, or a string for ``bash -c``) in the namespace.

        ``env`` entries are added to (and override) the VM environment.  With
        ``log``, stdout+stderr are appended to that file instead of captured
        (use it for long commands such as ``vagrant up``); on failure the
        raised CalledProcessError then carries the log's tail as ``output``.
        """
        full_env = dict(self.env)
        if env:
            full_env.update(env)
        if log is None:
            return self.ns.run(cmd, check=check, capture=capture, env=full_env,
                               cwd=cwd, timeout=timeout, input=input)
        log = Path(log)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as fh:
            fh.write(f"\n### {cmd!r} (cwd={cwd})\n")
            fh.flush()
            res = self.ns.run(cmd, check=False, env=full_env, cwd=cwd, timeout=timeout,
                              input=input, stdout=fh, stderr=subprocess.STDOUT)
        if check and res.returncode != 0:
            tail = "".join(_clip(line) for line in
                           log.read_text(errors="replace").splitlines(True)[-60:])
            raise subprocess.CalledProcessError(res.returncode, cmd, output=tail)
        return res

    def vagrant(self, *args: str, cwd: Union[str, Path], **kwargs
                ) -> subprocess.CompletedProcess:
        """``vagrant ARGS`` in ``cwd``, inside the namespace."""
        return self.run_in_ns(["vagrant", *args], cwd=cwd, **kwargs)


def _clip(line: str, width: int = 400) -> str:
    # vagrant's upload progress is one huge line of "\x1b[KProgress: N%".
    return line if len(line) <= width else "..." + line[-width:]


def make_vm_env(ns: NetNS, box_env: Mapping[str, str], box_name: str,
                uri: str = "qemu:///system", pool: str = "default",
                extra: Optional[Mapping[str, str]] = None) -> VMEnv:
    """Build a :class:`VMEnv` from a namespace and the test box's env."""
    env = dict(os.environ)
    env.update(box_env)
    env.update({
        "VAGRANT_DEFAULT_PROVIDER": "libvirt",
        "LIBVIRT_DEFAULT_URI": uri,
        "DSLAB_BOX": box_name,
        "DSLAB_NETNS": ns.name,
    })
    if extra:
        env.update(extra)
    home = env.get("VAGRANT_HOME")
    return VMEnv(ns=ns, env=env, box_name=box_name, uri=uri, pool=pool,
                 vagrant_home=Path(home) if home else None)
