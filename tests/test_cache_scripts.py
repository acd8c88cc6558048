"""The cache's node scripts (provision/cache-images.sh, cache-packages.sh, bake-clean.sh), run for
real with bash below a temporary DSLAB_ROOT against stub system commands that record their calls
(the same method as tests/test_provision.py, with a stub of the commands these scripts use).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lab import cache_sync, images

REPO = Path(__file__).resolve().parent.parent
PROVISION = REPO / "provision"
SCRIPTS = ["cache-images.sh", "cache-packages.sh", "bake-clean.sh"]
REAL_TOOLS = ["bash", "env", "cat", "awk", "sed", "grep", "cut", "tr", "wc", "mktemp", "mkdir", "install", "cmp",
              "rm", "mv", "chmod", "basename", "dirname", "sha256sum", "sort", "find", "head", "tail", "date", "ls",
              "touch", "chown"]
STUBBED = ["docker", "ctr", "kubeadm", "systemctl", "nmcli", "ip", "cloud-init", "sync"]
NGINX_ID = "sha256:" + "1" * 64
CALICO_DIGEST = "sha256:" + "2" * 64
NM_UUID = "5fb06bd0-0bb0-7ffb-45f1-d6edd65f3e03"
OS_RELEASE = {
    "el7": 'ID="centos"\nID_LIKE="rhel fedora"\nVERSION_ID="7"\n',
    "el9": 'ID="centos"\nID_LIKE="rhel fedora"\nVERSION_ID="9"\n',
    "debian": 'ID=debian\nVERSION_ID="12"\n',
}
#: What changes a node, per stubbed command.
CHANGING = {
    "docker": lambda a: a[:1] in (["save"], ["load"]),
    "ctr": lambda a: "export" in a or "import" in a,
    "kubeadm": lambda a: "reset" in a,
    "systemctl": lambda a: bool({"enable", "disable", "start", "stop", "restart", "poweroff"} & set(a)),
    "nmcli": lambda a: "modify" in a,
    "cloud-init": lambda a: "clean" in a,
}

STUB = r'''#!PYTHON
"""Records its argv in $DSLAB_ROOT/.stub/calls.log and acts on $DSLAB_ROOT/.stub/state.json."""
import json, os, sys
from pathlib import Path
ROOT = Path(os.environ["DSLAB_ROOT"])
STATE = ROOT / ".stub" / "state.json"
cmd, args = Path(sys.argv[0]).name, sys.argv[1:]
with open(ROOT / ".stub" / "calls.log", "a") as log:
    log.write(json.dumps([cmd, *args]) + "\n")
state = json.loads(STATE.read_text())
images = state.setdefault("images", {})

def full(ref):
    first, _, rest = ref.partition("/")
    if not rest or not ("." in first or ":" in first):
        ref = "docker.io/" + ref if rest else "docker.io/library/" + ref
    return ref

def familiar(ref):
    for prefix in ("docker.io/library/", "docker.io/"):
        if ref.startswith(prefix):
            return ref[len(prefix):]
    return ref

def save():
    STATE.write_text(json.dumps(state))

rc = 0
if cmd == "docker":
    if args[:2] == ["image", "ls"]:
        for ref, image_id in images.items():
            repo, _, tag = familiar(ref).rpartition(":")
            print(json.dumps({"Digest": "<none>", "ID": image_id, "Repository": repo, "Tag": tag}))
    elif args[:2] == ["image", "inspect"]:
        rc = 0 if full(args[2]) in images else 1
    elif args[:1] == ["save"]:
        out, ref = args[2], full(args[3])
        if state.get("fail_save"):
            sys.stderr.write("Error: write failed: no space left on device\n"); rc = 1
        elif ref not in images:
            sys.stderr.write(f"Error: No such image: {args[3]}\n"); rc = 1
        else:
            Path(out).write_text(json.dumps({ref: images[ref]}))
    elif args[:1] == ["load"]:
        loaded = json.loads(Path(args[2]).read_text())
        images.update(loaded)
        for ref in loaded:
            print(f"Loaded image: {familiar(ref)}")
elif cmd == "ctr":
    words = args[2:]
    if words == ["images", "ls"]:
        print("REF TYPE DIGEST SIZE PLATFORMS LABELS")
        for ref, digest in images.items():
            print(f"{ref} application/vnd.oci.image.index.v1+json {digest} 27.1 MiB linux/amd64 -")
            print(f"{digest} application/vnd.oci.image.index.v1+json {digest} 27.1 MiB linux/amd64 -")
    elif words == ["images", "ls", "-q"]:
        for ref, digest in images.items():
            print(ref); print(digest)
    elif words[:2] == ["images", "export"]:
        out, ref = words[2], words[3]
        print("exporting layers... done")  # ctr 2.x prints its progress on stdout
        Path(out).write_text(json.dumps({ref: images[ref]}))
    elif words[:2] == ["images", "import"]:
        print("unpacking... done")
        images.update(json.loads(Path(words[2]).read_text()))
elif cmd == "kubeadm" and "reset" in args:
    for rel in ("etc/kubernetes/admin.conf", "etc/kubernetes/pki", "var/lib/kubelet/config.yaml"):
        path = ROOT / rel
        if path.is_dir():
            import shutil; shutil.rmtree(path)
        elif path.exists():
            path.unlink()
elif cmd == "systemctl":
    units = state.setdefault("enabled", [])
    active = state.setdefault("active", [])
    if args[:2] == ["is-enabled", "--quiet"]:
        rc = 0 if args[2] in units else 1
    elif args[:2] == ["is-active", "--quiet"]:
        rc = 0 if args[2] in active else 3
    elif args[:1] == ["enable"]:
        units.append(args[1])
    elif args[:1] == ["stop"]:
        active.remove(args[1])
        if args[1] == "systemd-random-seed.service":  # its ExecStop saves a new seed
            (ROOT / "var/lib/systemd/random-seed").write_text("saved at stop")
elif cmd == "nmcli":
    if args[:2] == ["-g", "GENERAL.CON-UUID"]:
        print(state.get("nm_uuid", ""))
    elif args[:2] == ["-g", "ipv6.method"]:
        print(state["ipv6_method"])
    elif args[:2] == ["connection", "modify"]:
        state["ipv6_method"] = args[args.index("ipv6.method") + 1]
elif cmd == "ip" and args[:4] == ["-o", "-4", "addr", "show"]:
    print(f"2: eth1    inet {state['ipv4']}/24 brd 192.168.200.255 scope global dynamic eth1")
elif cmd == "cloud-init" and args[:1] == ["clean"]:
    import shutil; shutil.rmtree(ROOT / "var/lib/cloud/instances", ignore_errors=True)
save()
sys.exit(rc)
'''


class Node:
    """A fake node below ``tmp/root`` with the stubs first on PATH."""

    def __init__(self, tmp: Path, family: str = "el9", runtime: str = "docker", ipv4: str = "192.168.200.11"):
        self.root, self.tmp, self.family = tmp / "root", tmp, family
        (self.root / ".stub").mkdir(parents=True)
        self.bin, self.sysbin = tmp / "bin", tmp / "sysbin"
        self.bin.mkdir()
        self.sysbin.mkdir()
        stub = tmp / "stub.py"
        stub.write_text(STUB.replace("PYTHON", sys.executable))
        stub.chmod(0o755)
        for name in STUBBED:
            (self.bin / name).symlink_to(stub)
        for tool in REAL_TOOLS:
            path = shutil.which(tool)
            assert path, f"the test needs {tool}"
            (self.sysbin / tool).symlink_to(path)
        self.write("etc/os-release", OS_RELEASE[family])
        self.save({"images": {}, "ipv4": ipv4, "enabled": []})
        (self.root / ".stub" / "calls.log").write_text("")
        self.env = tmp / "node.env"
        self.env.write_text(f"RUNTIME={runtime}\nCRI_SOCKET=unix:///var/run/cri-dockerd.sock\nNODE_IPV4={ipv4}\n")

    def write(self, rel: str, text: str = "x\n") -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def state(self) -> dict:
        return json.loads((self.root / ".stub" / "state.json").read_text())

    def save(self, state: dict) -> None:
        (self.root / ".stub" / "state.json").write_text(json.dumps(state))

    def run(self, script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        (self.tmp / "tmp").mkdir(exist_ok=True)
        env = {"PATH": f"{self.bin}:{self.sysbin}", "DSLAB_ROOT": str(self.root), "TMPDIR": str(self.tmp / "tmp"),
               "LC_ALL": "C"}
        proc = subprocess.run(["bash", str(PROVISION / script), str(self.env), *args], env=env, cwd=self.tmp,
                              capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"{script} exited {proc.returncode}:\n{proc.stderr}")
        return proc

    def calls(self, clear: bool = True) -> list:
        log = self.root / ".stub" / "calls.log"
        calls = [json.loads(line) for line in log.read_text().splitlines()]
        if clear:
            log.write_text("")
        return calls

    def snapshot(self) -> dict:
        return {str(p.relative_to(self.root)): (p.read_bytes() if p.is_file() and not p.is_symlink() else "link")
                for p in sorted(self.root.rglob("*")) if ".stub" not in p.parts and not p.is_dir()}


def changing(calls):
    return [c for c in calls if c[0] in CHANGING and CHANGING[c[0]](c[1:])]


def test_scripts_are_strict_and_shellcheck_clean():
    for name in SCRIPTS:
        text = (PROVISION / name).read_text()
        assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text, name
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    proc = subprocess.run(["shellcheck", "-x", *[f"provision/{n}" for n in SCRIPTS]], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- cache-images.sh


@pytest.mark.parametrize("runtime, digest", [("docker", NGINX_ID), ("containerd", CALICO_DIGEST)])
def test_list_export_load_round_trip(tmp_path, runtime, digest):
    ref = "docker.io/library/nginx:1.30"
    source = Node(tmp_path / "a", runtime=runtime)
    source.save({**source.state(), "images": {ref: digest}})
    assert images.parse_list(runtime, source.run("cache-images.sh", "list").stdout) == [images.NodeImage(ref, digest)]
    spool = f"{images.REMOTE_SPOOL}/export-1.tar"
    out = source.run("cache-images.sh", "export", ref, spool).stdout.splitlines()
    tarball = source.root / spool.lstrip("/")
    assert out == [f"{hashlib.sha256(tarball.read_bytes()).hexdigest()} {tarball.stat().st_size}"]
    calls = source.calls()
    assert changing(calls)[0][:3] == (["docker", "save", "-o"] if runtime == "docker" else
                                      ["ctr", "-n", "k8s.io", "images", "export"])[:3]
    assert not list(tarball.parent.glob("*.part.*"))
    # a new lab's node: loaded from the tarball, which is removed; a second load does nothing
    target = Node(tmp_path / "b", runtime=runtime)
    target.write(spool.lstrip("/"), tarball.read_text())
    target.run("cache-images.sh", "load", spool, ref)
    assert target.state()["images"] == {ref: digest} and not (target.root / spool.lstrip("/")).exists()
    assert changing(target.calls()) == [images.load_command(runtime, str(target.root) + spool)]
    proc = target.run("cache-images.sh", "load", spool, ref)
    assert changing(target.calls()) == [] and "already there" in proc.stderr


def test_export_of_a_missing_image_names_the_step(tmp_path):
    node = Node(tmp_path)
    proc = node.run("cache-images.sh", "export", "quay.io/calico/node:v3.31.6", "/var/cache/dslab/images/x.tar",
                    check=False)
    assert proc.returncode == 1
    assert "step 'export quay.io/calico/node:v3.31.6' failed: image quay.io/calico/node:v3.31.6 is not" in proc.stderr
    assert changing(node.calls()) == []


def test_load_that_gives_another_image_fails(tmp_path):
    node = Node(tmp_path)
    node.write("var/cache/dslab/images/x.tar", json.dumps({"docker.io/library/nginx:1.17": NGINX_ID}))
    proc = node.run("cache-images.sh", "load", "/var/cache/dslab/images/x.tar", "docker.io/library/nginx:1.30",
                    check=False)
    assert proc.returncode == 1 and "did not give docker.io/library/nginx:1.30" in proc.stderr


def test_a_failed_export_removes_its_file_and_runs_nothing_of_its_name(tmp_path):
    """The temporary file's name reaches the EXIT trap as data: a DEST with a quote in it is a name."""
    ref = "docker.io/library/nginx:1.30"
    node = Node(tmp_path)
    node.save({**node.state(), "images": {ref: NGINX_ID}, "fail_save": True})
    dest = "/var/cache/dslab/images/a';touch INJECTED;'b.tar"
    proc = node.run("cache-images.sh", "export", ref, dest, check=False)
    assert proc.returncode == 1 and "no space left on device" in proc.stderr
    assert not (tmp_path / "INJECTED").exists()
    assert list((node.root / "var/cache/dslab/images").iterdir()) == []


