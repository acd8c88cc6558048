"""The objects ``lab.verify`` creates for its dual-stack checks, and the probes through them.

Every object carries the client pods' label (``app.kubernetes.io/managed-by=dslab-verify``)
and ``dslab.verify/check=<check>``. A check first removes what an interrupted run may have
left with its label (a leftover is replaced, never an error), creates its objects, and
removes them in a ``finally`` whatever the outcome, shielded from a second Ctrl-C. A check
with pods first has the client pods made (once a run, :meth:`VerifyContext.client_image_findings`):
they pull the same image, so when they are not Ready the check says so at once and creates
nothing, instead of waiting for the image again. Pods are pinned to every node (the
control plane included) and run the e2e image agnhost, the client pods' image: ``pause``, or
``netexec`` (HTTP on 8080, UDP on 8081, ``/hostname``, ``/echo?msg=``, and ``/dial``, which
makes a request of its own, over HTTP or UDP, and answers JSON ``{"responses": [...],
"errors": [...]}``).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlencode

import yaml

from .kube import items, pod_ips, pod_ready, service_cluster_ips
from .model import CheckResult, Finding, family, family_name, result_from_findings
from .parse import parse_sections, sectioned_script
from .session import (
    CLIENT_LABEL_KEY, CLIENT_LABEL_VALUE, CLIENT_READY_TIMEOUT_S, DELETE_TIMEOUT_S, UNSET_PROXY, WORKLOAD_NAMESPACE,
    runner_timeout, shielded,
)

CHECK_LABEL = "dslab.verify/check"
POD_LABEL = "dslab.verify/pod"
NAME_PREFIX = "dslab-verify-"
NETEXEC_HTTP_PORT = 8080
NETEXEC_UDP_PORT = 8081
SERVICE_HTTP_PORT = 80
SERVICE_UDP_PORT = 81
#: ``kubectl wait --timeout``: the client pods' budget (the client pods, Ready first, already
#: pulled the image). The command around it gets more (``runner_timeout``), so a slow pod reads
#: as a pod that is not Ready, never as a command that timed out.
READY_TIMEOUT_S = CLIENT_READY_TIMEOUT_S
DIAL_TIMEOUT_S = 15  # netexec's own dial gives up after 5 s
RETRY_PAUSE_S = 3.0
NOT_RUN = -1  # the exit status recorded for a probe whose script gave no section at all
NS = WORKLOAD_NAMESPACE
LOOK_OBJECTS = (f"`kubectl get pods,services -n {NS} -l {CLIENT_LABEL_KEY}={CLIENT_LABEL_VALUE} -o wide` "
                "while the check runs; `kubectl describe pod` of the pod named")


# =========================================================================== manifests


def selector(check: str) -> str:
    """The label selector of everything ``check`` creates."""
    return f"{CLIENT_LABEL_KEY}={CLIENT_LABEL_VALUE},{CHECK_LABEL}={check}"


def object_labels(check: str, pod: Optional[str] = None) -> Dict[str, str]:
    """The labels of an object of ``check`` (a pod also carries its own name)."""
    labels = {CLIENT_LABEL_KEY: CLIENT_LABEL_VALUE, CHECK_LABEL: check}
    if pod:
        labels[POD_LABEL] = pod
    return labels


def pod_name(check: str, index: int) -> str:
    """``dslab-verify-<check>-<n>``: short enough to be the pod's hostname as it is."""
    return f"{NAME_PREFIX}{check}-{index}"


def placements(cfg, check: str, nodes=None) -> Dict[str, str]:
    """Pod name -> node name: one pod of ``check`` on each of ``nodes`` (default: every node)."""
    chosen = list(nodes if nodes is not None else cfg.nodes)
    return {pod_name(check, cfg.nodes.index(node) + 1): node.name for node in chosen}


