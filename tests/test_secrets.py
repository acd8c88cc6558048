"""Secrets stay out of logs and out of files others can read; the ssh control sockets stay private.

The recorded up runs the real steps from ``render`` to ``kubeconfig`` through the real
:class:`lab.remote.SshRunner`, whose ``ssh`` is a fake first on PATH that answers like a
control-plane node: kubeadm init's output with its join line, ``kubeadm token list`` showing
the init token expired, an admin.conf with a client key. Then every file under the state
directory is searched for the tokens and the key, and every mode is checked.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import lab.config
from lab import cluster, kubeadm, kubeconfig, pipeline, private, render
from lab.context import Context, Result, State
from lab.errors import LabError, StepError
from lab.progress import Progress
from lab.remote import SOCKET_PATH_MAX, SshRunner, control_dir

ROOT = Path(__file__).resolve().parent.parent

CLIENT_KEY = ("-----BEGIN EC PRIVATE KEY-----\n"
              "MHcCAQEEIDslabFakeClientKeyMaterialForTheSecretGrep0123456789oAoGCCqG\n"
              "SM49AwEHoUQDQgAEdslabFakePublicPartOfTheClientKeyNotASecretAtAllXYZ\n"
              "-----END EC PRIVATE KEY-----\n")
CLIENT_KEY_BODY = "MHcCAQEEIDslabFakeClientKeyMaterialForTheSecretGrep"
CLIENT_KEY_DATA = base64.b64encode(CLIENT_KEY.encode()).decode()
CLIENT_CERT_DATA = base64.b64encode(b"-----BEGIN CERTIFICATE-----\ndslabFakeAdminClientCertificate\n"
                                    b"-----END CERTIFICATE-----\n").decode()

ADMIN_CONF = f"""apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: {base64.b64encode(b"ca").decode()}
    server: https://192.168.200.11:6443
  name: kubernetes
contexts:
- context:
    cluster: kubernetes
    user: kubernetes-admin
  name: kubernetes-admin@kubernetes
current-context: kubernetes-admin@kubernetes
users:
- name: kubernetes-admin
  user:
    client-certificate-data: {CLIENT_CERT_DATA}
    client-key-data: {CLIENT_KEY_DATA}
"""

FAKE_SSH = r'''#!{python}
"""ssh to a fake control-plane node: answers the lab's commands from the files in {data!r}."""
import json, os, shlex, sys
data = {data!r}
args = sys.argv[1:]
with open(os.path.join(data, "ssh-argv.log"), "a") as log:
    log.write(json.dumps(args) + "\n")
while args and args[0].startswith("-"):
    args = args[2:] if args[0] in ("-F", "-o") else args[1:]
host, remote = args[0], shlex.split(" ".join(args[1:]))
assert remote[:3] == ["sudo", "bash", "-c"], remote
line = remote[3]
words = shlex.split(line)
if not sys.stdin.isatty():
    sys.stdin.read()
read = lambda name: open(os.path.join(data, name)).read()
token = read("init-token")
kubectl = words[3:] if words[:1] == ["kubectl"] else None
if words[:3] == ["kubeadm", "token", "list"]:
    print("TOKEN                     TTL         EXPIRES                USAGES                   DESCRIPTION   EXTRA GROUPS")
    print(f"{{token}}   <invalid>   2020-01-01T00:00:00Z   authentication,signing   <none>        "
          "system:bootstrappers:kubeadm:default-node-token")
elif words[:3] == ["kubeadm", "token", "create"]:
    print(words[3])
elif words == ["cat", "/etc/kubernetes/admin.conf"]:
    sys.stdout.write(read("admin.conf"))
elif words == ["cat", "/etc/kubernetes/pki/ca.crt"]:
    sys.stdout.write(read("ca.crt"))
elif words[:2] == ["test", "-e"]:
    sys.exit(1)
elif words[:1] == ["bash"] and words[1].endswith("/control-plane.sh"):
    print(f"[bootstrap-token] Using token: {{token}}")
    print("Your Kubernetes control-plane has initialized successfully!")
    print(f"kubeadm join 192.168.200.11:6443 --token {{token}} \\")
    print("    --discovery-token-ca-cert-hash sha256:" + "ab" * 32)
    sys.stderr.write(read("client.key"))
elif words[:1] == ["bash"] and words[1:] and words[-1] == "--pending":
    sys.exit(0)