@pytest.mark.parametrize("ref", ["x;rm -rf /", "--help", "nginx 1.30", "nginx:1.30\nrm", "$(id)"])
def test_hostile_references_are_refused_before_any_runtime_call(tmp_path, ref):
    node = Node(tmp_path)
    node.write("var/cache/dslab/images/x.tar", json.dumps({"docker.io/library/nginx:1.30": NGINX_ID}))
    for args in (["load", "/var/cache/dslab/images/x.tar", ref], ["export", ref, "/var/cache/dslab/images/y.tar"]):
        proc = node.run("cache-images.sh", *args, check=False)
        assert proc.returncode == 1 and "not an image reference" in proc.stderr, proc.stderr
    assert node.calls() == [] and (node.root / "var/cache/dslab/images/x.tar").exists()


def test_unknown_runtime_and_usage(tmp_path):
    node = Node(tmp_path, runtime="cri-o")
    assert "RUNTIME must be docker or containerd" in node.run("cache-images.sh", "list", check=False).stderr
    node = Node(tmp_path / "n2")
    assert "usage:" in node.run("cache-images.sh", "export", "x", check=False).stderr


# --------------------------------------------------------------------------- cache-packages.sh


@pytest.mark.parametrize("family, path, before, after", [
    ("el9", "etc/dnf/dnf.conf", "[main]\ngpgcheck=1\nbest=True\n", "[main]\ngpgcheck=1\nbest=True\nkeepcache=1\n"),
    ("el7", "etc/yum.conf", "[main]\ncachedir=/var/cache/yum/$basearch/$releasever\nkeepcache=0\ndebuglevel=2\n"
                            "[other]\nkeepcache=0\n",
     "[main]\ncachedir=/var/cache/yum/$basearch/$releasever\nkeepcache=1\ndebuglevel=2\n[other]\nkeepcache=0\n"),
    ("debian", "etc/apt/apt.conf.d/90dslab-keep-packages", None,
     'APT::Keep-Downloaded-Packages "true";\nBinary::apt::APT::Keep-Downloaded-Packages "true";\n'),
])
def test_package_managers_keep_their_downloads(tmp_path, family, path, before, after):
    node = Node(tmp_path, family)
    if before is not None:
        node.write(path, before)
    node.run("cache-packages.sh", "keep")
    assert (node.root / path).read_text() == after
    snapshot = node.snapshot()
    assert "write" not in node.run("cache-packages.sh", "keep").stderr and node.snapshot() == snapshot


