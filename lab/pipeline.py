"""``lab.up`` as data: an ordered list of named steps, each run with the one :class:`~lab.context.Context`.

What is done is recorded in the lab's state with a fingerprint of everything the step
depends on (the node settings its scripts read, the rendered files it applies, the scripts
themselves and the profile's pins), so a second ``lab.up`` on a healthy lab skips every
step, a failed one resumes where it stopped, and a changed setting re-runs only the steps
that use it. The status lines are :mod:`lab.progress`'s.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

from . import bake, cache, cache_steps, cluster, layout, machines, network, nodeenv, preflight, profiles, render, statedir, workloads
from .config import LabConfig
from .context import Context, DryState, State
from .errors import LabError, StepError
from .private import private_dir
from .progress import Progress
from .remote import SshRunner


@dataclass(frozen=True)
class Step:
    """One named step of ``lab.up``, run with the run's :class:`~lab.context.Context`.

    ``scripts`` are the ``provision/`` scripts it runs and ``files`` the rendered files (relative
    to the state directory) it applies: with the node settings those scripts read
    (:data:`lab.nodeenv.READS`), they are what its fingerprint covers.
    """

    name: str
    help: str
    run: Callable[[Context], None]
    remembered: bool = True  # skipped when recorded as done with the same fingerprint
    scripts: Tuple[str, ...] = ()
    files: Tuple[str, ...] = ()


class NodeRunner:
    """The run's ssh runner on the machines, made on first use (``ssh_config`` from Vagrant if missing);
    its errors name the step running then."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self._ssh: Optional[SshRunner] = None
        self._lock = threading.Lock()

    def _runner(self) -> SshRunner:
        with self._lock:
            if self._ssh is None:
                ssh_config = self.ctx.layout.ssh_config
                if not ssh_config.exists():
                    machines.ssh_config(self.ctx.cfg, self.ctx.log_path)
                self._ssh = SshRunner(ssh_config, self.ctx.log_path, self.ctx.step)
            self._ssh.step = self.ctx.step or self._ssh.step
            return self._ssh

    def run(self, node, command, **options):
        return self._runner().run(node, command, **options)

    def put_text(self, node, text, remote, mode="0644", secret=False):
        return self._runner().put_text(node, text, remote, mode, secret)

    def put_tree(self, node, local_dir, remote_dir):
        return self._runner().put_tree(node, local_dir, remote_dir)

    @property
    def ssh_config(self) -> Path:
        """The ssh config the runner logs in with (streams of the host's cache use it too)."""
        return self._runner().ssh_config

    def control_path(self) -> str:
        """The ssh control socket of the runner's connections (:meth:`lab.remote.SshRunner.control_path`)."""
        return self._runner().control_path()


def open_context(cfg: LabConfig, kind: str, progress: Optional[Progress] = None,
                 steps: Sequence[str] = ()) -> Context:
    """The context of one run of a task (``kind``: up, verify): the state directory claimed and
    marked, a new log of the run in it, an ssh runner on the machines made on first use."""
    statedir.mark(cfg.state_dir, cfg)
    private_dir(cfg.state_dir)  # it holds state.json, the kubeconfig and the logs
    where = layout.Layout(cfg.state_dir)
    ctx = Context(cfg, State(where.state), log_path=statedir.new_log(cfg.state_dir, kind),
                  progress=progress or Progress(), steps=tuple(steps), cache=cache.for_config(cfg))
    ctx.runner = NodeRunner(ctx)
    ctx.progress.follow(ctx.log_path)
    return ctx


# ---------------------------------------------------------------- the steps


def _preflight(ctx: Context) -> None:
    cfg, warnings = preflight.check(ctx.cfg, cluster="control-plane" in ctx.steps)
    for step, problem in profiles.missing_pins(cfg.profile, cfg.runtime):
        warnings.append(f"profile {cfg.profile.name}: {problem} (lab/profiles.py); step {step} will stop there")
    for warning in warnings:
        ctx.progress.warn(warning)
    ctx.cfg = cfg


def _network(ctx: Context) -> None:
    ctx.progress.action(f"libvirt network {ctx.cfg.network_name}")
    with network.connect(ctx.cfg.libvirt_uri) as conn:
        action = network.ensure_network(ctx.cfg, conn)
    ctx.log(f"network {ctx.cfg.network_name}: {action}")


def _render(ctx: Context) -> None:
    render.render_all(ctx.cfg, ctx.state_dir)


