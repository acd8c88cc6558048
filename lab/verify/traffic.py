"""Cluster checks that send traffic through objects verify creates itself:
nodeport-cluster, hairpin, udp-service and large-requests.

Each builds its pods and Services as data (:mod:`.dualstack`), probes them, and removes
them. Every probe names its source (node or pod), its target's family and address, and
every check demands answers in both families.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .dualstack import (
    CHECK_LABEL, NETEXEC_HTTP_PORT, NETEXEC_UDP_PORT, POD_LABEL, RETRY_PAUSE_S, SERVICE_HTTP_PORT, SERVICE_UDP_PORT, Dial,
    Live, evaluate_dials, missing_families, node_of, placements, pod_addresses, pod_manifest, pods_by_name, run_dials,
    service_addresses, service_manifests, with_objects,
)
from .kube import service_families
from .local_routes import apply_route_limits, route_limits, route_script
from .model import CheckResult, Finding, family, family_name, result_from_findings, url_host
from .parse import parse_sections, sectioned_script
from .session import UNSET_PROXY, runner_timeout

NODEPORT = "nodeport-cluster"
HAIRPIN = "hairpin"
UDP = "udp-service"
LARGE = "large-requests"
HTTP_TIMEOUT_S = 5
#: The e2e tests' large requests (dual_stack.go, "should be able to handle large requests"):
#: 2000 bytes over HTTP, and a 2005-byte UDP datagram (more than one packet at MTU 1500).
HTTP_MESSAGE = "42" * 1000
UDP_MESSAGE = "n" + "o" * 1999
#: curl's write-out line after the body: the HTTP code on a line of its own (curl may print
#: its error message right after it, on the same line).
CODE_MARK = "@@dslab-http-code"
LOOK_PROXY = "kube-proxy on that node: `ipvsadm -Ln` lists the Service's virtual servers of each family with pod backends"


def _netexec_pods(cfg, check: str) -> Tuple[Dict[str, str], List[dict]]:
    expected = placements(cfg, check)
    return expected, [pod_manifest(cfg, check, name, node, netexec=True) for name, node in expected.items()]


def _families_of(addresses: Sequence[Tuple[str, int, str]]) -> List[int]:
    return sorted({fam for _, fam, _ in addresses})


# =========================================================================== nodeport-cluster


@dataclass(frozen=True)
class NodePortTarget:
    """The NodePort of a Service on one node address."""

    key: str
    service: str
    node: str
    address: str
    port: int

    @property
    def url(self) -> str:
        """``http://addr:port/hostname``."""
        return f"http://{url_host(self.address)}:{self.port}/hostname"

    @property
    def fam(self) -> str:
        """IPv4 or IPv6."""
        return family_name(family(self.address))


def nodeport_objects(cfg) -> Tuple[Dict[str, str], List[dict]]:
    """One netexec pod on the first worker, behind NodePort Service(s) of policy Cluster in
    both families: every other node, the control plane included, must forward to it."""
    backend = cfg.workers[0] if cfg.workers else cfg.nodes[0]
    expected = placements(cfg, NODEPORT, [backend])
    pods = [pod_manifest(cfg, NODEPORT, name, node, netexec=True) for name, node in expected.items()]
    return expected, pods + service_manifests(cfg, NODEPORT, NODEPORT, {CHECK_LABEL: NODEPORT}, node_port=True, udp=False)


def nodeport_targets(services: Sequence[Mapping], cfg) -> Tuple[List[Finding], List[NodePortTarget]]:
    """The NodePort of each Service on every node's address of each of its families; a
    finding for a Service that is not a Cluster-policy NodePort and for a family with none."""
    findings, targets = [], []
    for svc in services:
        name = (svc.get("metadata") or {}).get("name")
        spec = svc.get("spec") or {}
        if spec.get("type") != "NodePort" or spec.get("externalTrafficPolicy", "Cluster") != "Cluster":
            findings.append(Finding(f"Service {name} is {spec.get('type')} with externalTrafficPolicy "
                                    f"{spec.get('externalTrafficPolicy')}", "type NodePort, externalTrafficPolicy Cluster",
                                    f"type {spec.get('type')}", "the Service verify created (kube-apiserver defaulting)"))
        port = next((p.get("nodePort") for p in spec.get("ports") or [] if p.get("protocol", "TCP") == "TCP"), None)
        if not port:
            findings.append(Finding(f"Service {name} has no nodePort", "a nodePort from --service-node-port-range",
                                    "none", "kube-apiserver --service-node-port-range"))
            continue
        for fam in service_families(svc):
            for node in cfg.nodes:
                address = str(node.ipv4 if fam == 4 else node.ipv6)
                targets.append(NodePortTarget(f"{node.name}/{fam}/{port}", name, node.name, address, int(port)))
    have = sorted({family(t.address) for t in targets})
    findings += missing_families(have, f"the NodePort Service(s) {', '.join(sorted({t.service for t in targets})) or 'of verify'}",
                                 "a NodePort in IPv4 and in IPv6", "the Service's ipFamilies / ipFamily")
    return findings, targets


