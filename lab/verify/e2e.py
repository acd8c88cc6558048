"""The optional ``--e2e`` tier: the upstream dual-stack e2e tests, run by hydrophone.

The focus is the profile's (``e2e_focus``: the tag upstream gives the dual-stack tests
of that version). Ginkgo exits 0 when no spec matches its focus, so the result is read
from the report hydrophone fetches (``junit_01.xml``, else the ``Ran N of M Specs`` line
of ``e2e.log``): zero specs run is a failure, and every failed spec is named.
"""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from .. import statedir
from .model import CheckResult, Finding, note, result_from_findings, skipped
from .session import HostRun, host_run

E2E_NAME = "e2e-dual-stack"
E2E_DESCRIPTION = "upstream dual-stack e2e tests of the profile's version (hydrophone), SCTP skipped"
SKIP = "SCTP"
E2E_TIMEOUT_S = 3600
JUNIT = "junit_01.xml"
E2E_LOG = "e2e.log"
#: The upstream test asserting two InternalIPs per node (test/e2e/network/dual_stack.go). A
#: kubelet taking one --node-ip (the profile's ``kubelet_node_ip_dual`` false) fails it by design.
DUAL_NODE_IP_TEST = "should have ipv4 and ipv6 internal node ip"
#: Ginkgo's states of a spec that ran and did not pass (v1 reports them as <failure>).
FAILED_STATES = ("failed", "timedout", "panicked", "aborted", "interrupted")
NOT_RUN_STATES = ("skipped", "pending")
#: Suite-level nodes Ginkgo v2 reports as test cases ("[SynchronizedBeforeSuite]"), and
#: Ginkgo v1's names for a failed BeforeSuite/AfterSuite.
SUITE_NODES = re.compile(r"^(?:\[(?:Synchronized)?(?:Before|After)Suite\]|\[Report(?:Before|After)Suite\]|"
                         r"\[DeferCleanup \(Suite\)\]|BeforeSuite$|AfterSuite$)")
_RAN = re.compile(r"^Ran (\d+) of (\d+) Specs?", re.M)
#: A kubelet event of a failed pull, as the e2e framework logs the events of a spec's namespace.
_PULL_EVENT = re.compile(r"- event for \S+: \{kubelet (?P<node>[^}\s]+)\} (?:Failed: Failed to pull image "
                         r"\"(?P<image>[^\"]+)\": (?P<reason>[^\n]*)|BackOff: Back-off pulling image \"(?P<image2>[^\"]+)\")")


def hydrophone_command(binary: str, kubeconfig: Path, output_dir: Path, profile) -> List[str]:
    """hydrophone's flags (README / docs/flags-cli-ref.md): --focus (the profile's
    ``e2e_focus``), --skip, --kubeconfig, --output-dir, --conformance-image (pinned to the
    cluster's version)."""
    return [binary, "--focus", profile.e2e_focus, "--skip", SKIP, "--kubeconfig", str(kubeconfig),
            "--output-dir", str(output_dir),
            "--conformance-image", f"registry.k8s.io/conformance:v{profile.kubernetes_version}"]


@dataclass(frozen=True)
class Spec:
    """One test case of the JUnit report: its name (without Ginkgo v2's ``[It]``) and state."""

    name: str
    state: str
    message: str = ""
    suite_node: bool = False

    @property
    def ran(self) -> bool:
        """A spec that was run (not skipped by the focus, not pending)."""
        return not self.suite_node and self.state not in NOT_RUN_STATES

    @property
    def failed(self) -> bool:
        """Ran and did not pass (a suite node that failed counts too)."""
        return self.state in FAILED_STATES


def parse_junit(text: str) -> List[Spec]:
    """The test cases of a Ginkgo JUnit report: v1 (Kubernetes 1.17: ``<testsuite>``, state
    from the ``<failure>``/``<skipped>`` children) and v2 (``<testsuites>``, a ``status``
    attribute and ``[It] `` before the spec's text)."""
    specs = []
    for case in ET.fromstring(text).iter("testcase"):
        name = case.get("name") or ""
        trouble = case.find("failure") if case.find("failure") is not None else case.find("error")
        state = case.get("status") or ("failed" if trouble is not None else
                                       "skipped" if case.find("skipped") is not None else "passed")
        message = ""
        if trouble is not None:
            text_lines = [line.strip() for line in (trouble.get("message") or trouble.text or "").splitlines() if line.strip()]
            message = " | ".join(text_lines[:5])
        suite_node = bool(SUITE_NODES.match(name))
        specs.append(Spec(name[len("[It] "):] if name.startswith("[It] ") else name, state, message, suite_node))
    return specs


def ran_from_log(text: str) -> Optional[int]:
    """N of Ginkgo's ``Ran N of M Specs`` line (both versions print it), or None."""
    found = _RAN.findall(text or "")
    return int(found[-1][0]) if found else None


def image_pull_failures(log_text: str) -> List[Finding]:
    """A finding per image the e2e test pods could not pull, from the events the e2e framework
    logs for a failed spec (``At <time> - event for <pod>: {kubelet <node>} Failed: Failed to
    pull image "<image>": <reason>``; a ``BackOff`` event alone gives no reason)."""
    found: Dict[str, Tuple[str, str]] = {}
    for match in _PULL_EVENT.finditer(log_text or ""):
        image, node = match.group("image") or match.group("image2"), match.group("node")
        reason = (match.group("reason") or "").strip()
        if image not in found or (reason and not found[image][1]):
            found[image] = (node, reason)
    return [Finding(f"e2e test pods could not pull {image}", f"{image} pulled on the nodes",
                    reason or "Back-off pulling image", f"can {node} reach that registry? (`docker pull {image}` or "
                    f"`crictl pull {image}` on {node}); the events in {E2E_LOG}", node=node, error=reason)
            for image, (node, reason) in found.items()]


