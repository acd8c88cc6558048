"""``lab.collect``: one archive, every part indexed as gathered or not (with the reason), no secret in it.

The nodes are a recording fake answering the collect commands the way the nodes' tools do
(``systemctl cat`` failing for a unit that is not there, ``kubectl`` with the admin kubeconfig);
secrets are planted in what they answer and in the state directory, then the archive is searched.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import stat
import tarfile

import pytest

from lab import collect, config, identity, snapshots
from lab.context import Result
from lab.errors import ConfigError, StepError
from test_snapshots import run_task

TOKEN = "q1w2e3.r4t5y6u7i8o9p0a1"
JOIN_TOKEN = "z9x8c7.v6b5n4m3l2k1j0h9"
PEM = ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAsecretkeybodysecretkeybody0123456789\n"
       "-----END RSA PRIVATE KEY-----")
CLIENT_KEY = "LS0tLS1CRUdJTiBFQyBQUklWQVRFIEtFWS0tLS0tCk1IY0NBUUVFSUlzZWNyZXQ="
CERT_KEY = "f" * 8 + "0123456789abcdef" * 3 + "e" * 8
JWT = "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2lnbmF0dXJlc2lnbmF0dXJlc2ln"
BEARER = "bearer-secret-value-77"
SECRETS = (TOKEN, JOIN_TOKEN, "secretkeybody", CLIENT_KEY, CERT_KEY, JWT, "c2lnbmF0dXJlc2lnbmF0dXJlc2ln", BEARER)


class Nodes:
    """The lab's nodes as the collect commands see them; ``cluster``: kubeadm init has run."""

    def __init__(self, cfg, cluster=False, units=("docker", "containerd")):
        self.cfg = cfg
        self.cluster = cluster
        self.units = set(units) | ({"kubelet", "cri-docker"} if cluster else set())
        self.calls = []
        self.files = {"/etc/docker/daemon.json": '{"ipv6": true, "fixed-cidr-v6": "fd00:1::/64"}\n'}
        if cluster:
            self.files["/opt/dslab/kubeadm-config.yaml"] = (f"bootstrapTokens:\n- token: {TOKEN}\n"
                                                            f"certificateKey: {CERT_KEY}\n")
            self.files["/opt/dslab/kubeadm-join.yaml"] = f"discovery:\n  bootstrapToken:\n    token: {JOIN_TOKEN}\n"

    def run(self, node, command, *, input=None, timeout=None, check=True, secret=False):
        text = command if isinstance(command, str) else shlex.join(command)
        self.calls.append((node, text))
        if text == "true":
            return Result(0)
        unit = re.search(r"systemctl cat -- ([a-z-]+)\.service", text)
        if unit:
            if unit.group(1) not in self.units:
                return Result(42, "", f"no {unit.group(1)}.service on this node\n")
            return Result(0, f"Dec 01 {unit.group(1)}[1]: kubeadm join --token {TOKEN} --certificate-key {CERT_KEY}\n"
                             f"{PEM}\n")
        if "/healthz" in text:
            if not self.cluster:
                return Result(42, "", f"no cluster yet: {node} has no /etc/kubernetes/admin.conf (lab.up has not "
                                      "reached control-plane)\n")
            return Result(0)
        wanted = re.match(r"if \[ ! -f (\S+) \]", text)
        if wanted:
            path = shlex.split(wanted.group(1))[0]
            on_node = self.files.get(path) if (path != "/opt/dslab/kubeadm-join.yaml"
                                               or node != self.cfg.control_plane.name) else None
            if on_node is None:
                reason = re.search(r"echo (.*?) >&2", text).group(1)
                return Result(42, "", shlex.split(reason)[0] + "\n")
            return Result(0, on_node)
        if text.startswith("ip "):
            return Result(0, f"{node}: {text}\n")
        if "ipvsadm" in text:
            return Result(0, "IP Virtual Server version 1.2.1\n")
        if "sysctl" in text:
            return Result(0, "net.ipv4.ip_forward = 1\n")
        if "/proc/modules" in text:
            return Result(0, "ip_vs 1 0 - Live 0x0\n")
        if text.startswith("kinds="):
            return Result(0, "kind: List\nitems: []\n")
        if text.startswith("kubectl "):
            return self.kubectl(command[3:])
        raise AssertionError(f"unexpected command on {node}: {text}")

    def kubectl(self, args):
        if args[:2] == ["get", "pods"] and "-n" in args:
            ns = args[args.index("-n") + 1]
            return Result(0, {"kube-system": "etcd-k8s-master01\nkube-proxy-abcde\n", "metallb-system": ""}[ns])
        if args[0] == "logs":
            return Result(0, f"I1201 serving with token {JWT}\n")
        if args[:3] == ["get", "-n", "kube-system"]:
            return Result(0, f"users:\n- name: admin\n  user:\n    client-key-data: {CLIENT_KEY}\n"
                             f"    token: {BEARER}\n")
        return Result(0, f"kind: List\nitems: []  # {' '.join(args)}\n")