def _machines(ctx: Context) -> None:
    cfg = ctx.cfg
    with network.connect(cfg.libvirt_uri) as conn:
        running = machines.domains_running(cfg, conn)
    where = ctx.layout
    vagrantfile = hashlib.sha256(where.vagrantfile.read_bytes()).hexdigest()
    if len(running) < len(cfg.nodes) or not where.ssh_config.exists():
        # New or restarted machines: what later steps did may be gone with them.
        forget_steps(ctx.state)
        baked = render.baked_box(cfg)
        store = ctx.cache or cache.for_config(cfg)
        if baked is not None and bake.refresh_store(cfg, store, baked, ctx.log_path):
            ctx.log(f"box {baked.name}: Vagrant's copy is not the cache's; removed, so vagrant adds the cache's")
        ctx.progress.action(f"vagrant up of {len(cfg.nodes)} machines ({len(running)} running)")
        machines.up(cfg, ctx.log_path)
        if baked is not None:
            bake.remember_in_store(store, baked)
        ctx.progress.action("vagrant ssh-config")
        machines.ssh_config(cfg, ctx.log_path)
        ctx.state.set("vagrantfile_applied", vagrantfile)
    elif ctx.state.get("vagrantfile_applied") not in (None, vagrantfile):
        ctx.progress.warn("machines: their settings changed since they were created (memory, CPUs, box...); "
                          "running machines keep the old ones: `invoke lab.destroy` and `lab.up` to apply")


def _keep(ctx: Context) -> None:
    """What the nodes got, kept in the host's cache. Keeping is for the next lab: a failure here
    (a full disk, a node that cannot save an image) is a warning, and this lab stays up."""
    try:
        cache_steps.export_images(ctx)
    except LabError as exc:
        ctx.log(f"cache: not kept: {exc}")
        ctx.progress.warn(f"cache: the host's cache did not keep what this lab got ({exc}); the lab is as it was, "
                          "the next lab downloads it again")
        ctx.summary = "not kept (see the warning)"


STEPS: List[Step] = [
    Step("preflight", "check vagrant, vagrant-libvirt, libvirt, storage pool, KVM, memory, free subnets",
         _preflight, remembered=False),
    Step("network", "define and start the lab's dual-stack libvirt network with node DNS records",
         _network, remembered=False),
    Step("render", "render the Vagrantfile, kubeadm config, node inputs and manifests", _render, remembered=False),
    Step("machines", "vagrant up every node; planned IPv4 and IPv6, names in both families", _machines,
         remembered=False, scripts=("lib.sh", "network.sh")),
    Step("prepare", "swap off, SELinux permissive, firewalld off, kernel modules, sysctls, ipset/ipvsadm",
         cluster.prepare, scripts=("lib.sh", "prepare.sh")),
    Step("runtime", "Docker with IPv6 (daemon.json as the recipe), or containerd", cluster.runtime,
         scripts=("lib.sh", "runtime.sh")),
    Step("images", "load every image of the host's cache for this profile on every node that lacks it",
         cluster.images, remembered=False, scripts=("lib.sh", "cache-images.sh")),
    Step("kubernetes", "cri-dockerd --ipv6-dual-stack (current); kubeadm, kubelet, kubectl; kubelet enabled",
         cluster.kubernetes, scripts=("lib.sh", "cri-dockerd.sh", "kubernetes.sh", "fetch.sh")),
    Step("control-plane", "kubeadm config images pull; kubeadm init with the dual-stack config",
         cluster.control_plane, scripts=("lib.sh", "control-plane.sh"), files=(layout.KUBEADM_CONFIG,)),
    Step("cni", "Calico with IPv4 and IPv6 pools, autodetecting the lab network in both families", cluster.cni,
         scripts=("lib.sh", "fetch.sh", "load-images.sh")),
    Step("join", "workers join (CA pinned); wait until every node is Ready", cluster.join,
         scripts=("lib.sh", "join.sh")),
    Step("kubeconfig", "copy the admin kubeconfig to the state directory (0600)", cluster.fetch_kubeconfig,
         remembered=False),
    Step("metallb", "MetalLB in layer 2 mode with an address pool per family", workloads.deploy_metallb,
         scripts=("lib.sh", "fetch.sh"), files=(f"{layout.MANIFESTS_DIR}/metallb-config.yaml",)),
    Step("workloads", "nginx on IPv4 and IPv6, the recipe's Services and the dual-stack LoadBalancer",
         workloads.deploy_workloads, files=(f"{layout.MANIFESTS_DIR}/nginx.yaml",
                                            f"{layout.MANIFESTS_DIR}/services.yaml")),
    Step("cache", "keep in the host's cache every image the nodes hold and the packages they downloaded "
                  "(also at the end of a run --until any step from runtime on)", _keep, remembered=False,
         scripts=("lib.sh", "cache-images.sh", "cache-packages.sh")),
]
STEP_NAMES = [step.name for step in STEPS]


