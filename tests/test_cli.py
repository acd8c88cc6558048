"""The tasks as a user runs them, through the real ``invoke``: exit codes, the profile a lab
remembers, lab.status, lab.list, lab.kubeconfig, running under sudo."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import uuid as uuidlib
from pathlib import Path

import pytest
import yaml

from lab import config, identity, kubeconfig, labs, network, render, taskbase, tasks
from lab.context import State

ROOT = Path(__file__).resolve().parent.parent
BOX = "centos-VAGRANTSLASH-7_vagrant_box_image_0_box.img"  # the seed-2020 box (centos/7) as vagrant-libvirt names it


@pytest.fixture()
def project(tmp_path):
    """A directory with the task entry point, and an environment with no INVOKE_* of the caller's."""
    cwd = tmp_path / "project"
    cwd.mkdir()
    shutil.copy(ROOT / "tasks.py", cwd / "tasks.py")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INVOKE_", "SUDO_"))}
    env.update(PYTHONPATH=str(ROOT), INVOKE_LAB_STATE_DIR=str(cwd / "st"), INVOKE_LAB_LIBVIRT_URI="test:///default",
               VAGRANT_HOME=str(tmp_path / "vagrant.d"))
    return cwd, env


def invoke(project, *args, env=None, timeout=120):
    cwd, base = project
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=cwd, env=dict(base, **(env or {})),
                          capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------ exit codes

#: A libvirt that cannot be reached: the test driver on a node file it cannot read (its error has several lines).
UNREACHABLE = {"INVOKE_LAB_LIBVIRT_URI": f"test://{ROOT / 'README.md'}"}
TASKS = ["lab.config", "lab.render", "lab.up", "lab.status", "lab.list", "lab.destroy", "lab.kubeconfig", "lab.verify"]

EXIT_CASES = [
    # (id, task arguments, environment, invoke.yaml, exit code, a text of the one line (stderr))
    *[(f"{t}-unknown-flag", (t, "--bogus"), {}, None, 2, "No idea what '--bogus' is") for t in TASKS],
    *[(f"{t}-yaml", (t,), {}, "lab:\n  cpus: many\n", 2, "lab.cpus: ") for t in TASKS],
    *[(f"{t}-env", (t,), {"INVOKE_LAB_MEMORY_MB": "lots"}, None, 2, "lab.memory_mb: ") for t in TASKS],
    *[(f"{t}-env-typo", (t,), {"INVOKE_LAB_MEMROY_MB": "4096"}, None, 2, "did you mean INVOKE_LAB_MEMORY_MB")
      for t in TASKS],
    ("unknown-task", ("lab.nope",), {}, None, 2, "No idea what 'lab.nope' is"),
    ("unknown-core-flag", ("--bogus", "lab.config"), {}, None, 2, "No idea what '--bogus' is"),
    ("help-unknown-task", ("--help", "lab.nope"), {}, None, 2, "No idea what 'lab.nope' is"),
    ("runtime-file-missing", ("-f", "missing.yaml", "lab.status"), {}, None, 2, "missing.yaml does not exist"),
    ("flag-without-value", ("lab.up", "--until"), {}, None, 2, "needed value and was not given one"),
    ("config-profile", ("lab.config", "--profile", "nope"), {}, None, 2, "lab.profile: "),
    ("render-profile", ("lab.render", "--profile", "nope"), {}, None, 2, "lab.profile: "),
    ("render-out-empty", ("lab.render", "--out", ""), {}, None, 2, "lab.render --out: "),
    ("up-until", ("lab.up", "--until", "nope"), {}, None, 2, "lab.up --until: "),
    ("up-profile", ("lab.up", "--profile", "nope"), {}, None, 2, "lab.profile: "),
    ("verify-layer", ("lab.verify", "--layer", "nope"), {}, None, 2, "lab.verify --layer: "),
    ("verify-only", ("lab.verify", "--only", "nope"), {}, None, 2, "lab.verify --only: "),
    ("verify-json-empty", ("lab.verify", "--json", ""), {}, None, 2, "lab.verify --json: "),
    ("verify-junit-dir", ("lab.verify", "--junit", "."), {}, None, 2, "lab.verify --junit: "),
    ("yaml-profile", ("lab.render",), {}, "lab:\n  profile: nope\n", 2, "lab.profile: "),
    ("env-profile", ("lab.status",), {"INVOKE_LAB_PROFILE": "nope"}, None, 2, "lab.profile: "),
    # A failed check or step: 1.
    ("kubeconfig-none", ("lab.kubeconfig",), {}, None, 1, "no kubeconfig at "),
    ("verify-no-machines", ("lab.verify",), {}, None, 1, "no lab machines known in "),
    ("status-unreachable", ("lab.status",), UNREACHABLE, None, 1, "lab.libvirt_uri: cannot connect"),
    ("list-unreachable", ("lab.list",), UNREACHABLE, None, 1, "lab.libvirt_uri: cannot connect"),
    ("destroy-unreachable", ("lab.destroy",), UNREACHABLE, None, 1, "lab.libvirt_uri: cannot connect"),
    # Success: 0.
    ("config", ("lab.config",), {}, None, 0, None),
    ("render", ("lab.render",), {}, None, 0, None),
    ("status", ("lab.status",), {}, None, 0, None),
    ("list", ("lab.list",), {}, None, 0, None),
    ("destroy-nothing", ("lab.destroy",), {}, None, 0, None),
]


