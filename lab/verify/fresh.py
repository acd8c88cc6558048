"""Cluster checks of objects verify creates fresh: fresh-pod-ips, downward-pod-ips and
service-policies (the "Validate IPv4/IPv6 dual-stack" page and the e2e tests' pod and
Service cases)."""

from __future__ import annotations

import ipaddress
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .dualstack import (
    NAME_PREFIX, NS, Live, family_spec, object_labels, placements, pod_manifest, pods_by_name, with_objects,
)
from .kube import pod_ips, service_cluster_ips
from .model import CheckResult, Finding, SKIP, family, family_name, family_of_name, in_networks, ip, result_from_findings
from .parse import parse_sections, sectioned_script

FRESH = "fresh-pod-ips"
DOWNWARD = "downward-pod-ips"
POLICIES = "service-policies"
POD_IPS_VAR = "MY_POD_IPS"
HOST_IPS_VAR = "MY_HOST_IPS"
LOOK_IPAM = "Calico IPAM (calico-config assign_ipv4/assign_ipv6) and, with Docker, cri-dockerd --ipv6-dual-stack"


def _pause_pods(cfg, check: str, env: Sequence[Tuple[str, str]] = ()) -> Tuple[Dict[str, str], List[dict]]:
    expected = placements(cfg, check)
    return expected, [pod_manifest(cfg, check, name, node, env=env) for name, node in expected.items()]


def _shown(values: Sequence) -> str:
    return ", ".join(str(v) for v in values) or "none"


# =========================================================================== fresh-pod-ips


def fresh_objects(cfg) -> Tuple[Dict[str, str], List[dict]]:
    """A pod (agnhost pause) pinned to every node."""
    return _pause_pods(cfg, FRESH)


def evaluate_fresh_pods(pods: Sequence[Mapping], expected: Mapping[str, str], cfg) -> List[Finding]:
    """Each new pod has two podIPs of different families inside the pod subnets with
    ``podIP == podIPs[0]``, ``hostIP`` its node's IPv4 and, where the profile's Kubernetes
    has them (``profile.host_ips``), ``hostIPs`` its node's IPv4 and IPv6 in that order."""
    findings = []
    live = pods_by_name(pods)
    for name, node_name in expected.items():
        pod = live.get(name)
        if pod is None:
            continue  # the lifecycle reported it
        status = pod.get("status") or {}
        where = f"new pod {name} on {node_name}"
        at = {"node": node_name, "pod": name}
        listed = [entry.get("ip") for entry in status.get("podIPs") or []]
        if len(listed) != 2 or sorted(family(a) or 0 for a in listed) != [4, 6]:
            missing = [family_name(f) for f in (4, 6) if f not in [family(a) for a in listed]]
            findings.append(Finding(f"{where}: podIPs {_shown(listed)}" + (f" (no {', '.join(missing)})" if missing else ""),
                                    "two podIPs, one IPv4 and one IPv6", f"podIPs: {_shown(listed)}", LOOK_IPAM,
                                    family=", ".join(missing), address=", ".join(str(a) for a in listed), **at))
        if listed and status.get("podIP") != listed[0]:
            findings.append(Finding(f"{where}: podIP {status.get('podIP')} is not podIPs[0] {listed[0]}",
                                    "podIP == podIPs[0]", f"podIP {status.get('podIP')}", LOOK_IPAM, **at))
        for address in listed:
            if address and not in_networks(address, cfg.pod_subnets):
                findings.append(Finding(f"{where}: {family_name(family(address))} podIP {address} outside the pod subnets",
                                        f"inside {_shown(cfg.pod_subnets)}", address, "Calico IPPools (calico-pools)",
                                        family=family_name(family(address)), address=address, **at))
        node = cfg.node(node_name)
        if ip(status.get("hostIP")) != node.ipv4:
            findings.append(Finding(f"{where}: hostIP {status.get('hostIP')} is not {node_name}'s IPv4 {node.ipv4}",
                                    f"hostIP {node.ipv4}", f"hostIP {status.get('hostIP')}", f"kubelet --node-ip on {node_name}",
                                    family="IPv4", address=str(status.get("hostIP") or ""), **at))
        if cfg.profile.host_ips:
            hosts = [entry.get("ip") for entry in status.get("hostIPs") or []]
            if [ip(h) for h in hosts] != [node.ipv4, node.ipv6]:
                findings.append(Finding(f"{where}: hostIPs {_shown(hosts)} are not {node_name}'s IPv4 and IPv6",
                                        f"hostIPs {node.ipv4}, {node.ipv6}", f"hostIPs {_shown(hosts)}",
                                        f"kubelet --node-ip on {node_name} (both families)",
                                        address=", ".join(str(h) for h in hosts), **at))
    if not cfg.profile.host_ips:
        findings.append(Finding(f"Kubernetes {cfg.profile.kubernetes_version} has no status.hostIPs (1.29+): "
                                "only hostIP was checked", note=True))
    return findings


