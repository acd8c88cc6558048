"""lab.verify end to end on a simulated cluster built from the recorded fixtures of both
versions: the healthy cluster passes every check, and each broken cluster fails the check
that owns the breakage, with a message naming what is wrong. Probes always answer (a
reachable address proves nothing of dual-stack), so every failure below comes from what
the API, IPVS and the logs show.
"""

from __future__ import annotations

import copy
import io
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lab import config
from lab.context import Context, Result
from lab.errors import StepError
from lab.verify import CHECK_NAMES, format_report, run_checks, write_json, write_junit
from lab.verify import ingress, session
from lab.verify.parse import BEGIN, END
from lab.verify.session import VerifyContext

FIX = Path(__file__).parent / "fixtures" / "verify"
NODES = ("k8s-master01", "k8s-worker01", "k8s-worker02")
#: The checks of the network and cluster layers these tests cover.
CHECKS = ("node-addresses", "node-dns", "node-reach", "pod-cidrs", "node-internal-ips", "pod-ips", "service-families",
          "calico-pools", "kube-proxy-ipvs", "nginx-listens", "pod-to-pod", "pod-to-service", "node-to-service",
          "cluster-dns", "metallb-ingress", "client-ip-preserved", "external-ips")
MODULES = ("ip_vs_sh 12688 0 - Live 0x0\nip_vs_wrr 12697 0 - Live 0x0\nip_vs_rr 12600 13 - Live 0x0\n"
           "ip_vs 145458 19 ip_vs_sh,ip_vs_wrr,ip_vs_rr, Live 0x0\nnf_conntrack 139264 9 ip_vs, Live 0x0\n"
           "br_netfilter 22256 0 - Live 0x0\n")
SYSCTL = ("net.ipv4.ip_forward = 1\nnet.ipv6.conf.all.forwarding = 1\n"
          "net.bridge.bridge-nf-call-iptables = 1\nnet.bridge.bridge-nf-call-ip6tables = 1\n")
_SECTION = re.compile(r"^echo '" + re.escape(BEGIN) + r" (\S+)'\n\{ (.*) ; \} 2>&1; rc=\$\?$", re.M)


def load(name):
    text = (FIX / name).read_text()
    return json.loads(text) if name.endswith(".json") else text


def routes_of(node, distribution):
    """``ip -6 route show table local`` of ``node``: the worker01 fixture with the node's address."""
    planned = config.load({}).node(node)
    return load(f"ip6-route-local-worker01-{distribution}.txt").replace("fd00:db1::21 ", f"{planned.ipv6} ")


class FakeState:
    def get(self, key, default=None):
        return default


