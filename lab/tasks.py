"""The ``lab`` task collection: thin adapters from invoke to the ``lab`` package.

Library code raises typed exceptions; only here do they become ``invoke.Exit`` with one
line per problem and a status: 0 success, 1 a failed step or check (the host, the lab),
2 a usage or configuration error (a flag, a setting, the state directory or its record).

What ``lab.up`` was run with that later tasks need (the profile) is recorded in the lab's
state; every later task takes it from there, and an explicit other one (a flag or
``lab.profile``) is refused where it would change or judge the lab (up, render, verify).
"""

from __future__ import annotations

import dataclasses

import json as jsonlib
import os
import shlex
import sys
from pathlib import Path
from typing import Optional

from invoke import Collection, Exit, Program, task

from . import config as lab_config
from . import sources
from .context import read_state
from .errors import ConfigError, LabError, StepError
from .pipeline import STEP_NAMES
from .pipeline import describe as describe_steps

# Before invoke reads invoke.yaml, -f FILE and INVOKE_LAB_* (it imports the tasks first).
sources.install()

from .taskbase import (  # noqa: E402 - after sources.install()
    EXIT_CONFIG, EXIT_FAILED, _command, _fail, _give_back_at_exit, _load, _remember, refuse_dry,
)


@task(help={"profile": "profile to show (default: lab.profile)"})
def config(c, profile=None):
    """Print the effective lab settings (defaults, invoke.yaml, INVOKE_LAB_*, flags) as JSON."""
    print(lab_config.describe(_load(c, lab="none", profile=profile)))


@task(help={"out": "directory to write into (default: lab.state_dir)",
            "profile": "profile to render (default: the lab's, else lab.profile)"})
def render(c, out=None, profile=None):
    """Render every generated file (Vagrantfile, network XML, kubeadm config, node inputs, manifests)."""
    from .render import render_all  # noqa: PLC0415

    refuse_dry(c, "render")
    if out is not None:
        problem = "is empty; give a directory path" if not out.strip() else lab_config.dir_problem(Path(out))
        if problem:
            raise Exit(f"lab.render --out: {lab_config.shown(out)} {problem}", code=EXIT_CONFIG)
        out = Path(os.path.abspath(out))
    cfg = _load(c, lab="refuse", state_dir=out, profile=profile)
    if out is not None:
        _give_back_at_exit(out)
    try:
        for path in render_all(cfg, out if out is not None else cfg.state_dir):
            print(path)
    except LabError as exc:
        raise _fail(exc) from None


def next_steps(cfg, until: Optional[str] = None) -> str:
    """What to run after ``lab.up``, as kind says it: the kubeconfig, kubectl, lab.verify."""
    run = _command()
    kubeconfig = cfg.state_dir / "kubeconfig"
    if kubeconfig.exists() and (until is None or STEP_NAMES.index(until) >= STEP_NAMES.index("kubeconfig")):
        return ("You can now use the cluster with:\n\n"
                f"  export KUBECONFIG={shlex.quote(str(kubeconfig))}   # or: eval \"$({run} lab.kubeconfig)\"\n"
                "  kubectl get nodes -o wide\n"
                f"  {run} lab.verify")
    lines = [f"  {run} lab.up                   # goes on from where it stopped"]
    if until is not None and STEP_NAMES.index(until) >= STEP_NAMES.index("machines"):
        lines.append(f"  {run} lab.verify --layer network")
    return "Next:\n\n" + "\n".join(lines)


@task(help={"until": "stop after this step; steps: " + ", ".join(STEP_NAMES),
            "profile": "profile to use (default: the lab's, else lab.profile)",
            "verbose": "also stream each step's log (Vagrant's output, every command on the nodes)",
            "quiet": "print failures only",
            "offline": "as lab.offline: true; first list what the run would download that the host's cache "
                       "lacks, and stop before creating anything when something is"})