elif kubectl and kubectl[:2] == ["get", "node"]:
    print("node/" + kubectl[2])
'''


def make_ca(tmp_path: Path) -> str:
    subprocess.run(["openssl", "req", "-x509", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-keyout", str(tmp_path / "ca.key"), "-out", str(tmp_path / "ca.crt"), "-days", "1",
                    "-subj", "/CN=kubernetes"], check=True, capture_output=True)
    return (tmp_path / "ca.crt").read_text()


@pytest.fixture
def fake_node(tmp_path, monkeypatch):
    """A directory of the fake node's answers, and an ``ssh`` on PATH that gives them."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    data = tmp_path / "node"
    data.mkdir()
    (data / "ca.crt").write_text(make_ca(data))
    (data / "admin.conf").write_text(ADMIN_CONF)
    (data / "client.key").write_text(CLIENT_KEY)
    (data / "init-token").write_text("")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(FAKE_SSH.format(python=sys.executable, data=str(data)))
    (bin_dir / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return data


@pytest.fixture
def short_tmp():
    """A directory with a path short enough for ``<it>/state/ssh/%C`` to be a socket path."""
    path = Path(tempfile.mkdtemp(prefix="dslt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


#: Files of the state directory that hold a secret by design (all 0600); no other file may.
SECRET_HOLDERS = {"state.json", "kubeconfig", "kubeadm-config.yaml"}


def test_a_recorded_up_leaks_no_token_and_no_key(short_tmp, fake_node):
    cfg = lab.config.load({"state_dir": str(short_tmp / "lab state")})
    names = ("render", "control-plane", "join", "kubeconfig")
    steps = [s for s in pipeline.STEPS if s.name in names]
    status = io.StringIO()

    def up(until=None):
        pipeline.up(cfg, until=until, progress=Progress(status, animate=False), steps=steps, alive=lambda ctx: True)

    up(until="render")
    state_dir = cfg.state_dir
    init_token = State(state_dir / "state.json").get("bootstrap_token")
    assert kubeadm.TOKEN_RE.match(init_token)
    (fake_node / "init-token").write_text(init_token)
    (state_dir / "ssh_config").write_text("".join(f"Host {n.name}\n  HostName 127.0.0.1\n" for n in cfg.nodes))

    up()
    up()  # renders the join configs, now that the CA hash is known

    join = State(state_dir / "state.json").get("join_token")
    assert kubeadm.TOKEN_RE.match(join) and join != init_token  # the init token was listed as expired
    secrets = {"init token": init_token, "join token": join, "client key": CLIENT_KEY_BODY,
               "client-key-data": CLIENT_KEY_DATA, "client-certificate-data": CLIENT_CERT_DATA}
    logs = sorted((state_dir / "logs").glob("*.log"))
    assert len(logs) == 3  # one per run, even within one second
    log_text = "\n".join(p.read_text() for p in logs)
    # the commands ran and were logged, their secrets not
    assert "kubeadm token create <redacted token> --ttl 2h0m0s (output not logged)" in log_text
    assert "$ cat /etc/kubernetes/admin.conf (output not logged)" in log_text
    assert "kubeadm join 192.168.200.11:6443 --token <redacted token>" in log_text
    assert "<redacted private key>" in log_text
    holders = set()
    for path in sorted(state_dir.rglob("*")):
        rel = path.relative_to(state_dir).as_posix()
        if path.is_dir():
            assert mode(path) == 0o700 or rel not in ("logs", "ssh"), rel
            continue
        if path.is_socket():
            continue
        text = path.read_text(errors="replace")
        found = sorted(what for what, value in secrets.items() if value in text)
        if found:
            holders.add(rel)
            assert rel in SECRET_HOLDERS or (rel.startswith("nodes/") and rel.endswith("-join.yaml")), (rel, found)
            assert mode(path) == 0o600, rel
    assert {"state.json", "kubeconfig", "kubeadm-config.yaml"} <= holders
    assert {f"nodes/{n.name}-join.yaml" for n in cfg.workers} <= holders
    for node in cfg.workers:
        assert join in (state_dir / "nodes" / f"{node.name}-join.yaml").read_text()
    assert mode(state_dir) == 0o700
    assert mode(state_dir / "logs") == 0o700
    assert all(mode(p) == 0o600 for p in logs)
    assert (state_dir / "kubeconfig").read_text() == kubeconfig.for_lab(ADMIN_CONF, cfg.name)
    assert not any(value in status.getvalue() for value in secrets.values())
    # the control sockets live in the lab's own 0700 directory
    argv = [json.loads(line) for line in (fake_node / "ssh-argv.log").read_text().splitlines()]
    paths = {o[len("ControlPath="):] for a in argv for o in a if o.startswith("ControlPath=")}
    # "lab state" has a space, which ssh would split ControlPath at: a private directory elsewhere
    private = control_dir(state_dir)
    assert paths == {str(private / "%C")} and private != state_dir / "ssh" and mode(private) == 0o700


# --------------------------------------------------------------------------- redaction

TOKEN = "abcdef.0123456789abcdef"


@pytest.mark.parametrize("text, gone, kept", [
    (f"kubeadm join 192.168.200.11:6443 --token {TOKEN} --discovery-token-ca-cert-hash sha256:ab",
     [TOKEN], ["kubeadm join 192.168.200.11:6443 --token <redacted token>", "sha256:ab"]),
    (f"[bootstrap-token] Using token: {TOKEN}", [TOKEN], ["Using token: <redacted token>"]),
    (f'{{"bootstrap_token": "{TOKEN}"}}', [TOKEN], ['"bootstrap_token": "<redacted token>"']),
    (f"token: {TOKEN}\nnext", [TOKEN], ["next"]),
    (CLIENT_KEY + "after", [CLIENT_KEY_BODY, "BEGIN EC PRIVATE KEY"], ["<redacted private key>\nafter"]),
    ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANcutOffHere", ["MIIEvQIBADANcutOffHere"], ["<redacted private key>"]),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIrsa\n-----END RSA PRIVATE KEY-----\n", ["MIIrsa"], []),
    (ADMIN_CONF, [CLIENT_KEY_DATA, CLIENT_CERT_DATA],
     ["client-key-data: <redacted>", "client-certificate-data: <redacted>", "server: https://192.168.200.11:6443"]),
    (json.dumps({"client-key-data": CLIENT_KEY_DATA}), [CLIENT_KEY_DATA], ['"client-key-data": "<redacted>"']),
    # what is not a secret stays
    ("k8s-master01.dslab.internal fd00:db1::11 calico-3.31.6.yaml sha256:" + "0" * 64, [],
     ["k8s-master01.dslab.internal", "calico-3.31.6.yaml"]),
    ("ABCDEF.0123456789ABCDEF xabcdef.0123456789abcdef", [], ["ABCDEF.0123456789ABCDEF", "xabcdef.0123456789abcdef"]),
])
def test_redact(text, gone, kept):
    out = private.redact(text)
    for secret in gone:
        assert secret not in out
    for part in kept:
        assert part in out


# --------------------------------------------------------------------------- SshRunner logging

@pytest.fixture
def echo_ssh(tmp_path, monkeypatch):
    """An ssh that runs the remote command locally (sudo dropped)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(f"""#!{sys.executable}
import shlex, subprocess, sys
args = sys.argv[1:]
while args and args[0].startswith("-"):
    args = args[2:] if args[0] in ("-F", "-o") else args[1:]
remote = shlex.split(" ".join(args[1:]))
sys.exit(subprocess.run(["bash", "-c", remote[3]]).returncode)
""")
    (bin_dir / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    state = tmp_path / "state"
    state.mkdir()
    (state / "ssh_config").write_text("")
    return SshRunner(state / "ssh_config", state / "logs" / "up.log", "join")


@pytest.mark.parametrize("secret", [False, True])
def test_secret_commands_log_no_output_and_every_line_is_redacted(echo_ssh, secret):
    runner = echo_ssh
    command = f"printf '%s-%s %s\\n' visible output {TOKEN}; printf '%s-%s\\n' private output >&2"
    result = runner.run("node", command, secret=secret)
    assert result.stdout == f"visible-output {TOKEN}\n"  # the caller gets the output as it is
    log = runner.log_path.read_text()
    assert TOKEN not in log
    assert f"[node] $ {command.replace(TOKEN, '<redacted token>')}" in log
    assert ("(output not logged)" in log) == secret
    assert ("private-output" in log) != secret and ("visible-output <redacted token>\n" in log) != secret
    assert mode(runner.log_path) == 0o600 and mode(runner.log_path.parent) == 0o700


def test_a_failing_secret_command_names_no_secret(echo_ssh):
    runner = echo_ssh
    with pytest.raises(StepError) as err:
        runner.run("node", ["bash", "-c", f"echo {TOKEN}; echo 'token {TOKEN} refused' >&2; exit 3",
                            "kubeadm-token-create"], secret=True)
    assert TOKEN not in err.value.reason and TOKEN not in runner.log_path.read_text()
    assert "exited 3: token <redacted token> refused" in err.value.reason


def test_put_text_of_a_0600_file_is_a_secret(echo_ssh, tmp_path):
    runner = echo_ssh
    runner.put_text("node", f"token: {TOKEN}\n", str(tmp_path / "remote" / "join.yaml"), "0600")
    assert (tmp_path / "remote" / "join.yaml").read_text() == f"token: {TOKEN}\n"
    assert mode(tmp_path / "remote" / "join.yaml") == 0o600
    assert "(output not logged)" in runner.log_path.read_text()


def test_a_log_created_wider_is_made_0600(tmp_path):
    log = tmp_path / "logs" / "up.log"
    log.parent.mkdir(mode=0o755)
    log.write_text("vagrant was here\n")
    log.chmod(0o644)
    private.append_private(log, f"line with {TOKEN}")
    assert mode(log) == 0o600 and mode(log.parent) == 0o700
    assert log.read_text() == "vagrant was here\nline with <redacted token>\n"


# --------------------------------------------------------------------------- rendered files

def test_rendered_files_with_the_token_are_0600_and_the_state_dir_0700(tmp_path):
    cfg = lab.config.load({"state_dir": str(tmp_path / "state")})
    state = State(tmp_path / "state" / "state.json")
    render.render_all(cfg, cfg.state_dir)
    state.set("ca_cert_hash", "sha256:" + "a" * 64)
    (cfg.state_dir / "kubeadm-config.yaml").chmod(0o644)  # as an older version left it
    render.render_all(cfg, cfg.state_dir)
    token = state.get("bootstrap_token")
    assert mode(cfg.state_dir) == 0o700
    rendered = set(render.artifacts(cfg, state))
    assert {"kubeadm-config.yaml", "nodes/k8s-worker01-join.yaml", "Vagrantfile"} <= rendered
    for path in cfg.state_dir.rglob("*"):
        if path.is_file():
            rel = path.relative_to(cfg.state_dir).as_posix()
            holds = token in path.read_text()
            assert holds == (rel in ("kubeadm-config.yaml", "state.json") or rel.endswith("-join.yaml")), rel
            if holds:
                assert mode(path) == 0o600, rel
            elif rel in rendered:
                assert mode(path) == 0o644, rel


def test_write_files_takes_a_mode_per_file(tmp_path):
    written = render.write_files(tmp_path / "out", {"a.txt": "a\n", "b/secret.txt": "b\n"},
                                 modes={"b/secret.txt": 0o600, "a.txt": 0o640})
    assert [mode(p) for p in written] == [0o640, 0o600]


# --------------------------------------------------------------------------- ssh control sockets

def ssh_g_control_path(ssh_config: Path, option: str) -> str:
    """The ControlPath as the real ssh expands it (``ssh -G``)."""
    out = subprocess.run(["ssh", "-G", "-F", str(ssh_config), "-o", option, "k8s-master01"],
                         capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL).stdout
    return next(line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("controlpath "))


@pytest.mark.parametrize("depth", [0, 6])
def test_control_path_is_private_and_short_enough_for_a_socket(short_tmp, monkeypatch, depth):
    if shutil.which("ssh") is None:
        pytest.skip("ssh is not installed")
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    state = short_tmp.joinpath(*[f"a-rather-long-directory-name-{i}" for i in range(depth)], "state")
    state.mkdir(parents=True)
    (state / "ssh_config").write_text("Host k8s-master01\n  HostName 127.0.0.1\n")
    runner = SshRunner(state / "ssh_config")
    option = runner._multiplex()[3]
    expanded = ssh_g_control_path(state / "ssh_config", option)
    # the master binds "<ControlPath>.<16 random characters>" first (OpenSSH mux.c)
    assert len(expanded) + 17 < SOCKET_PATH_MAX
    directory = Path(expanded).parent
    info = directory.lstat()
    assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.getuid()
    if depth == 0:
        assert directory == state / "ssh"
    else:
        assert directory.parent == Path("/tmp") and directory.name.startswith(f"dslab-{os.getuid()}-")
        assert SshRunner(state / "ssh_config").control_path() == runner.control_path()  # one per lab


@pytest.mark.parametrize("name", ["my lab", "100%", "${HOME}x", "tab\there"])
def test_control_path_of_a_state_dir_ssh_would_misread(short_tmp, monkeypatch, name):
    """ssh splits ControlPath at whitespace and expands % and ${}: such a state dir uses the fallback."""
    if shutil.which("ssh") is None:
        pytest.skip("ssh is not installed")
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    state = short_tmp / name / "st"
    state.mkdir(parents=True)
    (state / "ssh_config").write_text("Host k8s-master01\n  HostName 127.0.0.1\n")
    runner = SshRunner(state / "ssh_config")
    expanded = ssh_g_control_path(state / "ssh_config", runner._multiplex()[3])  # ssh accepts the option
    directory = Path(expanded).parent
    assert directory.parent == Path("/tmp") and directory.name.startswith(f"dslab-{os.getuid()}-")
    assert stat.S_IMODE(directory.lstat().st_mode) == 0o700


def test_control_dir_under_the_users_runtime_dir(short_tmp, tmp_path, monkeypatch):
    runtime = short_tmp / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    first, second = control_dir(tmp_path / ("x" * 80)), control_dir(tmp_path / ("y" * 80))
    assert first.parent == second.parent == runtime / "dslab-ssh" and first != second  # one per lab
    assert mode(first) == mode(first.parent) == 0o700
    assert control_dir(tmp_path / ("x" * 80)) == first
    runtime.chmod(0o755)  # not private: not used
    chosen = control_dir(tmp_path / ("z" * 80))
    assert chosen.parent == Path("/tmp") and mode(chosen) == 0o700


def test_a_planted_control_dir_is_refused(short_tmp, tmp_path):
    state = short_tmp / "state"
    state.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (state / "ssh").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(LabError, match="symlink"):
        control_dir(state)
    runner = SshRunner(state / "ssh_config", step="prepare")
    with pytest.raises(StepError) as err:
        runner.run("k8s-master01", ["true"])
    assert "no private directory for the ssh control sockets" in err.value.reason


def test_a_wider_control_dir_is_made_private(short_tmp):
    (short_tmp / "state" / "ssh").mkdir(parents=True)
    (short_tmp / "state" / "ssh").chmod(0o777)
    assert control_dir(short_tmp / "state") == short_tmp / "state" / "ssh"
    assert mode(short_tmp / "state" / "ssh") == 0o700


# --------------------------------------------------------------------------- lab.kubeconfig

def invoke(*args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("name", ["lab state", "a;touch PWNED;b", "it's $(touch PWNED) `x`"])
def test_kubeconfig_line_survives_eval(tmp_path, name):
    state = tmp_path / name
    state.mkdir()
    (state / "kubeconfig").write_text("apiVersion: v1\n")
    result = invoke("lab.kubeconfig", env_extra={"INVOKE_LAB_STATE_DIR": str(state)})
    assert result.returncode == 0, result.stderr
    shell = subprocess.run(["bash", "-c", 'eval "$1" && printf %s "$KUBECONFIG"', "bash", result.stdout.strip()],
                           cwd=tmp_path, capture_output=True, text=True)
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout == str((state / "kubeconfig").resolve())
    assert not (tmp_path / "PWNED").exists()


# --------------------------------------------------------------------------- a fresh token per join

NOW = datetime(2026, 12, 1, 10, 0, 0, tzinfo=timezone.utc)
HEADER = "TOKEN                     TTL         EXPIRES                USAGES                   DESCRIPTION   EXTRA GROUPS"


def listing(*rows):
    return "\n".join([HEADER, *(f"{t}   {ttl}   {exp}   authentication,signing   <none>   "
                                "system:bootstrappers:kubeadm:default-node-token" for t, ttl, exp in rows)]) + "\n"


class TokenNode:
    """The control plane's ``kubeadm token`` and the workers' join, recorded."""

    def __init__(self, listed):
        self.listed = listed
        self.calls = []
        self.texts = {}

    def run(self, node, command, *, input=None, timeout=None, check=True, secret=False):
        argv = list(command) if not isinstance(command, str) else [command]
        self.calls.append((node, argv, secret))
        if argv[:3] == ["kubeadm", "token", "list"]:
            return Result(0, self.listed)
        if argv[:3] == ["kubeadm", "token", "create"]:
            return Result(0, argv[3] + "\n")
        if argv[3:5] == ["get", "node"]:
            return Result(0, f"node/{argv[5]}")
        return Result(1 if argv == cluster.JOIN_PENDING else 0)

    def put_tree(self, node, local, remote):
        pass

    def put_text(self, node, text, remote, mode="0644", secret=False):
        self.texts[(node, remote)] = (text, mode)


def later(seconds):
    return (NOW + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize("rows, fresh", [
    ([("RECORDED", "1h", later(3600))], False),                        # valid: used again
    ([("RECORDED", "<forever>", "<never>")], False),
    ([("RECORDED", "<invalid>", later(-60))], True),                   # expired, not cleaned up yet
    ([("RECORDED", "5m", later(300))], True),                          # would expire during the join
    ([("zzzzzz.zzzzzzzzzzzzzzzz", "1h", later(3600))], True),           # not listed (deleted)
    ([], True),
])
def test_a_fresh_token_for_a_join_when_the_recorded_one_expired(tmp_path, monkeypatch, rows, fresh):
    monkeypatch.setattr(cluster, "_now", lambda: NOW)
    cfg = lab.config.load({"state_dir": str(tmp_path / "state"), "ready_timeout": 60})
    state = State(tmp_path / "state.json")
    recorded = render.bootstrap_token(state)
    init_config = kubeadm.render_init(cfg, render.bootstrap_token(state))
    node = TokenNode(listing(*[(recorded if t == "RECORDED" else t, ttl, exp) for t, ttl, exp in rows]))
    ctx = Context(cfg, state, node)
    state.set("ca_cert_hash", "sha256:" + "a" * 64)
    cluster.join(ctx)
    creates = [argv for _n, argv, _s in node.calls if argv[:3] == ["kubeadm", "token", "create"]]
    token = State(tmp_path / "state.json").get("join_token") if fresh else recorded
    if fresh:
        assert token and token != recorded and kubeadm.TOKEN_RE.match(token)
        assert creates == [["kubeadm", "token", "create", token, "--ttl", kubeadm.TOKEN_TTL]]
    else:
        assert creates == [] and state.get("join_token") is None
    for worker in cfg.workers:
        text, file_mode = node.texts[(worker.name, cluster.REMOTE_JOIN)]
        assert kubeadm.join_config(cfg, worker, token, "sha256:" + "a" * 64)["discovery"]["bootstrapToken"]["token"] \
            == token and token in text and file_mode == "0600"
    # every command that sees the token is a secret one
    assert all(secret for _n, argv, secret in node.calls if argv[:2] == ["kubeadm", "token"])
    # the init configuration (and so the recorded init) does not change with a new join token
    assert kubeadm.render_init(cfg, render.bootstrap_token(state)) == init_config
    assert render.join_token(state) == token
    rendered = render.artifacts(cfg, state)
    assert all(token in rendered[f"nodes/{w.name}-join.yaml"] for w in cfg.workers)


def test_a_second_join_after_expiry_mints_yet_another_token(tmp_path, monkeypatch):
    monkeypatch.setattr(cluster, "_now", lambda: NOW)
    cfg = lab.config.load({"state_dir": str(tmp_path / "state")})
    state = State(tmp_path / "state.json")
    node = TokenNode(listing())
    ctx = Context(cfg, state, node)
    first = cluster.ensure_token(ctx)
    node.listed = listing((first, "<invalid>", later(-1)))
    second = cluster.ensure_token(ctx)
    assert len({render.bootstrap_token(state), first, second}) == 3
    assert state.get("join_token") == second
    node.listed = listing((second, "1h", later(3600)))
    assert cluster.ensure_token(ctx) == second


def test_kubeconfig_is_fetched_without_logging(tmp_path):
    cfg = lab.config.load({"state_dir": str(tmp_path / "state")})

    class Node(TokenNode):
        def run(self, node, command, **kw):
            self.calls.append((node, list(command), kw.get("secret", False)))
            return Result(0, ADMIN_CONF)
    node = Node("")
    cluster.fetch_kubeconfig(Context(cfg, State(tmp_path / "state.json"), node))
    assert node.calls == [(cfg.control_plane.name, ["cat", cluster.ADMIN_CONF], True)]
    assert mode(cfg.state_dir / "kubeconfig") == 0o600