def describe(steps: Sequence[Step] = STEPS, indent: str = "  ") -> str:
    """The steps, one line each with what it does (``lab.up --help``)."""
    width = max(len(step.name) for step in steps)
    return "\n".join(f"{indent}{step.name:<{width}}  {step.help}" for step in steps)


#: Profile fields that nothing on the nodes depends on (read by validation and lab.verify only):
#: a change of them re-runs no step.
NOT_INSTALLED = frozenset({"description", "client_image", "e2e_focus", "host_ips", "endpoint_slices",
                           "kubernetes_schema_version"})


def installed_pins(profile) -> str:
    """The profile's fields that decide what the steps install, as text for a digest."""
    return repr([(f.name, getattr(profile, f.name)) for f in dataclasses.fields(profile)
                 if f.name not in NOT_INSTALLED])


def fingerprint(cfg: LabConfig, step: Step, files: Mapping[str, str]) -> str:
    """A digest of what ``step`` depends on: the values of the node settings its scripts read on
    every node, the rendered ``files`` it applies (relative path -> text), its scripts and the profile."""
    digest = hashlib.sha256(f"{step.name}|{installed_pins(cfg.profile)}".encode())
    names = nodeenv.variables_read(step.scripts)
    for node in sorted(cfg.nodes, key=lambda n: n.name):
        env = nodeenv.node_env(cfg, node)
        digest.update(f"\0node {node.name}\0".encode())
        digest.update(nodeenv.env_file_text({name: env[name] for name in names}).encode())
    for rel in step.files:
        digest.update(f"\0file {rel}\0".encode())
        digest.update(files.get(rel, "").encode())
    for name in step.scripts:
        digest.update(f"\0script {name}\0".encode())
        digest.update((render.PROVISION_DIR / name).read_bytes())
    return digest.hexdigest()


class _Inputs:
    """The rendered files, as the render step writes them, made once per run (and per config)."""

    def __init__(self):
        self._cfg, self._files = None, {}

    def __call__(self, ctx: Context, step: Step) -> str:
        if step.files and self._cfg is not ctx.cfg:
            self._cfg, self._files = ctx.cfg, render.artifacts(ctx.cfg, ctx.state)
        return fingerprint(ctx.cfg, step, self._files if step.files else {})


def machines_running(ctx: Context) -> bool:
    """True when every node's domain runs."""
    with network.connect(ctx.cfg.libvirt_uri) as conn:
        return len(machines.domains_running(ctx.cfg, conn)) == len(ctx.cfg.nodes)


#: The step that keeps what the nodes got in the host's cache: it ends every run that went as far
#: as the step named here, so a lab stopped early (``--until runtime``) keeps its packages and images too.
KEEP_STEP, KEEP_AFTER = "cache", "runtime"


def _chosen(steps: Sequence[Step], until: Optional[str]) -> List[Step]:
    names = [step.name for step in steps]
    if until is not None and until not in names:
        raise LabError(f"--until: unknown step {until!r}; steps are: {', '.join(names)}")
    if until is None:
        return list(steps)
    chosen = list(steps[:names.index(until) + 1])
    if KEEP_STEP in names and KEEP_AFTER in names[:names.index(until) + 1] and until != KEEP_STEP:
        chosen.append(steps[names.index(KEEP_STEP)])
    return chosen


def up(cfg: LabConfig, until: Optional[str] = None, progress: Optional[Progress] = None, *,
       steps: Optional[Sequence[Step]] = None, dry: bool = False,
       alive: Callable[[Context], bool] = machines_running) -> Optional[Path]:
    """Run ``steps`` (default :data:`STEPS`) in order, up to and including ``until``; return the log path.

    A remembered step is skipped when its recorded fingerprint is current and ``alive`` (asked
    once per run) says the machines that hold its work run. With ``dry`` nothing runs and nothing
    is written: each step is listed as it would run or be skipped, and None is returned.
    Raises :class:`~lab.errors.StepError` (with the log path) on the first failure; what was
    done stays recorded, so the next run resumes.
    """
    chosen = _chosen(STEPS if steps is None else steps, until)
    own = progress is None
    progress = progress or Progress()
    try:
        if dry:
            _dry_run(cfg, chosen, progress, alive)
            return None
        ctx = open_context(cfg, "up", progress, [step.name for step in chosen])
        inputs, running = _Inputs(), []
        for step in chosen:
            done = ctx.state.get("steps", {})
            digest = inputs(ctx, step) if step.remembered else None
            if digest is not None and done.get(step.name) == digest and _once(running, alive, ctx):
                progress.skip(f"{step.name}: already done")
                continue
            run_step(ctx, step)
            if digest is not None:
                done = dict(ctx.state.get("steps", {}))
                done[step.name] = digest
                ctx.state.set("steps", done)
        return ctx.log_path
    finally:
        if own:
            progress.close()