def check_fresh_pod_ips(vctx) -> CheckResult:
    """Check ``fresh-pod-ips``."""
    expected, objects = fresh_objects(vctx.cfg)
    extra = " and hostIPs" if vctx.cfg.profile.host_ips else ""

    def body(live: Live) -> CheckResult:
        findings = live.problems + evaluate_fresh_pods(live.pods, expected, vctx.cfg)
        return result_from_findings(findings, f"a new pod on each of {len(expected)} nodes got an IPv4 and an IPv6 podIP"
                                              f"{extra}")

    return with_objects(vctx, FRESH, objects, expected, body)


# =========================================================================== downward-pod-ips


def downward_env(cfg) -> List[Tuple[str, str]]:
    """The Downward API variables: status.podIPs (1.17+), status.hostIPs where the version has it."""
    env = [(POD_IPS_VAR, "status.podIPs")]
    if cfg.profile.host_ips:
        env.append((HOST_IPS_VAR, "status.hostIPs"))
    return env


def downward_objects(cfg) -> Tuple[Dict[str, str], List[dict]]:
    """A pod on every node with the pod's (and host's) addresses in its environment."""
    return _pause_pods(cfg, DOWNWARD, downward_env(cfg))


def downward_script(cfg) -> str:
    """What the pod sees: each Downward API variable and its /etc/hosts."""
    commands = {var: f'printf "%s\\n" "${var}"' for var, _ in downward_env(cfg)}
    commands["hosts"] = "cat /etc/hosts"
    return sectioned_script(commands)


def hosts_addresses(text: str, hostname: str) -> List[str]:
    """The addresses /etc/hosts gives ``hostname``, in order."""
    found = []
    for line in (text or "").splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) >= 2 and hostname in parts[1:] and ip(parts[0]) is not None:
            found.append(parts[0])
    return found


def evaluate_downward(outputs: Mapping[str, Optional[str]], pods: Sequence[Mapping], expected: Mapping[str, str],
                      cfg, errors: Optional[Mapping[str, str]] = None) -> List[Finding]:
    """Inside every pod, ``MY_POD_IPS`` is the API's ``status.podIPs`` (both families, in
    order) and /etc/hosts maps the pod's name to each pod address (``MY_HOST_IPS`` likewise
    with ``status.hostIPs`` where the version has them)."""
    findings = []
    live = pods_by_name(pods)
    for name, node in expected.items():
        pod = live.get(name)
        if pod is None:
            continue
        where = f"pod {name} on {node}"
        at = {"node": node, "pod": name}
        text = outputs.get(name)
        if text is None:
            findings.append(Finding(f"{where}: could not read its environment and /etc/hosts", "the exec's output",
                                    "no answer", f"`kubectl exec -n {NS} {name} -- cat /etc/hosts`",
                                    error=(errors or {}).get(name, "")[:400], **at))
            continue
        sections = parse_sections(text)
        api = pod_ips(pod)
        env = [a for a in (sections[POD_IPS_VAR].output.strip() if POD_IPS_VAR in sections else "").split(",") if a]
        if env != api or sorted(family(a) or 0 for a in env) != [4, 6]:
            findings.append(Finding(f"{where}: Downward API {POD_IPS_VAR}={','.join(env)}",
                                    f"{POD_IPS_VAR}={','.join(api)} (status.podIPs, one address per family)",
                                    f"{POD_IPS_VAR}={','.join(env) or '(empty)'}",
                                    "the kubelet's Downward API (fieldPath status.podIPs, 1.17+); " + LOOK_IPAM,
                                    family=", ".join(family_name(f) for f in (4, 6) if f not in [family(a) for a in env]),
                                    address=",".join(env), **at))
        if cfg.profile.host_ips:
            want = [a.get("ip") for a in (pod.get("status") or {}).get("hostIPs") or []]
            got = [a for a in (sections[HOST_IPS_VAR].output.strip() if HOST_IPS_VAR in sections else "").split(",") if a]
            if got != want or len(got) != 2:
                findings.append(Finding(f"{where}: Downward API {HOST_IPS_VAR}={','.join(got)}",
                                        f"{HOST_IPS_VAR}={','.join(want)} (status.hostIPs of both families)",
                                        f"{HOST_IPS_VAR}={','.join(got) or '(empty)'}", f"kubelet --node-ip on {node}",
                                        address=",".join(got), **at))
        hosts = sections.get("hosts")
        listed = [ipaddress.ip_address(a) for a in hosts_addresses(hosts.output if hosts else "", name)]
        for address in api:
            if ip(address) not in listed:
                findings.append(Finding(f"{where}: /etc/hosts has no {family_name(family(address))} entry {address} for {name}",
                                        f"{address}\t{name} in /etc/hosts (the kubelet writes every pod IP)",
                                        f"{name} -> {_shown(listed)}", "the kubelet's managed /etc/hosts (1.17+: all podIPs); "
                                                                       "a pod on the host network gets the node's file",
                                        family=family_name(family(address)), address=address, **at))
    return findings