def running(cfg, down=()):
    return lambda _cfg: ("".join(f"{n.name} running\n" for n in cfg.nodes),
                         "", {n: f"{n} is not running (libvirt domain {cfg.domain_prefix}{n})" for n in down})


@pytest.fixture()
def cfg(tmp_path, monkeypatch):
    """A lab whose machines are known, with secrets in its state and its last lab.up log."""
    state = tmp_path / "state"
    monkeypatch.setenv("INVOKE_LAB_STATE_DIR", str(state))
    monkeypatch.setenv("INVOKE_LAB_LIBVIRT_URI", "test:///default")
    cfg = config.load({"state_dir": str(state), "libvirt_uri": "test:///default"})
    identity.ensure_id(cfg)
    data = json.loads((state / "state.json").read_text())
    data.update(bootstrap_token=TOKEN, join_token=JOIN_TOKEN, steps={"prepare": "x"})
    (state / "state.json").write_text(json.dumps(data))
    (state / "ssh_config").write_text("Host k8s-master01\n")
    (state / "logs").mkdir()
    (state / "logs" / "up-20261201-100000.log").write_text(f"[k8s-master01] $ kubeadm init --token {TOKEN}\n"
                                                            f"client-key-data: {CLIENT_KEY}\n")
    (state / "logs" / "verify-20261201-110000.log").write_text("[k8s-master01] $ ip -o addr\n")
    return cfg


def archive(path):
    """Member name (without the top directory) → text."""
    with tarfile.open(path, "r:gz") as tar:
        members = {m.name.split("/", 1)[1]: tar.extractfile(m).read().decode() for m in tar.getmembers()}
        tops = {m.name.split("/", 1)[0] for m in tar.getmembers()}
        modes = {m.mode for m in tar.getmembers()}
    assert len(tops) == 1 and modes == {0o600}
    return members


def parts_by_path(members):
    return {p["path"]: p for p in json.loads(members["index.json"])["parts"]}


def assert_no_secret(path):
    raw = path.read_bytes()
    with tarfile.open(path, "r:gz") as tar:
        text = "".join(tar.extractfile(m).read().decode() for m in tar.getmembers())
    for secret in SECRETS:
        assert secret not in text, secret
        assert secret.encode() not in raw
    assert "PRIVATE KEY-----\nMII" not in text