def pod_manifest(cfg, check: str, name: str, node: str, *, netexec: bool = False,
                 env: Sequence[Tuple[str, str]] = ()) -> dict:
    """A pod of ``check`` pinned to ``node``, tolerating every taint, running agnhost.

    ``netexec`` serves HTTP and UDP (ready once both listen); otherwise it only pauses.
    ``env`` is (variable, Downward API fieldPath) pairs.
    """
    container: dict = {"name": "agnhost", "image": cfg.profile.client_image}
    if netexec:
        container["args"] = ["netexec", f"--http-port={NETEXEC_HTTP_PORT}", f"--udp-port={NETEXEC_UDP_PORT}"]
        container["ports"] = [{"name": "http", "containerPort": NETEXEC_HTTP_PORT, "protocol": "TCP"},
                              {"name": "udp", "containerPort": NETEXEC_UDP_PORT, "protocol": "UDP"}]
        # /healthz answers 200 only once the UDP server listens too
        container["readinessProbe"] = {"httpGet": {"path": "/healthz", "port": NETEXEC_HTTP_PORT},
                                       "periodSeconds": 2}
    else:
        container["args"] = ["pause"]
    if env:
        container["env"] = [{"name": var, "valueFrom": {"fieldRef": {"fieldPath": path}}} for var, path in env]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": object_labels(check, name)},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "enableServiceLinks": False,
            "tolerations": [{"operator": "Exists"}],
            "containers": [container],
        },
    }


def family_spec(cfg, families: Sequence[int], policy: Optional[str] = None) -> dict:
    """The Service fields choosing ``families`` in the API of the profile's Kubernetes.

    1.20+: ``ipFamilyPolicy`` (``policy``, else SingleStack/RequireDualStack by count) and
    ``ipFamilies``; 1.17: the alpha ``ipFamily`` (one family only).
    """
    if not cfg.profile.dual_stack_services:
        if len(families) != 1:
            raise ValueError("Kubernetes without dual-stack Services takes one family per Service")
        return {"ipFamily": family_name(families[0])}
    spec = {"ipFamilyPolicy": policy or ("SingleStack" if len(families) == 1 else "RequireDualStack")}
    if families:
        spec["ipFamilies"] = [family_name(f) for f in families]
    return spec


def service_manifests(cfg, check: str, name: str, select: Mapping[str, str], *, node_port: bool = False,
                      udp: bool = True) -> List[dict]:
    """Services of both families selecting ``select``: one RequireDualStack Service, or (1.17)
    one Service per family named ``<name>-4`` and ``<name>-6``. Ports: 80/TCP to netexec's
    HTTP and 81/UDP to its UDP server; ``node_port`` makes them NodePorts of policy Cluster."""
    ports = [{"name": "http", "port": SERVICE_HTTP_PORT, "targetPort": NETEXEC_HTTP_PORT, "protocol": "TCP"}]
    if udp:
        ports.append({"name": "udp", "port": SERVICE_UDP_PORT, "targetPort": NETEXEC_UDP_PORT, "protocol": "UDP"})
    groups = [("", (4, 6))] if cfg.profile.dual_stack_services else [("-4", (4,)), ("-6", (6,))]
    docs = []
    for suffix, families in groups:
        spec = {"type": "NodePort" if node_port else "ClusterIP", **family_spec(cfg, families),
                "selector": dict(select), "ports": [dict(p) for p in ports]}
        if node_port:
            spec["externalTrafficPolicy"] = "Cluster"
        docs.append({"apiVersion": "v1", "kind": "Service",
                     "metadata": {"name": f"{NAME_PREFIX}{name}{suffix}", "namespace": NS, "labels": object_labels(check)},
                     "spec": spec})
    return docs


def dump(objects: Sequence[dict]) -> str:
    """The objects as one YAML stream, ready for ``kubectl apply -f -``."""
    return yaml.safe_dump_all(list(objects), sort_keys=False, default_flow_style=False)


# =========================================================================== lifecycle


@dataclass
class Live:
    """What a check's objects are once created: the API's view and what went wrong."""

    pods: List[dict] = field(default_factory=list)
    services: List[dict] = field(default_factory=list)
    findings: List[Finding] = field(default_factory=list)  # leftovers, readiness, reading back
    apply_error: str = ""  # what ``kubectl apply`` said when it refused an object

    @property
    def problems(self) -> List[Finding]:
        """Every finding, the refused apply included."""
        refused = [Finding("kubectl apply refused an object", "every object created", self.apply_error,
                           "the message names the object and the field")] if self.apply_error else []
        return refused + self.findings