def nodeport_script(targets: Sequence[NodePortTarget]) -> str:
    """curl each target from a node: the body (the answering pod's name), then a line
    ``@@dslab-http-code NNN`` (000: no answer), then curl's error, if any; then the node's
    IPv6 local routes and kernel release (:mod:`.local_routes`)."""
    return UNSET_PROXY + "\n" + sectioned_script({
        t.key: " ".join(shlex.quote(a) for a in ["curl", "-g", "-sS", "--noproxy", "*", "--max-time", str(HTTP_TIMEOUT_S),
                                                 "-w", f"\n{CODE_MARK} %{{http_code}}\n", t.url]) for t in targets}
    ) + "\n" + route_script()


def nodeport_finding(source: str, target: NodePortTarget, text: Optional[str], backends: Sequence[str],
                     backend_node: str, run_error: str = "") -> Optional[Finding]:
    """None when ``source`` got HTTP 200 from a backend pod on ``target``."""
    head = f"{source} -> NodePort {target.port} on {target.node} {target.fam} {target.address}"
    want = f"HTTP 200 from {' or '.join(backends)} (on {backend_node})"
    look = (f"{LOOK_PROXY} ({target.node}: `ipvsadm -Ln -t {url_host(target.address)}:{target.port}`); "
            f"kube-proxy --nodeport-addresses; {target.node} must reach {backend_node}'s pods over {target.fam}")
    where = {"node": source, "family": target.fam, "address": target.address}
    if text is None:
        return Finding(f"{head}: the probe did not run", want, "no output from the node", f"ssh to {source}",
                       error=run_error[:400], **where)
    body, code, error = parse_curl(text)
    if code == "200" and body in backends:
        return None
    seen = f"HTTP {code}" + (f": {body[:120]}" if body else " (no answer)") + (f"; {error[:200]}" if error else "")
    return Finding(f"{head}: HTTP {code}" if code != "200" else f"{head}: answered by {body[:60]}", want, seen, look,
                   error=error[:400], **where)


def parse_curl(text: str) -> Tuple[str, str, str]:
    """(body, HTTP code, curl's error text) of one :func:`nodeport_script` section."""
    before, mark, after = (text or "").rpartition(CODE_MARK)
    if not mark:
        return "", "000", (text or "").strip()
    code, _, error = after.strip().partition("curl:")
    code = code.strip()[:3] if code.strip()[:3].isdigit() else "000"
    errors = [line for line in before.splitlines() if line.startswith("curl: (")] + ([f"curl:{error}".strip()] if error else [])
    body = "\n".join(line for line in before.splitlines() if not line.startswith("curl: (")).strip()
    return body, code, "; ".join(errors)


def evaluate_nodeport(outputs: Mapping[str, Optional[str]], targets: Sequence[NodePortTarget],
                      backends: Sequence[str], backend_node: str, run_errors: Optional[Mapping[str, str]] = None
                      ) -> List[Finding]:
    """Every source node reached every target (outputs: node -> the script's output or None;
    ``run_errors``: node -> the error text of a script that gave no output)."""
    findings = []
    for source, text in outputs.items():
        sections = parse_sections(text or "") if text is not None else {}
        for target in targets:
            section = sections.get(target.key)
            found = nodeport_finding(source, target, None if text is None else (section.output if section else ""),
                                     backends, backend_node, (run_errors or {}).get(source, ""))
            if found:
                findings.append(found)
    return findings


