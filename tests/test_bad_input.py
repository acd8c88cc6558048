"""Bad input through the real ``invoke``: one line naming the setting, exit 2, no traceback,
nothing written. One table per class of bad input; every case runs ``lab.config`` and
``lab.render`` (the damaged-state cases only ``lab.render``: ``lab.config`` reads no state)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import config

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("lab.config", "lab.render")
BIG = "9" * 5000
LAUGHS = "lab:\n  x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"  x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10))


@pytest.fixture()
def project(tmp_path):
    """A copy of the task entry point, its own directory, and an environment with no INVOKE_*."""
    cwd = tmp_path / "project"
    cwd.mkdir()
    shutil.copy(ROOT / "tasks.py", cwd / "tasks.py")
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    env["PYTHONPATH"] = str(ROOT)
    env["INVOKE_LAB_STATE_DIR"] = str(cwd / "st")
    return cwd, env


def tree(path: Path) -> dict:
    """Every file and directory under ``path`` with its content (bytes), for 'nothing written'."""
    out = {}
    for p in sorted(path.rglob("*")):
        if "__pycache__" in p.parts:
            continue
        out[str(p.relative_to(path))] = p.read_bytes() if p.is_file() else None
    return out


def invoke(cwd, env, *args, timeout=60):
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def refused(project, expected, *, yaml=None, env=None, core=(), task_args=(), tasks=TASKS, files=None):
    """Run each task on the case; assert it is refused as the project's rules say."""
    cwd, base_env = project
    if yaml is not None:
        (cwd / "invoke.yaml").write_text(yaml)
    for name, text in (files or {}).items():
        (cwd / name).write_text(text)
    run_env = dict(base_env, **(env or {}))
    before = tree(cwd)
    running = [(task, subprocess.Popen([sys.executable, "-m", "invoke", *core, task, *task_args], cwd=cwd,
                                       env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
               for task in tasks]
    for task, proc in running:
        out, err = proc.communicate(timeout=60)
        result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        output = result.stdout + result.stderr
        assert result.returncode == 2, (task, output)
        assert "Traceback" not in output, (task, output)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert lines and all(line.startswith("lab.") or line.startswith("lab:") for line in lines), (task, lines)
        assert any(expected in line for line in lines), (task, expected, lines)
        assert result.stdout == "", (task, result.stdout)
        assert tree(cwd) == before, (task, "wrote files")
        assert not (cwd / "st").exists()


def case_id(case):
    return case[0]


# ----------------------------------------------------------------- wrong shapes and YAML

SHAPES = [
    ("lab-is-a-list", "lab: [1, 2]\n", "lab: in "),
    ("lab-is-a-string", "lab: just text\n", "not a mapping of settings"),
    ("top-is-a-list", "- lab\n", "holds list at the top"),
    ("mapping-for-scalar", "lab:\n  cpus: {a: 1}\n", "lab.cpus: "),
    ("list-for-scalar", "lab:\n  name: [a, b]\n", "lab.name: "),
    ("list-for-address", "lab:\n  external_ipv4: [192.168.200.145]\n", "lab.external_ipv4: "),
    ("syntax-error", "lab:\n  cpus: [1\n", "line 3"),
    ("tab-indent", "lab:\n\tcpus: 2\n", "line 2 column 1"),
    ("tag-binary", "lab:\n  name: !!binary ZHNsYWI=\n", "YAML tag"),
    ("tag-python", "lab:\n  name: !!python/object/apply:os.system [id]\n", "YAML tag"),
    ("tag-local", "lab:\n  name: !foo dslab\n", "YAML tag"),
    ("timestamp-for-text", "lab:\n  box: 2020-01-01\n", "lab.box: "),
    ("recursive-alias", "lab:\n  nodes: &n [*n]\n", "recursive alias"),
    ("billion-laughs", LAUGHS, "expands to more than"),
    ("non-string-key", "lab:\n  1: 2\n", "lab.1: "),
    ("duplicate-setting", "lab:\n  cpus: 2\n  cpus: 3\n",
     "invoke.yaml line 3 column 3: the key 'cpus' is given twice in one mapping (first on line 2)"),
    ("duplicate-lab", "lab:\n  cpus: 2\nlab:\n  cpus: 3\n", "line 3 column 1: the key 'lab' is given twice"),
    ("duplicate-in-node", "lab:\n  nodes: [{name: a, name: b, role: control-plane}]\n", "the key 'name' is given twice"),
    ("invoke-setting-clash", "run: 5\n", "lab: 'run' in "),
    ("invoke-setting-clash-nested", "tasks:\n  collection_name: {a: 1}\n", "lab: 'tasks.collection_name' in "),
]


@pytest.mark.parametrize("name, text, expected", SHAPES, ids=[c[0] for c in SHAPES])
def test_wrong_shapes_and_yaml(project, name, text, expected):
    refused(project, expected, yaml=text)


def test_a_bad_runtime_file_is_named_with_its_line(project):
    cwd, _ = project
    refused(project, "other.yaml line 3", files={"other.yaml": "lab:\n  cpus: [\n"}, core=("-f", "other.yaml"))


# The user's file (~/.invoke.yaml) is read by invoke before the tasks are imported, and
# INVOKE_RUNTIME_CONFIG names a runtime file like -f; both get the checks of the project file.
# (What invoke itself fails on while it reads ~/.invoke.yaml, before any code of the lab runs -
# a syntax error, a tag, a 5000-digit number, an alias bomb - is out of the lab's reach.)
USER_FILES = [
    ("lab-is-a-list", "lab: [1, 2]\n", "lab: in {path} is [1, 2], not a mapping of settings"),
    ("lab-is-a-string", "lab: text\n", "lab: in {path} is 'text'"),
    ("mapping-for-scalar", "lab:\n  name: {a: 1}\n", "lab.name: {path} gives a mapping where a single value belongs"),
    ("yaml-1.1-hex", "lab:\n  workers: 0x2\n", "lab.workers: '0x2' is not a whole number"),
    ("duplicate-key", "lab:\n  cpus: 2\n  cpus: 3\n", "{path} line 3 column 3: the key 'cpus' is given twice"),
]


@pytest.mark.parametrize("name, text, expected", USER_FILES, ids=[c[0] for c in USER_FILES])
def test_user_config_file(project, tmp_path, name, text, expected):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".invoke.yaml").write_text(text)
    refused(project, expected.format(path=home / ".invoke.yaml"), env={"HOME": str(home)})


RUNTIME_FILES = [
    ("missing", "runtime.yaml", None, "lab: INVOKE_RUNTIME_CONFIG {path} does not exist"),
    ("directory", "runtime.yaml", "dir", "lab: {path} is a directory"),
    ("unknown-type", "runtime.txt", "lab:\n  cpus: 3\n", "lab: INVOKE_RUNTIME_CONFIG {path} is not a file type"),
    ("python-raises", "runtime.py", "raise KeyError('x')\n", "lab: {path} failed when run: KeyError"),
]


@pytest.mark.parametrize("name, file, text, expected", RUNTIME_FILES, ids=[c[0] for c in RUNTIME_FILES])
def test_invoke_runtime_config(project, tmp_path, name, file, text, expected):
    path = tmp_path / file
    if text == "dir":
        path.mkdir()
    elif text is not None:
        path.write_text(text)
    refused(project, expected.format(path=path), env={"INVOKE_RUNTIME_CONFIG": str(path)})


RUNTIME_FLAG_FILES = [
    ("unknown-type", "x.txt", "lab:\n  cpus: 3\n", "lab: -f x.txt is not a file type invoke reads"),
    ("no-suffix", "x", "lab:\n  cpus: 3\n", "lab: -f x is not a file type invoke reads"),
    ("directory", "dir.yaml", None, "lab: dir.yaml is a directory"),
    ("directory-json", "dir.json", None, "lab: dir.json is a directory"),
    ("python-syntax-error", "bad.py", "lab = {\n", "lab: bad.py line 1: "),
    ("python-raises", "raises.py", "lab = {'cpus': 1 / 0}\n", "lab: raises.py failed when run: ZeroDivisionError"),
    ("python-exits", "exits.py", "raise SystemExit(0)\n", "lab: exits.py failed when run: SystemExit"),
    ("python-imports", "imports.py", "import os\nlab = {}\n", "lab: imports.py: "),
    ("python-mapping-for-scalar", "good.py", "lab = {'name': {'a': 1}}\n",
     "lab.name: good.py gives a mapping where a single value belongs"),
    ("python-lab-is-a-list", "list.py", "lab = [1, 2]\n", "lab: in list.py is [1, 2]"),
    ("missing-yaml", "nonexistent.yaml", False, "lab: -f nonexistent.yaml does not exist"),
    ("missing-py", "nonexistent.py", False, "lab: -f nonexistent.py does not exist"),
]


@pytest.mark.parametrize("name, path, text, expected", RUNTIME_FLAG_FILES, ids=[c[0] for c in RUNTIME_FLAG_FILES])
def test_runtime_file_flag(project, name, path, text, expected):
    cwd, _ = project
    if text is None:
        (cwd / path).mkdir()
    refused(project, expected, files={path: text} if text else None, core=("-f", path))


def test_lab_null_means_defaults(project):
    cwd, env = project
    (cwd / "invoke.yaml").write_text("lab:\n")
    result = invoke(cwd, env, "lab.config")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["cpus"] == config.DEFAULTS["cpus"]


def test_billion_laughs_is_refused_in_under_a_second():
    start = time.monotonic()
    with pytest.raises(config.ConfigError) as info:
        config.load_yaml(LAUGHS, "invoke.yaml")
    assert time.monotonic() - start < 1.0
    assert "expands to more than" in info.value.problems[0]


# ----------------------------------------------------------------- numbers

NUMBERS = [
    ("yaml-5000-digits", {"yaml": f"lab:\n  cpus: {BIG}\n"}, "thousands of digits"),
    ("env-5000-digits", {"env": {"INVOKE_LAB_CPUS": BIG}}, "lab.cpus: is 5000 characters long"),
    ("env-30-digits", {"env": {"INVOKE_LAB_CPUS": "9" * 30}}, "lab.cpus: a number of 30 digits is out of range"),
    ("yaml-hex-5000-digits", {"yaml": f"lab:\n  cpus: 0x{'f' * 5000}\n"}, "lab.cpus: "),
    ("yaml-hex-100-digits", {"yaml": f"lab:\n  cpus: 0x{'f' * 100}\n"}, "lab.cpus: '0xffff"),
    ("float", {"yaml": "lab:\n  cpus: 2.0\n"}, "lab.cpus: 2.0 is not a whole number"),
    ("infinity", {"yaml": "lab:\n  memory_mb: .inf\n"}, "lab.memory_mb: inf is not a whole number"),
    ("boolean", {"yaml": "lab:\n  workers: true\n"}, "lab.workers: True is not a whole number"),
    ("hex-string", {"env": {"INVOKE_LAB_CPUS": "0x10"}}, "lab.cpus: '0x10' is not a whole number"),
    ("non-ascii-digit", {"env": {"INVOKE_LAB_CPUS": "\u0663"}}, "lab.cpus: "),
    ("negative", {"env": {"INVOKE_LAB_MEMORY_MB": "-1"}}, "lab.memory_mb: -1 is out of range"),
    ("env-over-yaml-int", {"yaml": "lab:\n  cpus: 2\n", "env": {"INVOKE_LAB_CPUS": "many"}}, "lab.cpus: 'many'"),
    ("mask4-out-of-range", {"yaml": "lab:\n  node_cidr_mask_ipv4: 31\n"}, "lab.node_cidr_mask_ipv4: 31 is out of range"),
    ("mask6-out-of-range", {"yaml": "lab:\n  node_cidr_mask_ipv6: 129\n"}, "lab.node_cidr_mask_ipv6: 129 is out of range"),
    ("timeout-too-long", {"yaml": "lab:\n  ready_timeout: 1000000\n"}, "lab.ready_timeout: 1000000 is out of range"),
]


@pytest.mark.parametrize("name, case, expected", NUMBERS, ids=[c[0] for c in NUMBERS])
def test_numbers(project, name, case, expected):
    refused(project, expected, **case)


# YAML 1.1 reads these as numbers or booleans; the lab reads YAML 1.2's core schema (decimal
# integers, true/false), so they are text and a number setting refuses them.
YAML_1_1 = [
    ("hex", "0x2", "lab.workers: '0x2' is not a whole number"),
    ("binary", "0b11", "lab.workers: '0b11' is not a whole number"),
    ("underscore", "1_0", "lab.workers: '1_0' is not a whole number"),
    ("sexagesimal", "1:00", "lab.workers: '1:00' is not a whole number"),
    ("leading-zero", "010", "lab.workers: '010' has a leading zero"),
    ("plus-sign", "+2", "lab.workers: '+2' is not a whole number"),
    ("yes", "yes", "lab.workers: 'yes' is not a whole number"),
    ("off", "off", "lab.workers: 'off' is not a whole number"),
    ("float-underscore", "1_0.5", "lab.workers: '1_0.5' is not a whole number"),
]


@pytest.mark.parametrize("name, text, expected", YAML_1_1, ids=[c[0] for c in YAML_1_1])
def test_yaml_1_1_numbers_are_text(project, name, text, expected):
    refused(project, expected, yaml=f"lab:\n  workers: {text}\n")


def test_leading_zero_from_the_environment(project):
    refused(project, "lab.workers: '010' has a leading zero", env={"INVOKE_LAB_WORKERS": "010"})


@pytest.mark.parametrize("text, value", [("no", "no"), ("on", "on"), ("off", "off")])
def test_yaml_1_1_booleans_are_names(project, text, value):
    cwd, env = project
    (cwd / "invoke.yaml").write_text(f"lab:\n  name: {text}\n  workers: 1\n")
    result = invoke(cwd, env, "lab.config")
    assert result.returncode == 0, result.stderr
    assert (json.loads(result.stdout)["name"], json.loads(result.stdout)["workers"]) == (value, 1)


def test_invokes_own_settings_keep_their_yaml_1_1_meaning(tmp_path):
    """Only the lab's settings read YAML 1.2's way; `echo: no` beside them stays false for invoke."""
    from invoke import Config

    from lab import sources
    (tmp_path / "invoke.yaml").write_text("run:\n  echo: no\ntasks:\n  dedupe: off\nlab:\n  name: \"no\"\n  workers: 1\n")
    sources.install()
    config = Config(project_location=str(tmp_path))
    config.load_project()
    assert (config.run.echo, config.tasks.dedupe, config.lab.name, config.lab.workers) == (False, False, "no", 1)


# ----------------------------------------------------------------- strings

STRINGS = [
    ("name-trailing-newline-env", {"INVOKE_LAB_NAME": "dslab\n"}, "lab.name: contains the control character '\\n'"),
    ("domain-trailing-newline", {"INVOKE_LAB_DOMAIN": "dslab.internal\n"}, "lab.domain: contains the control"),
    ("proxy-trailing-newline", {"INVOKE_LAB_KUBE_PROXY_MODE": "ipvs\n"}, "lab.kube_proxy_mode: contains"),
    ("escape-character", {"INVOKE_LAB_BOX": "centos\x1b[2J"}, "lab.box: contains the control character"),
    ("state-dir-newline", {"INVOKE_LAB_STATE_DIR": "st\n"}, "lab.state_dir: contains the control character"),
    ("non-ascii-domain", {"INVOKE_LAB_DOMAIN": "dslab.int\u00e9rnal"}, "lab.domain: 'dslab.int\u00e9rnal' contains non-ASCII"),
    ("non-ascii-box", {"INVOKE_LAB_BOX": "c\u00e9ntos"}, "lab.box: "),
    ("name-too-long", {"INVOKE_LAB_NAME": "a" * 21}, "lab.name: "),
    ("domain-label-64", {"INVOKE_LAB_DOMAIN": "a" * 64 + ".internal"}, "lab.domain: "),
    ("domain-254", {"INVOKE_LAB_DOMAIN": ".".join(["a" * 50] * 5)}, "lab.domain: "),
    ("fqdn-over-253", {"INVOKE_LAB_DOMAIN": ".".join(["a" * 60] * 4)}, "lab.domain: k8s-master01."),
    ("pool-shell", {"INVOKE_LAB_STORAGE_POOL": "pool'$(id)"}, "lab.storage_pool: "),
    ("pool-slash", {"INVOKE_LAB_STORAGE_POOL": "a/b"}, "lab.storage_pool: "),
    ("box-ruby", {"INVOKE_LAB_BOX": "centos/7\"; system('id') #"}, "lab.box: "),
    ("box-interpolation", {"INVOKE_LAB_BOX": "#{`id`}"}, "lab.box: "),
    ("profile-newline", {"INVOKE_LAB_PROFILE": "current\n"}, "lab.profile: "),
    ("driver-yaml-list", {"INVOKE_LAB_LIBVIRT_DRIVER": "kvm\n"}, "lab.libvirt_driver: "),
]


@pytest.mark.parametrize("name, env, expected", STRINGS, ids=[c[0] for c in STRINGS])
def test_strings(project, name, env, expected):
    refused(project, expected, env=env)


# ----------------------------------------------------------------- addresses

ADDRESSES = [
    ("scope-id-shell", {"INVOKE_LAB_EXTERNAL_IPV6": "fd00:db1::120%$(touch /tmp/x)"}, "lab.external_ipv6: "),
    ("scope-id-network", {"INVOKE_LAB_NETWORK_IPV6": "fd00:db1::%eth0/64"}, "lab.network_ipv6: "),
    ("scope-id-range", {"INVOKE_LAB_DHCP_IPV6_RANGE": "fd00:db1::1000%x-fd00:db1::10ff"}, "lab.dhcp_ipv6_range: "),
    ("scope-id-pair", {"INVOKE_LAB_POD_SUBNETS": "10.244.0.0/16,fd00:2::%1/48"}, "lab.pod_subnets: "),
    ("loopback", {"INVOKE_LAB_EXTERNAL_IPV4": "127.0.0.1"}, "lab.external_ipv4: 127.0.0.1 is in loopback"),
    ("loopback6", {"INVOKE_LAB_EXTERNAL_IPV6": "::1"}, "lab.external_ipv6: ::1 is in reserved"),
    ("multicast-net", {"INVOKE_LAB_NETWORK_IPV4": "224.0.0.0/24"}, "lab.network_ipv4: 224.0.0.0/24 is in multicast"),
    ("link-local-net", {"INVOKE_LAB_NETWORK_IPV4": "169.254.1.0/24"}, "lab.network_ipv4: 169.254.1.0/24 is in link-local"),
    ("link-local6", {"INVOKE_LAB_DOCKER_IPV6_CIDR": "fe80::/64"}, "lab.docker_ipv6_cidr: fe80::/64 is in link-local"),
    ("ipv4-mapped", {"INVOKE_LAB_POD_SUBNETS": "10.244.0.0/16,::ffff:0:0/112"}, "lab.pod_subnets: ::ffff:0:0/112 overlaps reserved ::/8"),
    ("unspecified", {"INVOKE_LAB_EXTERNAL_IPV6": "::"}, "lab.external_ipv6: :: is in reserved"),
    ("unspecified4-range", {"INVOKE_LAB_SERVICE_SUBNETS": "0.0.0.0/16,fd00:3::/112"}, "lab.service_subnets: 0.0.0.0/16"),
    ("multicast6-pair", {"INVOKE_LAB_SERVICE_SUBNETS": "10.96.0.0/16,ff00::/112"}, "lab.service_subnets: ff00::/112"),
    ("network-too-small", {"INVOKE_LAB_NETWORK_IPV4": "192.168.200.0/29"}, "lab.network_ipv4: 192.168.200.0/29 is too small"),
    ("service4-too-small", {"INVOKE_LAB_SERVICE_SUBNETS": "10.96.0.0/29,fd00:3::/112"}, "lab.service_subnets: the IPv4 range 10.96.0.0/29 is too small"),
    ("service6-too-small", {"INVOKE_LAB_SERVICE_SUBNETS": "10.96.0.0/16,fd00:3::/125"}, "lab.service_subnets: the IPv6 range fd00:3::/125 is too small"),
    ("service4-too-large", {"INVOKE_LAB_SERVICE_SUBNETS": "10.0.0.0/8,fd00:3::/112"}, "lab.service_subnets: the IPv4 range 10.0.0.0/8 is too large"),
    ("service6-too-large", {"INVOKE_LAB_SERVICE_SUBNETS": "10.96.0.0/16,fd00:3::/64"}, "lab.service_subnets: the IPv6 range fd00:3::/64 is too large"),
    ("services-inside-pods6", {"INVOKE_LAB_SERVICE_SUBNETS": "10.96.0.0/16,fd00:2:0:1::/112"}, "lab.service_subnets: fd00:2:0:1::/112 overlaps lab.pod_subnets"),
    ("docker-contains-network", {"INVOKE_LAB_DOCKER_IPV6_CIDR": "fd00:db1::/64"}, "lab.docker_ipv6_cidr: fd00:db1::/64 overlaps lab.network_ipv6"),
    ("external-in-dhcp6", {"INVOKE_LAB_EXTERNAL_IPV6": "fd00:db1::1001"}, "lab.external_ipv6: fd00:db1::1001-fd00:db1::1001 overlaps lab.dhcp_ipv6_range"),
    ("metallb-contains-dhcp", {"INVOKE_LAB_METALLB_IPV4_RANGE": "192.168.200.90-192.168.200.160"}, "lab.metallb_ipv4_range: "),
]


@pytest.mark.parametrize("name, env, expected", ADDRESSES, ids=[c[0] for c in ADDRESSES])
def test_addresses(project, name, env, expected):
    refused(project, expected, env=env)


# ----------------------------------------------------------------- node lists


def _node_list(count):
    lines = ["lab:", "  network_ipv4: 10.20.0.0/16", "  nodes:",
             "    - {name: cp, role: control-plane, ipv4: 10.20.0.5, ipv6: 'fd00:db1::5'}"]
    lines += [f"    - {{name: w{i}, ipv4: 10.20.{i // 200 + 1}.{i % 200 + 2}, ipv6: 'fd00:db1::{i + 10:x}'}}"
              for i in range(count - 1)]
    return "\n".join(lines) + "\n"


NODES = [
    ("three-hundred-nodes", {"yaml": _node_list(300)}, "lab.nodes: has 300 nodes; the lab takes at most 21"),
    ("workers-500", {"env": {"INVOKE_LAB_WORKERS": "500"}}, "lab.workers: 500 is out of range"),
    ("null-entry", {"yaml": "lab:\n  nodes: [null, {name: w, ipv4: 192.168.200.6, ipv6: 'fd00:db1::6'}]\n"},
     "lab.nodes[0]: None is not a mapping"),
    ("missing-keys", {"yaml": "lab:\n  nodes: [{name: cp, role: control-plane}]\n"}, "lab.nodes[0]: is missing ipv4, ipv6"),
    ("name-newline", {"yaml": "lab:\n  nodes: [{name: \"cp\\n\", role: control-plane, ipv4: 192.168.200.5, ipv6: 'fd00:db1::5'}]\n"},
     "lab.nodes: contains the control character"),
    ("ipv6-scope", {"yaml": "lab:\n  nodes:\n    - {name: cp, role: control-plane, ipv4: 192.168.200.5, ipv6: 'fd00:db1::5%$(id)'}\n"
                            "    - {name: w, ipv4: 192.168.200.6, ipv6: 'fd00:db1::6'}\n"}, "lab.nodes[0].ipv6: "),
    ("env-not-yaml", {"env": {"INVOKE_LAB_NODES": "[{name: cp"}}, "lab.nodes: is not valid YAML/JSON"),
    ("env-alias-bomb", {"env": {"INVOKE_LAB_NODES": "[" + LAUGHS.split("\n", 1)[1].replace("\n", " ") + "]"}},
     "lab.nodes: "),
]


@pytest.mark.parametrize("name, case, expected", NODES, ids=[c[0] for c in NODES])
def test_node_lists(project, name, case, expected):
    refused(project, expected, **case)


# ----------------------------------------------------------------- URIs and URLs

URIS = [
    ("ext-transport", {"INVOKE_LAB_LIBVIRT_URI": "qemu+ext:///system?command=/tmp/x"}, "lab.libvirt_uri: "),
    ("ssh-netcat", {"INVOKE_LAB_LIBVIRT_URI": "qemu+ssh://u@h/system?netcat=$(id)"}, "lab.libvirt_uri: "),
    ("ssh-proxy", {"INVOKE_LAB_LIBVIRT_URI": "qemu+ssh://u@h/system?proxy=native&command=id"}, "lab.libvirt_uri: "),
    ("ssh-user-quote", {"INVOKE_LAB_LIBVIRT_URI": "qemu+ssh://u'$(id)'@h/system"}, "lab.libvirt_uri: "),
    ("ssh-host-semicolon", {"INVOKE_LAB_LIBVIRT_URI": "qemu+ssh://u@h;id/system"}, "lab.libvirt_uri: "),
    ("uri-trailing-newline", {"INVOKE_LAB_LIBVIRT_URI": "qemu:///system\n"}, "lab.libvirt_uri: "),
    ("test-driver-shell", {"INVOKE_LAB_LIBVIRT_URI": "test:///$(id)"}, "lab.libvirt_uri: "),
    ("box-url-http", {"INVOKE_LAB_BOX_URL": "http://example.com/a.box"}, "lab.box_url: "),
    ("box-url-ftp", {"INVOKE_LAB_BOX_URL": "ftp://example.com/a.box"}, "lab.box_url: "),
    ("box-url-relative-file", {"INVOKE_LAB_BOX_URL": "file:a.box"}, "lab.box_url: "),
    ("box-url-space", {"INVOKE_LAB_BOX_URL": "https://example.com/a b.box"}, "lab.box_url: "),
    ("box-url-ruby", {"INVOKE_LAB_BOX_URL": "https://example.com/#{`id`}"}, "lab.box_url: "),
]


@pytest.mark.parametrize("name, env, expected", URIS, ids=[c[0] for c in URIS])
def test_uris_and_urls(project, name, env, expected):
    refused(project, expected, env=env)


# ----------------------------------------------------------------- paths


def test_out_empty(project):
    refused(project, "lab.render --out: '' is empty", task_args=("--out", ""), tasks=("lab.render",))


@pytest.mark.parametrize("name, make, expected", [
    ("out-is-a-file", lambda cwd: cwd / "afile", "is a file"),
    ("out-under-a-file", lambda cwd: cwd / "afile" / "sub", "lies under"),
    ("out-under-proc-file", lambda cwd: Path("/proc/self/status/x"), "lies under"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_out_paths(project, name, make, expected):
    cwd, _ = project
    (cwd / "afile").write_text("mine\n")
    refused(project, expected, task_args=("--out", str(make(cwd))), tasks=("lab.render",))


@pytest.mark.parametrize("name, make, expected", [
    ("state-dir-is-a-file", lambda cwd: cwd / "afile", "lab.state_dir: "),
    ("state-dir-under-a-file", lambda cwd: cwd / "afile" / "st", "lab.state_dir: "),
    ("state-dir-empty", lambda cwd: "", "lab.state_dir: "),
], ids=lambda v: v if isinstance(v, str) else "")
def test_state_dir_paths(project, name, make, expected):
    cwd, _ = project
    (cwd / "afile").write_text("mine\n")
    refused(project, expected, env={"INVOKE_LAB_STATE_DIR": str(make(cwd))})


def test_state_dir_not_creatable(project, tmp_path):
    if os.geteuid() == 0:
        # root may write anywhere, but no one can create a name longer than NAME_MAX (255)
        target = tmp_path / ("x" * 300) / "st"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "st"
    refused(project, "cannot be created", env={"INVOKE_LAB_STATE_DIR": str(target)})


# ----------------------------------------------------------------- damaged state.json

TOKEN = "abcdef.0123456789abcdef"
STATES = [
    ("not-json", "{not json", "(not JSON at line 1)"),
    ("a-list", "[1, 2]", "(a JSON list, not an object)"),
    ("token-wrong-type", json.dumps({"bootstrap_token": 5}), "bootstrap_token is 5"),
    ("token-shell", json.dumps({"bootstrap_token": "abcdef.0123456789abcdef$(id)"}), "delete the \"bootstrap_token\" entry"),
    ("token-newline", json.dumps({"bootstrap_token": TOKEN + "\n"}), "not a bootstrap token"),
    ("ca-hash-bad", json.dumps({"bootstrap_token": TOKEN, "ca_cert_hash": "sha256:xyz"}), "ca_cert_hash is 'sha256:xyz'"),
    ("steps-wrong-type", json.dumps({"steps": ["network"]}), "steps is ['network']"),
    ("not-utf8", b"\xff\xfe{}", "(not JSON"),
]


@pytest.mark.parametrize("name, text, expected", STATES, ids=[c[0] for c in STATES])
def test_damaged_state_json(project, name, text, expected):
    cwd, env = project
    lab = cwd / "lab"
    lab.mkdir()
    (lab / ".dslab").write_text("state directory of dslab lab dslab\n")
    data = text if isinstance(text, bytes) else text.encode()
    (lab / "state.json").write_bytes(data)
    project = (cwd, dict(env, INVOKE_LAB_STATE_DIR=str(lab)))
    refused(project, expected, tasks=("lab.render",))
    result = invoke(cwd, project[1], "lab.render")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"lab.state_dir: {lab / 'state.json'} is damaged"), lines
    assert (lab / "state.json").read_bytes() == data


# ----------------------------------------------------------------- INVOKE_LAB_* names

ENV_NAMES = [
    ("typo", {"INVOKE_LAB_CPUSS": "2"}, "lab.cpuss: INVOKE_LAB_CPUSS is not a setting; did you mean INVOKE_LAB_CPUS (lab.cpus)?"),
    ("missing-underscore", {"INVOKE_LAB_STATEDIR": "x"}, "did you mean INVOKE_LAB_STATE_DIR (lab.state_dir)?"),
    ("nothing-close", {"INVOKE_LAB_FLAVOUR": "x"}, "lab.flavour: INVOKE_LAB_FLAVOUR is not a setting; unset it"),
]


@pytest.mark.parametrize("name, env, expected", ENV_NAMES, ids=[c[0] for c in ENV_NAMES])
def test_unknown_invoke_lab_names(project, name, env, expected):
    refused(project, expected, env=env)


# ----------------------------------------------------------------- task flags

FLAGS = [
    ("up-until-unknown", "lab.up", ("--until", "nosuch"), "lab.up --until: 'nosuch' is not a step; use one of preflight"),
    ("verify-only-unknown", "lab.verify", ("--only", "badname"), "lab.verify --only: unknown check badname; valid checks:"),
    ("verify-only-one-unknown", "lab.verify", ("--only", "pod-ips,nope"), "lab.verify --only: unknown check nope;"),
    ("verify-layer-unknown", "lab.verify", ("--layer", "x"), "lab.verify --layer: 'x' is unknown"),
]


@pytest.mark.parametrize("name, task, args, expected", FLAGS, ids=[c[0] for c in FLAGS])
def test_task_flags(project, name, task, args, expected):
    refused(project, expected, task_args=args, tasks=(task,))