def _verdict(specs: Optional[List[Spec]], log_text: str, returncode: int, profile, output_dir: Path,
             tail: str, junit_error: str) -> Tuple[List[Finding], str]:
    """(findings, the message of a pass) of hydrophone's report."""
    focus = profile.e2e_focus
    look = f"{output_dir}/{E2E_LOG} and {output_dir}/{JUNIT}"
    if specs is None:
        ran = ran_from_log(log_text)
        if ran is None:
            return [Finding(f"hydrophone exited {returncode} and left no {'readable ' if junit_error else ''}{JUNIT} "
                            f"or {E2E_LOG}", "the e2e report in the output directory", tail or "no output",
                            "hydrophone's own output above; can the conformance pod start?", error=junit_error)], ""
        if ran == 0:
            return [Finding(f"0 upstream specs matched the focus {focus}", f"the dual-stack specs of {focus}",
                            "Ran 0 Specs (e2e.log)", look)], ""
        if returncode != 0:
            return [Finding(f"hydrophone exited {returncode} ({ran} specs ran; no {JUNIT} names the failures)",
                            "exit 0", tail or "no output", look)], ""
        return [], f"hydrophone: {ran} upstream dual-stack specs of {focus} passed (results in {output_dir})"
    ran = [s for s in specs if s.ran]
    if not ran:
        return [Finding(f"0 upstream specs matched the focus {focus}", f"the dual-stack specs of {focus}",
                        f"{len(specs)} test cases in {JUNIT}, none run", look)], ""
    findings = []
    for spec in [s for s in specs if s.failed]:
        if not profile.kubelet_node_ip_dual and DUAL_NODE_IP_TEST in spec.name:
            findings.append(note(f"upstream \"{spec.name}\" fails by design on Kubernetes {profile.kubernetes_minor}: "
                                 "the kubelet takes one --node-ip until 1.20 (see node-internal-ips)"))
            continue
        findings.append(Finding(f"e2e {spec.state}: {spec.name}", "passed", spec.message or spec.state, look))
    if returncode != 0 and not any(s.failed for s in specs):
        findings.append(Finding(f"hydrophone exited {returncode}", "exit 0", tail or "no output", look))
    passed = len([s for s in ran if not s.failed])
    known = len(ran) - passed
    return findings, (f"hydrophone: {passed} of {len(ran)} upstream dual-stack specs of {focus} passed"
                      + (f", {known} failed by design (see note)" if known else "") + f" (results in {output_dir})")


def evaluate_e2e(specs: Optional[List[Spec]], log_text: str, returncode: int, profile, output_dir: Path,
                 tail: str = "", junit_error: str = "") -> CheckResult:
    """The e2e tier's result from hydrophone's report (``specs`` None: no readable
    junit_01.xml, and ``junit_error`` says why when there was one). When something failed,
    every image the test pods could not pull comes first, with the registry's reason; after
    a pass such events are notes."""
    findings, message = _verdict(specs, log_text, returncode, profile, output_dir, tail, junit_error)
    pulls = image_pull_failures(log_text)
    if any(not f.note for f in findings):
        findings = pulls + findings
    else:
        findings += [replace(f, note=True) for f in pulls]
    if specs is None and junit_error and ran_from_log(log_text) is not None:
        findings.append(note(f"{junit_error}; the result is read from {E2E_LOG}"))
    return result_from_findings(findings, message)


def run_e2e(cfg, kubeconfig: Optional[Path], *, which: Callable[[str], Optional[str]] = shutil.which,
            run: HostRun = None) -> CheckResult:
    """Run the profile's dual-stack e2e focus with hydrophone if it is on PATH, else skip with the reason."""
    binary = which("hydrophone")
    if not binary:
        return skipped("hydrophone is not on PATH (go install sigs.k8s.io/hydrophone@latest)")
    if kubeconfig is None or not Path(kubeconfig).exists():
        return skipped(f"no kubeconfig on the host at {kubeconfig}; fetch it first")
    output_dir = Path(cfg.state_dir) / "e2e"
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in (JUNIT, E2E_LOG):  # a report of an earlier run must not stand for this one
        (output_dir / name).unlink(missing_ok=True)
    command = hydrophone_command(binary, Path(kubeconfig), output_dir, cfg.profile)
    runner = run or (lambda cmd: host_run(cmd, timeout=E2E_TIMEOUT_S))
    result = runner(command)
    statedir.record(cfg.state_dir, [p for p in output_dir.rglob("*") if p.is_file()])  # destroy removes them
    tail = " | ".join((result.stdout + result.stderr).strip().splitlines()[-3:])
    junit, log = output_dir / JUNIT, output_dir / E2E_LOG
    specs, junit_error = None, ""
    if junit.is_file():  # hydrophone creates it before it downloads the report: empty or cut short is absent
        text = junit.read_text(encoding="utf-8", errors="replace")
        try:
            specs = parse_junit(text) if text.strip() else None
            junit_error = "" if text.strip() else f"{junit} is empty"
        except ET.ParseError as exc:
            junit_error = f"{junit} cannot be parsed ({exc})"
    log_text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
    return evaluate_e2e(specs, log_text, result.returncode, cfg.profile, output_dir, tail, junit_error)
