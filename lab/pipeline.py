"""``lab.up`` as data: an ordered list of named steps, each printing one status line.

What is done is recorded in the lab's state with a fingerprint of everything the step
depends on (rendered files and provisioning scripts), so a second ``lab.up`` on a
healthy lab skips every step, and a failed one resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, List, Optional, TextIO

from . import cluster, machines, network, preflight, profiles, render, statedir, workloads
from .config import LabConfig
from .context import Context, State
from .errors import LabError, StepError
from .private import append_private, create_private, private_dir, redact
from .remote import SshRunner

LOG_DIR = "logs"


@dataclass(frozen=True)
class Step:
    """One named step of ``lab.up``."""

    name: str
    help: str
    run: Callable[["UpRun"], None]
    remembered: bool = True  # skipped when recorded as done with the same fingerprint


class Status:
    """One status line per step on a stream; colour only on a terminal."""

    MARKS = {"ok": ("✓", "32"), "fail": ("✗", "31"), "skip": ("•", "2"), "warn": ("!", "33")}

    def __init__(self, stream: TextIO = None):
        self.stream = stream or sys.stderr
        self.colour = hasattr(self.stream, "isatty") and self.stream.isatty()

    def line(self, kind: str, text: str) -> None:
        """Print ``text`` behind the mark of ``kind``."""
        mark, code = self.MARKS[kind]
        if self.colour:
            mark = f"\033[{code}m{mark}\033[0m"
        print(f"{mark} {redact(text)}", file=self.stream, flush=True)


def new_log(state_dir: Path, kind: str) -> Path:
    """A new, empty log of this run (``logs/<kind>-<time>[-<n>].log``, 0600), recorded as the lab's."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    logs = Path(state_dir) / LOG_DIR
    path, n = logs / f"{kind}-{stamp}.log", 1
    while path.exists():  # two runs within one second: each keeps its own log
        n += 1
        path = logs / f"{kind}-{stamp}-{n}.log"
    create_private(path)
    statedir.record(state_dir, [path])
    return path


class UpRun:
    """State of one ``lab.up`` run, handed to every step."""

    def __init__(self, cfg: LabConfig, status: Status, kind: str = "up", until: Optional[str] = None):
        self.cfg = cfg
        self.status = status
        self.until = until
        render.mark_state_dir(cfg.state_dir, cfg)
        private_dir(cfg.state_dir)  # it holds state.json, the kubeconfig and the logs
        self.state = State(cfg.state_dir / "state.json")
        # 0600 from the start: Vagrant's output is appended to the same file.
        self.log_path = new_log(cfg.state_dir, kind)
        self.alive: Optional[bool] = None
        self.step: str = ""

    def log(self, text: str) -> None:
        """Append a line to this run's log, redacted (:func:`lab.private.redact`)."""
        append_private(self.log_path, text.rstrip("\n"))

    def context(self, step: str) -> Context:
        """The step context, with an ssh runner on the machines (needs the machines step)."""
        ssh_config = self.cfg.state_dir / "ssh_config"
        if not ssh_config.exists():
            machines.ssh_config(self.cfg, self.log_path)
        runner = SshRunner(ssh_config, self.log_path, step)
        return Context(self.cfg, self.state, runner, self.log_path)


# ---------------------------------------------------------------- the steps


def _preflight(run: UpRun) -> None:
    cluster_wanted = run.until is None or STEP_NAMES.index(run.until) >= STEP_NAMES.index("control-plane")
    cfg, warnings = preflight.check(run.cfg, cluster=cluster_wanted)
    for step, problem in profiles.missing_pins(cfg.profile, cfg.runtime):
        warnings.append(f"profile {cfg.profile.name}: {problem} (lab/profiles.py); step {step} will stop there")
    for warning in warnings:
        run.status.line("warn", warning)
    run.cfg = cfg


def _network(run: UpRun) -> None:
    with network.connect(run.cfg.libvirt_uri) as conn:
        action = network.ensure_network(run.cfg, conn)
    run.log(f"network {run.cfg.network_name}: {action}")


def _render(run: UpRun) -> None:
    render.render_all(run.cfg, run.cfg.state_dir)


def _machines(run: UpRun) -> None:
    with network.connect(run.cfg.libvirt_uri) as conn:
        running = machines.domains_running(run.cfg, conn)
    vagrantfile = hashlib.sha256((run.cfg.state_dir / "Vagrantfile").read_bytes()).hexdigest()
    if len(running) < len(run.cfg.nodes) or not (run.cfg.state_dir / "ssh_config").exists():
        # New or restarted machines: what later steps did may be gone with them.
        forget_after(run.state, "prepare")
        machines.up(run.cfg, run.log_path)
        machines.ssh_config(run.cfg, run.log_path)
        run.state.set("vagrantfile_applied", vagrantfile)
    elif run.state.get("vagrantfile_applied") not in (None, vagrantfile):
        run.status.line("warn", "machines: their settings changed since they were created (memory, CPUs, box...); "
                                "running machines keep the old ones: `invoke lab.destroy` and `lab.up` to apply")


def _on_context(function):
    def step(run: UpRun) -> None:
        function(run.context(run.step))
    return step