@pytest.mark.parametrize("family, rel", [
    ("el9", "docker-ce-stable-0123456789abcdef/packages/docker-ce-29.1.3-1.el9.x86_64.rpm"),
    ("el7", "base/packages/ipset-7.1-1.el7.x86_64.rpm"),
    ("debian", "ipset_7.17-1_amd64.deb"),
])
def test_kept_packages_listed_and_put_back(tmp_path, family, rel):
    base = cache_sync.PACKAGE_BASES[family].lstrip("/")
    node = Node(tmp_path / "a", family)
    node.write(f"{base}/{rel}", "package bytes")
    node.write(f"{base}/not-a-package.txt")
    assert node.run("cache-packages.sh", "list").stdout == f"{family} {rel} 13\n"
    target = Node(tmp_path / "b", family)
    target.write(f"var/cache/dslab/packages/{rel}", "package bytes")
    target.run("cache-packages.sh", "restore", "/var/cache/dslab/packages")
    assert (target.root / base / rel).read_text() == "package bytes"
    assert not (target.root / "var/cache/dslab/packages").exists()


@pytest.mark.parametrize("spool", ["/", "/var/cache/dslab", "/var/cache/dslab/../../etc", "var/cache/dslab/packages"])
def test_restore_takes_only_a_spool_directory(tmp_path, spool):
    """restore removes its DIR at the end: a DIR outside /var/cache/dslab/ is refused before anything moves."""
    node = Node(tmp_path, "el9")
    keep = [node.write("etc/dnf/dnf.conf", "[main]\n"), node.write("var/cache/dslab/packages/a/packages/x.rpm"),
            node.write("opt/other/y.rpm")]
    proc = node.run("cache-packages.sh", "restore", spool, check=False)
    assert proc.returncode == 1 and "is not a directory below /var/cache/dslab/" in proc.stderr, proc.stderr
    assert all(path.is_file() for path in keep)


