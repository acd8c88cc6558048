"""What every task of the ``lab`` collection shares: loading the settings (with the profile the
lab recorded), turning the library's typed exceptions into one line and an exit status (0
success, 1 a failed step or check, 2 a usage or configuration error), ``--dry``, and giving a
state directory made under sudo back to its user.
"""

from __future__ import annotations

import atexit
import os
import stat
import sys
from pathlib import Path
from typing import Optional

from invoke import Exit, ParseError, Program

from . import config as lab_config
from . import sources
from .context import read_state
from .errors import ConfigError, LabError, StepError
from .profiles import PROFILES

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
