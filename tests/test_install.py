"""Installing the package: `pip install .` (not editable) in a fresh virtualenv renders a lab from
anywhere, and scripts/setup-host gives the user who ran it libvirt through its group."""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def checkout_copy(dest: Path) -> Path:
    """The checkout's files, without its virtualenv, caches, state directories and tests."""
    skip = shutil.ignore_patterns(".git", ".venv", ".cache", ".lab", "__pycache__", "*.egg-info", "build", "tests")
    shutil.copytree(ROOT, dest, ignore=skip, symlinks=True)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh virtualenv with the package installed from a copy of the checkout (not editable); its
    dependencies are this interpreter's (a .pth file), so nothing is downloaded."""
    base = tmp_path_factory.mktemp("install")
    source = checkout_copy(base / "src")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    parents = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (purelib / "dslab-test-deps.pth").write_text("".join(f"{p}\n" for p in parents))
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",) and not k.startswith("INVOKE_")}
    result = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                             "--no-index", str(source)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    shutil.rmtree(source)   # the installed package must need nothing of the checkout
    return venv, env


def test_the_installed_package_is_not_the_checkout(installed):
    venv, env = installed
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import lab; print(lab.__file__)"], env=env,
                           cwd=venv, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(venv) and not Path(where).is_relative_to(ROOT)


@pytest.mark.parametrize("how", ["dslab", "invoke"])
def test_installed_render_writes_the_vagrantfile_and_ships_the_scripts(installed, tmp_path, how):
    venv, env = installed
    work = tmp_path / "work"
    work.mkdir()
    if how == "invoke":   # the checkout's entry point alone, with the installed package
        shutil.copy(ROOT / "tasks.py", work / "tasks.py")
        command = [str(venv / "bin" / "python"), "-m", "invoke", "lab.render", "--profile", "seed-2020"]
    else:
        command = [str(venv / "bin" / "dslab"), "lab.render", "--profile", "seed-2020"]
    (work / "invoke.yaml").write_text("lab:\n  name: installed\n")
    result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    state = work / ".lab"   # a relative lab.state_dir is taken from the project directory
    printed = {Path(line) for line in result.stdout.split()}
    assert state / "Vagrantfile" in printed and all(p.exists() for p in printed)
    vagrantfile = (state / "Vagrantfile").read_text()
    assert 'config.vm.box = "centos/7"' in vagrantfile and '"installed_"' in vagrantfile
    shipped = [Path(s) for s in re.findall(r'(?:source|path): "(/[^"]+\.sh)"', vagrantfile)]
    assert {p.name for p in shipped} == {"lib.sh", "network.sh"}
    for path in shipped:
        assert path.is_file() and path.is_relative_to(venv), path
    provision = shipped[0].parent
    assert {p.name for p in ROOT.joinpath("provision").glob("*.sh")} == {p.name for p in provision.glob("*.sh")}


def test_dslab_prints_its_completion_script(installed):
    venv, env = installed
    result = subprocess.run([str(venv / "bin" / "dslab"), "--print-completion-script", "bash"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "complete -F" in result.stdout and "dslab" in result.stdout


# ------------------------------------------------------------------ setup-host and the libvirt group

STUB = """#!/bin/sh
echo "$(basename "$0") $*" >> "$STUB_LOG"
"""
ID = """#!/bin/sh
case "$*" in
  -u) echo "$STUB_UID" ;;
  -un) [ "$STUB_UID" = 0 ] && echo root || echo alice ;;
  -nG) [ "$STUB_UID" = 0 ] && echo root || echo "alice sudo" ;;
  "-nG "*) echo "$2 sudo" ;;
esac
"""


@pytest.mark.parametrize("uid, sudo_user, member", [("1000", "", "alice"), ("0", "bob", "bob"), ("0", "", None)])
def test_setup_host_adds_the_user_to_the_libvirt_group(tmp_path, uid, sudo_user, member):
    """setup-host run as the user (it uses sudo), with sudo (SUDO_USER), and as root: only a user joins."""
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup-host", checkout / "scripts" / "setup-host")
    (checkout / ".venv" / "bin").mkdir(parents=True)
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name in ("apt-get", "usermod", "systemctl", "virsh", "python", "python3", "tee", "chmod"):
        (stubs / name).write_text(STUB)
    (stubs / "sudo").write_text(STUB + 'exec "$@"\n')
    (stubs / "getent").write_text(STUB + '[ "$*" = "group libvirt" ]\n')
    (stubs / "id").write_text(ID)
    (checkout / ".venv" / "bin" / "python").write_text(STUB)
    for path in [*stubs.iterdir(), checkout / ".venv" / "bin" / "python"]:
        path.chmod(0o755)
    log = tmp_path / "calls.log"
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "STUB_LOG": str(log), "STUB_UID": uid, "SUDO_USER": sudo_user,
           "HOME": str(tmp_path)}
    result = subprocess.run(["bash", str(checkout / "scripts" / "setup-host")], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    calls = log.read_text().splitlines()
    joined = [c for c in calls if c.startswith("usermod")]
    if member is None:
        assert joined == [] and "log out and in" not in result.stdout
    else:
        assert joined == [f"usermod -aG libvirt {member}"]
        assert f"added {member} to the libvirt group: log out and in again" in result.stdout
    assert any(c.startswith("python -m pip install -q --upgrade pip wheel") for c in calls)