def check_nodeport_cluster(vctx) -> CheckResult:
    """Check ``nodeport-cluster``."""
    expected, objects = nodeport_objects(vctx.cfg)

    def body(live: Live) -> CheckResult:
        findings, targets = nodeport_targets(live.services, vctx.cfg)
        findings = live.problems + findings
        backends = [n for n in expected if n in pods_by_name(live.pods)]
        backend_node = next(iter(expected.values()))
        if targets and backends:
            outputs: Dict[str, Optional[str]] = {node.name: None for node in vctx.cfg.nodes}
            errors: Dict[str, str] = {}
            for attempt in range(2):  # a new Service: kube-proxy may not have programmed every node yet
                if attempt:
                    vctx.sleep(RETRY_PAUSE_S)
                for source in [s for s in outputs if attempt == 0 or
                               evaluate_nodeport({s: outputs[s]}, targets, backends, backend_node)]:
                    done = vctx.node_run(source, nodeport_script(targets), timeout=runner_timeout(len(targets) * HTTP_TIMEOUT_S))
                    outputs[source], errors[source] = done.stdout or None, (done.stderr or "").strip()
                if not evaluate_nodeport(outputs, targets, backends, backend_node):
                    break
            findings += apply_route_limits(evaluate_nodeport(outputs, targets, backends, backend_node, errors),
                                           route_limits(outputs, vctx.cfg), vctx.cfg, "IPv6 NodePort probe(s) unanswered",
                                           lambda f: f.seen.startswith("HTTP 000"))
        return result_from_findings(findings, f"every node ({len(vctx.cfg.nodes)}) reaches a Cluster-policy NodePort on "
                                              f"{len(targets)} node addresses of both families, the control plane's included")

    return with_objects(vctx, NODEPORT, objects, expected, body)


# =========================================================================== hairpin


def hairpin_objects(cfg) -> Tuple[Dict[str, str], List[dict]]:
    """A netexec pod on every node, each the only pod behind Service(s) of both families."""
    expected, pods = _netexec_pods(cfg, HAIRPIN)
    services = [svc for i, name in enumerate(expected, start=1)
                for svc in service_manifests(cfg, HAIRPIN, f"{HAIRPIN}-{i}", {POD_LABEL: name}, udp=False)]
    return expected, pods + services


def hairpin_dials(live: Live, expected: Mapping[str, str]) -> Tuple[List[Finding], List[Dial]]:
    """Each pod asks its own Service's cluster IP of each family for its hostname."""
    findings, dials = [], []
    pods = pods_by_name(live.pods)
    for name, node in expected.items():
        if name not in pods:
            continue
        own = service_addresses(live.services, {POD_LABEL: name})
        findings += missing_families(_families_of(own), f"the Service of pod {name} ({node})", "a cluster IP per family",
                                     "the Service's ipFamilies / ipFamily; kube-apiserver --service-cluster-ip-range",
                                     node=node, pod=name)
        for svc, fam, address in own:
            dials.append(Dial(f"{name}/{fam}", name, node, "http", address, SERVICE_HTTP_PORT, "hostname",
                              frozenset({name}), f"its own Service {svc}",
                              f"{LOOK_PROXY} ({node}); IPVS must masquerade a pod's traffic back to itself "
                              "(kube-proxy --masquerade-all / the hairpin sysctl of the pod's interface)"))
    return findings, dials


def _dial_check(vctx, check: str, objects, dials_of, passed) -> CheckResult:
    """A check that creates ``objects`` (``(expected pods, manifests)`` of the config), dials what
    ``dials_of(live, expected)`` returns from the pods, and passes with ``passed(expected, dials)``."""
    expected, manifests = objects(vctx.cfg)

    def body(live: Live) -> CheckResult:
        findings, dials = dials_of(live, expected)
        findings = live.problems + findings + (evaluate_dials(run_dials(vctx, dials), dials) if dials else [])
        return result_from_findings(findings, passed(expected, dials))

    return with_objects(vctx, check, manifests, expected, body)


def check_hairpin(vctx) -> CheckResult:
    """Check ``hairpin``."""
    return _dial_check(vctx, HAIRPIN, hairpin_objects, hairpin_dials,
                       lambda expected, _dials: f"a pod on each of {len(expected)} nodes reaches itself through its "
                                                "own Service over IPv4 and IPv6")


# =========================================================================== udp-service


def udp_objects(cfg) -> Tuple[Dict[str, str], List[dict]]:
    """A netexec pod on every node behind Service(s) with a UDP port, in both families."""
    expected, pods = _netexec_pods(cfg, UDP)
    return expected, pods + service_manifests(cfg, UDP, UDP, {CHECK_LABEL: UDP})