def check_downward_pod_ips(vctx) -> CheckResult:
    """Check ``downward-pod-ips``."""
    expected, objects = downward_objects(vctx.cfg)

    def body(live: Live) -> CheckResult:
        findings = list(live.problems)
        outputs, errors = {}, {}
        for name in expected:
            if name in pods_by_name(live.pods):
                result = vctx.exec_in(NS, name, ["sh", "-c", downward_script(vctx.cfg)])
                outputs[name], errors[name] = result.stdout or None, (result.stderr or "").strip()
        findings += evaluate_downward(outputs, live.pods, expected, vctx.cfg, errors)
        return result_from_findings(findings, f"inside a pod on each of {len(expected)} nodes, {POD_IPS_VAR} and "
                                              "/etc/hosts list the pod's IPv4 and IPv6")

    return with_objects(vctx, DOWNWARD, objects, expected, body)


# =========================================================================== service-policies

#: name suffix -> (policy asked for, families asked for, families expected, in order).
#: The e2e tests' cases: no ipFamilies (the primary family), IPv6 only, both (each order).
#: ``None`` as expected families means the primary family of the service subnets.
POLICY_CASES = {
    "default": (None, (), None),
    "ipv6": ("SingleStack", (6,), (6,)),
    "prefer": ("PreferDualStack", (), "both"),
    "require": ("RequireDualStack", (4, 6), (4, 6)),
    "require-v6first": ("RequireDualStack", (6, 4), (6, 4)),
}
#: 1.17: Services have one family, chosen by ``spec.ipFamily`` (or the primary one).
LEGACY_CASES = {"default": (None, (), None), "ipv6": (None, (6,), (6,))}


def _primary(cfg) -> int:
    return cfg.service_subnets[0].version


def _expected_families(cfg, wanted) -> Tuple[int, ...]:
    if wanted is None:
        return (_primary(cfg),)
    if wanted == "both":
        return (_primary(cfg), {4: 6, 6: 4}[_primary(cfg)])
    return tuple(wanted)


