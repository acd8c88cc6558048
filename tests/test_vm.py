"""The VM rehearsal: the real `invoke lab.up` / `lab.verify` / `lab.destroy` on three VMs.

Everything runs inside the session's network namespace (libvirtd, its bridge and
dnsmasq, vagrant, the VMs), with the Debian 12 test box built by the harness and
QEMU's software emulation. Tests in this module run in order and share one lab.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parent.parent
LAB = "dslabvm"
BAKED_BOX = "dslab/current-docker"
UP_TIMEOUT_S = 1800
NOOP_UP_MAX_S = 60
MODULES = ("br_netfilter", "overlay", "ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "nf_conntrack")
SYSCTLS = {"net.bridge.bridge-nf-call-iptables": "1", "net.bridge.bridge-nf-call-ip6tables": "1",
           "net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"}


class Lab:
    """One lab in the namespace, driven through the project's own invoke tasks."""

    def __init__(self, vm_env, state_dir: Path):
        self.vm_env = vm_env
        self.state_dir = state_dir
        self.settings = {
            "INVOKE_LAB_NAME": LAB,
            "INVOKE_LAB_BOX": vm_env.box_name,
            "INVOKE_LAB_LIBVIRT_URI": vm_env.uri,
            "INVOKE_LAB_LIBVIRT_DRIVER": "qemu",
            "INVOKE_LAB_STORAGE_POOL": vm_env.pool,
            "INVOKE_LAB_MEMORY_MB": "1024",
            "INVOKE_LAB_CPUS": "1",
            "INVOKE_LAB_STATE_DIR": str(state_dir),
            "INVOKE_LAB_CACHE_DIR": str(state_dir.parent / "cache"),
        }
        self.reload()
        self.log = state_dir.parent / "invoke.log"

    def reload(self):
        """The configuration of ``settings`` (after a test changed one)."""
        from lab import config  # noqa: PLC0415

        self.cfg = config.load(self.plain_settings())

    def plain_settings(self):
        return {k[len("INVOKE_LAB_"):].lower(): v for k, v in self.settings.items()}

    def invoke(self, *args, check=True, timeout=UP_TIMEOUT_S):
        result = self.vm_env.run_in_ns([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=self.settings,
                                       check=False, timeout=timeout)
        with open(self.log, "a") as handle:
            handle.write(f"### invoke {' '.join(args)} -> {result.returncode}\n{result.stdout}\n{result.stderr}\n")
        if check:
            assert result.returncode == 0, f"invoke {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result

    def popen_invoke(self, *args):
        env = self.vm_env.with_env(**self.settings)
        return subprocess.Popen(self.vm_env.ns.wrap([sys.executable, "-m", "invoke", *args]), cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def ssh(self, node, command, check=True):
        cfg_file = self.state_dir / "ssh_config"
        result = self.vm_env.run_in_ns(["ssh", "-F", str(cfg_file), "-o", "BatchMode=yes", node, command],
                                       check=False, timeout=300)
        if check:
            assert result.returncode == 0, f"{node}: {command}: {result.stdout}{result.stderr}"
        return result.stdout

    def leftovers(self):
        from lab import destroy  # noqa: PLC0415
        from lab.network import connect  # noqa: PLC0415

        with connect(self.vm_env.uri) as conn:
            return destroy.libvirt_leftovers(self.cfg, conn)

    def box_volumes(self):
        from lab import destroy  # noqa: PLC0415

        result = self.vm_env.run_in_ns(["virsh", "-c", self.vm_env.uri, "vol-list", self.vm_env.pool, "--name"],
                                       check=False)
        return [v for v in result.stdout.split() if v.startswith(destroy.box_volume_prefix(self.cfg.box))]


PROBE_IMAGE = "dslab.test/probe:1"
PROBE_FILE = "probe.bin"
PROBE_DEST = f"/var/cache/dslab/{PROBE_FILE}"
HARNESS = ROOT / "tests" / "harness"


def newest_log(lab, kind):
    logs = sorted((lab.state_dir / "logs").glob(f"{kind}-*.log"), key=lambda p: p.stat().st_mtime)
    return logs[-1].read_text() if logs else ""


class HttpsFiles:
    """tests/harness/https_server.py in the namespace, on its loopback, serving one pinned file."""

    def __init__(self, vm_env, directory: Path):
        import hashlib  # noqa: PLC0415
        import os  # noqa: PLC0415

        self.vm_env, self.dir = vm_env, directory
        (directory / "files").mkdir(parents=True)
        data = os.urandom(1 << 20)
        (directory / "files" / PROBE_FILE).write_bytes(data)
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.proc = subprocess.Popen(vm_env.ns.wrap([sys.executable, str(HARNESS / "https_server.py"), str(directory)]),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 60
        while not (directory / "port").exists():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.proc.stderr.read()
            time.sleep(0.2)
        self.url = f"https://127.0.0.1:{(directory / 'port').read_text()}/{PROBE_FILE}"

    def counts(self):
        path = self.dir / "counts.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def push(self, lab):
        """The file on every node of ``lab`` as the steps put pinned files there; the run's log."""
        result = self.vm_env.run_in_ns([sys.executable, str(HARNESS / "push_file.py"), json.dumps(lab.plain_settings()),
                                        self.url, self.sha256, PROBE_DEST], cwd=ROOT, check=False, timeout=600,
                                       env={"SSL_CERT_FILE": str(self.dir / "cert.pem"), "PYTHONPATH": str(ROOT)})
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def close(self):
        import os  # noqa: PLC0415

        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def https_files(vm_env, tmp_path_factory):
    served = HttpsFiles(vm_env, tmp_path_factory.mktemp("https"))
    yield served
    served.close()


def assert_nothing_left(lab):
    assert lab.leftovers() == {"domains": [], "volumes": [], "networks": []}
    assert lab.box_volumes() == []
    assert not (lab.state_dir / "Vagrantfile").exists()
    assert not (lab.state_dir / ".vagrant").exists()


@pytest.fixture(scope="module")
def lab(vm_env, tmp_path_factory):
    lab = Lab(vm_env, tmp_path_factory.mktemp("vmlab") / "state")
    yield lab
    lab.invoke("lab.destroy", check=False)


def test_up_until_runtime_creates_three_machines(lab):
    started = time.monotonic()
    result = lab.invoke("lab.up", "--until", "runtime")
    lab.first_up_s = time.monotonic() - started
    for step in ("preflight", "network", "render", "machines", "prepare", "runtime", "cache"):
        assert f"✓ {step}" in result.stderr, result.stderr
    assert "kubernetes" not in result.stderr.replace("--until", "")
    assert sorted(lab.leftovers()["domains"]) == sorted(lab.cfg.domain_name(n) for n in lab.cfg.nodes)


def test_every_node_has_its_planned_addresses_on_one_nic(lab):
    for node in lab.cfg.nodes:
        addrs = lab.ssh(node.name, "ip -o addr show scope global")
        nic4 = [line.split()[1] for line in addrs.splitlines() if f" {node.ipv4}/24 " in line]
        nic6 = [line.split()[1] for line in addrs.splitlines() if f" {node.ipv6}/64 " in line]
        assert nic4 and nic6 and nic4 == nic6, addrs
        inet = [line for line in addrs.splitlines() if " inet " in line and "docker" not in line]
        assert len(inet) == 1, f"{node.name} has another IPv4 NIC that could be picked: {addrs}"


def test_every_node_resolves_and_reaches_every_other_in_both_families(lab):
    for node in lab.cfg.nodes:
        hosts = lab.ssh(node.name, "cat /etc/hosts")
        assert node.name not in hosts, f"{node.name} maps its own name in /etc/hosts:\n{hosts}"
        for other in lab.cfg.nodes:
            for name in (other.name, other.fqdn(lab.cfg.domain)):
                answer = lab.ssh(node.name, f"getent ahosts {name}").split()
                assert str(other.ipv4) in answer and str(other.ipv6) in answer, (node.name, name, answer)
                assert not any(a.startswith("127.") for a in answer), answer
            lab.ssh(node.name, f"ping -4 -c1 -W5 {other.name}")
            lab.ssh(node.name, f"ping -6 -c1 -W5 {other.name}")


def test_runtime_step_prepared_every_node(lab):
    fixed_cidr = str(lab.cfg.docker_ipv6_cidr)
    for node in lab.cfg.nodes:
        loaded = lab.ssh(node.name, "cut -d' ' -f1 /proc/modules").split()
        for module in MODULES:
            assert module in loaded or lab.ssh(node.name, f"test -d /sys/module/{module} && echo builtin",
                                                check=False).strip() == "builtin", (node.name, module)
        for key, value in SYSCTLS.items():
            assert lab.ssh(node.name, f"sudo sysctl -n {key}").strip() == value, (node.name, key)
        assert lab.ssh(node.name, "sudo swapon --show --noheadings").strip() == ""
        daemon = json.loads(lab.ssh(node.name, "sudo cat /etc/docker/daemon.json"))
        assert daemon["ipv6"] is True and daemon["fixed-cidr-v6"] == fixed_cidr
        assert daemon["exec-opts"] == ["native.cgroupdriver=systemd"]
        bridge = json.loads(lab.ssh(node.name, "sudo docker network inspect bridge"))[0]
        assert bridge["EnableIPv6"] is True
        assert fixed_cidr in [c.get("Subnet") for c in bridge["IPAM"]["Config"]]
        for tool in ("ipset", "ipvsadm"):
            lab.ssh(node.name, f"sudo sh -c 'command -v {tool}'")


def test_rerunning_the_scripts_changes_nothing(lab):
    probe = ("sudo stat -c '%n %Y' /etc/docker/daemon.json /etc/sysctl.d/*dslab* /etc/modules-load.d/*dslab* "
             "&& systemctl show -p MainPID --value docker")
    before = {n.name: lab.ssh(n.name, probe) for n in lab.cfg.nodes}
    for node in lab.cfg.nodes:
        for script in ("prepare.sh", "runtime.sh"):
            lab.ssh(node.name, f"sudo bash /opt/dslab/provision/{script} /opt/dslab/node.env")
    after = {n.name: lab.ssh(n.name, probe) for n in lab.cfg.nodes}
    assert before == after


def test_second_up_is_a_fast_noop(lab):
    domains_before = lab.vm_env.run_in_ns(["virsh", "-c", lab.vm_env.uri, "list", "--uuid"]).stdout
    started = time.monotonic()
    result = lab.invoke("lab.up", "--until", "runtime")
    elapsed = time.monotonic() - started
    assert elapsed < NOOP_UP_MAX_S, result.stderr
    assert "prepare: already done" in result.stderr and "runtime: already done" in result.stderr
    assert lab.vm_env.run_in_ns(["virsh", "-c", lab.vm_env.uri, "list", "--uuid"]).stdout == domains_before


def images_of(lab, node):
    return set(lab.ssh(node, "sudo docker image ls --format '{{.Repository}}:{{.Tag}}'").split())


def test_an_image_made_on_a_node_goes_into_the_host_cache(lab):
    worker = lab.cfg.workers[0].name
    lab.ssh(worker, "set -e; d=$(mktemp -d); echo probe > $d/probe; sudo tar -C $d -c . | "
                    f"sudo docker import - {PROBE_IMAGE} >/dev/null; rm -rf $d")
    assert PROBE_IMAGE in images_of(lab, worker)
    result = lab.invoke("lab.up", "--until", "runtime")
    assert "✓ cache" in result.stderr, result.stderr
    index = json.loads((lab.cfg.cache_dir / "images" / "index.json").read_text())
    refs = [entry["ref"] for entry in index["images"]]
    assert refs.count(PROBE_IMAGE) == 1, refs
    log = newest_log(lab, "up")
    assert f"cache: {worker}: {PROBE_IMAGE} exported to the host's cache" in log, log[-3000:]
    again = lab.invoke("lab.up", "--until", "runtime")  # kept once: nothing exported again
    assert "exported to the host's cache" not in newest_log(lab, "up"), again.stderr


def test_a_pinned_file_is_fetched_once_by_the_host(lab, https_files):
    log = https_files.push(lab)
    assert https_files.counts() == {f"/{PROBE_FILE}": 1}
    assert f"{PROBE_FILE}: fetched" in log and log.count("copied from the host's cache") == len(lab.cfg.nodes), log
    for node in lab.cfg.nodes:
        assert lab.ssh(node.name, f"sudo sha256sum {PROBE_DEST}").split()[0] == https_files.sha256


def test_verify_network_layer_passes(lab, tmp_path):
    report = tmp_path / "verify.json"
    result = lab.invoke("lab.verify", "--layer", "network", "--json", str(report), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 failed" in result.stdout
    data = json.loads(report.read_text())
    assert data["checks"] and all(c["status"] == "pass" for c in data["checks"])


def test_verify_network_layer_fails_without_a_node_ipv6(lab):
    node = lab.cfg.workers[-1]
    lab.ssh(node.name, f"sudo ip -6 addr del {node.ipv6}/64 dev $(ip -o -4 addr show | awk '/ {node.ipv4}\\//{{print $2}}')")
    try:
        result = lab.invoke("lab.verify", "--layer", "network", check=False)
        assert result.returncode != 0
        failed = [line for line in result.stdout.splitlines() if line.startswith("✗")]
        assert failed, result.stdout
        assert node.name in result.stdout and "IPv6" in result.stdout
    finally:
        lab.ssh(node.name, "sudo bash /opt/dslab/provision/network.sh /opt/dslab/node.env", check=False)


MARKER = "/var/tmp/dslab-changed-after-snapshot"
#: How far a node's clock may be from the host's after lab.restore (ssh round trips under emulation).
CLOCK_SLACK_S = 5
#: How long after the snapshot the restore runs: a clock left unset would be this far behind.
RESTORE_AFTER_S = 45


def record_time(lab, what, seconds):
    line = f"[time] {what}: {seconds:.1f} s"
    print(line)
    with open(lab.log, "a") as handle:
        handle.write(line + "\n")


def clock_offset(lab, node):
    before = time.time()
    seen = float(lab.ssh(node, "date -u +%s.%N"))
    return seen - (before + time.time()) / 2


def nic_of(node):
    return f"$(ip -o -4 addr show | awk '/ {node.ipv4}\\//{{print $2}}')"


def test_restore_undoes_a_change_on_every_node_and_sets_the_clocks(lab):
    started = time.monotonic()
    result = lab.invoke("lab.snapshot")
    taken = time.monotonic()
    record_time(lab, "lab.snapshot (3 nodes)", taken - started)
    assert "snapshot ready of 3 nodes taken" in result.stderr, result.stderr
    for node in lab.cfg.nodes:
        lab.ssh(node.name, f"echo changed | sudo tee {MARKER} >/dev/null && sync")
        lab.ssh(node.name, f"sudo ip -6 addr del {node.ipv6}/64 dev {nic_of(node)}")
        assert str(node.ipv6) not in lab.ssh(node.name, "ip -6 addr show")
    time.sleep(max(0.0, RESTORE_AFTER_S - (time.monotonic() - taken)))
    started = time.monotonic()
    result = lab.invoke("lab.restore")
    record_time(lab, "lab.restore (3 nodes, clocks set)", time.monotonic() - started)
    record_time(lab, "lab.up --until runtime from nothing (rebuild)", getattr(lab, "first_up_s", float("nan")))
    assert "restored to snapshot ready" in result.stderr, result.stderr
    for node in lab.cfg.nodes:
        assert lab.ssh(node.name, f"test -e {MARKER} && echo there || echo gone").strip() == "gone"
        assert f"{node.ipv6}/64" in lab.ssh(node.name, "ip -6 addr show")
        offset = clock_offset(lab, node.name)
        assert abs(offset) < CLOCK_SLACK_S, f"{node.name}: clock {offset:+.1f} s off the host's"
    verified = lab.invoke("lab.verify", "--layer", "network", check=False)
    assert verified.returncode == 0 and "0 failed" in verified.stdout, verified.stdout + verified.stderr
    again = lab.invoke("lab.up", "--until", "runtime")
    assert "prepare: already done" in again.stderr and "runtime: already done" in again.stderr, again.stderr


def test_a_reverted_node_resumes_with_its_old_time(lab):
    """What lab.restore's clock setting is for: libvirt's revert alone leaves a node behind the host."""
    import calendar  # noqa: PLC0415

    node = lab.cfg.workers[-1]
    lab_id = json.loads((lab.state_dir / "state.json").read_text())["lab_id"]
    meta = json.loads((lab.state_dir / "snapshots" / "ready" / "snapshot.json").read_text())
    taken = calendar.timegm(time.strptime(meta["taken"], "%Y-%m-%dT%H:%M:%SZ"))
    time.sleep(max(0.0, RESTORE_AFTER_S - (time.time() - taken)))
    lab.vm_env.run_in_ns(["virsh", "-c", lab.vm_env.uri, "snapshot-revert", lab.cfg.domain_name(node),
                          f"dslab-{lab_id}-ready", "--running"])
    behind = clock_offset(lab, node.name)
    assert behind < -CLOCK_SLACK_S, f"{node.name}: {behind:+.1f} s"
    result = lab.invoke("lab.restore")
    assert abs(clock_offset(lab, node.name)) < CLOCK_SLACK_S, result.stderr


def test_restore_refuses_bad_input_and_changes_nothing(lab):
    node = lab.cfg.workers[0]
    lab.ssh(node.name, f"echo kept | sudo tee {MARKER} >/dev/null")
    try:
        unknown = lab.invoke("lab.restore", "--name", "no-such", check=False)
        assert unknown.returncode == 2
        assert unknown.stderr.strip() == f"lab.restore --name: lab {LAB} has no snapshot 'no-such'; snapshots: ready"
        saved = dict(lab.settings)
        lab.settings["INVOKE_LAB_POD_SUBNETS"] = "10.245.0.0/16,fd00:2::/48"
        try:
            other = lab.invoke("lab.restore", check=False)
        finally:
            lab.settings.clear()
            lab.settings.update(saved)
        assert other.returncode == 2
        assert other.stderr.count("\n") == 1 and "lab.pod_subnets differ" in other.stderr, other.stderr
        assert lab.ssh(node.name, f"cat {MARKER}").strip() == "kept"
        assert sorted(lab.leftovers()["domains"]) == sorted(lab.cfg.domain_name(n) for n in lab.cfg.nodes)
    finally:
        lab.ssh(node.name, f"sudo rm -f {MARKER}", check=False)


def test_snapshots_lists_every_node_with_its_size(lab):
    result = lab.invoke("lab.snapshots")
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert [r[2] for r in rows] == [n.name for n in lab.cfg.nodes], result.stdout
    for row in rows:
        assert row[0] == "ready" and row[4] == "MiB" and int(row[3]) > 0, result.stdout


def test_ssh_runs_a_command_on_each_node_from_any_directory_and_returns_its_status(lab, tmp_path):
    def lab_ssh(*args):
        return lab.vm_env.run_in_ns([sys.executable, "-m", "invoke", "-r", str(ROOT), "lab.ssh", *args],
                                    cwd=tmp_path, env=lab.settings, check=False, timeout=300)

    for status, node in enumerate(lab.cfg.nodes, start=3):
        named = lab_ssh(node.name, "--", "hostname")
        assert named.returncode == 0 and named.stdout.strip() == node.name, named.stdout + named.stderr
        failed = lab_ssh(node.name, "--", f"echo on {node.name}; exit {status}")
        assert failed.returncode == status and failed.stdout.strip() == f"on {node.name}", failed.stderr
    unknown = lab_ssh("k8s-nope", "--", "true")
    assert unknown.returncode == 2 and "nodes: k8s-master01, k8s-worker01, k8s-worker02" in unknown.stderr


def test_collect_on_the_rehearsal_lab(lab, tmp_path):
    import tarfile  # noqa: PLC0415

    worker = lab.cfg.workers[0]
    planted = {"token": "p1a2n3.t4e5d6t7o8k9e0n1", "cert": "c0ffee" * 10 + "c0ff",
               "key": "MIIEpAIBAAKCAQEAplantedkeyplantedkey"}
    lab.ssh(worker.name, "sudo tee /opt/dslab/kubeadm-join.yaml >/dev/null <<'EOF'\n"
                         f"token: {planted['token']}\ncertificateKey: {planted['cert']}\n"
                         f"-----BEGIN RSA PRIVATE KEY-----\n{planted['key']}\n-----END RSA PRIVATE KEY-----\nEOF")
    out = tmp_path / "bundle.tar.gz"
    try:
        lab.invoke("lab.collect", "--out", str(out))
    finally:
        lab.ssh(worker.name, "sudo rm -f /opt/dslab/kubeadm-join.yaml", check=False)
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    with tarfile.open(out, "r:gz") as tar:
        members = {m.name.split("/", 1)[1]: tar.extractfile(m).read().decode() for m in tar.getmembers()}
    index = {p["path"]: p for p in json.loads(members["index.json"])["parts"]}
    for node in lab.cfg.nodes:
        base = f"nodes/{node.name}/"
        for name in ("ip-4-addr.txt", "ip-6-route.txt", "ipvsadm.txt", "sysctl.txt", "modules.txt", "daemon.json",
                     "journal-docker.log"):
            assert index[base + name]["gathered"], (base + name, index[base + name])
        assert f"{node.ipv6}/64" in members[base + "ip-6-addr.txt"]
        assert "net.ipv4.ip_forward = 1" in members[base + "sysctl.txt"]
        assert index[base + "journal-kubelet.log"]["reason"] == "no kubelet.service on this node"
    assert "fixed-cidr-v6" in members[f"nodes/{worker.name}/daemon.json"]
    cluster = [p for path, p in index.items() if path.startswith("cluster/")]
    assert cluster and all(not p["gathered"] and p["reason"].startswith(
        f"no cluster yet: {lab.cfg.control_plane.name} has no /etc/kubernetes/admin.conf") for p in cluster)
    assert index["lab/up.log"]["gathered"] and index["lab/state.json"]["gathered"]
    assert index["lab/rendered/kubeadm-config.yaml"]["gathered"] and index["lab/rendered/Vagrantfile"]["gathered"]
    text = "".join(members.values())
    state = json.loads((lab.state_dir / "state.json").read_text())
    secrets = [*planted.values(), state["bootstrap_token"]]
    identity_file = next(line.split(None, 1)[1].strip().strip('"') for line in
                         (lab.state_dir / "ssh_config").read_text().splitlines() if "IdentityFile" in line)
    secrets += [line for line in Path(identity_file).read_text().splitlines()[1:-1] if len(line) > 20][:3]
    for secret in secrets:
        assert secret not in text


def test_destroy_after_snapshots_leaves_no_domain_volume_or_snapshot(lab):
    for node in lab.cfg.nodes:
        listed = lab.vm_env.run_in_ns(["virsh", "-c", lab.vm_env.uri, "snapshot-list", lab.cfg.domain_name(node),
                                       "--name"]).stdout.split()
        assert any(name.endswith("-ready") for name in listed), listed
    lab.invoke("lab.destroy")
    assert_nothing_left(lab)
    assert not (lab.state_dir / "snapshots").exists()
    listed = lab.vm_env.run_in_ns(["virsh", "-c", lab.vm_env.uri, "list", "--all", "--name"]).stdout.split()
    assert not [name for name in listed if name.startswith(lab.cfg.domain_prefix)]
    for node in lab.cfg.nodes:
        kept = Path("/var/lib/libvirt/qemu/snapshot") / lab.cfg.domain_name(node)
        assert not kept.exists() or not any(kept.iterdir()), list(kept.iterdir())
    started = time.monotonic()
    lab.up_images = lab.invoke("lab.up", "--until", "images")  # the next lab, from an empty box again
    record_time(lab, "lab.up --until images, the second lab, from the test box", time.monotonic() - started)


def test_the_next_lab_has_the_cached_image_on_every_node_before_any_pull(lab):
    assert "✓ images" in lab.up_images.stderr, lab.up_images.stderr
    log = newest_log(lab, "up")
    for node in lab.cfg.nodes:
        assert PROBE_IMAGE in images_of(lab, node.name), node.name
        assert f"cache: {node.name}: {PROBE_IMAGE} loaded from the host's cache" in log, log[-3000:]
        events = lab.ssh(node.name, "sudo docker events --since 0 --until \"$(date +%s)\" --filter type=image "
                                    "--format '{{.Action}} {{.Actor.ID}}'")
        actions = [line.split()[0] for line in events.splitlines() if line.strip()]
        assert "load" in actions and "pull" not in actions, events
    loaded_at = log.index(f"{PROBE_IMAGE} loaded from the host's cache")
    assert "=== kubernetes ===" not in log[:loaded_at] and "=== images ===" in log[:loaded_at]


def test_the_next_lab_takes_the_pinned_file_from_the_host_cache(lab, https_files):
    log = https_files.push(lab)
    assert https_files.counts() == {f"/{PROBE_FILE}": 1}, "the second lab fetched the file again"
    assert f"{PROBE_FILE}: from the cache" in log and "fetched" not in log, log
    for node in lab.cfg.nodes:
        assert lab.ssh(node.name, f"sudo sha256sum {PROBE_DEST}").split()[0] == https_files.sha256


def test_bake_makes_a_box_of_a_rehearsal_node(lab):
    started = time.monotonic()
    result = lab.invoke("lab.bake", check=False)
    assert result.returncode == 0, result.stderr + newest_log(lab, "bake")[-6000:]
    record_time(lab, "lab.bake of k8s-master01", time.monotonic() - started)
    boxes = json.loads((lab.cfg.cache_dir / "boxes" / "index.json").read_text())["boxes"]
    assert [b["name"] for b in boxes] == [BAKED_BOX], result.stderr
    box = lab.cfg.cache_dir / "boxes" / boxes[0]["file"]
    assert box.stat().st_size == boxes[0]["size"] > 50 << 20
    assert "is in the host's cache" in result.stderr and "run `invoke lab.destroy`" in result.stderr
    state = lab.vm_env.run_in_ns(["virsh", "-c", lab.vm_env.uri, "domstate",
                                  lab.cfg.domain_name(lab.cfg.control_plane)]).stdout.strip()
    assert state == "shut off", state


def test_destroy_leaves_nothing(lab):
    lab.invoke("lab.destroy")
    assert_nothing_left(lab)
    lab.invoke("lab.destroy")  # twice is safe
    assert_nothing_left(lab)


def step_seconds(stderr):
    import re  # noqa: PLC0415

    return {m.group(1): int(m.group(2)) for m in re.finditer(r"✓ ([a-z-]+) \((\d+) s\)", stderr)}


def changing_calls(log, script):
    """The lines of ``script`` in a log that changed something (lib.sh's ``run`` and ``write_file``)."""
    return [line for line in log.splitlines()
            if f"dslab: {script}: + " in line or f"dslab: {script}: write " in line]


def test_a_lab_from_the_baked_box_finds_prepare_and_runtime_done(lab):
    lab.settings["INVOKE_LAB_BOX"] = BAKED_BOX
    lab.reload()
    started = time.monotonic()
    result = lab.invoke("lab.up", "--until", "runtime")
    record_time(lab, "lab.up --until runtime from the baked box", time.monotonic() - started)
    log = newest_log(lab, "up")
    for step, seconds in step_seconds(result.stderr).items():
        record_time(lab, f"step {step} from the baked box", seconds)
    assert "✓ prepare" in result.stderr and "✓ runtime" in result.stderr, result.stderr
    for script in ("prepare.sh", "runtime.sh"):
        assert "dslab: " + script in log, log[-3000:]
        assert changing_calls(log, script) == [], changing_calls(log, script)
    for node in lab.cfg.nodes:
        assert PROBE_IMAGE in images_of(lab, node.name)
        assert lab.ssh(node.name, "hostname").strip() == node.name
        assert lab.ssh(node.name, "cat /etc/machine-id").strip(), node.name
    ids = {lab.ssh(n.name, "cat /etc/machine-id").strip() for n in lab.cfg.nodes}
    keys = {lab.ssh(n.name, "sudo cat /etc/ssh/ssh_host_ed25519_key.pub").split()[1] for n in lab.cfg.nodes}
    assert len(ids) == len(keys) == len(lab.cfg.nodes), (ids, keys)


def test_destroy_after_dot_vagrant_was_deleted(lab):
    lab.invoke("lab.up", "--until", "machines")
    subprocess.run(["rm", "-rf", str(lab.state_dir / ".vagrant")], check=True)
    lab.invoke("lab.destroy")
    assert_nothing_left(lab)


def test_destroy_after_an_interrupted_up(lab):
    proc = lab.popen_invoke("lab.up", "--until", "machines")
    deadline = time.monotonic() + UP_TIMEOUT_S
    try:
        while time.monotonic() < deadline and not lab.leftovers()["domains"]:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(2)
        assert lab.leftovers()["domains"], "no domain appeared"
    finally:
        import os  # noqa: PLC0415

        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    lab.invoke("lab.destroy")
    assert_nothing_left(lab)
