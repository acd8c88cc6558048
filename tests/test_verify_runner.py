"""lab.verify end to end with a fake Context (a recording runner with canned outputs),
and the reports: lines, JSON and JUnit agree."""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lab import config
from lab.context import Context, Result
from lab.verify import CHECK_NAMES, UnknownCheckError, format_report, run_checks, write_json, write_junit
from lab.verify.model import CheckResult, Outcome, Report
from lab.verify.parse import BEGIN, END

FIX = Path(__file__).parent / "fixtures" / "verify"


def load(name):
    return (FIX / name).read_text()


class FakeState:
    def get(self, key, default=None):
        return default


class FakeRunner:
    """Records every command; answers kubectl from the 1.36 fixtures and node scripts by section key."""

    def __init__(self, cfg, broken_ping=None, interrupt_on=None):
        self.cfg = cfg
        self.calls = []
        self.broken_ping = broken_ping or set()
        self.interrupt_on = interrupt_on

    def run(self, node, command, *, input=None, timeout=None, check=True):
        self.calls.append((node, command, input))
        if isinstance(command, (list, tuple)):
            return self.kubectl(list(command[3:]), input)
        if self.interrupt_on and self.interrupt_on in command:
            raise KeyboardInterrupt
        if command == "ip -o addr show":
            n = self.cfg.node(node)
            return Result(0, load("ip-addr-worker01.txt").replace("192.168.200.21", str(n.ipv4)).replace("fd00:db1::21", str(n.ipv6)))
        return Result(0, self.sections(node, command))

    def sections(self, node, script):
        out = []
        for key in re.findall(re.escape(BEGIN) + r" (\S+?)'", script):
            rc, body = 0, ""
            names = {n.name: n for n in self.cfg.nodes}
            names.update({n.fqdn(self.cfg.domain): n for n in self.cfg.nodes})
            if key in names:
                body = f"{names[key].ipv4}  STREAM {key}\n{names[key].ipv6}  STREAM"
            elif re.match(r"k8s-\w+/[46]$", key):
                rc = 1 if (node, key) in self.broken_ping else 0
                body = "1 packets transmitted, %d received" % (0 if rc else 1)
            out += [f"{BEGIN} {key}", body, f"{END} {key} {rc}"]
        return "\n".join(out) + "\n"

    def kubectl(self, args, input):
        if args[:2] == ["get", "nodes"]:
            return Result(0, load("nodes-1.36.json"))
        if args[:4] == ["get", "pods", "-n", "default"]:
            return Result(0, load("pods-1.36.json"))
        if args[:1] == ["exec"]:
            script = args[-1]
            if self.interrupt_on and self.interrupt_on in " ".join(args):
                raise KeyboardInterrupt
            keys = re.findall(re.escape(BEGIN) + r" (\S+?)'", script)
            return Result(0, "".join(f"{BEGIN} {k}\n200\n{END} {k} 0\n" for k in keys))
        if args[:2] == ["get", "services"]:
            return Result(0, load("services-1.36.json"))
        if args[:1] in (["apply"], ["wait"], ["delete"]):
            return Result(0, "ok")
        return Result(1, "", f"error: the server doesn't have a resource type {args[1:2]}")


@pytest.fixture
def cfg():
    return config.load({"profile": "current", "state_dir": "/nonexistent-dslab"})


def make_ctx(cfg, **kw):
    runner = FakeRunner(cfg, **kw)
    return Context(cfg=cfg, state=FakeState(), runner=runner), runner


def host_ok(command):
    return Result(0, "200")


def test_network_layer_end_to_end_pass(cfg):
    ctx, runner = make_ctx(cfg)
    out = io.StringIO()
    report = run_checks(ctx, layer="network", out=out, host=host_ok)
    assert [o.name for o in report.outcomes] == ["node-addresses", "node-dns", "node-reach"]
    assert report.ok and report.exit_code == 0
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("✓ node-addresses — all 3 nodes")
    assert lines[-1] == "3 passed, 0 failed, 0 skipped"
    assert sum(1 for c in runner.calls if c[1] == "ip -o addr show") == 3


def test_network_layer_end_to_end_failure_lines(cfg):
    ctx, _ = make_ctx(cfg, broken_ping={("k8s-worker02", "k8s-master01/6")})
    out = io.StringIO()
    report = run_checks(ctx, only=["node-reach"], out=out, host=host_ok)
    assert report.exit_code == 1
    assert out.getvalue().splitlines() == [
        "✗ node-reach — k8s-worker02 cannot ping k8s-master01 over IPv6 (fd00:db1::11)",
        "    expected: a reply from fd00:db1::11",
        "    seen: k8s-worker02: 1 packets transmitted, 0 received",
        "    look at: the lab network (libvirt network XML, firewalld on the nodes, `ip -6 route` on both ends)",
        "0 passed, 1 failed, 0 skipped",
    ]


