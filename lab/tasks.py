"""The ``lab`` task collection: thin adapters from invoke to the ``lab`` package.

Library code raises typed exceptions; only here do they become ``invoke.Exit`` with one
line per problem and a non-zero status.
"""

from __future__ import annotations

import shlex
import sys
import tempfile
from pathlib import Path

from invoke import Collection, Exit, task

from . import config as lab_config
from . import sources
from .errors import ConfigError, LabError, PreflightError, StepError
from .pipeline import STEP_NAMES

# Before invoke reads invoke.yaml, -f FILE and INVOKE_LAB_* (it imports the tasks first).
sources.install()

EXIT_FAILED = 1
EXIT_CONFIG = 2


def _load(c, **overrides):
    """Load the lab config from invoke's ``lab`` settings plus task flags; the problems of
    reading the sources (:mod:`lab.sources`) come first."""
    try:
        cfg = lab_config.load(c.config.get("lab") or {}, **overrides)
    except ConfigError as exc:
        raise Exit("\n".join(sources.PROBLEMS + [p for p in exc.problems if p not in sources.PROBLEMS]),
                   code=EXIT_CONFIG) from None
    if sources.PROBLEMS:
        raise Exit("\n".join(sources.PROBLEMS), code=EXIT_CONFIG)
    return cfg


def _fail(exc: LabError, code: int = EXIT_FAILED):
    if isinstance(exc, (ConfigError, PreflightError)):
        return Exit("\n".join(exc.problems), code=EXIT_CONFIG)
    if isinstance(exc, StepError):
        where = f" (log: {exc.log})" if exc.log else ""
        return Exit(f"lab.up failed at {exc.step}: {exc.reason}{where}; fix it and run `invoke lab.up` again "
                    "to resume", code=code)
    return Exit(str(exc), code=code)


@task(help={"profile": "profile to show (default: lab.profile)"})
def config(c, profile=None):
    """Print the effective lab settings (defaults, invoke.yaml, INVOKE_LAB_*, flags) as JSON."""
    print(lab_config.describe(_load(c, profile=profile)))


@task(help={"out": "directory to write into (default: lab.state_dir)",
            "profile": "profile to render (default: lab.profile)"})
def render(c, out=None, profile=None):
    """Render every generated file (Vagrantfile, network XML, kubeadm config, node inputs, manifests)."""
    from .render import render_all  # noqa: PLC0415

    cfg = _load(c, profile=profile)
    if out is not None:
        problem = "is empty; give a directory path" if not out.strip() else lab_config.dir_problem(Path(out))
        if problem:
            raise Exit(f"lab.render --out: {lab_config.shown(out)} {problem}", code=EXIT_CONFIG)
    try:
        for path in render_all(cfg, Path(out) if out is not None else cfg.state_dir):
            print(path)
    except LabError as exc:
        raise _fail(exc) from None


@task(help={"until": "stop after this step; steps: " + ", ".join(STEP_NAMES),
            "profile": "profile to use (default: lab.profile)"})
def up(c, until=None, profile=None):
    """Create the lab: network, machines, Kubernetes, Calico, MetalLB and nginx (resumable)."""
    from . import pipeline  # noqa: PLC0415

    if until is not None and until not in STEP_NAMES:
        raise Exit(f"lab.up --until: {lab_config.shown(until)} is not a step; use one of {', '.join(STEP_NAMES)}",
                   code=EXIT_CONFIG)
    cfg = _load(c, profile=profile)
    try:
        log = pipeline.up(cfg, until=until)
    except StepError:
        # The step's ✗ line (reason and log) is already on stderr: one line, no more.
        raise Exit(code=EXIT_FAILED) from None
    except LabError as exc:
        raise _fail(exc) from None
    print(f"lab {cfg.name} is up (log: {log})", file=sys.stderr)


@task
def status(c):
    """Show each node's state and addresses."""
    from . import machines, network  # noqa: PLC0415

    cfg = _load(c)
    try:
        with network.connect(cfg.libvirt_uri) as conn:
            running = set(machines.domains_running(cfg, conn))
    except LabError as exc:
        raise _fail(exc) from None
    for node in cfg.nodes:
        state = "running" if node.name in running else "not running"
        print(f"{node.name:<16} {node.role:<14} {state:<12} {node.ipv4}  {node.ipv6}  {node.fqdn(cfg.domain)}")


@task
def destroy(c):
    """Destroy the lab: machines, their volumes, the lab network and the rendered state."""
    from . import destroy as lab_destroy  # noqa: PLC0415

    cfg = _load(c)
    with tempfile.TemporaryDirectory(prefix="dslab-destroy-") as tmp:
        log = Path(tmp) / "vagrant-destroy.log"
        try:
            removed = lab_destroy.destroy(cfg, log, report=lambda line: print(line, file=sys.stderr))
        except LabError as exc:
            raise _fail(exc) from None
    summary = ", ".join(f"{len(v)} {k}" for k, v in removed.items())
    print(f"lab {cfg.name} destroyed (removed from libvirt after vagrant: {summary})", file=sys.stderr)


@task
def kubeconfig(c):
    """Print `export KUBECONFIG=...` for the lab's admin kubeconfig."""
    cfg = _load(c)
    path = (cfg.state_dir / "kubeconfig").resolve()
    if not path.exists():
        raise Exit(f"no kubeconfig at {path}; run `invoke lab.up` (step kubeconfig) first", code=EXIT_FAILED)
    print(f"export KUBECONFIG={shlex.quote(str(path))}")  # eval'd by a shell: quoted


@task(help={"only": "run only these checks (comma-separated names)",
            "layer": "run only one layer: network or cluster",
            "json": "also write a JSON report to this file",
            "junit": "also write a JUnit XML report to this file",
            "e2e": "also run the upstream dual-stack e2e tests (needs hydrophone)"})
def verify(c, only=None, layer=None, json=None, junit=None, e2e=False):
    """Prove, check by check, that the lab is dual-stack end to end."""
    from . import pipeline  # noqa: PLC0415
    from . import verify as lab_verify  # noqa: PLC0415
    from .context import Context, State  # noqa: PLC0415
    from .remote import SshRunner  # noqa: PLC0415

    if layer not in (None, "network", "cluster"):
        raise Exit(f"lab.verify --layer: {lab_config.shown(layer)} is unknown; use network or cluster",
                   code=EXIT_CONFIG)
    if only:
        try:
            lab_verify.select(only, layer)
        except lab_verify.UnknownCheckError as exc:
            raise Exit(f"lab.verify --only: {exc}", code=EXIT_CONFIG) from None
    cfg = _load(c)
    ssh_config = cfg.state_dir / "ssh_config"
    if not ssh_config.exists():
        raise Exit(f"no lab machines known in {cfg.state_dir}; run `invoke lab.up --until machines` first",
                   code=EXIT_FAILED)
    try:
        log = pipeline.new_log(cfg.state_dir, "verify")
        ctx = Context(cfg, State(cfg.state_dir / "state.json"), SshRunner(ssh_config, log, "verify"), log)
        report = lab_verify.verify(ctx, only=only, layer=layer, json_path=json, junit_path=junit, e2e=e2e,
                                   kubeconfig=cfg.state_dir / "kubeconfig", out=sys.stdout)
    except LabError as exc:
        raise _fail(exc) from None
    if not report.ok:
        raise Exit(code=report.exit_code)


ns = Collection(config, render, up, status, destroy, kubeconfig, verify)
ns.configure({"lab": dict.fromkeys(lab_config.DEFAULTS)})