def policy_objects(cfg) -> List[dict]:
    """Services (no selector) asking for families each way the profile's API allows."""
    docs = []
    cases = POLICY_CASES if cfg.profile.dual_stack_services else LEGACY_CASES
    for suffix, (policy, families, _) in cases.items():
        spec = {"type": "ClusterIP", "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}
        if policy or families:
            spec.update(family_spec(cfg, families, policy) if cfg.profile.dual_stack_services
                        else {"ipFamily": family_name(families[0])})
        docs.append({"apiVersion": "v1", "kind": "Service",
                     "metadata": {"name": f"{NAME_PREFIX}policy-{suffix}", "namespace": NS,
                                  "labels": object_labels(POLICIES)},
                     "spec": spec})
    return docs


def evaluate_policies(services: Sequence[Mapping], cfg, apply_text: str = "") -> List[Finding]:
    """Each Service verify created got the families its request means on this dual-stack
    cluster: ``ipFamilyPolicy``, ``ipFamilies`` in order, one ``clusterIP`` per family in the
    same order inside the service subnets, ``clusterIP == clusterIPs[0]``; on 1.17 ``ipFamily``
    and the single ``clusterIP``."""
    findings = []
    have = {(s.get("metadata") or {}).get("name"): s for s in services}
    legacy = not cfg.profile.dual_stack_services
    look = "kube-apiserver --service-cluster-ip-range (both families, IPv4 first)"
    for suffix, (policy, _, wanted) in (LEGACY_CASES if legacy else POLICY_CASES).items():
        name = f"{NAME_PREFIX}policy-{suffix}"
        families = _expected_families(cfg, wanted)
        want = ", ".join(family_name(f) for f in families)
        svc = have.get(name)
        if svc is None:
            lines = [line for line in (apply_text or "").splitlines() if f'"{name}"' in line]
            findings.append(Finding(f"Service {name} ({policy or 'no ipFamilyPolicy'}) was not created",
                                    f"a Service of {want}", lines[0] if lines else "absent", look,
                                    error="\n".join(lines), family=want))
            continue
        spec = svc.get("spec") or {}
        ips = service_cluster_ips(svc)
        if legacy:
            got = [family_of_name(spec.get("ipFamily", ""))] if spec.get("ipFamily") else []
        else:
            got = [family_of_name(f) for f in spec.get("ipFamilies") or []]
            want_policy = policy or "SingleStack"
            if spec.get("ipFamilyPolicy") != want_policy:
                findings.append(Finding(f"Service {name}: ipFamilyPolicy {spec.get('ipFamilyPolicy')}",
                                        f"ipFamilyPolicy {want_policy}", f"ipFamilyPolicy {spec.get('ipFamilyPolicy')}", look))
        if tuple(got) != families:
            findings.append(Finding(f"Service {name} ({policy or 'no ipFamilyPolicy'}) got "
                                    f"{_shown(family_name(f) for f in got)}",
                                    f"{'ipFamily' if legacy else 'ipFamilies'} {want}",
                                    f"{'ipFamily' if legacy else 'ipFamilies'} {_shown(family_name(f) for f in got)}",
                                    look + ("; PreferDualStack with one family: the cluster is not dual-stack"
                                            if policy == "PreferDualStack" else ""),
                                    family=", ".join(family_name(f) for f in families if f not in got),
                                    address=", ".join(ips)))
        if tuple(family(a) for a in ips) != families:
            findings.append(Finding(f"Service {name}: clusterIPs {_shown(ips)} are not one per family ({want})",
                                    f"clusterIPs of {want}, in that order", f"clusterIPs {_shown(ips)}", look,
                                    address=", ".join(ips)))
        if spec.get("clusterIPs") and spec.get("clusterIP") != spec["clusterIPs"][0]:
            findings.append(Finding(f"Service {name}: clusterIP {spec.get('clusterIP')} is not clusterIPs[0]",
                                    "clusterIP == clusterIPs[0]", f"clusterIP {spec.get('clusterIP')}", look))
        for address in ips:
            if not in_networks(address, cfg.service_subnets):
                findings.append(Finding(f"Service {name}: {family_name(family(address))} cluster IP {address} outside "
                                        "the service subnets", f"inside {_shown(cfg.service_subnets)}", address, look,
                                        family=family_name(family(address)), address=address))
    return findings


def legacy_policy_result(findings: Sequence[Finding], services: Sequence[Mapping], cfg) -> CheckResult:
    """1.17: a failure when what the version has is wrong, else a skip naming what it lacks."""
    result = result_from_findings(findings, "")
    if not result.passed:
        return result
    got = "; ".join(f"{(s.get('metadata') or {}).get('name')}: ipFamily {(s.get('spec') or {}).get('ipFamily')} "
                    f"{_shown(service_cluster_ips(s))}" for s in services)
    return CheckResult(SKIP, f"Kubernetes {cfg.profile.kubernetes_version} has no ipFamilyPolicy, ipFamilies or "
                             "clusterIPs (1.20+): PreferDualStack and RequireDualStack Services cannot be made, and a "
                             "Service has one family", notes=[f"spec.ipFamily checked: {got}"], findings=list(findings))


def check_service_policies(vctx) -> CheckResult:
    """Check ``service-policies``."""
    objects = policy_objects(vctx.cfg)

    def body(live: Live) -> CheckResult:
        # a Service the API refused is named by evaluate_policies, with the API's reason
        findings = live.findings + evaluate_policies(live.services, vctx.cfg, live.apply_error)
        if not vctx.cfg.profile.dual_stack_services:
            return legacy_policy_result(findings, live.services, vctx.cfg)
        return result_from_findings(findings, f"{len(objects)} Services verify created got their families: no "
                                              "ipFamilies -> IPv4 only, [IPv6] -> IPv6, PreferDualStack and "
                                              "RequireDualStack -> both, in the order asked")

    return with_objects(vctx, POLICIES, objects, {}, body)

