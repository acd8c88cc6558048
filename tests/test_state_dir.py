"""Which directories the lab claims as its state directory, through the real invoke."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lab import config, render, statedir
from lab.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def snapshot(path: Path):
    """Every entry under ``path`` with its content, to prove nothing was written."""
    if not path.exists():
        return None
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None) for p in sorted(path.rglob("*"))}


@pytest.fixture()
def project(tmp_path):
    shutil.copy(ROOT / "tasks.py", tmp_path / "tasks.py")
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    (home / ".profile").write_text("# the user's\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    env.update(PYTHONPATH=str(ROOT), HOME=str(home), USER="", SUDO_USER="",
               INVOKE_LAB_LIBVIRT_URI="test:///default")  # lab.up never reaches a real libvirtd here
    return tmp_path, env


def invoke(cwd, env, *args):
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def users_dir(root: Path) -> Path:
    """A directory of the user's own: their Vagrantfile, a manifest, a log."""
    (root / "manifests").mkdir(parents=True)
    (root / "logs").mkdir()
    (root / "Vagrantfile").write_text("# the user's own Vagrantfile\n")
    (root / "manifests" / "nginx.yaml").write_text("kind: Mine\n")
    (root / "logs" / "diary.log").write_text("mine\n")
    return root


CASES = [
    # name, task arguments, how the state directory is given, what it is, the line
    ("home-by-tilde", ("lab.render",), "~", lambda cwd: None, "lab.state_dir: ", "is a home directory"),
    ("home-by-path", ("lab.up",), None, lambda cwd: cwd / "home", "lab.state_dir: ", "is a home directory"),
    ("users-dir-render", ("lab.render",), None, lambda cwd: users_dir(cwd / "mine"), "lab.state_dir: ",
     "is not empty and is not a dslab state directory"),
    ("users-dir-up", ("lab.up", "--until", "render"), None, lambda cwd: users_dir(cwd / "mine"), "lab.state_dir: ",
     "is not empty and is not a dslab state directory"),
    ("users-dir-out", ("lab.render", "--out", "OUT"), "st", lambda cwd: users_dir(cwd / "mine"), "--out: ",
     "is not empty and is not a dslab state directory"),
]


@pytest.mark.parametrize("name, args, given, make, setting, reason", CASES, ids=[c[0] for c in CASES])
def test_a_directory_that_is_not_the_labs_is_refused(project, name, args, given, make, setting, reason):
    cwd, env = project
    target = make(cwd)
    if "OUT" in args:
        args = tuple(str(target) if a == "OUT" else a for a in args)
    env["INVOKE_LAB_STATE_DIR"] = given if given is not None else str(target)
    shown = target if target is not None else Path(env["HOME"])
    before = snapshot(cwd)
    result = invoke(cwd, env, *args)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith(setting) and str(shown) in lines[0] and reason in lines[0], lines[0]
    assert f"set {setting.rstrip(': ')} to a new or empty directory" in lines[0]
    after = snapshot(cwd)
    after.pop("__pycache__", None)
    assert {k: v for k, v in after.items() if not k.startswith("__pycache__")} == before   # nothing written


@pytest.mark.parametrize("prepare", ["new", "empty", "the lab's"])
def test_a_new_empty_or_marked_directory_is_claimed(project, prepare):
    cwd, env = project
    target = cwd / "st"
    if prepare != "new":
        target.mkdir()
    if prepare == "the lab's":
        assert invoke(cwd, dict(env, INVOKE_LAB_STATE_DIR=str(target)), "lab.render").returncode == 0
        (target / "notes.txt").write_text("the user's, beside the lab's files\n")
    result = invoke(cwd, dict(env, INVOKE_LAB_STATE_DIR=str(target)), "lab.render")
    assert result.returncode == 0, result.stderr
    assert (target / statedir.MARKER).is_file() and (target / "Vagrantfile").is_file()
    # What it wrote is recorded, so destroy removes that and nothing else.
    recorded = statedir.recorded_names(target)
    assert {"Vagrantfile", "network.xml", "kubeadm-config.yaml"} <= set(recorded)
    assert "notes.txt" not in recorded


@pytest.mark.parametrize("path, reason", [
    ("/", "a system directory"),
    ("/etc", "a system directory"),
    ("/usr", "a system directory"),
    ("/usr/local", "a system directory"),
    ("/var/lib", "a system directory"),
    ("/tmp", "a system directory"),
    ("/etc/dslab", "inside a system directory"),
    ("/usr/share/dslab/.lab", "inside a system directory"),
    ("/proc/self", "inside a system directory"),
    ("/home", "a system directory"),
])
def test_system_directories_are_never_claimed(path, reason):
    """In-process (never a write into a system directory, even on a broken build)."""
    assert statedir.refusal(Path(path)) == reason
    with pytest.raises(ConfigError) as raised:
        statedir.check(Path(path), "lab.state_dir")
    assert raised.value.problems[0].startswith(f"lab.state_dir: {path} is {reason}")


def test_home_and_what_holds_homes_are_never_claimed(tmp_path, monkeypatch):
    home = tmp_path / "users" / "me"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("USER", "")
    monkeypatch.setenv("SUDO_USER", "")
    assert statedir.refusal(home) == "a home directory"
    assert statedir.refusal(tmp_path / "users") == "a directory that holds home directories"
    assert statedir.refusal(home / ".lab") is None
    cfg = config.load({"state_dir": str(home / ".lab")})
    statedir.mark(cfg.state_dir, cfg)
    assert (home / ".lab" / statedir.MARKER).is_file()