def up(c, until=None, profile=None, verbose=False, quiet=False, offline=False):
    """Create the lab: network, machines, Kubernetes, Calico, MetalLB and nginx (resumable).

    With invoke's --dry (-R) it lists the steps that would run or be skipped, and changes nothing.
    """
    from . import pipeline  # noqa: PLC0415
    from .progress import for_task  # noqa: PLC0415

    if until is not None and until not in STEP_NAMES:
        raise Exit(f"lab.up --until: {lab_config.shown(until)} is not a step; use one of {', '.join(STEP_NAMES)}",
                   code=EXIT_CONFIG)
    if verbose and quiet:
        raise Exit("lab.up: --verbose and --quiet exclude each other; give one of them", code=EXIT_CONFIG)
    dry = bool(c.config.run.dry)  # invoke's --dry/-R (its Program sets run.dry)
    progress = for_task(verbose=verbose, quiet=quiet)
    cfg = _load(c, lab="refuse", profile=profile)
    if offline:
        cfg = dataclasses.replace(cfg, offline=True)
    try:
        with progress:
            if cfg.offline:
                pipeline.offline_check(cfg, progress)
            if not dry:
                _remember(cfg)
            log = pipeline.up(cfg, until=until, progress=progress, dry=dry)
    except StepError:
        # The step's ✗ line (reason and log) is already on stderr: one line, no more.
        raise Exit(code=EXIT_FAILED) from None
    except LabError as exc:
        raise _fail(exc) from None
    if not dry and not quiet:
        print(f"lab {cfg.name} is up (log: {log})", file=sys.stderr)
        print(f"\n{next_steps(cfg, until)}", file=sys.stderr)


up.__doc__ = (up.__doc__ or "") + "\n    Steps (`--until STEP` stops after one):\n\n" + describe_steps(indent=" " * 6)


@task(help={"json": "print the status as JSON"})
def status(c, json=False):
    """Show the lab: name, profile, state directory, libvirt URI, steps done, and each node's state and addresses."""
    from . import labs, network  # noqa: PLC0415

    cfg = _load(c)
    try:
        done = read_state(cfg.state_dir / "state.json").get("steps") or {}
    except ConfigError as exc:
        raise _fail(exc) from None
    problem, states = None, {}
    try:
        with network.connect(cfg.libvirt_uri) as conn:
            states = labs.node_states(cfg, conn)
    except LabError as exc:
        problem = "\n".join(getattr(exc, "problems", None) or [str(exc)])
    report = labs.status_report(cfg, [s for s in STEP_NAMES if s in done], states)
    print(jsonlib.dumps(report, indent=2) if json else labs.status_text(report))
    if problem:
        raise Exit(problem, code=EXIT_FAILED)


@task(name="list", help={"json": "print the labs as JSON"})
def list_(c, json=False):
    """List the labs on the libvirt host (lab.libvirt_uri), with their state directories where known."""
    from . import labs, network  # noqa: PLC0415

    cfg = _load(c)
    try:
        with network.connect(cfg.libvirt_uri) as conn:
            found = labs.labs_on(conn, [cfg.state_dir, *labs.vagrant_projects()])
    except LabError as exc:
        raise _fail(exc) from None
    if json:
        print(jsonlib.dumps([lab.as_dict() for lab in found], indent=2))
    elif found:
        print(labs.list_text(found))
    else:
        print(f"no labs on {cfg.libvirt_uri}", file=sys.stderr)


@task(help={"verbose": "also stream the log of vagrant destroy", "quiet": "print failures only"})
def destroy(c, verbose=False, quiet=False):
    """Destroy the lab: machines, their volumes, the lab network and the rendered state.

    With invoke's --dry (-R) it lists what it would remove, and removes nothing.
    """
    from . import destroy as lab_destroy  # noqa: PLC0415
    from .progress import for_task  # noqa: PLC0415

    if verbose and quiet:
        raise Exit("lab.destroy: --verbose and --quiet exclude each other; give one of them", code=EXIT_CONFIG)
    dry = bool(c.config.run.dry)  # invoke's --dry/-R (its Program sets run.dry)
    progress = for_task(verbose=verbose, quiet=quiet)
    cfg = _load(c)
    try:
        with progress:
            ctx = lab_destroy.context(cfg, progress)
            removed = lab_destroy.show_plan(ctx) if dry else lab_destroy.destroy(ctx)
    except StepError:
        # Its ✗ line (what is left, and how to remove it) is already on stderr: one line, no more.
        raise Exit(code=EXIT_FAILED) from None
    except LabError as exc:
        raise _fail(exc) from None
    if not dry and not quiet:
        summary = ", ".join(f"{len(v)} {k}" for k, v in removed.items())
        print(f"lab {cfg.name} destroyed (removed from libvirt after vagrant: {summary})", file=sys.stderr)