def _text(result) -> str:
    return ((result.stderr or "") + "\n" + (result.stdout or "")).strip()


def _delete_args(check: str, wait: bool) -> List[str]:
    return ["delete", "pods,services", "-n", NS, "-l", selector(check), "--ignore-not-found",
            f"--wait={'true' if wait else 'false'}", f"--timeout={DELETE_TIMEOUT_S}s"]


def _get(vctx, kind: str, check: str) -> Tuple[List[dict], Optional[str]]:
    result = vctx.kubectl_run(["get", kind, "-n", NS, "-l", selector(check), "-o", "json"])
    if not result.ok:
        return [], _text(result)
    try:
        return items(json.loads(result.stdout or "{}")), None
    except ValueError as exc:
        return [], f"unreadable answer: {exc}"


def evaluate_ready(pods: Sequence[Mapping], expected: Mapping[str, str], wait_text: str = "") -> List[Finding]:
    """Every expected pod exists on its node and is Ready; a finding names each one that is not."""
    by_name = {(p.get("metadata") or {}).get("name"): p for p in pods}
    findings = []
    for name, node in expected.items():
        pod = by_name.get(name)
        if pod is None:
            findings.append(Finding(f"pod {name} on {node} was not created", f"pod {name} Ready on {node}",
                                    "absent", LOOK_OBJECTS, node=node, pod=name, error=wait_text))
            continue
        if pod_ready(pod):
            continue
        status = pod.get("status") or {}
        why = [status.get("phase") or "no phase"]
        for cs in status.get("containerStatuses") or []:
            for state in ("waiting", "terminated"):
                detail = (cs.get("state") or {}).get(state)
                if detail:
                    why.append(f"{state}: {detail.get('reason', '')} {detail.get('message', '')}".strip())
        findings.append(Finding(f"pod {name} on {node} not Ready within {READY_TIMEOUT_S} s",
                                f"pod {name} Ready on {node}", "; ".join(why),
                                f"`kubectl describe pod -n {NS} {name}` (image pull? CNI on {node}?)",
                                node=node, pod=name, error=wait_text))
    return findings


def bring_up(vctx, check: str, objects: Sequence[dict], expected: Mapping[str, str]) -> Live:
    """Replace whatever ``check`` left before, create ``objects``, wait for the ``expected``
    pods (name -> node) and read back the pods and Services as the API has them."""
    live = Live()
    vctx.objects_created = True
    cleared = vctx.kubectl_run(_delete_args(check, wait=True), timeout=runner_timeout(DELETE_TIMEOUT_S))
    if not cleared.ok:
        live.findings.append(Finding(f"could not remove what an earlier run of {check} left", "no leftovers",
                                     _text(cleared), f"`kubectl delete pods,services -n {NS} -l {selector(check)}`"))
    applied = vctx.kubectl_run(["apply", "-f", "-"], input=dump(objects))
    if not applied.ok:
        live.apply_error = _text(applied) or f"kubectl apply exited {applied.returncode}"
    wait_text = ""
    if expected:
        waited = vctx.kubectl_run(["wait", "-n", NS, "--for=condition=Ready", "pod", "-l", selector(check),
                                   f"--timeout={READY_TIMEOUT_S}s"], timeout=runner_timeout(READY_TIMEOUT_S))
        wait_text = "" if waited.ok else _text(waited)
    live.pods, error = _get(vctx, "pods", check)
    if error:
        live.findings.append(Finding(f"could not read the pods of {check}", "kubectl get pods", error, LOOK_OBJECTS))
    live.findings += evaluate_ready(live.pods, expected, wait_text)
    live.services, error = _get(vctx, "services", check)
    if error:
        live.findings.append(Finding(f"could not read the Services of {check}", "kubectl get services", error, LOOK_OBJECTS))
    return live


