"""Private network namespaces for dslab's real-VM tests.

Everything that sends packets in these tests (libvirtd, its bridges and
dnsmasq, the VMs, vagrant, ssh, dig, ping) runs inside a namespace created
here, so no traffic ever leaves the namespace: it has only its own ``lo`` plus
whatever libvirt creates inside it, and no route to the outside.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

PREFIX = "dslabtest-"

Cmd = Union[str, Sequence[str]]


def _argv(cmd: Cmd) -> list:
    """A command as an argv list; a string is run by ``bash -c``."""
    if isinstance(cmd, str):
        return ["bash", "-c", cmd]
    return [str(c) for c in cmd]


def list_namespaces() -> list:
    """Names of all network namespaces known to ``ip netns``."""
    out = subprocess.run(["ip", "netns", "list"], check=True, capture_output=True,
                         text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def stale_namespaces(prefix: str = PREFIX) -> list:
    """Namespaces left by earlier runs (our prefix) that hold no process."""
    stale = []
    for name in list_namespaces():
        if name.startswith(prefix) and not NetNS(name).pids():
            stale.append(name)
    return stale


def remove_stale_namespaces(prefix: str = PREFIX) -> list:
    """Delete empty namespaces with our prefix (crashed earlier runs)."""
    removed = []
    for name in stale_namespaces(prefix):
        if subprocess.run(["ip", "netns", "delete", name],
                          capture_output=True).returncode == 0:
            shutil.rmtree(Path("/etc/netns", name), ignore_errors=True)
            removed.append(name)
    return removed


class NetNS:
    """A network namespace, by name.  Use :meth:`create` to make a new one."""

    def __init__(self, name: str, owned: bool = False):
        self.name = name
        self.owned = owned

    def __repr__(self) -> str:
        return f"NetNS({self.name!r})"

    @classmethod
    def create(cls, prefix: str = PREFIX) -> "NetNS":
        """Create a uniquely named namespace and bring its ``lo`` up."""
        name = f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        ns = cls(name, owned=True)
        try:
            subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True,
                           capture_output=True)
            # `ip netns exec` bind-mounts /etc/netns/NAME/* over /etc/*: name
            # lookups inside stay on the namespace's loopback instead of
            # aiming at the machine's resolver (unreachable from here anyway).
            ns.etc_dir.mkdir(parents=True, exist_ok=True)
            (ns.etc_dir / "resolv.conf").write_text(
                "# written by dslab's test harness for this namespace\n"
                "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        except BaseException:
            ns.delete()
            raise
        return ns

    @property
    def etc_dir(self) -> Path:
        return Path("/etc/netns", self.name)

    def wrap(self, cmd: Cmd) -> list:
        """The argv that runs ``cmd`` inside this namespace."""
        return ["ip", "netns", "exec", self.name] + _argv(cmd)

    def run(self, cmd: Cmd, *, check: bool = True, capture: bool = True,
            env: Optional[Mapping[str, str]] = None, cwd=None,
            timeout: Optional[float] = None, input: Optional[str] = None,
            stdout=None, stderr=None) -> subprocess.CompletedProcess:
        """Run ``cmd`` inside the namespace (``ip netns exec``).

        With ``capture`` (default) stdout/stderr are returned as text, unless
        explicit ``stdout``/``stderr`` (e.g. an open log file) are given.
        """
        kwargs = {}
        if stdout is not None or stderr is not None:
            kwargs["stdout"] = stdout
            kwargs["stderr"] = stderr
        elif capture:
            kwargs["capture_output"] = True
        return subprocess.run(self.wrap(cmd), check=check, text=True,
                              env=dict(env) if env is not None else None, cwd=cwd,
                              timeout=timeout, input=input, **kwargs)

    def popen(self, cmd: Cmd, **kwargs) -> subprocess.Popen:
        """Start ``cmd`` inside the namespace without waiting for it."""
        return subprocess.Popen(self.wrap(cmd), **kwargs)

    def exists(self) -> bool:
        return self.name in list_namespaces()

    def pids(self) -> list:
        """PIDs of all processes whose network namespace is this one."""
        res = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True,
                             text=True)
        if res.returncode != 0:
            return []
        return [int(p) for p in res.stdout.split() if p.strip().isdigit()]

    def kill_all(self, timeout: float = 10.0) -> list:
        """SIGTERM, then SIGKILL, every process inside the namespace.

        The namespace is private to the test session, so whatever runs in it
        was started by the session.  Returns the PIDs that were signalled.
        """
        pids = [p for p in self.pids() if p != os.getpid()]
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not [p for p in self.pids() if p != os.getpid()]:
                return pids
            time.sleep(0.2)
        for pid in self.pids():
            if pid != os.getpid():
                _signal(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self.pids():
            time.sleep(0.1)
        return pids

    def delete(self, timeout: float = 10.0) -> None:
        """Kill the processes inside, then delete the namespace."""
        if self.exists():
            self.kill_all(timeout=timeout)
            subprocess.run(["ip", "netns", "delete", self.name], check=True,
                           capture_output=True)
        if self.owned and self.etc_dir.is_dir():
            shutil.rmtree(self.etc_dir, ignore_errors=True)

    def __enter__(self) -> "NetNS":
        return self

    def __exit__(self, *exc) -> None:
        if self.owned:
            self.delete()


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