def udp_dials(live: Live, expected: Mapping[str, str]) -> Tuple[List[Finding], List[Dial]]:
    """Every pod sends ``hostname`` over UDP to each cluster IP; any backend may answer."""
    addresses = service_addresses(live.services, {CHECK_LABEL: UDP})
    findings = missing_families(_families_of(addresses), "the UDP Service", "a cluster IP per family",
                                "the Service's ipFamilies / ipFamily")
    pods = pods_by_name(live.pods)
    backends = frozenset(n for n in expected if n in pods)
    dials = [Dial(f"{name}/{svc}/{fam}", name, node, "udp", address, SERVICE_UDP_PORT, "hostname", backends,
                  f"Service {svc} port {SERVICE_UDP_PORT}",
                  f"{LOOK_PROXY} ({node}: `ipvsadm -Ln -u {url_host(address)}:{SERVICE_UDP_PORT}`); "
                  "stale UDP conntrack entries (`conntrack -L -p udp`)")
             for name, node in expected.items() if name in pods for svc, fam, address in addresses]
    return findings, dials


def check_udp_service(vctx) -> CheckResult:
    """Check ``udp-service``."""
    return _dial_check(vctx, UDP, udp_objects, udp_dials,
                       lambda expected, _dials: f"pods on {len(expected)} nodes get UDP answers from the Service's "
                                                "cluster IPs of both families")


# =========================================================================== large-requests


def large_objects(cfg) -> Tuple[Dict[str, str], List[dict]]:
    """A netexec pod on every node behind Service(s) of both families, TCP and UDP."""
    expected, pods = _netexec_pods(cfg, LARGE)
    return expected, pods + service_manifests(cfg, LARGE, LARGE, {CHECK_LABEL: LARGE})


def _echo_dials(key: str, source: str, node: str, host: str, ports: Tuple[int, int], what: str, look: str) -> List[Dial]:
    http, udp = ports
    return [Dial(f"{key}/http", source, node, "http", host, http, f"echo?msg={HTTP_MESSAGE}", frozenset({HTTP_MESSAGE}),
                 f"{what} (a {len(HTTP_MESSAGE)}-byte HTTP echo)", look),
            Dial(f"{key}/udp", source, node, "udp", host, udp, f"echo {UDP_MESSAGE}", frozenset({UDP_MESSAGE}),
                 f"{what} (a {len(UDP_MESSAGE) + 5}-byte UDP datagram)", look)]


def large_dials(live: Live, expected: Mapping[str, str]) -> Tuple[List[Finding], List[Dial]]:
    """From every pod: 2000-byte HTTP and UDP echoes to every pod on another node and to
    each cluster IP, in both families."""
    pods = pods_by_name(live.pods)
    findings, dials = [], []
    addresses = service_addresses(live.services, {CHECK_LABEL: LARGE})
    findings += missing_families(_families_of(addresses), "the large-request Service", "a cluster IP per family",
                                 "the Service's ipFamilies / ipFamily")
    for name in expected:
        if name in pods:
            findings += missing_families(sorted(pod_addresses(pods[name])), f"pod {name} on {node_of(pods[name])}",
                                         "podIPs of both families", "Calico IPAM (assign_ipv4/assign_ipv6)",
                                         node=node_of(pods[name]), pod=name)
    for src, node in expected.items():
        if src not in pods:
            continue
        for dst, dst_node in expected.items():
            if dst == src or dst_node == node or dst not in pods:
                continue
            for fam, address in sorted(pod_addresses(pods[dst]).items()):
                dials += _echo_dials(f"{dst}/{fam}", src, node, address, (NETEXEC_HTTP_PORT, NETEXEC_UDP_PORT),
                                     f"pod {dst} on {dst_node}",
                                     f"the MTU between {node} and {dst_node} over {family_name(fam)}: `ip link` of the "
                                     "Calico tunnel and the pods' eth0 (tunnel MTU = lab MTU - overhead), ICMP "
                                     "'packet too big' / 'fragmentation needed' not dropped")
        for svc, fam, address in addresses:
            dials += _echo_dials(f"{svc}/{fam}", src, node, address, (SERVICE_HTTP_PORT, SERVICE_UDP_PORT),
                                 f"Service {svc}", f"{LOOK_PROXY} ({node}); IPVS with fragmented UDP; the MTU of "
                                                   "the Calico tunnel")
    return findings, dials


def check_large_requests(vctx) -> CheckResult:
    """Check ``large-requests``."""
    return _dial_check(vctx, LARGE, large_objects, large_dials,
                       lambda _expected, dials: f"{len(dials)} requests of 2000 bytes and more (HTTP and UDP) cross "
                                                "nodes and Services over IPv4 and IPv6")