def test_an_apt_hook_that_deletes_the_archives_is_named(tmp_path):
    """The docker-clean file of Debian's container images removes every .deb after each dpkg run."""
    node = Node(tmp_path, "debian")
    node.write("etc/apt/apt.conf.d/docker-clean",
               'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb '
               '/var/cache/apt/*.bin || true"; };\nDir::Cache::pkgcache "";\n')
    node.write("etc/apt/apt.conf.d/70debconf", 'DPkg::Pre-Install-Pkgs {"/usr/sbin/dpkg-preconfigure --apt || true";};\n')
    warnings = [line for line in node.run("cache-packages.sh", "keep").stderr.splitlines() if "warning" in line]
    assert warnings == ["dslab: cache-packages.sh: warning: /etc/apt/apt.conf.d/docker-clean removes downloaded "
                        "packages after every install: none of them reach the host's cache"]


# --------------------------------------------------------------------------- bake-clean.sh

KEEP = ["var/lib/dslab/cri-dockerd.sum", "var/cache/dslab/release-v3.11.3.tgz", "etc/ssh/sshd_config",
        "usr/local/bin/cri-dockerd", "etc/docker/daemon.json", "etc/sysctl.d/90-dslab.conf"]
GONE = ["etc/kubernetes/admin.conf", "etc/kubernetes/pki/ca.key", "etc/kubernetes/manifests/kube-apiserver.yaml",
        "var/lib/kubelet/config.yaml", "var/lib/kubelet/pki/kubelet.key", "var/lib/etcd/member/snap/db",
        "etc/cni/net.d/10-calico.conflist", "etc/cni/net.d/calico-kubeconfig", "var/lib/calico/nodename",
        "var/lib/dslab/kubeadm-init.done", "var/cache/dslab/images/export-1.tar", "opt/dslab/node.env",
        "opt/dslab/kubeadm-config.yaml", "opt/dslab/provision/lib.sh", "root/.kube/config",
        "etc/ssh/ssh_host_ed25519_key", "etc/ssh/ssh_host_ed25519_key.pub", "var/log/messages-20240101",
        "var/log/dnf.log.1", "var/log/journal/0123/system.journal", "root/.bash_history",
        "home/vagrant/.bash_history"]