@task
def kubeconfig(c):
    """Print `export KUBECONFIG=...` for the lab's admin kubeconfig."""
    cfg = _load(c)
    path = (cfg.state_dir / "kubeconfig").resolve()
    if not path.exists():
        raise Exit(f"no kubeconfig at {path}; run `{_command()} lab.up` (step kubeconfig) first", code=EXIT_FAILED)
    print(f"export KUBECONFIG={shlex.quote(str(path))}")  # eval'd by a shell: quoted


def _report_problem(flag: str, value: str) -> Optional[str]:
    """Why ``--json``/``--junit`` cannot be written at ``value``, or None."""
    if not value.strip():
        return f"lab.verify --{flag}: is empty; give a file path"
    path = Path(os.path.abspath(value))
    if path.is_dir():
        return f"lab.verify --{flag}: {lab_config.shown(value)} is a directory; give a file path"
    problem = lab_config.dir_problem(path.parent)
    return f"lab.verify --{flag}: {lab_config.shown(value)}: its directory {problem}" if problem else None


@task(help={"only": "run only these checks (comma-separated names)",
            "layer": "run only one layer: network or cluster",
            "json": "also write a JSON report to this file",
            "junit": "also write a JUnit XML report to this file",
            "e2e": "also run the upstream dual-stack e2e tests (needs hydrophone)"})
def verify(c, only=None, layer=None, json=None, junit=None, e2e=False):
    """Prove, check by check, that the lab is dual-stack end to end."""
    from . import pipeline, progress  # noqa: PLC0415
    from . import verify as lab_verify  # noqa: PLC0415

    refuse_dry(c, "verify")
    if layer not in (None, "network", "cluster"):
        raise Exit(f"lab.verify --layer: {lab_config.shown(layer)} is unknown; use network or cluster",
                   code=EXIT_CONFIG)
    if only is not None:
        try:
            lab_verify.select(only, layer)
        except lab_verify.UnknownCheckError as exc:
            raise Exit(f"lab.verify --only: {exc}", code=EXIT_CONFIG) from None
    for flag, value in (("json", json), ("junit", junit)):
        problem = _report_problem(flag, value) if value is not None else None
        if problem:
            raise Exit(problem, code=EXIT_CONFIG)
    cfg = _load(c, lab="refuse")
    ssh_config = cfg.state_dir / "ssh_config"
    if not ssh_config.exists():
        raise Exit(f"no lab machines known in {cfg.state_dir}; run `{_command()} lab.up --until machines` first",
                   code=EXIT_FAILED)
    try:
        ctx = pipeline.verify_context(cfg, progress.for_task())
        report = lab_verify.verify(ctx, only=only, layer=layer, json_path=json, junit_path=junit, e2e=e2e,
                                   kubeconfig=cfg.state_dir / "kubeconfig", out=sys.stdout)
    except LabError as exc:
        raise _fail(exc) from None
    except OSError as exc:
        raise Exit(f"lab.verify: cannot write {exc.filename}: {exc.strerror}", code=EXIT_FAILED) from None
    if not report.ok:
        raise Exit(code=report.exit_code)


from .bake_tasks import bake  # noqa: E402
from .cache_tasks import cache  # noqa: E402
from .workshop_tasks import collect, restore, snapshot, snapshots, ssh  # noqa: E402
ns = Collection(config, render, up, status, list_, destroy, kubeconfig, verify, snapshot, restore, snapshots, ssh, collect,
                cache, bake)
ns.configure({"lab": dict.fromkeys(lab_config.DEFAULTS)})


def namespace() -> Collection:
    """The root collection with the lab's tasks as ``lab.*`` (``tasks.py`` and the ``dslab`` command)."""
    root = Collection()
    root.add_collection(ns, name="lab")
    root.configure({"lab": dict(ns.configuration()["lab"])})
    return root


class _Program(Program):
    """invoke with the lab's tasks built in; its project directory is the current one, whose
    ``invoke.yaml`` it reads (as invoke reads the one beside ``tasks.py``)."""

    def parse_collection(self) -> None:
        super().parse_collection()
        self.config.set_project_location(os.getcwd())
        self.config.load_project()


def main() -> None:
    """The ``dslab`` command: ``dslab lab.up`` does what ``invoke lab.up`` does in a checkout."""
    try:
        from importlib.metadata import version  # noqa: PLC0415

        release = version("dslab")
    except Exception:  # noqa: BLE001 - not installed: no version to show
        release = None
    try:
        _Program(namespace=namespace(), name="dslab", binary="dslab", version=release).run()
    except BrokenPipeError:  # `dslab lab.status --json | head -1`: the reader left, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