class Cluster:
    """A lab as kubectl, ssh and the host see it, from the fixtures of one version; tests break it."""

    def __init__(self, version: str):
        self.version = version
        self.cfg = config.load({"profile": "current" if version == "1.36" else "seed-2020", "state_dir": "/nonexistent-dslab"})
        self.get = {
            "nodes": load(f"nodes-{version}.json"),
            "pods -n default": load(f"pods-{version}.json"),
            "services -A": load(f"services-{version}.json"),
            "endpointslices.discovery.k8s.io -A": load("endpointslices-1.36.json") if version == "1.36" else None,
            "endpointslices.v1beta1.discovery.k8s.io -A": load("endpointslices-1.17-empty.json"),
            "endpoints -A": load("endpoints-1.17.json"),
            "ippools.crd.projectcalico.org": load("ippools.json"),
            "pods -A -l k8s-app=calico-node": load("calico-node-pods.json"),
            "pods -n kube-system -l component=kube-controller-manager": load("kube-controller-manager-pods.json"),
            "configmap kube-proxy -n kube-system": load(f"kube-proxy-cm-{version}.json"),
        }
        self.ipvs = {node: load(f"ipvsadm-{node}-{version}.txt") for node in NODES}
        # each node's IPv6 local routes, as a kernel since 4.11 gives them (proto kernel)
        self.routes = {node: routes_of(node, "stream9") for node in NODES}
        self.kernel = {node: "5.14.0-570.el9.x86_64" for node in NODES}
        self.refused = set()  # "[address]:port" that nothing answers (no IPVS virtual server)
        self.proxy_mode = "ipvs"
        self.logged = []  # (token, family) the host's requests, as nginx logs them
        self.log_after_reads = 1  # the number of `kubectl logs` after which nginx has written its lines
        self.log_reads = 0
        self.calls = []
        self.host_calls = []
        self.exec_errors = {}  # pod -> stderr of a failing kubectl exec
        self.now = 0.0
        self.sleeps = []
        self.raise_on = None  # (substring, exception) for a runner error

    # ------------------------------------------------------------------ the lab's runner

    def run(self, node, command, *, input=None, timeout=None, check=True, secret=False):
        self.calls.append((node, command, input, timeout))
        text = command if isinstance(command, str) else " ".join(command)
        if self.raise_on and self.raise_on[0] in text:
            raise self.raise_on[1]
        if isinstance(command, (list, tuple)):
            return self.kubectl(list(command[3:]))
        if command == "ip -o addr show":
            n = self.cfg.node(node)
            return Result(0, load("ip-addr-worker01.txt").replace("192.168.200.21", str(n.ipv4)).replace("fd00:db1::21", str(n.ipv6)))
        return Result(0, self.script(node, command))

    def kubectl(self, args):
        if args[0] == "get" and args[-2:] == ["-o", "json"]:
            key = " ".join(args[1:-2])
            if key.startswith("pods -n default -l app.kubernetes.io/managed-by"):
                return Result(0, json.dumps({"items": []}))
            value = self.get.get(key)
            if value is None:
                return Result(1, "", f'error: the server doesn\'t have a resource type "{args[1]}"')
            return Result(0, json.dumps(value))
        if args[0] in ("apply", "wait", "delete"):
            return Result(0, "ok")
        if args[0] == "exec":
            pod = args[3]
            if pod in self.exec_errors:
                return Result(1, "", self.exec_errors[pod])
            if args[-3:] == ["cat", "/proc/net/tcp", "/proc/net/tcp6"]:
                return Result(0, load("proc-net-tcp-nginx.txt"))
            return Result(0, self.script(pod, args[-1]))
        if args[0] == "logs":
            self.log_reads += 1
            if self.log_reads < self.log_after_reads:
                return Result(0, "")
            gateway = {4: self.cfg.gateway_ipv4, 6: self.cfg.gateway_ipv6}
            return Result(0, "".join(f'{gateway[v]} - - [26/Nov/2026:10:02:03 +0000] "GET /?dslab-verify={t} HTTP/1.1" 200 312 '
                                     f'"-" "curl/8.5.0" server=10.244.79.3 pod=my-nginx-7d9c6f8b5d-9wq2m\n' for t, v in self.logged))
        return Result(1, "", f"unexpected kubectl {args}")

    def script(self, where, script):
        out = []
        for key, command in _SECTION.findall(script):
            rc, body = 0, self.answer(where, key, command)
            if body is None:
                rc, body = 1, "1 packets transmitted, 0 received"
            out += [f"{BEGIN} {key}", body, f"{END} {key} {rc}"]
        return "\n".join(out) + "\n"

    def answer(self, where, key, command):
        if "proxyMode" in command:
            return self.proxy_mode
        if command.startswith("curl"):
            if any(f"http://{target}/" in command for target in self.refused):
                return f"curl: (7) Failed to connect to {command.split('//')[1].split('/')[0]}: Connection refused\n000"
            return "200"
        if command == "ip -6 route show table local":
            return self.routes[where]
        if command == "uname -r":
            return self.kernel[where]
        if command == "ipvsadm -Ln":
            return self.ipvs[where]
        if command == "cat /proc/modules":
            return MODULES
        if command.startswith("sysctl "):
            return SYSCTL
        if command.startswith("dig "):
            rtype, fqdn = command.split()[-2:]
            name = fqdn.split(".")[0]
            svc = next(s for s in self.get["services -A"]["items"] if s["metadata"]["name"] == name)
            ips = svc["spec"].get("clusterIPs") or [svc["spec"]["clusterIP"]]
            return "\n".join(a for a in ips if (":" in a) == (rtype == "AAAA"))
        if command.startswith("getent ahosts"):
            target = self.cfg.node(key.split(".")[0])
            return f"{target.ipv6}    STREAM {key}\n{target.ipv4}  STREAM"
        if "ping" in command:
            return "1 packets transmitted, 1 received"
        raise AssertionError(f"unexpected probe {command!r}")

    # ------------------------------------------------------------------ the host

    def host(self, command):
        self.host_calls.append(list(command))
        url = command[-1]
        match = re.search(r"dslab-verify=([0-9a-f]+-([46]))", url)
        if match:
            self.logged.append((match.group(1), int(match.group(2))))
        return Result(0, "200")

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds

    # ------------------------------------------------------------------ running lab.verify

    def verify(self, only=CHECKS):
        vctx = VerifyContext(Context(cfg=self.cfg, state=FakeState(), runner=self), host_run=self.host)
        vctx.clock, vctx.sleep = self.clock, self.sleep
        out = io.StringIO()
        report = run_checks(vctx, only=list(only), out=out)
        return report, out.getvalue()