EMPTIED = ["etc/machine-id", "var/log/messages", "var/log/audit/audit.log"]
FAMILY_GONE = {
    "el9": ["var/lib/NetworkManager/internal-0123-eth0.lease", "var/lib/dbus/machine-id",
            "var/cache/dnf/docker-ce-stable-0123456789abcdef/packages/docker-ce-29.1.3-1.el9.x86_64.rpm",
            "var/cache/dnf/baseos-fedcba9876543210/packages/ipset-7.11-11.el9.x86_64.rpm"],
    "el7": ["var/lib/dhclient/dhclient--eth0.lease", "var/lib/dbus/machine-id", "var/lib/yum/uuid",
            "var/cache/yum/x86_64/7/base/packages/ipset-7.1-1.el7.x86_64.rpm"],
    "debian": ["var/lib/dhcp/dhclient.eth0.leases", "etc/network/interfaces.d/dslab-ipv6-eth1",
               "var/lib/cloud/instances/i-1/obj.pkl", "var/cache/apt/archives/ipset_7.17-1_amd64.deb"],
}
#: Package manager files that are not kept packages: they stay.
FAMILY_KEEP = {
    "el9": ["var/cache/dnf/baseos-fedcba9876543210/repodata/repomd.xml"],
    "el7": ["var/cache/yum/x86_64/7/base/repomd.xml"],
    "debian": ["var/cache/apt/archives/lock", "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease"],
}