def tear_down(vctx, check: str) -> Optional[str]:
    """Delete everything of ``check`` and wait until it is gone; the error text, or None."""
    done = vctx.kubectl_run(_delete_args(check, wait=True), timeout=runner_timeout(DELETE_TIMEOUT_S))
    return None if done.ok else _text(done)


def with_objects(vctx, check: str, objects: Sequence[dict], expected: Mapping[str, str],
                 body: Callable[[Live], CheckResult]) -> CheckResult:
    """Run ``body`` on the live objects of ``check``; they are removed afterwards, also when
    ``body`` fails or raises (a second Ctrl-C cannot stop the removal). A failed removal is
    said as a note with the command to run. With pods ``expected``, the client pods' image
    must be ready first: if it is not, that is the result, at once, and nothing is created."""
    if expected:
        blocked = vctx.client_image_findings()
        if blocked:
            return result_from_findings(blocked, "")
    try:
        result = body(bring_up(vctx, check, objects, expected))
    finally:
        with shielded():
            error = tear_down(vctx, check)
    if error:
        result.notes.append(f"could not remove the objects of {check} ({error.splitlines()[0]}); run "
                            f"`kubectl delete pods,services -n {NS} -l {selector(check)}`")
    return result


# =========================================================================== reading live objects


def pods_by_name(pods: Sequence[Mapping]) -> Dict[str, dict]:
    """Pods by name."""
    return {(p.get("metadata") or {}).get("name"): p for p in pods}


def node_of(pod: Mapping) -> str:
    """The node a pod runs on."""
    return (pod.get("spec") or {}).get("nodeName") or "no node"


def addresses_by_family(addresses: Sequence[str]) -> Dict[int, str]:
    """{4: first IPv4, 6: first IPv6} of ``addresses``."""
    found: Dict[int, str] = {}
    for address in addresses:
        fam = family(address)
        if fam in (4, 6) and fam not in found:
            found[fam] = address
    return found


def pod_addresses(pod: Mapping) -> Dict[int, str]:
    """The pod's address of each family (from ``status.podIPs``)."""
    return addresses_by_family(pod_ips(pod))


def service_addresses(services: Sequence[Mapping], select: Optional[Mapping[str, str]] = None) -> List[Tuple[str, int, str]]:
    """(Service name, family, cluster IP) of the Services (those selecting ``select`` only)."""
    found = []
    for svc in services:
        spec = svc.get("spec") or {}
        if select is not None and dict(spec.get("selector") or {}) != dict(select):
            continue
        for address in service_cluster_ips(svc):
            found.append(((svc.get("metadata") or {}).get("name"), family(address), address))
    return found


def missing_families(have: Sequence[int], what: str, expected: str, look_at: str, **where: str) -> List[Finding]:
    """A finding per family (IPv4, IPv6) absent from ``have`` (``where``: node, pod)."""
    return [Finding(f"{what} has no {family_name(f)} address", expected, f"{family_name(f)}: none", look_at,
                    family=family_name(f), **where) for f in (4, 6) if f not in have]


# =========================================================================== netexec /dial


@dataclass(frozen=True)
class Dial:
    """One request a netexec pod makes itself (``/dial``) and what must come back."""

    key: str  # section key: no whitespace
    source: str  # the pod that dials
    node: str  # where that pod runs
    protocol: str  # http or udp
    host: str
    port: int
    request: str  # http: the path without its leading /; udp: the datagram
    expect: FrozenSet[str]  # any of these answers is right
    what: str  # the target as a person reads it
    look_at: str = ""

    @property
    def fam(self) -> str:
        """IPv4 or IPv6, of the target."""
        return family_name(family(self.host))


def dial_url(dial: Dial) -> str:
    """netexec's ``/dial`` URL on the source pod itself."""
    query = urlencode({"host": dial.host, "port": dial.port, "protocol": dial.protocol,
                       "request": dial.request, "tries": 1})
    return f"http://127.0.0.1:{NETEXEC_HTTP_PORT}/dial?{query}"


def dial_script(dials: Sequence[Dial]) -> str:
    """A sectioned shell script asking the local netexec to make each dial (its JSON answer per section)."""
    return UNSET_PROXY + "\n" + sectioned_script({
        d.key: " ".join(shlex.quote(a) for a in ["curl", "-sS", "--noproxy", "*", "--max-time", str(DIAL_TIMEOUT_S), dial_url(d)])
        for d in dials})