def test_cluster_checks_with_clients_and_cleanup(cfg):
    ctx, runner = make_ctx(cfg)
    report = run_checks(ctx, only="pod-to-pod,pod-ips,node-internal-ips,metallb-ingress", host=host_ok)
    assert [(o.name, o.status) for o in report.outcomes] == [
        ("node-internal-ips", "pass"), ("pod-ips", "pass"), ("pod-to-pod", "pass"), ("metallb-ingress", "pass")]
    kubectl = [c[1][3:] for c in runner.calls if isinstance(c[1], list)]
    applied = [c for c in runner.calls if isinstance(c[1], list) and c[1][3] == "apply"][0]
    manifest = json.loads(applied[2])
    assert [p["spec"]["nodeName"] for p in manifest["items"]] == ["k8s-master01", "k8s-worker01", "k8s-worker02"]
    assert manifest["items"][0]["spec"]["containers"][0]["image"] == "registry.k8s.io/e2e-test-images/agnhost:2.53"
    assert kubectl[-1][:2] == ["delete", "pods,services"] and "app.kubernetes.io/managed-by=dslab-verify" in kubectl[-1]
    assert sum(1 for a in kubectl if a[:2] == ["get", "nodes"]) == 1  # cached for the run


def test_clients_removed_on_ctrl_c(cfg):
    ctx, runner = make_ctx(cfg, interrupt_on="dslab-verify-client-k8s-worker01")
    with pytest.raises(KeyboardInterrupt):
        run_checks(ctx, only=["pod-to-pod", "pod-to-service"], host=host_ok)
    last = runner.calls[-1][1]
    assert last[3:5] == ["delete", "pods,services"]


def test_no_clients_no_cleanup(cfg):
    ctx, runner = make_ctx(cfg)
    run_checks(ctx, only=["pod-ips"], host=host_ok)
    assert not any(isinstance(c[1], list) and c[1][3] == "delete" for c in runner.calls)


def test_gather_failure_is_a_failed_check_not_a_crash(cfg):
    ctx, _ = make_ctx(cfg)
    report = run_checks(ctx, only=["calico-pools"], host=host_ok)  # ippools not served by the fake
    outcome = report.outcomes[0]
    assert outcome.status == "fail" and "IPPools" in outcome.result.problems[0].problem


def test_unknown_only_lists_valid_names(cfg):
    ctx, _ = make_ctx(cfg)
    with pytest.raises(UnknownCheckError) as err:
        run_checks(ctx, only=["pod-ip"])
    text = str(err.value)
    assert "\n" not in text and text.startswith("unknown check pod-ip; valid checks: node-addresses, node-dns")
    assert all(name in text for name in CHECK_NAMES)
    with pytest.raises(UnknownCheckError, match="valid layers: network, cluster"):
        run_checks(ctx, layer="e2e")


def test_e2e_skipped_without_hydrophone(cfg, monkeypatch):
    monkeypatch.setattr("lab.verify.e2e.shutil.which", lambda name: None)
    ctx, _ = make_ctx(cfg)
    report = run_checks(ctx, only=["node-addresses"], e2e=True, host=host_ok)
    assert report.outcomes[-1].name == "e2e-dual-stack" and report.outcomes[-1].status == "skip"
    assert "hydrophone is not on PATH" in report.outcomes[-1].result.message


@pytest.mark.parametrize("profile, focus, image", [
    ("current", r"\[Feature:IPv6DualStack\]", "registry.k8s.io/conformance:v1.36.0"),
    # 1.16-1.18 tag the dual-stack tests [Feature:IPv6DualStackAlphaFeature], which the current focus does not match
    ("seed-2020", r"\[Feature:IPv6DualStackAlphaFeature\]", "registry.k8s.io/conformance:v1.17.2"),
])
def test_hydrophone_command_flags(profile, focus, image):
    from lab.profiles import PROFILES
    from lab.verify.e2e import hydrophone_command
    cmd = hydrophone_command("/usr/local/bin/hydrophone", Path("/k"), Path("/o"), PROFILES[profile])
    assert cmd[cmd.index("--focus") + 1] == focus
    assert cmd[cmd.index("--skip") + 1] == "SCTP" and cmd[cmd.index("--kubeconfig") + 1] == "/k"
    assert cmd[-1] == image


# ------------------------------------------------------------------ reports


def sample_report():
    return Report([
        Outcome("node-addresses", "network", "d1", CheckResult("pass", "all good"), 0.5),
        Outcome("node-internal-ips", "cluster", "d2", CheckResult("pass", "IPv4 ok", notes=["no IPv6 InternalIP: expected on 1.17"]), 0.1),
        Outcome("pod-ips", "cluster", "d3", CheckResult("fail", "pod x has one podIP", "two podIPs", "10.244.0.5", "cri-dockerd"), 0.2),
        Outcome("metallb-ingress", "cluster", "d4", CheckResult("skip", "no Service of type LoadBalancer"), 0.0),
    ])