@pytest.mark.parametrize("name, args, env, yaml_text, code, line", EXIT_CASES, ids=[c[0] for c in EXIT_CASES])
def test_exit_codes(project, name, args, env, yaml_text, code, line):
    if yaml_text is not None:
        (project[0] / "invoke.yaml").write_text(yaml_text)
    result = invoke(project, *args, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == code, output
    assert "Traceback" not in output
    if line is not None:
        lines = [text for text in result.stderr.splitlines() if text.strip()]
        assert len(lines) == 1 and line in lines[0], lines
        if code == 2:
            assert lines[0].startswith("lab"), lines


# ------------------------------------------------------------------ the profile a lab remembers


def seed_lab_host(tmp_path, state_dir: Path) -> str:
    """A libvirt host (node file) holding a seed-2020 lab made for ``state_dir``: its machines' disks are
    backed by the centos/7 box image, as vagrant-libvirt leaves them."""
    cfg = config.load({"profile": "seed-2020", "state_dir": str(state_dir)})
    lab_id = identity.ensure_id(cfg)
    domains = "".join(
        f"<domain type='test'><name>{cfg.domain_name(n)}</name><description>{identity.description(cfg.name, lab_id)}"
        f"</description><memory>1048576</memory><os><type>hvm</type></os><devices><disk type='file' device='disk'>"
        f"<source file='/pool/{cfg.domain_name(n)}.img'/><target dev='vda'/></disk><interface type='network'>"
        f"<source network='{cfg.network_name}'/></interface></devices></domain>" for n in cfg.nodes)
    volumes = "".join(
        f"<volume type='file'><name>{cfg.domain_name(n)}.img</name><key>/pool/{cfg.domain_name(n)}.img</key>"
        f"<capacity>1000</capacity><target><path>/pool/{cfg.domain_name(n)}.img</path></target><backingStore>"
        f"<path>/pool/{BOX}</path><format type='qcow2'/></backingStore></volume>" for n in cfg.nodes)
    volumes += (f"<volume type='file'><name>{BOX}</name><key>/pool/{BOX}</key><capacity>1000</capacity>"
                f"<target><path>/pool/{BOX}</path></target></volume>")
    net = network.network_xml(cfg, lab_id)
    path = tmp_path / "node.xml"
    path.write_text(f"<node>{domains}{net}<pool type='dir'><name>default</name><target><path>/pool</path></target>"
                    f"{volumes}</pool></node>")
    return f"test://{path}"


def test_up_records_the_profile_and_later_tasks_use_it(project):
    cwd, _ = project
    state = cwd / "st"
    # up stops at its first step here (no vagrant-libvirt on test:///default), after recording the profile.
    invoke(project, "lab.up", "--profile", "seed-2020", "--until", "preflight")
    assert json.loads((state / "state.json").read_text())[taskbase.PROFILE_KEY] == "seed-2020"
    status = invoke(project, "lab.status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["profile"] == "seed-2020"
    rendered = invoke(project, "lab.render")
    assert rendered.returncode == 0, rendered.stderr
    assert 'config.vm.box = "centos/7"' in (state / "Vagrantfile").read_text()


@pytest.mark.parametrize("args, env, given", [
    (("lab.up", "--profile", "current", "--until", "preflight"), {}, "--profile current"),
    (("lab.render", "--profile", "current"), {}, "--profile current"),
    (("lab.verify",), {"INVOKE_LAB_PROFILE": "current"}, "lab.profile current"),
    (("lab.up", "--until", "render"), {"INVOKE_LAB_PROFILE": "current"}, "lab.profile current"),
])
def test_an_explicit_other_profile_is_refused_on_a_lab_that_exists(project, args, env, given):
    cwd, _ = project
    cfg = config.load({"profile": "seed-2020", "state_dir": str(cwd / "st")})
    render.render_all(cfg, cfg.state_dir)
    State(cfg.state_dir / "state.json").set(taskbase.PROFILE_KEY, "seed-2020")
    State(cfg.state_dir / "state.json").set("vagrantfile_applied", "0" * 64)  # its machines were made
    before = (cfg.state_dir / "Vagrantfile").read_text()
    result = invoke(project, *args, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    line, = result.stderr.strip().splitlines()
    assert line.startswith("lab.profile: ") and "seed-2020" in line and given in line, line
    assert (cfg.state_dir / "Vagrantfile").read_text() == before


def test_a_profile_recorded_by_an_up_that_made_nothing_binds_nothing(project):
    """An up that stopped in preflight made nothing: the next up may take another profile."""
    cwd, _ = project
    invoke(project, "lab.up", "--profile", "current", "--until", "preflight")
    assert json.loads((cwd / "st" / "state.json").read_text())[taskbase.PROFILE_KEY] == "current"
    result = invoke(project, "lab.up", "--profile", "seed-2020", "--until", "preflight")
    assert "lab.profile: " not in result.stderr, result.stderr
    assert json.loads((cwd / "st" / "state.json").read_text())[taskbase.PROFILE_KEY] == "seed-2020"


def test_a_lab_made_before_profiles_were_recorded_keeps_its_own(project):
    """A seed-2020 lab whose state has steps but no profile: its rendered inputs say which."""
    cwd, _ = project
    cfg = config.load({"profile": "seed-2020", "state_dir": str(cwd / "st")})
    render.render_all(cfg, cfg.state_dir)
    State(cfg.state_dir / "state.json").set("steps", {"prepare": "0" * 64})
    status = invoke(project, "lab.status", "--json")
    assert json.loads(status.stdout)["profile"] == "seed-2020", status.stderr
    refused = invoke(project, "lab.render", "--profile", "current")
    assert refused.returncode == 2 and "made with profile seed-2020" in refused.stderr, refused.stderr


@pytest.mark.parametrize("args, env", [
    (("lab.render", "--profile", "nope"), {}),
    (("lab.destroy",), {"INVOKE_LAB_PROFILE": "nope"}),
    (("lab.status",), {"INVOKE_LAB_PROFILE": "nope"}),
])
def test_an_unknown_profile_is_reported_also_on_a_lab_that_exists(project, args, env):
    cwd, _ = project
    render.render_all(config.load({"state_dir": str(cwd / "st")}), cwd / "st")
    State(cwd / "st" / "state.json").set(taskbase.PROFILE_KEY, "current")
    result = invoke(project, *args, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    line, = result.stderr.strip().splitlines()
    assert line.startswith("lab.profile: 'nope' is unknown"), line
    assert (cwd / "st" / "state.json").exists()


def test_destroy_finds_the_box_volume_of_the_profile_up_was_run_with(project, tmp_path):
    """Through the real invoke, with lab.profile unset: the seed-2020 box image goes with the lab."""
    cwd, _ = project
    uri = seed_lab_host(tmp_path, cwd / "st")
    State(cwd / "st" / "state.json").set(taskbase.PROFILE_KEY, "seed-2020")
    result = invoke(project, "lab.destroy", env={"INVOKE_LAB_LIBVIRT_URI": uri})
    assert result.returncode == 0, result.stderr
    # Its three machines, their three disks and the box image they were backed by; its network.
    assert "removed from libvirt after vagrant: 3 domains, 4 volumes, 1 networks" in result.stderr
    assert not (cwd / "st" / "state.json").exists()


def test_a_damaged_profile_record_is_one_line(project):
    cwd, _ = project
    render.render_all(config.load({"state_dir": str(cwd / "st")}), cwd / "st")
    State(cwd / "st" / "state.json").set(taskbase.PROFILE_KEY, "seed-2021")
    result = invoke(project, "lab.status")
    assert result.returncode == 2
    line, = result.stderr.strip().splitlines()
    assert line.startswith("lab.state_dir: ") and "profile is 'seed-2021'" in line


# ------------------------------------------------------------------ lab.status and lab.list


def test_status_shows_header_steps_and_nodes(project):
    cwd, _ = project
    cfg = config.load({"state_dir": str(cwd / "st")})
    render.render_all(cfg, cfg.state_dir)
    State(cfg.state_dir / "state.json").set("steps", {"runtime": "x", "prepare": "y"})
    text = invoke(project, "lab.status")
    assert text.returncode == 0, text.stderr
    head = text.stdout.splitlines()[:4]
    assert head == [f"lab {cfg.name} (profile current)", f"  state directory: {cfg.state_dir}",
                    "  libvirt: test:///default", "  steps done: prepare, runtime"]
    data = json.loads(invoke(project, "lab.status", "--json").stdout)
    assert data["steps_done"] == ["prepare", "runtime"]
    assert [(n["name"], n["state"], n["ipv4"], n["ipv6"]) for n in data["nodes"]] == [
        (n.name, "not created", str(n.ipv4), str(n.ipv6)) for n in cfg.nodes]


def test_status_names_the_state_of_the_labs_machines(tmp_path):
    cfg = config.load({"profile": "seed-2020", "state_dir": str(tmp_path / "st")})
    uri = seed_lab_host(tmp_path, cfg.state_dir)
    with network.connect(uri) as conn:
        conn.lookupByName(cfg.domain_name(cfg.workers[0])).destroy()
        states = labs.node_states(cfg, conn)
    assert states == {cfg.control_plane.name: "running", cfg.workers[0].name: "shut off",
                      cfg.workers[1].name: "running"}


def test_list_finds_every_lab_and_the_state_directories_known_here(tmp_path):
    mine = config.load({"profile": "seed-2020", "state_dir": str(tmp_path / "st")})
    uri = seed_lab_host(tmp_path, mine.state_dir)
    elsewhere = tmp_path / "other-checkout" / ".lab"   # a lab Vagrant's machine index knows
    other = config.load({"name": "other", "state_dir": str(elsewhere), "network_ipv4": "192.168.201.0/24",
                         "network_ipv6": "fd00:db2::/64", "dhcp_ipv4_range": "192.168.201.100-192.168.201.139",
                         "dhcp_ipv6_range": "fd00:db2::1000-fd00:db2::10ff",
                         "metallb_ipv4_range": "192.168.201.240-192.168.201.250",
                         "metallb_ipv6_range": "fd00:db2::240-fd00:db2::250", "external_ipv4": "192.168.201.145",
                         "external_ipv6": "fd00:db2::120"})
    other_id = identity.ensure_id(other)
    index = tmp_path / "vagrant.d" / "data" / "machine-index" / "index"
    index.parent.mkdir(parents=True)
    index.write_text(json.dumps({"version": 1, "machines": {"x": {"name": "k8s-master01", "vagrantfile_path":
                                                                   str(elsewhere)}}}))
    with network.connect(uri) as conn:
        conn.networkDefineXML(network.network_xml(other, other_id))
        conn.networkDefineXML(network.network_xml(other, str(uuidlib.uuid4())).replace("other_net", "plain_net"))
        found = labs.labs_on(conn, [mine.state_dir, *labs.vagrant_projects({"VAGRANT_HOME": str(index.parents[2])})])
    assert [(lab.name, lab.lab_id, sorted(lab.machines.values()), lab.networks, lab.state_dir) for lab in found] == [
        ("dslab", identity.recorded_id(mine.state_dir), ["running"] * 3, ["dslab_net"], mine.state_dir),
        ("other", other_id, [], ["other_net"], elsewhere),
    ]   # plain_net is not a lab's: its bridge is not the one its name gives


def test_list_through_invoke(project, tmp_path):
    cwd, _ = project
    uri = seed_lab_host(tmp_path, cwd / "st")
    result = invoke(project, "lab.list", env={"INVOKE_LAB_LIBVIRT_URI": uri})
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split()[0] == "NAME" and row.split()[:3] == ["dslab", "3", "running"]
    assert row.endswith(str(cwd / "st"))
    data = json.loads(invoke(project, "lab.list", "--json", env={"INVOKE_LAB_LIBVIRT_URI": uri}).stdout)
    assert [(d["name"], d["state_dir"]) for d in data] == [("dslab", str(cwd / "st"))]


def test_the_bridge_a_lab_name_gives_is_the_configs():
    for name in ("dslab", "a", "lab-2"):
        assert labs.bridge_of(name) == config.load({"name": name}).bridge_name


# ------------------------------------------------------------------ kubeconfig


def admin_conf(server: str) -> str:
    """An admin.conf as kubeadm writes it (its names are the same on every cluster)."""
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": "kubernetes", "cluster": {"server": server, "certificate-authority-data": "Q0E="}}],
        "contexts": [{"name": "kubernetes-admin@kubernetes",
                      "context": {"cluster": "kubernetes", "user": "kubernetes-admin"}}],
        "current-context": "kubernetes-admin@kubernetes",
        "users": [{"name": "kubernetes-admin",
                   "user": {"client-certificate-data": "Q0VSVA==", "client-key-data": "S0VZ"}}],
    })


def test_kubeconfigs_of_two_labs_merge(tmp_path):
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    paths, raw = [], []
    for name, server in (("alpha", "https://192.168.200.11:6443"), ("beta", "https://192.168.201.11:6443")):
        path = tmp_path / name
        path.write_text(kubeconfig.for_lab(admin_conf(server), name))
        paths.append(str(path))
        (tmp_path / f"{name}.conf").write_text(admin_conf(server))
        raw.append(str(tmp_path / f"{name}.conf"))
    # As kubeadm writes them, the second lab's file adds nothing: the names are the same.
    env = dict(os.environ, KUBECONFIG=":".join(raw), HOME=str(tmp_path))
    assert subprocess.run(["kubectl", "config", "get-contexts", "-o", "name"], env=env, capture_output=True,
                          text=True, check=True).stdout.split() == ["kubernetes-admin@kubernetes"]
    env = dict(os.environ, KUBECONFIG=":".join(paths), HOME=str(tmp_path))
    names = subprocess.run(["kubectl", "config", "get-contexts", "-o", "name"], env=env, capture_output=True,
                           text=True, check=True).stdout.split()
    assert sorted(names) == ["dslab-alpha", "dslab-beta"]
    view = json.loads(subprocess.run(["kubectl", "config", "view", "--raw", "-o", "json"], env=env,
                                     capture_output=True, text=True, check=True).stdout)
    servers = {c["name"]: c["cluster"]["server"] for c in view["clusters"]}
    assert servers == {"dslab-alpha": "https://192.168.200.11:6443", "dslab-beta": "https://192.168.201.11:6443"}
    users = {u["name"]: u["user"]["client-key-data"] for u in view["users"]}
    assert users == {"dslab-alpha": "S0VZ", "dslab-beta": "S0VZ"}


def test_kubeconfig_names_follow_the_lab_and_keep_only_its_context():
    data = yaml.safe_load(kubeconfig.for_lab(admin_conf("https://[fd00:db1::11]:6443"), "dslab"))
    assert data["current-context"] == "dslab-dslab"
    assert data["contexts"] == [{"name": "dslab-dslab", "context": {"cluster": "dslab-dslab", "user": "dslab-dslab"}}]
    assert data["clusters"][0]["cluster"]["server"] == "https://[fd00:db1::11]:6443"
    with pytest.raises(kubeconfig.LabError):
        kubeconfig.for_lab("contexts: []\n", "dslab")


def test_kubeconfig_task_prints_a_quoted_path(project):
    cwd, env = project
    state = cwd / "it's here"
    render.render_all(config.load({"state_dir": str(state)}), state)
    (state / "kubeconfig").write_text("x")
    result = invoke(project, "lab.kubeconfig", env={"INVOKE_LAB_STATE_DIR": str(state)})
    assert result.returncode == 0, result.stderr
    shell = subprocess.run(["sh", "-c", f'{result.stdout.strip()}; printf %s "$KUBECONFIG"'], capture_output=True,
                           text=True)
    assert shell.stdout == str(state / "kubeconfig")


def test_up_ends_with_the_next_commands(tmp_path):
    cfg = config.load({"state_dir": str(tmp_path / "st")})
    render.render_all(cfg, cfg.state_dir)
    assert "lab.up" in tasks.next_steps(cfg, "runtime") and "--layer network" in tasks.next_steps(cfg, "runtime")
    (cfg.state_dir / "kubeconfig").write_text("x")
    text = tasks.next_steps(cfg)
    assert f"export KUBECONFIG={cfg.state_dir / 'kubeconfig'}" in text
    assert "kubectl get nodes -o wide" in text and "lab.verify" in text


# ------------------------------------------------------------------ not root


def test_a_denied_libvirt_socket_says_how_to_join_the_group(tmp_path):
    """A real EACCES from libvirt's client: run as another user, whose connect() the socket refuses."""
    sock = tmp_path / "libvirt-sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock))
    os.chmod(sock, 0o600)
    code = ("import sys\nfrom lab import network\ntry:\n    network.connect(sys.argv[1]).__enter__()\n"
            "except network.PreflightError as exc:\n    print(exc.problems[0])\n")
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv is not installed")
        os.chmod(tmp_path, 0o755)
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    result = subprocess.run([*prefix, sys.executable, "-c", code, f"qemu:///system?socket={sock}"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    server.close()
    assert result.returncode == 0, result.stderr
    assert "Permission denied" in result.stdout
    assert "sudo usermod -aG libvirt $USER" in result.stdout and "log out and in again" in result.stdout


def test_under_sudo_the_state_directory_goes_to_the_user(project):
    if os.geteuid() != 0:
        pytest.skip("only root can give files away")
    cwd, _ = project
    state = cwd / "st"
    render.render_all(config.load({"state_dir": str(state)}), state)   # made by root before
    outside = cwd / "outside.txt"
    outside.write_text("root's")
    (state / "link").symlink_to(outside)
    result = invoke(project, "lab.render", env={"SUDO_UID": "4242", "SUDO_GID": "4343"})
    assert result.returncode == 0, result.stderr
    owners = {(p.lstat().st_uid, p.lstat().st_gid) for p in [state, *state.rglob("*")] if not p.is_symlink()}
    assert owners == {(4242, 4343)}
    # Nothing outside it, not even through a link, and not the link itself.
    assert (state / "link").lstat().st_uid == 0 and outside.stat().st_uid == 0
    assert (cwd / "tasks.py").stat().st_uid == 0


@pytest.mark.parametrize("args", [
    ("lab.render",), ("lab.verify",), ("lab.snapshot",), ("lab.restore",), ("lab.ssh", "k8s-master01"),
    ("lab.collect",),
])
def test_dry_is_refused_by_every_task_that_would_change_something(project, args):
    """Only up and destroy honour invoke's --dry; the others refuse it with one line and write nothing."""
    cwd, _ = project
    result = invoke(project, "--dry", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    line, = result.stderr.strip().splitlines()
    assert f"{args[0]}: --dry (-R) is honoured by lab.up and lab.destroy only" in line, line
    assert not (cwd / "st").exists() and not list(cwd.glob("*.tar.gz"))