def by_name(report):
    return {o.name: o.result for o in report.outcomes}


def failing(report):
    return sorted(o.name for o in report.outcomes if o.status == "fail")


def failed_findings(result):
    return [f for f in result.findings if not f.note]


def problems(result):
    return [f.problem for f in failed_findings(result)]


def test_every_check_here_is_registered():
    assert set(CHECKS) <= set(CHECK_NAMES)


@pytest.mark.parametrize("version", ["1.36", "1.17"])
def test_healthy_cluster_of_both_versions_passes_every_check(version):
    cluster = Cluster(version)
    report, text = cluster.verify()
    assert [o.name for o in report.outcomes] == list(CHECKS)
    assert failing(report) == [], text
    assert report.skipped == 0, text


# --------------------------------------------------------------------------- breaking the cluster


def _slices(cluster):
    return (cluster.get["endpointslices.discovery.k8s.io -A"] or {"items": []})["items"]


def _drop_real_servers(cluster, predicate):
    for node, table in cluster.ipvs.items():
        cluster.ipvs[node] = "\n".join(line for line in table.splitlines()
                                       if not (line.startswith("  -> ") and predicate(line.split()[1]))) + "\n"


def ipv4_only_pods(cluster):
    for pod in cluster.get["pods -n default"]["items"]:
        pod["status"]["podIPs"] = [e for e in pod["status"]["podIPs"] if ":" not in e["ip"]]
    for sl in _slices(cluster):
        if sl["addressType"] == "IPv6" and sl["metadata"]["name"].startswith("my-nginx"):
            sl["endpoints"] = []
    for ep in cluster.get["endpoints -A"]["items"]:
        if ep["metadata"]["name"].startswith("my-nginx-svc-ipv6"):
            ep["subsets"] = []
    _drop_real_servers(cluster, lambda rs: rs.startswith("[fd00:2::"))


def ipv6_endpoints_missing(cluster):
    for sl in _slices(cluster):
        if sl["addressType"] == "IPv6" and sl["metadata"]["name"].startswith("my-nginx"):
            sl["endpoints"] = []
    for ep in cluster.get["endpoints -A"]["items"]:
        if ep["metadata"]["name"].startswith("my-nginx-svc-ipv6"):
            ep["subsets"] = []


def worker02_without_ipv6_pod_cidr(cluster):
    node = next(n for n in cluster.get["nodes"]["items"] if n["metadata"]["name"] == "k8s-worker02")
    node["spec"]["podCIDRs"] = node["spec"]["podCIDRs"][:1]


def kube_proxy_in_iptables_mode(cluster):
    cm = cluster.get["configmap kube-proxy -n kube-system"]
    cm["data"]["config.conf"] = cm["data"]["config.conf"].replace("mode: ipvs", "mode: iptables")
    cluster.proxy_mode = "iptables"
    for node in NODES:
        cluster.ipvs[node] = "\n".join(cluster.ipvs[node].splitlines()[:3]) + "\n"