def parse_dial(text: str) -> Tuple[List[str], List[str]]:
    """(responses, errors) of a ``/dial`` answer; raises ValueError on anything else."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return [str(r) for r in data.get("responses") or []], [str(e) for e in data.get("errors") or []]


def _short(text: str, limit: int = 120) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def dial_finding(dial: Dial, answer: Optional[Tuple[int, str]]) -> Optional[Finding]:
    """None when ``answer`` (exit status, output of the section) is one the dial expects."""
    head = f"pod {dial.source} on {dial.node} -> {dial.what} {dial.fam} {dial.host} {dial.protocol.upper()}"
    only = sorted(dial.expect)[0] if len(dial.expect) == 1 else None
    want = (f"{dial.protocol.upper()} answer from one of {', '.join(sorted(dial.expect))}" if only is None else
            f"{dial.protocol.upper()} echo of the {len(only)} characters sent" if len(only) > 60 else
            f"{dial.protocol.upper()} answer {only}")
    where = {"node": dial.node, "pod": dial.source, "family": dial.fam, "address": dial.host}
    if answer is None or answer[0] == NOT_RUN:
        return Finding(f"{head}: the probe did not run", want, "no output from `kubectl exec`",
                       f"`kubectl exec -n {NS} {dial.source} -- true`; is the pod running?",
                       error=_short(answer[1], 400) if answer else "", **where)
    code, output = answer
    if code != 0:
        return Finding(f"{head}: netexec in the pod did not answer", want, f"curl exit {code}",
                       f"`kubectl logs -n {NS} {dial.source}`", error=_short(output, 400), **where)
    try:
        responses, errors = parse_dial(output)
    except ValueError:
        return Finding(f"{head}: unreadable answer", want, _short(output), f"`kubectl logs -n {NS} {dial.source}`",
                       **where)
    if any(r in dial.expect for r in responses):
        return None
    seen = (f"answer {_short(responses[0])}" if responses else
            "no answer; netexec reports an error" if errors else "no answer and no error")
    return Finding(f"{head}: {'no answer' if not responses else 'wrong answer'}", want, seen, dial.look_at,
                   error=_short(errors[0], 400) if errors else "", **where)


def evaluate_dials(answers: Mapping[str, Optional[Tuple[int, str]]], dials: Sequence[Dial]) -> List[Finding]:
    """A finding for every dial whose answer (by key) is missing or not what it expects."""
    return [f for f in (dial_finding(d, answers.get(d.key)) for d in dials) if f is not None]


def run_dials(vctx, dials: Sequence[Dial], *, rounds: int = 2) -> Dict[str, Optional[Tuple[int, str]]]:
    """Make every dial from its source pod (one ``kubectl exec`` per pod and round); dials
    that fail are tried again after a pause (kube-proxy may still be programming a new
    Service). Returns the last answer of each dial by key (None: the exec gave nothing)."""
    answers: Dict[str, Optional[Tuple[int, str]]] = {}
    pending = list(dials)
    for attempt in range(rounds):
        if attempt:
            vctx.sleep(RETRY_PAUSE_S)
        by_source: Dict[str, List[Dial]] = {}
        for dial in pending:
            by_source.setdefault(dial.source, []).append(dial)
        for source, group in by_source.items():
            # the script on stdin: a few dozen 2000-byte URLs stay off every command line
            result = vctx.kubectl_run(["exec", "-i", "-n", NS, source, "--", "sh"], input=dial_script(group),
                                      timeout=runner_timeout(len(group) * DIAL_TIMEOUT_S))
            sections = parse_sections(result.stdout or "")
            for dial in group:
                section = sections.get(dial.key)
                answers[dial.key] = ((section.returncode, section.output) if section is not None else
                                     (NOT_RUN, _text(result)))
        pending = [d for d in pending if dial_finding(d, answers.get(d.key)) is not None]
        if not pending:
            break
    return answers
