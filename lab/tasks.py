"""The ``lab`` task collection: thin adapters from invoke to the ``lab`` package.

Library code raises typed exceptions; only here do they become ``invoke.Exit`` with one
line per problem and a status: 0 success, 1 a failed step or check (the host, the lab),
2 a usage or configuration error (a flag, a setting, the state directory or its record).

What ``lab.up`` was run with that later tasks need (the profile) is recorded in the lab's
state; every later task takes it from there, and an explicit other one (a flag or
``lab.profile``) is refused where it would change or judge the lab (up, render, verify).
"""

from __future__ import annotations

import atexit
import json as jsonlib
import os
import shlex
import stat
import sys
from pathlib import Path
from typing import Optional

from invoke import Collection, Exit, ParseError, Program, task

from . import config as lab_config
from . import sources
from .context import read_state
from .errors import ConfigError, LabError, StepError
from .pipeline import STEP_NAMES
from .pipeline import describe as describe_steps
from .profiles import PROFILES

# Before invoke reads invoke.yaml, -f FILE and INVOKE_LAB_* (it imports the tasks first).
sources.install()

EXIT_FAILED = 1
EXIT_CONFIG = 2
#: The key of ``state.json`` that records the profile ``lab.up`` was run with.
PROFILE_KEY = "profile"


def _usage_errors_exit_2() -> None:
    """invoke exits 1 on a command line it cannot parse (an unknown task or flag, a flag without its
    value); for the lab that is a usage error like any other bad value: exit 2, one line."""
    for name in ("parse_tasks", "parse_cleanup"):
        original = getattr(Program, name)
        if getattr(original, "lab_exit_2", False):
            continue

        def parse(self, _original=original):
            try:
                _original(self)
            except ParseError as exc:
                run = _command()
                raise Exit(f"lab: {exc} (`{run} --list` lists the tasks, `{run} --help <task>` a task's flags)",
                           code=EXIT_CONFIG) from None

        parse.lab_exit_2 = True
        setattr(Program, name, parse)


_usage_errors_exit_2()


# --------------------------------------------------------------------------- settings and state


def _project_dir(c) -> Path:
    """Where a relative ``lab.state_dir`` is taken from: beside ``tasks.py`` (invoke), or the current
    directory (the ``dslab`` command, whose project directory it is)."""
    prefix = getattr(c.config, "_project_prefix", None)
    return Path(prefix) if prefix else Path.cwd()


def _state_dir_flag(c, user: dict, overrides: dict) -> dict:
    """``overrides`` with ``state_dir`` made absolute from :func:`_project_dir` when it is relative."""
    value = lab_config.merged_settings(user, **overrides).get("state_dir")
    # A value with a control character is left as given, for validation to report.
    if isinstance(value, str) and value.strip() and value.isprintable():
        path = Path(value.strip()).expanduser()
        if not path.is_absolute():
            overrides = dict(overrides, state_dir=str(_project_dir(c) / path))
    return overrides


def recorded_profile(state_dir: Path) -> Optional[str]:
    """The profile ``lab.up`` recorded in ``state_dir``'s state, or None; a damaged record is a
    :class:`ConfigError` (one line saying how to recover)."""
    path = Path(state_dir) / "state.json"
    state = read_state(path)
    value = state.get(PROFILE_KEY)
    if value is not None and value not in PROFILES:
        raise ConfigError([f"lab.state_dir: {path} is damaged ({PROFILE_KEY} is {lab_config.shown(value)}, not one "
                           f"of {', '.join(PROFILES)}); set it to the profile the lab was made with"])
    if value is None and lab_made(state):
        value = _profile_of_rendered(Path(state_dir))
    return value


def lab_made(state: dict) -> bool:
    """Whether ``up`` made something with the recorded profile (machines or a step done); until
    then (an up that stopped in preflight) another profile is no conflict."""
    return bool(state.get("steps") or state.get("vagrantfile_applied"))


def _profile_of_rendered(state_dir: Path) -> Optional[str]:
    """The profile of a lab made before labs recorded theirs: the one whose Kubernetes version
    its rendered node inputs name (``nodes/*.env``), or None."""
    for env in sorted((state_dir / "nodes").glob("*.env")):
        try:
            lines = env.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith("KUBERNETES_VERSION="):
                version = line.split("=", 1)[1].strip().strip("'\"")
                return next((name for name, p in PROFILES.items() if p.kubernetes_version == version), None)
    return None