def lb_one_family_on_dual_policy(cluster):
    svc = next(s for s in cluster.get["services -A"]["items"] if s["metadata"]["name"] == "my-nginx-svc-dual")
    svc["spec"].update(ipFamilyPolicy="PreferDualStack", ipFamilies=["IPv4"], clusterIPs=svc["spec"]["clusterIPs"][:1])
    svc["status"]["loadBalancer"]["ingress"] = svc["status"]["loadBalancer"]["ingress"][:1]
    cluster.get["endpointslices.discovery.k8s.io -A"]["items"] = [
        s for s in _slices(cluster) if not (s["metadata"]["name"].startswith("my-nginx-svc-dual") and s["addressType"] == "IPv6")]


def one_replica_missing(cluster):
    """A replica the Deployment never got back: gone from the API, the EndpointSlices and IPVS alike."""
    pods = cluster.get["pods -n default"]["items"]
    gone = {e["ip"] for e in pods[0]["status"]["podIPs"]}
    cluster.get["pods -n default"]["items"] = pods[1:]
    for sl in _slices(cluster):
        sl["endpoints"] = [e for e in sl.get("endpoints") or [] if not set(e["addresses"]) & gone]
    _drop_real_servers(cluster, lambda rs: rs.rsplit(":", 1)[0].strip("[]") in gone)


BROKEN = [
    # (version, breakage, the check that owns it, a message naming what is wrong, every check that fails)
    ("1.36", ipv4_only_pods, "pod-ips", "default/my-nginx-7d9c6f8b5d-4xkzp: podIPs 10.244.69.198 is not one IPv4 and one IPv6",
     ["kube-proxy-ipvs", "pod-ips", "pod-to-pod", "service-families"]),
    ("1.17", ipv4_only_pods, "pod-ips", "default/my-nginx-7d9c6f8b5d-9wq2m: podIPs 10.244.79.3 is not one IPv4 and one IPv6",
     ["kube-proxy-ipvs", "pod-ips", "pod-to-pod", "service-families"]),
    ("1.36", ipv6_endpoints_missing, "service-families",
     "default/my-nginx-svc-ipv6: IPv6 EndpointSlices hold 0 of 3 ready nginx endpoints", ["service-families"]),
    ("1.17", ipv6_endpoints_missing, "service-families",
     "default/my-nginx-svc-ipv6: Endpoints hold 0 of 3 ready nginx addresses", ["service-families"]),
    ("1.36", worker02_without_ipv6_pod_cidr, "pod-cidrs", "k8s-worker02: 0 IPv6 podCIDRs", ["pod-cidrs"]),
    ("1.17", worker02_without_ipv6_pod_cidr, "pod-cidrs", "k8s-worker02: 0 IPv6 podCIDRs", ["pod-cidrs"]),
    ("1.36", kube_proxy_in_iptables_mode, "kube-proxy-ipvs", "kube-proxy mode is 'iptables'", ["kube-proxy-ipvs"]),
    ("1.17", kube_proxy_in_iptables_mode, "kube-proxy-ipvs", "k8s-worker01: kube-proxy runs in mode iptables", ["kube-proxy-ipvs"]),
    ("1.36", lb_one_family_on_dual_policy, "metallb-ingress",
     "default/my-nginx-svc-dual: ipFamilyPolicy PreferDualStack but only IPv4",
     ["client-ip-preserved", "cluster-dns", "metallb-ingress", "node-to-service", "pod-to-service", "service-families"]),
    ("1.36", one_replica_missing, "pod-ips", "2 of 3 nginx replicas found (pods labelled app=my-nginx in namespace default)",
     ["nginx-listens", "pod-ips", "pod-to-pod", "service-families"]),
]


@pytest.mark.parametrize("version, breakage, check, message, fails", BROKEN,
                         ids=[f"{b[0]}-{b[1].__name__}" for b in BROKEN])
def test_broken_cluster_fails_the_right_check(version, breakage, check, message, fails):
    cluster = Cluster(version)
    breakage(cluster)
    report, text = cluster.verify()
    assert message in problems(by_name(report)[check]), text
    assert failing(report) == fails, text