STEPS: List[Step] = [
    Step("preflight", "check vagrant, vagrant-libvirt, libvirt, storage pool, KVM, memory, free subnets",
         _preflight, remembered=False),
    Step("network", "define and start the lab's dual-stack libvirt network with node DNS records",
         _network, remembered=False),
    Step("render", "render the Vagrantfile, kubeadm config, node inputs and manifests", _render, remembered=False),
    Step("machines", "vagrant up every node; planned IPv4 and IPv6, names in both families", _machines,
         remembered=False),
    Step("prepare", "swap off, SELinux permissive, firewalld off, kernel modules, sysctls, ipset/ipvsadm",
         _on_context(cluster.prepare)),
    Step("runtime", "Docker with IPv6 (daemon.json as the recipe), or containerd",
         _on_context(cluster.runtime)),
    Step("kubernetes", "cri-dockerd --ipv6-dual-stack (current); kubeadm, kubelet, kubectl; kubelet enabled",
         _on_context(cluster.kubernetes)),
    Step("control-plane", "kubeadm config images pull; kubeadm init with the dual-stack config",
         _on_context(cluster.control_plane)),
    Step("cni", "Calico with IPv4 and IPv6 pools, autodetecting the lab network in both families",
         _on_context(cluster.cni)),
    Step("join", "workers join (CA pinned); wait until every node is Ready", _on_context(cluster.join)),
    Step("kubeconfig", "copy the admin kubeconfig to the state directory (0600)",
         _on_context(cluster.fetch_kubeconfig), remembered=False),
    Step("metallb", "MetalLB in layer 2 mode with an address pool per family",
         _on_context(workloads.deploy_metallb)),
    Step("workloads", "nginx on IPv4 and IPv6, the recipe's Services and the dual-stack LoadBalancer",
         _on_context(workloads.deploy_workloads)),
]
STEP_NAMES = [step.name for step in STEPS]


#: What each remembered step depends on, as globs in the state directory (rendered files)
#: and in provision/ (the scripts it runs). A change re-runs that step and no other.
NODE_INPUTS = ("nodes/*.env",)
STEP_INPUTS = {
    "prepare": (NODE_INPUTS, ("lib.sh", "prepare.sh")),
    "runtime": (NODE_INPUTS, ("lib.sh", "runtime.sh")),
    "kubernetes": (NODE_INPUTS, ("lib.sh", "cri-dockerd.sh", "kubernetes.sh", "fetch.sh")),
    "control-plane": ((*NODE_INPUTS, "kubeadm-config.yaml"), ("lib.sh", "control-plane.sh")),
    "cni": (NODE_INPUTS, ("lib.sh", "fetch.sh", "load-images.sh")),
    "join": (NODE_INPUTS, ("lib.sh", "join.sh")),
    "metallb": (("manifests/metallb-config.yaml",), ("lib.sh", "fetch.sh")),
    "workloads": (("manifests/nginx.yaml", "manifests/services.yaml"), ()),
}


def fingerprint(cfg: LabConfig, step: str) -> str:
    """A digest of what ``step`` depends on (see :data:`STEP_INPUTS`) and the profile's pins."""
    rendered, scripts = STEP_INPUTS.get(step, ((), ()))
    digest = hashlib.sha256(f"{step}|{cfg.profile!r}".encode())
    paths = sorted({p for pattern in rendered for p in cfg.state_dir.glob(pattern) if p.is_file()})
    paths += [render.PROVISION_DIR / name for name in scripts]
    for path in paths:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def up(cfg: LabConfig, until: Optional[str] = None, status: Optional[Status] = None) -> Path:
    """Run the steps in order, up to and including ``until``; return the log path.

    Raises :class:`~lab.errors.StepError` (with the log path) on the first failure; what
    was done stays recorded, so the next run resumes.
    """
    if until is not None and until not in STEP_NAMES:
        raise LabError(f"--until: unknown step {until!r}; steps are: {', '.join(STEP_NAMES)}")
    status = status or Status()
    run = UpRun(cfg, status, until=until)
    for step in STEPS:
        started = time.monotonic()
        done = run.state.get("steps", {})
        if step.remembered and done.get(step.name) == fingerprint(run.cfg, step.name) and _alive(run):
            status.line("skip", f"{step.name}: already done")
        else:
            run.log(f"=== {step.name} ===")
            run.step = step.name
            try:
                step.run(run)
            except StepError as exc:
                exc.log = exc.log or run.log_path
                status.line("fail", f"{step.name}: {exc.reason} (log: {exc.log})")
                raise
            except LabError as exc:
                status.line("fail", f"{step.name}: {exc} (log: {run.log_path})")
                raise StepError(step.name, str(exc), run.log_path) from exc
            except Exception as exc:  # noqa: BLE001 - the user gets one line and the log, never a traceback
                run.log(f"{step.name} failed:\n{traceback.format_exc()}")
                reason = f"{type(exc).__name__}: {exc}"
                status.line("fail", f"{step.name}: {reason} (log: {run.log_path})")
                raise StepError(step.name, reason, run.log_path) from exc
            if step.remembered:
                done[step.name] = fingerprint(run.cfg, step.name)
                run.state.set("steps", done)
            status.line("ok", f"{step.name} ({time.monotonic() - started:.0f} s)")
        if step.name == until:
            break
    return run.log_path


def _alive(run: UpRun) -> bool:
    """True when every node's domain runs (asked of libvirt once per run)."""
    if run.alive is None:
        with network.connect(run.cfg.libvirt_uri) as conn:
            run.alive = len(machines.domains_running(run.cfg, conn)) == len(run.cfg.nodes)
    return run.alive


def forget_after(state: State, step: str) -> None:
    """Forget that ``step`` and every later step were done (new machines start from scratch)."""
    done = dict(state.get("steps", {}))
    for name in STEP_NAMES[STEP_NAMES.index(step):]:
        done.pop(name, None)
    state.set("steps", done)