def test_rehearsal_lab_has_the_node_parts_and_lists_the_cluster_parts_with_the_reason(cfg, tmp_path):
    out = tmp_path / "bundle.tar.gz"
    nodes = Nodes(cfg)
    collect.collect(cfg, out, runner=nodes, machines_state=running(cfg))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    members = archive(out)
    index = parts_by_path(members)
    for node in cfg.nodes:
        for name in ("ip-4-addr.txt", "ip-6-addr.txt", "ip-4-route.txt", "ip-6-route.txt", "ipvsadm.txt",
                     "sysctl.txt", "modules.txt", "daemon.json", "journal-docker.log", "journal-containerd.log"):
            assert index[f"nodes/{node.name}/{name}"]["gathered"], name
            assert f"nodes/{node.name}/{name}" in members
        kubelet = index[f"nodes/{node.name}/journal-kubelet.log"]
        assert not kubelet["gathered"] and kubelet["reason"] == "no kubelet.service on this node"
        assert f"nodes/{node.name}/journal-kubelet.log" not in members
    assert members[f"nodes/{cfg.control_plane.name}/ip-6-addr.txt"] == f"{cfg.control_plane.name}: ip -6 addr show\n"
    assert index[f"nodes/{cfg.control_plane.name}/kubeadm-config.yaml"]["reason"] == (
        "no /opt/dslab/kubeadm-config.yaml on this node (lab.up has not reached control-plane)")
    cluster = {p: v for p, v in index.items() if p.startswith("cluster/")}
    assert {"cluster/nodes.yaml", "cluster/pods.yaml", "cluster/services.yaml", "cluster/endpointslices.yaml",
            "cluster/events.yaml", "cluster/calico-ippools.yaml", "cluster/metallb.yaml",
            "cluster/logs/kube-system/", "cluster/logs/metallb-system/"} <= set(cluster)
    for part in cluster.values():
        assert not part["gathered"]
        assert part["reason"] == ("no cluster yet: k8s-master01 has no /etc/kubernetes/admin.conf (lab.up has not "
                                  "reached control-plane)")
    assert not any(text.startswith("kubectl") for _, text in nodes.calls)
    for name in ("lab/config.json", "lab/state.json", "lab/machines.txt", "lab/up.log", "lab/verify.log"):
        assert index[name]["gathered"], name
    assert json.loads(members["lab/config.json"])["name"] == cfg.name
    assert index["lab/verify-report.json"]["reason"] == f"no lab.verify report in {cfg.state_dir / 'logs'}"
    assert index["lab/snapshots.txt"]["reason"] == "the lab has no snapshots"
    assert_no_secret(out)
    assert "<redacted token>" in members["lab/state.json"] and "<redacted token>" in members["lab/up.log"]


def test_a_lab_with_a_cluster_has_its_objects_and_pod_logs_scrubbed(cfg, tmp_path):
    out = tmp_path / "bundle.tar.gz"
    collect.collect(cfg, out, runner=Nodes(cfg, cluster=True), machines_state=running(cfg))
    members = archive(out)
    index = parts_by_path(members)
    for path in ("cluster/nodes.yaml", "cluster/pods.yaml", "cluster/services.yaml", "cluster/endpointslices.yaml",
                 "cluster/events.yaml", "cluster/calico-ippools.yaml", "cluster/metallb.yaml",
                 "cluster/kube-system-configmaps.yaml", "cluster/logs/kube-system/etcd-k8s-master01.log",
                 "cluster/logs/kube-system/kube-proxy-abcde.log"):
        assert index[path]["gathered"] and path in members, path
    assert index["cluster/logs/metallb-system/"]["reason"] == "no pods in metallb-system"
    assert "get pods -A -o yaml" in members["cluster/pods.yaml"]
    for node in cfg.nodes:
        assert index[f"nodes/{node.name}/journal-kubelet.log"]["gathered"]
    assert index[f"nodes/{cfg.workers[0].name}/kubeadm-join.yaml"]["gathered"]
    assert "certificateKey: <redacted>" in members[f"nodes/{cfg.control_plane.name}/kubeadm-config.yaml"]
    assert "<redacted jwt>" in members["cluster/logs/kube-system/etcd-k8s-master01.log"]
    assert "client-key-data: <redacted>" in members["cluster/kube-system-configmaps.yaml"]
    assert_no_secret(out)


