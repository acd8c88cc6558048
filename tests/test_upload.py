"""SshRunner.put_tree on a node without tar: a fake ``ssh`` runs the remote command locally.

The fake ``ssh`` (first on PATH) records its argv, drops its options and the host name, and
runs what is left as the remote shell would, as ``sh -c`` with a PATH that has bash and
coreutils but no tar, and a ``sudo`` that just runs its command.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

from lab.errors import StepError
from lab.remote import SshRunner

REPO = Path(__file__).resolve().parent.parent

#: What the node has: bash and coreutils (and sh for the login shell), no tar, no gzip.
NODE_TOOLS = ["bash", "sh", "base64", "mkdir", "chmod", "mv", "rm", "cat", "install", "ls", "env"]

FAKE_SSH = r'''#!{python}
import json, os, subprocess, sys
args = sys.argv[1:]
with open({log!r}, "a") as log:
    log.write(json.dumps(args) + "\n")
while args and args[0].startswith("-"):
    args = args[2:] if args[0] in ("-F", "-o") else args[1:]
host, remote = args[0], " ".join(args[1:])
env = {{"PATH": {node_path!r}, "HOME": {home!r}, "LC_ALL": "C"}}
sys.exit(subprocess.run(["sh", "-c", remote], env=env).returncode)
'''

FAKE_SUDO = '#!/bin/sh\nexec "$@"\n'


@pytest.fixture
def node(tmp_path, monkeypatch):
    """A runner whose ssh reaches a "node" without tar; returns (runner, ssh log path)."""
    node_bin = tmp_path / "node-bin"
    node_bin.mkdir()
    for tool in NODE_TOOLS:
        path = shutil.which(tool)
        assert path, f"the test needs {tool}"
        (node_bin / tool).symlink_to(path)
    (node_bin / "sudo").write_text(FAKE_SUDO)
    (node_bin / "sudo").chmod(0o755)
    assert not (node_bin / "tar").exists()
    local_bin = tmp_path / "local-bin"
    local_bin.mkdir()
    log = tmp_path / "ssh.log"
    (local_bin / "ssh").write_text(FAKE_SSH.format(python=sys.executable, log=str(log), node_path=str(node_bin),
                                                   home=str(tmp_path)))
    (local_bin / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{local_bin}:{os.environ['PATH']}")
    ssh_config = tmp_path / "ssh-config"
    ssh_config.write_text("")
    return SshRunner(ssh_config, tmp_path / "ssh-commands.log", "prepare"), log


def tree(root: Path) -> dict:
    """Every entry below ``root``: relative path -> (mode, bytes or None for a directory)."""
    out = {}
    for path in sorted(root.rglob("*")):
        mode = stat.S_IMODE(path.stat().st_mode)
        out[path.relative_to(root).as_posix()] = (mode, None if path.is_dir() else path.read_bytes())
    return out


def ssh_calls(log: Path) -> list:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_provision_tree_arrives_without_tar(node, tmp_path):
    runner, log = node
    remote = tmp_path / "node-root" / "opt" / "dslab" / "provision"
    runner.put_tree("k8s-master01", REPO / "provision", str(remote))
    assert tree(remote) == tree(REPO / "provision")
    assert os.access(remote / "prepare.sh", os.R_OK)
    calls = ssh_calls(log)
    assert len(calls) == 1  # one connection, reused through the ControlMaster options
    assert "ControlMaster=auto" in calls[0] and "k8s-master01" in calls[0]


@pytest.mark.parametrize("name", [
    "it's $(touch PWNED).sh",
    "`touch PWNED`",
    "a; touch PWNED",
    "line\nbreak",
    "-rf",
    "spaces  and\ttab",
    "ünïcode",
])
def test_hostile_names_are_written_not_run(node, tmp_path, name):
    runner, _ = node
    local = tmp_path / "local"
    (local / f"dir {name}").mkdir(parents=True)
    (local / name).write_text(f"file {name}\n")
    (local / f"dir {name}" / name).write_bytes(b"\x00\x01binary'\"$x\n")
    (local / name).chmod(0o750)
    remote = tmp_path / "remote $(touch PWNED)"
    runner.put_tree("node", local, str(remote))
    assert tree(remote) == tree(local)
    assert not list(tmp_path.rglob("PWNED")) and not (Path.cwd() / "PWNED").exists()


def test_contents_modes_and_update(node, tmp_path):
    runner, log = node
    local = tmp_path / "local"
    (local / "sub" / "deeper").mkdir(parents=True)
    (local / "run.sh").write_text("#!/usr/bin/env bash\necho hi\n")
    (local / "run.sh").chmod(0o755)
    (local / "data").write_text("")
    (local / "data").chmod(0o600)
    (local / "sub" / "deeper" / "big.bin").write_bytes(os.urandom(300_000))  # past one argument's limit
    remote = tmp_path / "remote"
    runner.put_tree("node", local, str(remote))
    assert tree(remote) == tree(local)
    # a second upload replaces changed files and keeps the others
    (local / "run.sh").write_text("#!/usr/bin/env bash\necho changed\n")
    runner.put_tree("node", local, str(remote))
    assert tree(remote) == tree(local)
    assert not list(remote.rglob("*.dslab-upload"))
    assert len(ssh_calls(log)) == 2


def test_failure_names_the_command(node, tmp_path):
    runner, _ = node
    local = tmp_path / "local"
    local.mkdir()
    (local / "f").write_text("x\n")
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("")
    with pytest.raises(StepError) as err:
        runner.put_tree("node", local, str(blocker / "provision"))
    assert "node:" in str(err.value)


def test_symlinks_are_refused(tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    (local / "link").symlink_to("/etc/passwd")
    runner = SshRunner(tmp_path / "ssh-config")
    with pytest.raises(ValueError, match="only directories and regular files"):
        runner.put_tree("node", local, "/opt/x")