def test_ipv4_only_pods_fail_the_probes_instead_of_passing_over_one_family():
    cluster = Cluster("1.36")
    ipv4_only_pods(cluster)
    result = by_name(cluster.verify(["pod-to-pod"])[0])["pod-to-pod"]
    assert result.status == "fail"
    assert "default/my-nginx-7d9c6f8b5d-9wq2m: no IPv6 address to probe" in problems(result)
    gap = next(f for f in failed_findings(result) if f.problem.endswith("no IPv6 address to probe"))
    assert (gap.node, gap.pod, gap.family) == ("k8s-worker02", "default/my-nginx-7d9c6f8b5d-4xkzp", "IPv6")


def test_lb_one_family_fails_service_families_and_the_probes_name_the_missing_family():
    cluster = Cluster("1.36")
    lb_one_family_on_dual_policy(cluster)
    results = by_name(cluster.verify()[0])
    assert "default/my-nginx-svc-dual: ipFamilyPolicy PreferDualStack with ipFamilies ['IPv4']" in problems(results["service-families"])
    assert "Service my-nginx-svc-dual: no IPv6 cluster IP to probe" in problems(results["pod-to-service"])
    assert "Service my-nginx-svc-dual: no IPv6 cluster IP, so AAAA cannot answer" in problems(results["cluster-dns"])
    assert "default/my-nginx-svc-dual: no ingress fd00:db1::241 (IPv6)" in problems(results["metallb-ingress"])


# --------------------------------------------------------------------------- terminating, Failed, Evicted


def test_terminating_failed_and_evicted_pods_are_no_targets():
    cluster = Cluster("1.36")
    pods = cluster.get["pods -n default"]["items"]
    gone = []
    for suffix, change in (("zzzz1", {"metadata": {"deletionTimestamp": "2026-11-26T10:00:00Z"}}),
                           ("zzzz2", {"status": {"phase": "Failed", "podIPs": []}}),
                           ("zzzz3", {"status": {"phase": "Failed", "reason": "Evicted", "message": "low on memory",
                                                 "podIPs": [], "podIP": None}})):
        pod = copy.deepcopy(pods[1])
        pod["metadata"]["name"] = f"my-nginx-7d9c6f8b5d-{suffix}"
        pod["metadata"].update(change.get("metadata", {}))
        pod["status"].update(change.get("status", {}))
        if "deletionTimestamp" in change.get("metadata", {}):
            pod["status"]["podIPs"] = [{"ip": "10.244.79.9"}, {"ip": "fd00:2::b5a5:4f8:6a6e:ac09"}]
        gone.append(pod["metadata"]["name"])
        pods.append(pod)
    report, text = cluster.verify()
    assert failing(report) == [], text
    probed = " ".join(str(c[1]) for c in cluster.calls)
    assert "10.244.79.9" not in probed and not any(name in probed for name in gone)


# --------------------------------------------------------------------------- one timeout budget


def test_client_wait_and_runner_timeouts_come_from_one_budget():
    cluster = Cluster("1.36")
    cluster.verify(["pod-to-pod", "pod-to-service", "cluster-dns"])
    waits = [c for c in cluster.calls if isinstance(c[1], list) and c[1][3] == "wait"]
    applies = [c for c in cluster.calls if isinstance(c[1], list) and c[1][3] == "apply"]
    assert len(waits) == 1 and len(applies) == 1  # created and waited for once a run, not per check
    (_node, command, _input, timeout), = waits
    wait_s = int(next(a for a in command if a.startswith("--timeout=")).split("=")[1].rstrip("s"))
    assert timeout > wait_s  # kubectl wait answers before the command running it is cut off
    assert (wait_s, timeout) == (session.CLIENT_READY_TIMEOUT_S, session.CLIENT_READY_TIMEOUT_S + session.RUNNER_MARGIN_S)