def test_a_node_that_is_down_is_listed_with_the_reason_and_the_rest_is_collected(cfg, tmp_path):
    out = tmp_path / "bundle.tar.gz"
    down = cfg.workers[1].name
    nodes = Nodes(cfg)
    collect.collect(cfg, out, runner=nodes, machines_state=running(cfg, down=[down]))
    index = parts_by_path(archive(out))
    mine = [p for path, p in index.items() if path.startswith(f"nodes/{down}/")]
    assert mine and all(not p["gathered"] and p["reason"] == f"{down} is not running (libvirt domain "
                                                             f"{cfg.domain_prefix}{down})" for p in mine)
    assert index[f"nodes/{cfg.workers[0].name}/ip-4-addr.txt"]["gathered"]
    assert all(node != down for node, _ in nodes.calls)


def test_a_node_ssh_cannot_reach_is_listed_with_the_reason(cfg, tmp_path):
    class Unreachable(Nodes):
        def run(self, node, command, **kw):
            if node == cfg.workers[0].name:
                raise StepError("collect", f"{node}: `true` timed out after 180 s")
            return super().run(node, command, **kw)

    out = tmp_path / "bundle.tar.gz"
    collect.collect(cfg, out, runner=Unreachable(cfg), machines_state=running(cfg))
    index = parts_by_path(archive(out))
    assert index[f"nodes/{cfg.workers[0].name}/sysctl.txt"]["reason"] == (
        f"ssh to {cfg.workers[0].name} failed (collect: {cfg.workers[0].name}: `true` timed out after 180 s)")
    assert index[f"nodes/{cfg.workers[1].name}/sysctl.txt"]["gathered"]


def test_without_machines_every_node_and_cluster_part_says_why(cfg, tmp_path):
    (cfg.state_dir / "ssh_config").unlink()
    out = tmp_path / "bundle.tar.gz"
    nodes = Nodes(cfg)
    parts = collect.collect(cfg, out, runner=nodes, machines_state=running(cfg))
    reason = f"no lab machines known (no {cfg.state_dir / 'ssh_config'}: lab.up has not reached machines)"
    remote = [p for p in parts if p.path.startswith(("nodes/", "cluster/"))]
    assert remote and all(p.reason.endswith(reason) and not p.gathered for p in remote)
    assert nodes.calls == []
    assert parts_by_path(archive(out))["lab/config.json"]["gathered"]


def test_the_index_lists_every_part_once_with_a_reason_for_each_one_not_gathered(cfg, tmp_path):
    out = tmp_path / "bundle.tar.gz"
    collect.collect(cfg, out, runner=Nodes(cfg), machines_state=running(cfg))
    members = archive(out)
    parts = json.loads(members["index.json"])["parts"]
    lines = members["index.txt"].splitlines()
    assert len(lines) == len(parts) == len({p["path"] for p in parts})
    for part, line in zip(parts, lines):
        assert line.startswith(("✓ " if part["gathered"] else "✗ ") + part["path"] + "  ")
        assert part["gathered"] == (part["path"] in members)
        assert part["gathered"] or (part["reason"] and line.endswith(f"not gathered: {part['reason']}"))


