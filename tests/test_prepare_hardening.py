"""prepare.sh locks the box's passwords and turns ssh password login off, on every OS family.

Runs the real script with bash on the fake nodes of tests/test_provision.py. The sshd_config
files below are the parts that matter of what each box ships: EL9 (openssh 8.7p1) and Debian 12
(openssh 9.2p1) start with ``Include /etc/ssh/sshd_config.d/*.conf``, Debian cloud images add a
``50-cloud-init.conf`` allowing passwords; EL7's OpenSSH 7.4 has no Include.
"""

from __future__ import annotations

import pytest

from test_provision import SCENARIOS, changing, prepare_scenario

DROP_IN = "etc/ssh/sshd_config.d/01-dslab.conf"
INCLUDE_CONFIG = ("# This is the sshd server system-wide configuration file.\n"
                  "Include /etc/ssh/sshd_config.d/*.conf\n\n"
                  "#PasswordAuthentication yes\nKbdInteractiveAuthentication no\nUsePAM yes\n"
                  "X11Forwarding yes\nSubsystem sftp /usr/lib/openssh/sftp-server\n")
EL7_CONFIG = ("#\t$OpenBSD: sshd_config,v 1.100 2016/08/15 12:32:04 naddy Exp $\n"
              "HostKey /etc/ssh/ssh_host_rsa_key\nPasswordAuthentication yes\n"
              "ChallengeResponseAuthentication no\nUsePAM yes\n"
              "Subsystem sftp /usr/libexec/openssh/sftp-server\nMatch User anoncvs\n"
              "\tX11Forwarding no\n")
SSHD_UNIT = {"el7": "sshd", "el9": "sshd", "debian": "ssh"}
LOCKED = {"el7": "LK", "el9": "LK", "debian": "L"}


def hardening_node(tmp_path, scenario, config=None, active=True):
    node, env, _cfg = prepare_scenario(tmp_path, scenario)
    family = SCENARIOS[scenario][0]
    if config is None:
        config = EL7_CONFIG if family == "el7" else INCLUDE_CONFIG
    node.write("etc/ssh/sshd_config", config)
    state = node.state()
    state["services"][SSHD_UNIT[family]] = {"enabled": True, "active": active, "masked": False}
    state["locked_status"] = LOCKED[family]
    node.save(state)
    return node, env, family


def ssh_calls(calls):
    return [c for c in calls if c[0] in ("usermod", "passwd", "sshd") or (c[0] == "systemctl" and "reload" in c
                                                                              and c[-1] in ("ssh", "sshd"))]


@pytest.mark.parametrize("scenario", ["el7-seed-2020", "el9-current-docker", "debian-current-docker"])
def test_passwords_locked_and_password_login_off_then_nothing_changes(tmp_path, scenario):
    node, env, family = hardening_node(tmp_path, scenario)
    node.run("prepare.sh", env)
    calls = node.calls()
    for user in ("root", "vagrant"):
        assert ["passwd", "-S", user] in calls
        assert ["usermod", "-L", user] in calls
        assert node.state()["passwords"][user] == LOCKED[family]
    assert ["sshd", "-t"] in calls
    unit = SSHD_UNIT[family]
    assert ["systemctl", "reload", unit] in calls
    assert calls.index(["sshd", "-t"]) < calls.index(["systemctl", "reload", unit])  # checked before reload
    if family == "el7":
        text = node.read("etc/ssh/sshd_config")
        # first value wins in sshd: ours come before the box's own, and before any Match block
        assert text.startswith("# dslab: begin (key login only)\nPasswordAuthentication no\n"
                               "ChallengeResponseAuthentication no\n# dslab: end\n")
        assert text.endswith(EL7_CONFIG)
        assert "KbdInteractiveAuthentication" not in text  # unknown to OpenSSH 7.4
        assert not (node.root / "etc/ssh/sshd_config.d").exists()
    else:
        assert node.read(DROP_IN) == "# dslab: key login only\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        assert (node.root / DROP_IN).stat().st_mode & 0o777 == 0o600
        assert node.read("etc/ssh/sshd_config") == INCLUDE_CONFIG
    before = node.snapshot()
    node.clear_calls()
    node.run("prepare.sh", env)
    second = node.calls()
    assert ["passwd", "-S", "vagrant"] in second
    assert changing(second) == [] and ssh_calls(second) == [["passwd", "-S", "root"], ["passwd", "-S", "vagrant"]]
    assert node.snapshot() == before


def test_a_cloud_init_drop_in_allowing_passwords_comes_later(tmp_path):
    node, env, _ = hardening_node(tmp_path, "debian-current-docker")
    node.write("etc/ssh/sshd_config.d/50-cloud-init.conf", "PasswordAuthentication yes\n")
    node.run("prepare.sh", env)
    drop_ins = sorted(p.name for p in (node.root / "etc/ssh/sshd_config.d").iterdir())
    assert drop_ins == ["01-dslab.conf", "50-cloud-init.conf"]  # sshd reads them in this order


@pytest.mark.parametrize("preset", [
    {"root": "L", "vagrant": "P"},
    {"root": "LK", "vagrant": "NP"},    # EL: root locked; an empty password is locked too
    {"root": "P"},                      # a box without a vagrant user
])
def test_only_unlocked_accounts_are_locked(tmp_path, preset):
    node, env, _ = hardening_node(tmp_path, "el9-current-docker")
    node.update(passwords=dict(preset))
    node.run("prepare.sh", env)
    locked = [c[-1] for c in node.calls() if c[0] == "usermod"]
    assert locked == [u for u in ("root", "vagrant") if preset.get(u) in ("P", "NP")]


def test_without_pam_vagrants_password_is_left_for_its_key_login(tmp_path):
    node, env, _ = hardening_node(tmp_path, "debian-current-docker")
    node.update(sshd_usepam="no")
    result = node.run("prepare.sh", env)
    assert [c for c in node.calls() if c[0] == "usermod"] == [["usermod", "-L", "root"]]
    assert "sshd does not run with PAM" in result.stderr


def test_stopped_sshd_is_not_reloaded_and_a_bad_config_stops_before_reload(tmp_path):
    node, env, _ = hardening_node(tmp_path, "el9-current-docker", active=False)
    node.run("prepare.sh", env)
    assert not [c for c in node.calls() if c[:2] == ["systemctl", "reload"] and c[-1] == "sshd"]
    other, env, _ = hardening_node(tmp_path / "b", "el9-current-docker")
    other.update(fail=["sshd -t"])
    result = other.run("prepare.sh", env, check=False)
    assert result.returncode != 0 and "step 'ssh password login' failed: sshd -t" in result.stderr
    assert not [c for c in other.calls() if c[:2] == ["systemctl", "reload"] and c[-1] == "sshd"]


def test_a_node_without_an_ssh_server_is_left_alone(tmp_path):
    node, env, _ = prepare_scenario(tmp_path, "el9-current-docker")
    result = node.run("prepare.sh", env)
    assert "no sshd_config: no OpenSSH server" in result.stderr
    assert not [c for c in node.calls() if c[0] == "sshd"]
    assert not (node.root / "etc/ssh").exists()


def test_a_node_without_passwd_stops_instead_of_keeping_its_passwords(tmp_path):
    node, env, _ = hardening_node(tmp_path, "el9-current-docker")
    (node.bin / "passwd").unlink()  # the stub: the node has no passwd command
    result = node.run("prepare.sh", env, check=False)
    assert result.returncode != 0
    assert "step 'lock passwords' failed: passwd not found" in result.stderr
    assert not [c for c in node.calls() if c[0] == "usermod"]