def _load(c, *, lab: str = "follow", state_dir: Optional[Path] = None, **overrides):
    """Load the lab config from invoke's ``lab`` settings plus task flags; the problems of
    reading the sources (:mod:`lab.sources`) come first.

    ``lab`` says what the lab's recorded profile does (in ``state_dir``, default ``lab.state_dir``):
    ``follow`` (it is used whatever is set), ``refuse`` (it is used, and an explicit other one is
    refused), ``none`` (the state is not read).
    """
    user = c.config.get("lab") or {}
    overrides = _state_dir_flag(c, user, {k: v for k, v in overrides.items() if v is not None})
    explicit = overrides.get("profile") or user.get("profile")
    try:
        if lab != "none" and not sources.PROBLEMS:
            where = state_dir
            if where is None:
                value = lab_config.merged_settings(user, **overrides).get("state_dir")
                where = Path(value) if isinstance(value, str) and Path(value).is_absolute() else None
            try:
                recorded = recorded_profile(where) if where is not None else None
                made = where is not None and lab_made(read_state(Path(where) / "state.json"))
            except OSError:   # a path that cannot be looked at (too long...): validation says why
                recorded, made = None, False
            known = isinstance(explicit, str) and explicit in PROFILES
            if recorded and known and explicit != recorded and lab == "refuse" and made:
                given = f"--profile {explicit}" if overrides.get("profile") else f"lab.profile {explicit}"
                raise ConfigError([f"lab.profile: the lab in {where} was made with profile {recorded}, and {given} "
                                   "asks for another; drop it (every task uses the lab's), or run "
                                   f"`{_command()} lab.destroy` first to make a new lab with {explicit}"])
            # destroy, status, kubeconfig follow the lab's; an unknown one is left for validation to report
            if recorded and (explicit is None or (known and lab == "follow")):
                overrides["profile"] = recorded
        cfg = lab_config.load(user, **overrides)
    except ConfigError as exc:
        raise Exit("\n".join(sources.PROBLEMS + [p for p in exc.problems if p not in sources.PROBLEMS]),
                   code=EXIT_CONFIG) from None
    if sources.PROBLEMS:
        raise Exit("\n".join(sources.PROBLEMS), code=EXIT_CONFIG)
    _give_back_at_exit(cfg.state_dir)
    return cfg


def _remember(cfg) -> None:
    """Record in the lab's state what later tasks take from it (the profile), once the state
    directory is the lab's (marked, and not copied from another lab's)."""
    from . import identity  # noqa: PLC0415
    from .context import State  # noqa: PLC0415

    try:
        identity.ensure_id(cfg)
        state = State(cfg.state_dir / "state.json")
        if state.get(PROFILE_KEY) != cfg.profile.name:
            state.set(PROFILE_KEY, cfg.profile.name)
    except LabError as exc:
        raise _fail(exc) from None


def _fail(exc: LabError, code: int = EXIT_FAILED):
    if isinstance(exc, ConfigError):
        return Exit("\n".join(exc.problems), code=EXIT_CONFIG)
    if isinstance(exc, StepError):
        where = f" (log: {exc.log})" if exc.log else ""
        return Exit(f"lab.up failed at {exc.step}: {exc.reason}{where}; fix it and run `invoke lab.up` again "
                    "to resume", code=code)
    return Exit("\n".join(getattr(exc, "problems", None) or [str(exc)]), code=code)


# --------------------------------------------------------------------------- run with sudo


_GIVEN_BACK = []


def _give_back_at_exit(path: Path) -> None:
    """Run through sudo, give ``path`` (a state directory) back to the user who ran sudo when the task ends."""
    if os.geteuid() == 0 and os.environ.get("SUDO_UID", "").isdigit() and path not in _GIVEN_BACK:
        if not _GIVEN_BACK:
            atexit.register(lambda: [give_back(p) for p in _GIVEN_BACK])
        _GIVEN_BACK.append(path)


def give_back(state_dir: Path, uid: Optional[int] = None, gid: Optional[int] = None) -> int:
    """Give a lab's state directory (it carries the lab's marker) and what root made in it to
    ``SUDO_UID``/``SUDO_GID``; symbolic links are neither followed nor changed. Returns how many
    entries changed owner."""
    uid = int(os.environ["SUDO_UID"]) if uid is None else uid
    gid = int(os.environ.get("SUDO_GID") or uid) if gid is None else gid
    if Path(state_dir).is_symlink() or not (Path(state_dir) / ".dslab").is_file():
        return 0
    changed = 0
    for top, dirs, files, fd in os.fwalk(state_dir, follow_symlinks=False):
        for name in (["."] if top == os.fspath(state_dir) else []) + dirs + files:
            try:
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if info.st_uid == 0 and not stat.S_ISLNK(info.st_mode):
                    os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
                    changed += 1
            except OSError:
                continue
    return changed


# --------------------------------------------------------------------------- the tasks


def refuse_dry(c, task_name: str) -> None:
    """invoke's --dry (-R) is honoured by lab.up and lab.destroy only; elsewhere it is refused."""
    if c.config.run.dry:
        raise Exit(f"lab.{task_name}: --dry (-R) is honoured by lab.up and lab.destroy only; "
                   f"run lab.{task_name} without it", code=EXIT_CONFIG)


def _command() -> str:
    """How the user ran the tasks: ``dslab`` or ``invoke``."""
    return "dslab" if Path(sys.argv[0]).name == "dslab" else "invoke"


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
            "quiet": "print failures only"})
def up(c, until=None, profile=None, verbose=False, quiet=False):
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
    try:
        with progress:
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


from .workshop_tasks import collect, restore, snapshot, snapshots, ssh  # noqa: E402
ns = Collection(config, render, up, status, list_, destroy, kubeconfig, verify, snapshot, restore, snapshots, ssh, collect)
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