INSECURE_KEY = "ssh-rsa AAAAB3NzaC1yc2EAAAABIwAAAQEA6NF8iallvQVp22WDkTkyrtvp9eWW6A8YVr vagrant insecure public key\n"
LAB_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOfThisLabsOwnKeyOfThisLabsOwnKey vagrant\n"


def login_files(node):
    node.write("opt/dslab/login.pub", INSECURE_KEY)
    node.write("home/vagrant/.ssh/authorized_keys", LAB_KEY)


def baked_node(tmp_path, family):
    node = Node(tmp_path, family)
    login_files(node)
    for rel in KEEP + GONE + EMPTIED + FAMILY_GONE[family] + FAMILY_KEEP[family]:
        node.write(rel, f"of this lab: {rel}\n")
    node.write("etc/hostname", "k8s-master01\n")
    node.write("var/lib/systemd/random-seed", "the seed every node made from the box would credit")
    node.save({**node.state(), "active": ["systemd-random-seed.service"]})
    if family == "debian":
        (node.root / "var/lib/dbus").mkdir(parents=True)
        (node.root / "var/lib/dbus/machine-id").symlink_to("/etc/machine-id")
    if family == "el7":
        node.write("etc/sysconfig/network-scripts/ifcfg-eth1", "DEVICE=eth1\nBOOTPROTO=dhcp\nIPV6INIT=yes\n"
                   "IPV6ADDR=fd00:db1::11/64\nIPV6_DEFAULTGW=fd00:db1::1\n")
    if family == "el9":
        node.save({**node.state(), "nm_uuid": NM_UUID, "ipv6_method": "manual"})
    return node


@pytest.mark.parametrize("family", ["el9", "el7", "debian"])
def test_bake_clean_leaves_nothing_of_the_lab_then_changes_nothing(tmp_path, family):
    node = baked_node(tmp_path, family)
    node.run("bake-clean.sh")
    expected = [["kubeadm", "reset", "-f", "--cri-socket", "unix:///var/run/cri-dockerd.sock"]]
    if family == "el9":
        expected.append(["nmcli", "connection", "modify", NM_UUID, "ipv6.method", "auto", "ipv6.addresses", "",
                         "ipv6.gateway", ""])
    expected.append(["systemctl", "stop", "systemd-random-seed.service"])
    if family == "debian":
        expected.append(["cloud-init", "clean", "--logs"])
    expected.append(["systemctl", "enable", "dslab-ssh-host-keys.service"])
    assert changing(node.calls()) == expected
    for rel in GONE + FAMILY_GONE[family] + ["var/lib/systemd/random-seed"]:
        assert not (node.root / rel).exists(), rel
    for rel in KEEP + FAMILY_KEEP[family]:
        assert (node.root / rel).read_text() == f"of this lab: {rel}\n", rel
    for rel in EMPTIED:
        assert (node.root / rel).read_bytes() == b"", rel
    for rel in ("etc/kubernetes", "var/lib/kubelet", "etc/cni/net.d"):
        assert (node.root / rel).is_dir() and not any((node.root / rel).iterdir()), rel
    assert (node.root / "etc/hostname").read_text() == "localhost\n"
    assert (node.root / "home/vagrant/.ssh/authorized_keys").read_text() == INSECURE_KEY
    assert oct((node.root / "home/vagrant/.ssh/authorized_keys").stat().st_mode & 0o777) == "0o600"
    unit = (node.root / "etc/systemd/system/dslab-ssh-host-keys.service").read_text()
    assert "ExecStart=/usr/bin/ssh-keygen -A" in unit and "Before=ssh.service sshd.service" in unit
    if family == "debian":
        assert (node.root / "var/lib/dbus/machine-id").is_symlink()
    if family == "el7":
        assert (node.root / "etc/sysconfig/network-scripts/ifcfg-eth1").read_text() == \
            "DEVICE=eth1\nBOOTPROTO=dhcp\nIPV6INIT=yes\n"
    snapshot = node.snapshot()
    node.write("opt/dslab/login.pub", INSECURE_KEY)  # lab.bake puts it there before each run
    node.run("bake-clean.sh")
    assert changing(node.calls()) == [] and node.snapshot() == snapshot