def test_lines_format():
    assert format_report(sample_report()).splitlines() == [
        "✓ node-addresses — all good",
        "✓ node-internal-ips — IPv4 ok",
        "    note: no IPv6 InternalIP: expected on 1.17",
        "✗ pod-ips — pod x has one podIP",
        "    expected: two podIPs",
        "    seen: 10.244.0.5",
        "    look at: cri-dockerd",
        "- metallb-ingress skipped: no Service of type LoadBalancer",
        "2 passed, 1 failed, 1 skipped",
    ]


def _line_statuses(text):
    marks = {"✓": "pass", "✗": "fail", "-": "skip"}
    found = {}
    for line in text.splitlines():
        m = re.match(r"^([✓✗]) (\S+) — |^(-) (\S+) skipped: ", line)
        if m:
            found[m.group(2) or m.group(4)] = marks[m.group(1) or m.group(3)]
    return found


def test_json_agrees_with_lines(tmp_path):
    report = sample_report()
    data = json.loads(write_json(report, tmp_path / "r.json").read_text())
    assert data["summary"] == {"passed": 2, "failed": 1, "skipped": 1, "interrupted": False, "ok": False}
    assert {c["name"]: c["status"] for c in data["checks"]} == _line_statuses(format_report(report))
    assert data["checks"][2]["look_at"] == "cri-dockerd" and data["checks"][1]["notes"]


def test_junit_parses_and_agrees_with_lines(tmp_path):
    report = sample_report()
    path = write_junit(report, tmp_path / "r.xml")
    root = ET.parse(path).getroot()
    suite = root.find("testsuite")
    assert suite.get("tests") == "4" and suite.get("failures") == "1" and suite.get("skipped") == "1"
    statuses = {}
    for case in suite.findall("testcase"):
        statuses[case.get("name")] = "fail" if case.find("failure") is not None else "skip" if case.find("skipped") is not None else "pass"
    assert statuses == _line_statuses(format_report(report))
    failure = suite.find("testcase[@name='pod-ips']/failure")
    assert failure.get("message") == "pod x has one podIP" and "look at: cri-dockerd" in failure.text


def test_junit_with_junitparser(tmp_path):
    junitparser = pytest.importorskip("junitparser")
    path = write_junit(sample_report(), tmp_path / "r.xml")
    xml = junitparser.JUnitXml.fromfile(str(path))
    cases = [(case.name, [type(r).__name__ for r in case.result]) for suite in xml for case in suite]
    assert cases == [("node-addresses", []), ("node-internal-ips", []), ("pod-ips", ["Failure"]), ("metallb-ingress", ["Skipped"])]


def test_end_to_end_reports_agree(cfg, tmp_path):
    ctx, _ = make_ctx(cfg, broken_ping={("k8s-master01", "k8s-worker01/4")})
    out = io.StringIO()
    report = run_checks(ctx, layer="network", out=out, host=host_ok)
    data = json.loads(write_json(report, tmp_path / "r.json").read_text())
    root = ET.parse(write_junit(report, tmp_path / "r.xml")).getroot()
    lines = _line_statuses(out.getvalue())
    assert {c["name"]: c["status"] for c in data["checks"]} == lines
    assert {c.get("name"): ("fail" if c.find("failure") is not None else "pass") for c in root.iter("testcase")} == lines
    assert out.getvalue().splitlines()[-1] == f"{data['summary']['passed']} passed, {data['summary']['failed']} failed, 0 skipped"


def test_an_interrupt_removes_every_verify_object_shielded_from_a_second_ctrl_c(cfg):
    import signal
    ctx, runner = make_ctx(cfg)
    answer, deletes = runner.kubectl, []

    def kubectl(args, input):
        if args[:1] == ["delete"]:
            deletes.append((args, signal.getsignal(signal.SIGINT)))
        if args[:1] == ["wait"] and any("dslab.verify/check=udp-service" in a for a in args):
            raise KeyboardInterrupt  # Ctrl-C while the check's own pods start
        return answer(args, input)
    runner.kubectl = kubectl
    with pytest.raises(KeyboardInterrupt):
        run_checks(ctx, only=["udp-service"], host=host_ok)
    final, handler = deletes[-1]
    assert final == ["delete", "pods,services", "-n", "default", "-l", "app.kubernetes.io/managed-by=dslab-verify",
                     "--ignore-not-found", "--wait=false"]
    assert handler is signal.SIG_IGN and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
    own = [h for args, h in deletes if "app.kubernetes.io/managed-by=dslab-verify,dslab.verify/check=udp-service" in args]
    assert own[0] is not signal.SIG_IGN and own[-1] is signal.SIG_IGN  # leftovers cleared, then its own removal shielded
