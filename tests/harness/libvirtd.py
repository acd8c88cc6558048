"""A libvirtd (plus virtlogd) of the test session's own, inside its netns.

There is one libvirtd per machine (its socket /run/libvirt/libvirt-sock is
machine-wide), so :func:`start` refuses with :class:`LibvirtdBusy` when a
libvirtd or virtlogd it did not start is running, removes sockets left by a
crashed earlier run, and :meth:`Libvirtd.stop` ends exactly the PIDs it
started.  Because libvirtd runs inside the namespace, the bridges and dnsmasq
of the networks it starts, and the VMs, live there too.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

from .netns import Cmd, NetNS

URI = "qemu:///system"
RUN_DIR = Path("/run/libvirt")
# Sockets a libvirtd/virtlogd leaves behind when it dies without cleaning up.
STALE_SOCKETS = (
    "libvirt-sock", "libvirt-sock-ro", "libvirt-admin-sock",
    "virtlogd-sock", "virtlogd-admin-sock",
)
DAEMONS = ("libvirtd", "virtlogd")

# Libvirtd objects of this process that are running (started, not stopped).
_ACTIVE: list = []


def active() -> list:
    """The libvirtd instances this process started and has not stopped yet."""
    return list(_ACTIVE)


class LibvirtdBusy(RuntimeError):
    """A libvirtd/virtlogd that this harness did not start is running."""


class LibvirtdError(RuntimeError):
    pass


def running_daemons(names=DAEMONS) -> dict:
    """{pid: name} of running processes whose command name is in ``names``."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = Path("/proc", entry, "comm").read_text().strip()
        except OSError:
            continue
        if comm in names and _alive(int(entry), comm):
            found[int(entry)] = comm
    return found


def _comm(pid: int) -> Optional[str]:
    try:
        return Path("/proc", str(pid), "comm").read_text().strip()
    except OSError:
        return None


