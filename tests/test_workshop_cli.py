"""``invoke lab.ssh NODE [-- COMMAND]`` through invoke's own parser, against a recording ``ssh`` on PATH."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import pytest

from lab import config, identity, workshop_tasks
from test_snapshots import run_task

STUB = textwrap.dedent("""\
    #!{python}
    import json, os, re, sys
    with open(os.environ["SSH_RECORD"], "a") as handle:
        handle.write(json.dumps(sys.argv[1:]) + "\\n")
    args = sys.argv[1:]
    command = " ".join(args[args.index("--") + 1:]) if "--" in args else ""
    found = re.fullmatch(r"exit ([0-9]+)", command)
    sys.exit(int(found.group(1)) if found else 0)
    """)


@pytest.fixture()
def lab(tmp_path, monkeypatch):
    """A lab with machines known (its ssh_config), a recording ssh first on PATH, run from elsewhere."""
    state = tmp_path / "state"
    monkeypatch.setenv("INVOKE_LAB_STATE_DIR", str(state))
    monkeypatch.setenv("INVOKE_LAB_LIBVIRT_URI", "test:///default")
    cfg = config.load({"state_dir": str(state)})
    identity.ensure_id(cfg)
    (state / "ssh_config").write_text("".join(f"Host {n.name}\n  HostName 127.0.0.1\n" for n in cfg.nodes))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(STUB.format(python=sys.executable))
    (bin_dir / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SSH_RECORD", str(tmp_path / "ssh.jsonl"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return cfg


def calls(cfg):
    record = cfg.state_dir.parent / "ssh.jsonl"
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines()]


def test_ssh_runs_a_command_on_each_node_and_exits_with_its_status(lab, capfd):
    for status, node in enumerate(lab.nodes):
        code, _, err = run_task(capfd, "lab.ssh", node.name, "--", f"exit {status}")
        assert code == status, err
    recorded = calls(lab)
    assert len(recorded) == len(lab.nodes)
    for status, (argv, node) in enumerate(zip(recorded, lab.nodes)):
        assert argv[:2] == ["-F", str(lab.state_dir / "ssh_config")]
        assert argv[-3:] == [node.name, "--", f"exit {status}"]
        assert "BatchMode=yes" in argv and any(a.startswith("ControlPath=") for a in argv)


def test_the_command_line_after_the_double_dash_reaches_the_node_as_written(lab, capfd):
    code, _, _ = run_task(capfd, "lab.ssh", lab.control_plane.name, "--", "ls -l '/tmp/a b' && echo \"$HOME\"")
    assert code == 0
    assert calls(lab)[-1][-2:] == ["--", "ls -l '/tmp/a b' && echo \"$HOME\""]


def test_ssh_without_a_command_opens_a_shell(lab, capfd):
    code, _, _ = run_task(capfd, "lab.ssh", lab.workers[0].name)
    assert code == 0
    argv = calls(lab)[-1]
    assert argv[-1] == lab.workers[0].name and "--" not in argv


def test_an_unknown_node_is_one_line_listing_the_nodes(lab, capfd):
    code, _, err = run_task(capfd, "lab.ssh", "k8s-worker09", "--", "true")
    assert code == 2
    assert err.strip() == ("lab.ssh: 'k8s-worker09' is not a node of lab dslab; nodes: k8s-master01, k8s-worker01, "
                           "k8s-worker02")
    assert calls(lab) == []


def test_ssh_without_machines_says_how_to_make_them(lab, capfd):
    (lab.state_dir / "ssh_config").unlink()
    code, _, err = run_task(capfd, "lab.ssh", lab.control_plane.name)
    assert code == 1
    assert err.strip() == (f"lab.ssh: no lab machines known in {lab.state_dir}; run `invoke lab.up --until machines` "
                           "first")
    assert calls(lab) == []


def test_ssh_argv_keeps_the_command_as_one_argument():
    argv = workshop_tasks.ssh_argv("/s/ssh_config", "n1", "echo a  b", "/c/%C")
    assert argv[-3:] == ["n1", "--", "echo a  b"]
    assert workshop_tasks.ssh_argv("/s/ssh_config", "n1", "  ", None)[-1] == "n1"