def test_bake_clean_powers_off_last_when_asked(tmp_path):
    node = baked_node(tmp_path, "el9")
    node.run("bake-clean.sh", "--poweroff")
    calls = node.calls()
    assert calls[-2:] == [["sync"], ["systemctl", "--no-block", "poweroff"]]
    assert [c[:2] for c in changing(calls)] == [["kubeadm", "reset"], ["nmcli", "connection"], ["systemctl", "stop"],
                                                ["systemctl", "enable"], ["systemctl", "--no-block"]]


def test_bake_clean_without_kubeadm_state_resets_nothing(tmp_path):
    node = Node(tmp_path, "debian")
    login_files(node)
    node.write("etc/machine-id", "0123\n")
    node.run("bake-clean.sh")
    assert changing(node.calls()) == [["systemctl", "enable", "dslab-ssh-host-keys.service"]]


@pytest.mark.parametrize("key", [None, "not a key\n", "ssh-rsa AAAA x\nssh-rsa $(reboot)\n"])
def test_bake_clean_refuses_a_missing_or_strange_login_key_and_cleans_nothing(tmp_path, key):
    node = baked_node(tmp_path, "debian")
    if key is None:
        (node.root / "opt/dslab/login.pub").unlink()
    else:
        node.write("opt/dslab/login.pub", key)
    result = node.run("bake-clean.sh", check=False)
    assert result.returncode != 0 and "login.pub" in result.stderr
    assert (node.root / "home/vagrant/.ssh/authorized_keys").read_text() == LAB_KEY
    assert (node.root / "opt/dslab/node.env").exists()  # the lab's files are still there: nothing half-made


def test_package_bases_agree_with_the_script():
    text = (PROVISION / "cache-packages.sh").read_text()
    for family, base in cache_sync.PACKAGE_BASES.items():
        assert f"{family}) printf '{base}\\n'" in text
    assert os.path.basename(cache_sync.REMOTE_PACKAGES) == "packages"


class ScriptRunner:
    """Runs the node script a command names on a fake :class:`Node` (the host side's runner)."""

    def __init__(self, node: Node):
        self.node = node

    def run(self, name, command, *, input=None, timeout=None, check=True, secret=False):
        from lab.context import Result
        assert command[:1] == ["bash"] and command[2] == cache_sync.ENV_FILE, command
        proc = self.node.run(command[1].rsplit("/", 1)[1], *command[3:], check=check)
        return Result(proc.returncode, proc.stdout, proc.stderr)


def test_packages_collected_then_put_back_on_a_new_node(tmp_path):
    from lab.cache import Cache
    rel = "appstream-0123456789abcdef/packages/ipvsadm-1.31-6.el9.x86_64.rpm"
    source = Node(tmp_path / "a", "el9")
    source.write(f"var/cache/dnf/{rel}", "ipvsadm rpm")

    def transfer(node):
        return cache_sync.Transfer(lambda n, line: ["bash", "-c", line.replace("/var/cache/", f"{node.root}/var/cache/")])

    cache, lines = Cache(tmp_path / "cache"), []
    assert cache_sync.collect_packages(ScriptRunner(source), transfer(source), "a", cache, "current", lines.append) == 1
    assert cache.packages("current") == {"el9": [(rel, 11)]}
    target = Node(tmp_path / "b", "el9")
    assert cache_sync.restore_packages(ScriptRunner(target), transfer(target), "b", cache, "current", lines.append) == 1
    assert (target.root / "var/cache/dnf" / rel).read_text() == "ipvsadm rpm"
    assert lines[-1] == "b: 1 packages put back from the host's cache"
    # a node that keeps them already (a second run, a baked box) is sent none
    assert cache_sync.restore_packages(ScriptRunner(target), transfer(target), "b", cache, "current", lines.append) == 0
    other = Node(tmp_path / "c", "debian")  # another OS gets none of them
    assert cache_sync.restore_packages(ScriptRunner(other), transfer(other), "c", cache, "current", lines.append) == 0
