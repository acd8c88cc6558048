"""The --e2e tier: the profile's focus, hydrophone's report read back (Ginkgo v1 and v2 JUnit),
zero specs run is a failure, and 1.17's dual-InternalIP test is that version's known limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import config
from lab.context import Result
from lab.verify import e2e

FIX = Path(__file__).parent / "fixtures" / "verify" / "e2e"


def load(name):
    return (FIX / name).read_text()


@pytest.fixture(scope="module")
def cfg36():
    return config.load({"profile": "current"})


@pytest.fixture(scope="module")
def cfg17():
    return config.load({"profile": "seed-2020"})


def test_parse_junit_ginkgo_v1_of_117():
    specs = e2e.parse_junit(load("junit-1.17-dual-stack.xml"))
    ran = [s for s in specs if s.ran]
    assert len(specs) == 9 and len(ran) == 7
    failed = [s for s in ran if s.failed]
    assert [s.name for s in failed] == ["[sig-network] [Feature:IPv6DualStackAlphaFeature] [LinuxOnly] "
                                        "should have ipv4 and ipv6 internal node ip"]
    assert failed[0].message.endswith("Expected | <int>: 1 | to equal | <int>: 2")


def test_parse_junit_ginkgo_v2_of_136():
    specs = e2e.parse_junit(load("junit-1.36-dual-stack.xml"))
    suite = [s.name for s in specs if s.suite_node]
    assert suite == ["[SynchronizedBeforeSuite]", "[SynchronizedAfterSuite]"]  # not specs: never counted as run
    ran = [s for s in specs if s.ran]
    assert len(ran) == 11 and all(s.name.startswith("[sig-network] [Feature:IPv6DualStack] ") for s in ran)
    assert not any(s.failed for s in specs)


@pytest.mark.parametrize("version, junit", [("1.17", "junit-1.17-no-match.xml"), ("1.36", "junit-1.36-no-match.xml")])
def test_zero_specs_run_fails_though_ginkgo_exits_0(cfg36, cfg17, version, junit, tmp_path):
    cfg = cfg17 if version == "1.17" else cfg36
    result = e2e.evaluate_e2e(e2e.parse_junit(load(junit)), "", 0, cfg.profile, tmp_path)
    assert result.status == "fail"
    assert result.message == f"0 upstream specs matched the focus {cfg.profile.e2e_focus}"


def test_117_dual_internal_ip_failure_is_the_known_limit(cfg17, tmp_path):
    result = e2e.evaluate_e2e(e2e.parse_junit(load("junit-1.17-dual-stack.xml")), "", 1, cfg17.profile, tmp_path)
    assert result.status == "pass", result.message
    assert result.message.startswith("hydrophone: 6 of 7 upstream dual-stack specs of "
                                     r"\[Feature:IPv6DualStackAlphaFeature\] passed, 1 failed by design")
    assert result.notes == ['upstream "[sig-network] [Feature:IPv6DualStackAlphaFeature] [LinuxOnly] should have ipv4 and '
                            'ipv6 internal node ip" fails by design on Kubernetes 1.17: the kubelet takes one --node-ip '
                            'until 1.20 (see node-internal-ips)']


def test_only_that_test_is_the_known_limit(cfg17, cfg36, tmp_path):
    text = load("junit-1.17-dual-stack.xml").replace(
        'should have ipv4 and ipv6 node podCIDRs" classname="Kubernetes e2e suite" time="0.118"></testcase>',
        'should have ipv4 and ipv6 node podCIDRs" classname="Kubernetes e2e suite" time="0.118">'
        '<failure type="Failure">podCIDRs has 1 entry</failure></testcase>')
    result = e2e.evaluate_e2e(e2e.parse_junit(text), "", 1, cfg17.profile, tmp_path)
    assert result.status == "fail"
    assert [f.problem for f in result.problems] == [
        "e2e failed: [sig-network] [Feature:IPv6DualStackAlphaFeature] [LinuxOnly] should have ipv4 and ipv6 node podCIDRs"]
    # on a version whose kubelet takes both node IPs the same test failing is a failure
    v2 = e2e.parse_junit(load("junit-1.36-dual-stack.xml"))
    v2 = [e2e.Spec(s.name, "failed", "2 InternalIPs expected") if "internal node ip" in s.name else s for s in v2]
    assert e2e.evaluate_e2e(v2, "", 1, cfg36.profile, tmp_path).status == "fail"


def test_136_failure_is_named(cfg36, tmp_path):
    result = e2e.evaluate_e2e(e2e.parse_junit(load("junit-1.36-one-failure.xml")), "", 1, cfg36.profile, tmp_path)
    assert result.status == "fail"
    assert result.message == "e2e failed: [sig-network] [Feature:IPv6DualStack] should create service with ipv6,v4 cluster ip"
    assert result.problems[0].seen.startswith("[FAILED] service ipv6ipv4clusterip: expected 2 clusterIPs, got 1")


def test_without_junit_the_log_decides(cfg36, cfg17, tmp_path):
    none = e2e.evaluate_e2e(None, load("e2e-1.36-no-match.log"), 0, cfg36.profile, tmp_path)
    assert none.status == "fail" and none.message.startswith("0 upstream specs matched")
    ran = e2e.evaluate_e2e(None, load("e2e-1.17-dual-stack.log"), 1, cfg17.profile, tmp_path)
    assert ran.status == "fail" and "7 specs ran" in ran.message
    nothing = e2e.evaluate_e2e(None, "", 1, cfg36.profile, tmp_path, tail="error: no kubeconfig")
    assert nothing.status == "fail" and nothing.seen == "error: no kubeconfig"


def test_run_e2e_reads_what_hydrophone_fetched_not_a_stale_report(tmp_path):
    cfg = config.load({"profile": "seed-2020", "state_dir": str(tmp_path / "lab")})
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\n")
    out = Path(cfg.state_dir) / "e2e"
    out.mkdir(parents=True)
    (out / "junit_01.xml").write_text(load("junit-1.36-dual-stack.xml"))  # an earlier run's report
    commands = []

    def hydrophone(command):
        commands.append(command)
        (out / "junit_01.xml").write_text(load("junit-1.17-no-match.xml"))
        return Result(0, "Ran 0 of 4842 Specs\n")

    result = e2e.run_e2e(cfg, kubeconfig, which=lambda name: "/usr/bin/hydrophone", run=hydrophone)
    assert commands[0][commands[0].index("--focus") + 1] == r"\[Feature:IPv6DualStackAlphaFeature\]"
    assert result.status == "fail" and result.message.startswith("0 upstream specs matched")

    def silent(command):
        return Result(0, "")
    assert e2e.run_e2e(cfg, kubeconfig, which=lambda name: "/usr/bin/hydrophone", run=silent).status == "fail"


def _hydrophone_leaving(tmp_path, junit_text, log_text, rc):
    """run_e2e with a hydrophone that leaves ``junit_text`` (None: no file) and ``log_text``."""
    cfg = config.load({"profile": "seed-2020", "state_dir": str(tmp_path / "lab")})
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\n")
    out = Path(cfg.state_dir) / "e2e"

    def hydrophone(command):
        if junit_text is not None:
            (out / "junit_01.xml").write_text(junit_text)
        (out / "e2e.log").write_text(log_text)
        return Result(rc, "")
    return e2e.run_e2e(cfg, kubeconfig, which=lambda name: "/usr/bin/hydrophone", run=hydrophone)


PASSED_LOG = "Ran 7 of 4842 Specs in 598.102 seconds\nSUCCESS! -- 7 Passed | 0 Failed | 0 Pending | 4835 Skipped\nPASS\n"


def test_an_empty_junit_is_absent_and_the_log_decides(tmp_path):
    """hydrophone creates junit_01.xml before it downloads the report: empty means not fetched."""
    result = _hydrophone_leaving(tmp_path, "", PASSED_LOG, 0)
    assert result.status == "pass" and result.message.startswith("hydrophone: 7 upstream dual-stack specs")
    assert result.notes == [f"{tmp_path}/lab/e2e/junit_01.xml is empty; the result is read from e2e.log"]
    failed = _hydrophone_leaving(tmp_path, "", load("e2e-1.17-dual-stack.log"), 1)
    assert failed.status == "fail" and failed.message == "hydrophone exited 1 (7 specs ran; no junit_01.xml names the failures)"


def test_a_junit_cut_short_is_absent_and_its_parse_error_named(tmp_path):
    cut = load("junit-1.17-dual-stack.xml")[:300]
    result = _hydrophone_leaving(tmp_path, cut, PASSED_LOG, 0)
    assert result.status == "pass"
    (said,) = result.notes
    assert said.startswith(f"{tmp_path}/lab/e2e/junit_01.xml cannot be parsed (") and "line " in said
    assert said.endswith("; the result is read from e2e.log")
    nothing = _hydrophone_leaving(tmp_path, cut, "", 1)
    assert nothing.status == "fail" and nothing.message == "hydrophone exited 1 and left no readable junit_01.xml or e2e.log"
    assert "cannot be parsed" in nothing.problems[0].error


def _reach_pod_failed():
    name = "should be able to reach pod on ipv4 and ipv6 ip [Feature:IPv6DualStackAlphaFeature:Phase2]"
    return load("junit-1.17-dual-stack.xml").replace(
        f'{name}" classname="Kubernetes e2e suite" time="131.554"></testcase>',
        f'{name}" classname="Kubernetes e2e suite" time="300.402"><failure type="Failure">error waiting for deployment '
        '&#34;dualstack-server&#34; status to match expectation: timed out waiting for the condition</failure></testcase>')


def test_test_pods_that_could_not_pull_their_image_are_named_with_the_registrys_reason(cfg17, tmp_path):
    junit = _reach_pod_failed()
    assert 'time="300.402"><failure' in junit
    result = e2e.evaluate_e2e(e2e.parse_junit(junit), load("e2e-1.17-image-pull.log"), 1, cfg17.profile, tmp_path)
    assert result.status == "fail"
    pull, failure = result.problems
    assert pull.problem == "e2e test pods could not pull gcr.io/kubernetes-e2e-test-images/agnhost:2.8"
    assert pull.seen.startswith("rpc error: code = Unknown desc = Error response from daemon: Get https://gcr.io/v2/: ")
    assert pull.node == "k8s-worker01" and "docker pull gcr.io/kubernetes-e2e-test-images/agnhost:2.8" in pull.look_at
    assert failure.problem.startswith("e2e failed: [sig-network] [Feature:IPv6DualStackAlphaFeature] [LinuxOnly] should be "
                                      "able to reach pod")
    # the same events after a run that passed are notes, never a failure
    passed = e2e.evaluate_e2e(e2e.parse_junit(load("junit-1.17-dual-stack.xml")), load("e2e-1.17-image-pull.log"), 1,
                              cfg17.profile, tmp_path)
    assert passed.status == "pass" and any("could not pull" in n for n in passed.notes)


def test_the_log_without_pull_events_adds_nothing(cfg17, tmp_path):
    assert e2e.image_pull_failures(load("e2e-1.17-dual-stack.log")) == []
    backoff = ('Nov 26 10:26:46.131: INFO: At 2025-11-26 10:22:04 +0000 UTC - event for p: {kubelet k8s-worker02} BackOff: '
               'Back-off pulling image "docker.io/library/busybox:1.29"\n')
    (only,) = e2e.image_pull_failures(backoff)
    assert (only.problem, only.seen, only.node) == ("e2e test pods could not pull docker.io/library/busybox:1.29",
                                                    "Back-off pulling image", "k8s-worker02")