def test_a_client_wait_that_times_out_is_reported_as_a_timeout_once():
    cluster = Cluster("1.36")
    cluster.raise_on = (" wait ", StepError("verify", "k8s-master01: `kubectl ... wait` timed out after 210 s"))
    report, text = cluster.verify(["pod-to-pod", "pod-to-service", "cluster-dns"])
    for outcome in report.outcomes:
        assert outcome.status == "fail"
        assert outcome.result.message.startswith(
            "client pods (registry.k8s.io/e2e-test-images/agnhost:2.53) not Ready within 180 s: "
            "kubectl wait -n default timed out after 210 s"), text
        assert "could not gather" not in outcome.result.message
    assert len([c for c in cluster.calls if " wait " in " ".join(map(str, c[1]))]) == 1


def test_a_kubectl_get_that_times_out_says_so():
    cluster = Cluster("1.36")
    cluster.raise_on = ("get nodes", StepError("verify", "k8s-master01: `kubectl get nodes -o json` timed out after 120 s"))
    result = by_name(cluster.verify(["pod-cidrs"])[0])["pod-cidrs"]
    assert result.status == "fail"
    assert result.message == "timed out: kubectl get nodes (on k8s-master01) timed out after 120 s"


# --------------------------------------------------------------------------- IPv6 NodePorts and old kernels


def _kernel_without_proto_kernel_routes(cluster, node="k8s-worker01"):
    """``node`` runs CentOS 7's kernel: IPv6 local routes proto none, so 1.17's kube-proxy opens
    no IPv6 NodePort there (ipvsadm lists none, and nothing answers one)."""
    cluster.routes[node] = routes_of(node, "centos7")
    cluster.kernel[node] = "3.10.0-1127.el7.x86_64"
    address = cluster.cfg.node(node).ipv6
    kept, skip = [], False
    for line in cluster.ipvs[node].splitlines():
        if not line.startswith(" "):
            skip = line.startswith((f"TCP  [{address}]:", "TCP  [::1]:"))
        if not skip:
            kept.append(line)
    cluster.ipvs[node] = "\n".join(kept) + "\n"
    ports = [p["nodePort"] for svc in cluster.get["services -A"]["items"] for p in svc["spec"].get("ports") or []
             if p.get("nodePort")]
    cluster.refused |= {f"[{address}]:{port}" for port in ports}


def test_ipv6_nodeports_on_a_kernel_with_proto_none_local_routes_are_the_versions_limit():
    cluster = Cluster("1.17")
    _kernel_without_proto_kernel_routes(cluster)
    report, text = cluster.verify(["kube-proxy-ipvs", "node-to-service"])
    assert failing(report) == [], text
    for name, result in by_name(report).items():
        (limit,) = [f for f in result.findings if f.note]
        assert limit.node == "k8s-worker01" and limit.address == "fd00:db1::21", name
        assert "Kubernetes 1.17 on kernel 3.10.0-1127.el7.x86_64" in limit.problem
        assert "proto none" in limit.problem and "kubernetes/kubernetes#93858" in limit.problem
    assert "3 IPv6 NodePort probe(s) unanswered" in by_name(report)["node-to-service"].notes[0]  # from each node


def test_ipv6_nodeports_unanswered_on_a_node_with_proto_kernel_routes_fail():
    cluster = Cluster("1.17")
    _kernel_without_proto_kernel_routes(cluster)
    cluster.routes["k8s-worker01"] = routes_of("k8s-worker01", "stream9")  # the kernel is not the cause
    report, text = cluster.verify(["kube-proxy-ipvs", "node-to-service"])
    assert failing(report) == ["kube-proxy-ipvs", "node-to-service"], text
    assert problems(by_name(report)["node-to-service"]) == [
        f"{node} -> NodePort my-nginx-svc-ipv6-local on k8s-worker01 fd00:db1::21:32405: HTTP 000" for node in NODES]
    assert not any(f.note for r in by_name(report).values() for f in r.findings)


# --------------------------------------------------------------------------- no proxy for lab addresses


def test_every_probe_of_a_lab_address_bypasses_proxies():
    cluster = Cluster("1.36")
    cluster.verify()
    assert cluster.host_calls and all(c[:1] == ["curl"] and c[c.index("--noproxy") + 1] == "*" for c in cluster.host_calls)
    scripts = [c[1] if isinstance(c[1], str) else c[1][-1] for c in cluster.calls
               if "curl" in (c[1] if isinstance(c[1], str) else c[1][-1])]
    assert scripts
    for script in scripts:
        assert script.startswith(session.UNSET_PROXY + "\n")
        curls = [line for line in script.splitlines() if line.startswith("{ curl")]
        assert curls and all("--noproxy '*'" in line for line in curls)