def test_snapshots_are_listed_in_the_archive(cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(snapshots, "listing", lambda cfg: ["ready  2026-12-01T10:00:00Z  k8s-master01  512 MiB"])
    out = tmp_path / "bundle.tar.gz"
    collect.collect(cfg, out, runner=Nodes(cfg), machines_state=running(cfg))
    assert archive(out)["lab/snapshots.txt"] == "ready  2026-12-01T10:00:00Z  k8s-master01  512 MiB\n"


@pytest.mark.parametrize("text, gone", [
    (f"kubeadm join 192.168.200.11:6443 --token {TOKEN}", TOKEN),
    (f"certificateKey: {CERT_KEY}", CERT_KEY),
    (f"kubeadm init phase upload-certs --certificate-key={CERT_KEY}", CERT_KEY),
    (f'"certificateKey": "{CERT_KEY}"', CERT_KEY),
    (f"    client-key-data: {CLIENT_KEY}", CLIENT_KEY),
    (f"    token: {BEARER}", BEARER),
    (f'  "password": "{BEARER}",', BEARER),
    (f"Authorization: Bearer {JWT}", JWT),
    (PEM, "secretkeybody"),
])
def test_scrub_removes_every_kind_of_secret(text, gone):
    assert gone not in collect.scrub(text)


def test_scrub_keeps_what_is_not_a_secret():
    text = ("discovery-token-ca-cert-hash: sha256:" + "a" * 64 + "\nserviceAccountToken:\n  path: token\n"
            "ipv6: true\n")
    assert collect.scrub(text) == text


@pytest.mark.parametrize("make, why", [
    (lambda tmp: tmp / "exists.tar.gz", "exists; give a new file path"),
    (lambda tmp: tmp, "is a directory; give a file path"),
    (lambda tmp: tmp / "missing" / "x.tar.gz", "is not a directory; give a file path in an existing directory"),
])
def test_a_bad_out_is_one_line_and_writes_nothing(cfg, tmp_path, capfd, make, why):
    (tmp_path / "exists.tar.gz").write_text("mine")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = run_task(capfd, "lab.collect", "--out", str(make(tmp_path)))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("lab.collect --out: ") and why in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "exists.tar.gz").read_text() == "mine"


def test_collect_task_writes_the_archive_here_by_default(cfg, tmp_path, capfd, monkeypatch):
    (cfg.state_dir / "ssh_config").unlink()  # no machines: the host's parts only
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    code, out, err = run_task(capfd, "lab.collect")
    assert code == 0, err
    written = list(here.iterdir())
    assert len(written) == 1 and re.fullmatch(r"dslab-dslab-collect-\d{8}-\d{6}\.tar\.gz", written[0].name)
    assert out.strip() == str(written[0])
    assert stat.S_IMODE(written[0].stat().st_mode) == 0o600
    assert "parts gathered" in err
    index = parts_by_path(archive(written[0]))
    assert index["lab/machines.txt"]["gathered"]
    assert_no_secret(written[0])


def test_check_out_refuses_an_empty_path():
    with pytest.raises(ConfigError, match="lab.collect --out: is empty"):
        collect.check_out(" ")


def test_index_alone_is_written_when_nothing_could_be_gathered(tmp_path):
    out = tmp_path / "x.tar.gz"
    collect.write_archive(out, "top", [collect.Part("nodes/n/a.txt", "a", reason="n is not running")], {"lab": "l"})
    with tarfile.open(out, "r:gz") as tar:
        assert sorted(tar.getnames()) == ["top/index.json", "top/index.txt"]
        index = json.load(io.TextIOWrapper(tar.extractfile("top/index.json")))
    assert index["parts"][0]["reason"] == "n is not running"


def test_the_rendered_files_are_in_the_archive_scrubbed(cfg, tmp_path):
    out = tmp_path / "none.tar.gz"
    collect.collect(cfg, out, runner=Nodes(cfg), machines_state=running(cfg))
    assert parts_by_path(archive(out))["lab/rendered/"]["reason"] == (
        "nothing rendered yet (lab.up has not reached render)")
    (cfg.state_dir / "kubeadm-config.yaml").write_text(f"bootstrapTokens:\n- token: {TOKEN}\n")
    (cfg.state_dir / "nodes").mkdir()
    (cfg.state_dir / "nodes" / "k8s-master01.env").write_text("NODE_NAME=k8s-master01\n")
    (cfg.state_dir / "nodes" / "notes.txt").write_text("the user's own")
    out = tmp_path / "bundle.tar.gz"
    collect.collect(cfg, out, runner=Nodes(cfg), machines_state=running(cfg))
    members = archive(out)
    assert members["lab/rendered/nodes/k8s-master01.env"] == "NODE_NAME=k8s-master01\n"
    assert members["lab/rendered/kubeadm-config.yaml"] == "bootstrapTokens:\n- token: <redacted token>\n"
    assert "lab/rendered/nodes/notes.txt" not in members and "lab/rendered/" not in parts_by_path(members)
    assert_no_secret(out)
