"""The README stays true: every setting, step and check it names exists, and vice versa."""

from __future__ import annotations

import re
from pathlib import Path

from lab import config
from lab.pipeline import STEP_NAMES
from lab.verify import CHECK_NAMES

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_every_setting_is_documented_and_nothing_else():
    documented = set(re.findall(r"^\| `lab\.([a-z0-9_]+)` \|", README, flags=re.M))
    assert documented == set(config.DEFAULTS)


def test_every_step_is_documented_in_order():
    steps = re.findall(r"^\| `([a-z-]+)` \| ", README.split("## What `lab.up` does")[1].split("###")[0], flags=re.M)
    assert steps == STEP_NAMES


def test_every_check_is_documented():
    checks = re.findall(r"^\| (?:network|cluster) \| `([a-z0-9-]+)` \|", README, flags=re.M)
    assert checks == list(CHECK_NAMES)


def test_default_addresses_in_the_readme_are_the_defaults():
    cfg = config.load({})
    for address in (cfg.external_ipv4, cfg.external_ipv6, cfg.metallb_ipv6_range.first, cfg.gateway_ipv4,
                    cfg.control_plane.ipv4, cfg.control_plane.ipv6):
        assert str(address) in README


def test_quick_start_is_two_commands():
    quick = README.split("## Quick start")[1].split("## ")[0]
    blocks = re.findall(r"```sh\n(.*?)```", quick, flags=re.S)
    assert blocks == ["scripts/setup-host            # once; log out and in again if it says so\n"
                      ".venv/bin/invoke lab.up\n",
                      "sudo sh -c 'scripts/setup-host --test && scripts/test'\n"]


def test_the_non_root_path_the_readme_gives_is_the_one_the_tools_give():
    quick = README.split("## Quick start")[1].split("## Tests")[0]
    setup = (ROOT / "scripts" / "setup-host").read_text()
    assert "sudo usermod -aG libvirt $USER" in quick
    assert 'usermod -aG libvirt "$user"' in setup and "${SUDO_USER:-}" in setup
    assert "SUDO_UID" in quick and "SUDO_UID" in (ROOT / "lab" / "taskbase.py").read_text()


def test_every_task_is_documented():
    from lab import tasks

    documented = set(re.findall(r"^\| `invoke (lab\.[a-z]+)", README, flags=re.M))
    documented |= {"lab.up", "lab.verify", "lab.destroy"}   # their own sections
    assert documented == {f"lab.{name}" for name in tasks.ns.task_names}


def test_the_debug_and_completion_flags_exist():
    from invoke import Program

    flags = {name for arg in Program().core_args() for name in arg.names}
    for flag in ("print-completion-script", "debug", "d", "dry", "R"):
        assert flag in flags
    assert "invoke -d lab.up" in README and "--print-completion-script bash" in README