def test_host_commands_run_without_proxy_settings(monkeypatch):
    monkeypatch.setenv("http_proxy", "http://proxy.invalid:3128")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("DSLAB_KEPT", "yes")
    seen = session.host_run(["env"]).stdout
    assert "proxy.invalid" not in seen and "DSLAB_KEPT=yes" in seen


# --------------------------------------------------------------------------- nginx's log, polled


def test_client_ip_waits_for_nginx_to_write_its_log():
    cluster = Cluster("1.36")
    cluster.log_after_reads = 3
    result = by_name(cluster.verify(["client-ip-preserved"])[0])["client-ip-preserved"]
    assert result.status == "pass", result
    assert cluster.log_reads == 3 and cluster.sleeps == [ingress.LOG_POLL_S] * 2


def test_client_ip_gives_up_after_the_wait_naming_how_long():
    cluster = Cluster("1.36")
    cluster.log_after_reads = 1000
    result = by_name(cluster.verify(["client-ip-preserved"])[0])["client-ip-preserved"]
    assert result.status == "fail"
    assert cluster.now >= ingress.LOG_WAIT_S and cluster.log_reads == ingress.LOG_WAIT_S // ingress.LOG_POLL_S + 1
    first = failed_findings(result)[0]
    assert first.problem.endswith("the request is not in the nginx logs")
    assert first.seen == f"0 log lines, none with the token (read {cluster.log_reads} times over {ingress.LOG_WAIT_S} s)"
    assert first.family in ("IPv4", "IPv6") and first.address


# --------------------------------------------------------------------------- findings a person can act on


def test_every_finding_is_printed_and_serialised_with_where_and_error_text(tmp_path):
    cluster = Cluster("1.36")
    error = "error: unable to upgrade connection: container not found (\"client\")"
    cluster.exec_errors["dslab-verify-client-k8s-worker02"] = error
    ipv4_only_pods(cluster)
    report, text = cluster.verify(["pod-to-pod"])
    result = by_name(report)["pod-to-pod"]
    gaps = [f for f in failed_findings(result) if f.problem.endswith("no IPv6 address to probe")]
    assert len(gaps) == 3 and len(failed_findings(result)) == 4
    assert result.message == "4 problems" and "more problem" not in text
    lines = text.splitlines()
    for number, finding in enumerate(failed_findings(result), 1):
        assert f"    {number}. {finding.problem}" in lines
    assert "       where: node k8s-worker02, pod default/my-nginx-7d9c6f8b5d-4xkzp, IPv6" in lines
    assert f"       error: {error}" in lines
    unreached = next(f for f in failed_findings(result) if f.problem == "client on k8s-worker02: could not run the probes")
    assert (unreached.node, unreached.pod, unreached.error) == ("k8s-worker02", "default/dslab-verify-client-k8s-worker02", error)

    data = json.loads(write_json(report, tmp_path / "r.json").read_text())
    findings = data["checks"][0]["findings"]
    assert [f["problem"] for f in findings] == problems(result)
    assert {(f["node"], f["pod"], f["family"]) for f in findings if f["problem"].endswith("address to probe")} == {
        ("k8s-worker02", "default/my-nginx-7d9c6f8b5d-4xkzp", "IPv6"), ("k8s-worker01", "default/my-nginx-7d9c6f8b5d-9wq2m", "IPv6"),
        ("k8s-worker02", "default/my-nginx-7d9c6f8b5d-tj8ls", "IPv6")}
    assert any(f["error"] == error for f in findings)

    failure = ET.parse(write_junit(report, tmp_path / "r.xml")).getroot().find("testsuite/testcase/failure")
    assert failure.get("message") == "4 problems"
    assert all(f.problem in failure.text for f in failed_findings(result)) and error in failure.text
    assert format_report(report).splitlines()[:-1] == lines[:-1]