def _alive(pid: int, name: str) -> bool:
    comm = _comm(pid)
    if comm is None:
        return False
    try:
        state = Path("/proc", str(pid), "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return comm == name and state != "Z"


def _read_pid(path: Path, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = path.read_text().strip()
            if text.isdigit():
                return int(text)
        except OSError:
            pass
        time.sleep(0.1)
    raise LibvirtdError(f"PID file {path} not written within {timeout}s")


def remove_stale_sockets(run_dir: Path = RUN_DIR) -> list:
    """Remove daemon sockets when no libvirtd/virtlogd runs at all."""
    if running_daemons():
        return []
    removed = []
    for name in STALE_SOCKETS:
        path = run_dir / name
        if path.is_socket() or path.exists():
            path.unlink()
            removed.append(str(path))
    return removed


def _names(text: str) -> set:
    return {line.strip() for line in text.splitlines() if line.strip()}


class Libvirtd:
    """A running libvirtd of ours: ``ns``, ``uri``, ``pool``, ``run()``."""

    uri = URI

    def __init__(self, ns: NetNS, workdir: Path):
        self.ns = ns
        self.workdir = Path(workdir)
        self.pool = "default"
        self.pool_dir: Optional[Path] = None
        self.pids: dict = {}          # name -> pid, only daemons we started
        self.log_file = self.workdir / "libvirtd.log"
        self._private_etc: Optional[Path] = None
        self._pool_created = False
        self._pool_started = False
        self._domains_before: set = set()
        self._networks_before: set = set()

    # -- commands ---------------------------------------------------------
    def run(self, cmd: Cmd, *, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """Run ``cmd`` inside the namespace, with LIBVIRT_DEFAULT_URI set."""
        env = dict(kwargs.pop("env", None) or os.environ)
        env.setdefault("LIBVIRT_DEFAULT_URI", self.uri)
        return self.ns.run(cmd, check=check, env=env, **kwargs)

    def virsh(self, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        return self.run(["virsh", "-q", "-c", self.uri, *args], check=check, **kwargs)

    def domains(self, all_: bool = True) -> set:
        args = ["list", "--name"] + (["--all"] if all_ else [])
        return _names(self.virsh(*args).stdout)

    def networks(self, all_: bool = True) -> set:
        args = ["net-list", "--name"] + (["--all"] if all_ else [])
        return _names(self.virsh(*args).stdout)

    def alive(self) -> bool:
        return any(_alive(pid, name) for name, pid in self.pids.items())

    # -- lifecycle --------------------------------------------------------
    def start(self, timeout: float = 60.0) -> "Libvirtd":
        busy = running_daemons()
        if busy:
            desc = ", ".join(f"{name} (pid {pid})" for pid, name in sorted(busy.items()))
            raise LibvirtdBusy(
                f"refusing to start libvirtd in netns {self.ns.name}: already running: "
                f"{desc}. There is one libvirtd per machine (/run/libvirt/libvirt-sock); "
                "stop it first (these tests never stop a daemon they did not start).")
        remove_stale_sockets()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._private_config()
        env = dict(os.environ)
        # 1=debug .. 4=error; LIBVIRT_LOG_FILTERS from the environment applies.
        level = os.environ.get("DSLAB_LIBVIRTD_LOG_LEVEL", "3")
        env["LIBVIRT_LOG_OUTPUTS"] = f"{level}:file:{self.log_file}"
        try:
            for name in ("virtlogd", "libvirtd"):
                pidfile = self.workdir / f"{name}.pid"
                pidfile.unlink(missing_ok=True)
                res = self.ns.run([name, "-d", "-p", str(pidfile)], check=False, env=env,
                                  timeout=60)
                if res.returncode != 0:
                    raise LibvirtdError(f"{name} -d failed ({res.returncode}): "
                                        f"{res.stdout}{res.stderr}")
                pid = _read_pid(pidfile)
                if not _alive(pid, name):
                    raise LibvirtdError(f"{name} (pid {pid}) exited right after start; "
                                        f"see {self.log_file}")
                self.pids[name] = pid
            self._wait_ready(timeout)
            self._domains_before = self.domains()
            self._networks_before = self.networks()
            _ACTIVE.append(self)
            self._ensure_pool()
        except BaseException:
            self.stop()
            raise
        return self

    def _private_config(self) -> None:
        """Give the daemons a private copy of /etc/libvirt.

        ``ip netns exec NS`` bind-mounts /etc/netns/NS/* over /etc/*, so
        everything started through the namespace (libvirtd, virsh, vagrant)
        sees /etc/netns/NS/libvirt as /etc/libvirt: domains and networks
        defined during the session are written there, never into the
        machine's /etc/libvirt, and go away with the namespace.

        Its qemu.conf runs QEMU as root.  With the default libvirt-qemu user,
        on machines where /dev/kvm exists but that user may not open it (here:
        /dev/kvm is group ssl-cert), libvirt finds its cached QEMU capabilities
        (probed with KVM) invalid on *every* lookup and re-probes QEMU: each
        domain define/update then took 30-50 s instead of milliseconds.
        Running as root also lets QEMU reach volumes under any temp dir.
        """
        etc = self.ns.etc_dir / "libvirt"
        if etc.exists():
            return
        shutil.copytree("/etc/libvirt", etc, symlinks=True)
        self._private_etc = etc
        with open(etc / "qemu.conf", "a") as fh:
            fh.write("\n# dslab test harness: see tests/harness/libvirtd.py\n"
                     'user = "root"\ngroup = "root"\n')

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if not _alive(self.pids["libvirtd"], "libvirtd"):
                raise LibvirtdError(f"libvirtd died during startup; see {self.log_file}")
            last = self.virsh("version", check=False, timeout=30)
            if last.returncode == 0:
                self.version = last.stdout
                return
            time.sleep(0.5)
        raise LibvirtdError(f"`virsh -c {self.uri} version` did not answer within "
                            f"{timeout}s: {last.stderr if last else ''}")

    def _ensure_pool(self) -> None:
        info = self.virsh("pool-info", self.pool, check=False)
        if info.returncode != 0:
            # QEMU runs as libvirt-qemu, so every directory above the volumes
            # must be searchable by it: not under pytest's 0700 tmp dirs.
            self.pool_dir = Path(tempfile.mkdtemp(prefix=f"{self.ns.name}-pool-"))
            self.pool_dir.chmod(0o711)
            # Transient: nothing is written to /etc/libvirt/storage.
            self.virsh("pool-create-as", self.pool, "dir", "--target", str(self.pool_dir))
            self._pool_created = True
        elif "running" not in info.stdout:
            self.virsh("pool-start", self.pool)
            self._pool_started = True
        self.virsh("pool-refresh", self.pool, check=False)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop what this session started, then exactly the daemons it started."""
        if self.pids.get("libvirtd") and _alive(self.pids["libvirtd"], "libvirtd"):
            self._cleanup_objects()
        for name in ("libvirtd", "virtlogd"):
            pid = self.pids.get(name)
            if pid:
                _terminate(pid, name, timeout)
        self.pids.clear()
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        if self.pool_dir is not None:
            shutil.rmtree(self.pool_dir, ignore_errors=True)
            self.pool_dir = None
        if self._private_etc is not None:
            shutil.rmtree(self._private_etc, ignore_errors=True)
            self._private_etc = None

    def _cleanup_objects(self) -> None:
        # qemu and dnsmasq outlive libvirtd: stop every running domain and
        # network (all live in our namespace), and undefine what was defined
        # during the session so nothing persists in /etc/libvirt.
        try:
            for dom in self.domains(all_=False):
                self.virsh("destroy", dom, check=False, timeout=60)
            for dom in self.domains() - self._domains_before:
                self.virsh("undefine", dom, "--managed-save", "--snapshots-metadata",
                           "--nvram", check=False, timeout=60)
                self.virsh("undefine", dom, check=False, timeout=60)
            for net in self.networks(all_=False):
                self.virsh("net-destroy", net, check=False, timeout=60)
            for net in self.networks() - self._networks_before:
                self.virsh("net-undefine", net, check=False, timeout=60)
            if self._pool_created or self._pool_started:
                self.virsh("pool-destroy", self.pool, check=False, timeout=60)
        except (subprocess.SubprocessError, OSError):
            pass


def _terminate(pid: int, name: str, timeout: float) -> None:
    if not _alive(pid, name):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid, name):
            return
        time.sleep(0.1)
    if _alive(pid, name):
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _alive(pid, name):
            time.sleep(0.1)


def start(ns: NetNS, workdir: Optional[Path] = None, timeout: float = 60.0) -> Libvirtd:
    """Start virtlogd + libvirtd inside ``ns``; returns the running :class:`Libvirtd`."""
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="dslabtest-libvirtd-"))
    return Libvirtd(ns, Path(workdir)).start(timeout=timeout)