def _once(memo: list, alive: Callable[[Context], bool], ctx: Context) -> bool:
    if not memo:
        memo.append(alive(ctx))
    return memo[0]


def run_step(ctx: Context, step: Step) -> None:
    """Run ``step`` between its start line and its ``✓`` or ``✗`` line; every failure becomes a
    :class:`~lab.errors.StepError` with the log's path."""
    progress = ctx.progress
    progress.start(step.name)
    ctx.step, ctx.summary = step.name, ""
    ctx.log(f"=== {step.name} ===")
    try:
        step.run(ctx)
    except StepError as exc:
        exc.log = exc.log or ctx.log_path
        progress.fail(f"{step.name}: {exc.reason} (log: {exc.log})")
        raise
    except LabError as exc:
        progress.fail(f"{step.name}: {exc} (log: {ctx.log_path})")
        raise StepError(step.name, str(exc), ctx.log_path) from exc
    except KeyboardInterrupt:
        ctx.log(f"{step.name} interrupted")
        progress.fail(f"{step.name}: interrupted (log: {ctx.log_path})")
        raise
    except Exception as exc:  # noqa: BLE001 - the user gets one line and the log, never a traceback
        ctx.log(f"{step.name} failed:\n{traceback.format_exc()}")
        reason = f"{type(exc).__name__}: {exc}"
        progress.fail(f"{step.name}: {reason} (log: {ctx.log_path})")
        raise StepError(step.name, reason, ctx.log_path) from exc
    finally:
        ctx.step = ""
    progress.done(f"{step.name}: {ctx.summary}" if ctx.summary else None)


def _dry_run(cfg: LabConfig, chosen: Sequence[Step], progress: Progress, alive: Callable[[Context], bool]) -> None:
    """List what ``up`` would do; read the state directory and libvirt, write nothing."""
    statedir.check(cfg.state_dir, "lab.state_dir")
    ctx = Context(cfg, DryState(layout.Layout(cfg.state_dir).state), progress=progress,
                  steps=tuple(step.name for step in chosen))
    inputs, running = _Inputs(), []

    def machines_up(ctx: Context) -> bool:
        try:
            return alive(ctx)
        except LabError as exc:
            progress.warn(f"cannot tell whether the machines run ({exc}); counted as not running")
            return False

    done = ctx.state.get("steps", {})
    for step in chosen:
        if not step.remembered:
            progress.plan(f"{step.name}: would run (it runs every time)")
        elif done.get(step.name) != inputs(ctx, step):
            progress.plan(f"{step.name}: would run ({'its inputs changed' if step.name in done else 'not done yet'})")
        elif not _once(running, machines_up, ctx):
            progress.plan(f"{step.name}: would run (not every machine runs)")
        else:
            progress.skip(f"{step.name}: already done, would be skipped")
    progress.plan(f"dry run: nothing was changed in {cfg.state_dir} or libvirt")


def forget_steps(state: State) -> None:
    """Forget every step done (new machines start from scratch: the steps' work lived on the old ones)."""
    if state.get("steps"):
        state.set("steps", {})


def offline_check(cfg: LabConfig, progress: Progress) -> None:
    """``lab.offline``: one ``✗`` line for everything a run would download that the host's cache (or
    Vagrant's box store) lacks, then :class:`~lab.errors.StepError`; before anything is created."""
    from .cache_offline import offline_problems  # noqa: PLC0415

    progress.start("preflight")
    try:
        problems = offline_problems(cfg, cache.for_config(cfg))
    except LabError as exc:
        progress.fail(f"preflight: {exc}")
        raise StepError("preflight", str(exc)) from None
    if not problems:
        progress.done(f"lab.offline: everything the run needs is in the host's cache ({cfg.cache_dir})")
        return
    for line in problems:
        progress.fail(line)
    raise StepError("preflight", problems[0])


def verify_context(cfg: LabConfig, progress: Optional[Progress] = None) -> Context:
    """The context ``lab.verify`` runs its checks with (its own log, the same state and runner)."""
    return open_context(cfg, "verify", progress)

