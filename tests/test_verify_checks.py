"""The pure evaluations of lab.verify, driven by real API/command shapes in tests/fixtures/verify.

Each check: the passing case, then each way it can fail, with the message it gives.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
from pathlib import Path

import pytest

from lab import config
from lab.verify import (
    cni, dns, ingress, kube, network, nginx, node_objects, parse, pod_objects, probes, proxy, service_objects,
)
from lab.verify.model import FAIL, PASS, result_from_findings
from lab.verify.parse import Section, sectioned_script

FIX = Path(__file__).parent / "fixtures" / "verify"


def load(name):
    path = FIX / name
    return json.loads(path.read_text()) if name.endswith(".json") else path.read_text()


@pytest.fixture(scope="module")
def cfg36():
    return config.load({"profile": "current"})


@pytest.fixture(scope="module")
def cfg17():
    return config.load({"profile": "seed-2020"})


def problems(findings):
    return [f.problem for f in findings if not f.note]


def notes(findings):
    return [f.problem for f in findings if f.note]


def sections_text(mapping):
    """What a sectioned script prints: {key: (rc, output)}."""
    lines = []
    for key, (rc, output) in mapping.items():
        lines.append(f"{parse.BEGIN} {key}")
        if output:
            lines.append(output.rstrip("\n"))
        lines.append(f"{parse.END} {key} {rc}")
    return "\n".join(lines) + "\n"


# ============================================================ parsers


def test_sectioned_script_round_trip_runs_in_sh(tmp_path):
    import subprocess
    script = sectioned_script({"ok": "echo hello", "bad": "echo oops >&2; false", "nonl": "printf 200"})
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True).stdout
    got = parse.parse_sections(out)
    assert got["ok"] == Section(0, "hello")
    assert got["bad"] == Section(1, "oops")
    assert got["nonl"] == Section(0, "200")  # curl -w prints no newline: the end marker must survive


def test_parse_ip_addr_real_output():
    found = parse.parse_ip_addr(load("ip-addr-worker01.txt"))
    eth1 = [(str(a.address), a.prefixlen) for a in found if a.interface == "eth1"]
    assert ("192.168.200.21", 24) in eth1 and ("fd00:db1::21", 64) in eth1
    docker6 = [a for a in found if str(a.address) == "fd00:1::1"][0]
    assert "tentative" in docker6.flags
    assert any(a.interface == "tunl0" for a in found)  # "tunl0@NONE" trimmed


def test_parse_ipvsadm_both_families():
    table = parse.parse_ipvsadm(load("ipvsadm-k8s-worker01-1.36.txt"))
    vs = table[("TCP", ipaddress.ip_address("10.96.0.1"), 443)]
    assert vs.scheduler == "rr"
    assert [(str(r.address), r.port, r.forward) for r in vs.real_servers] == [("192.168.200.11", 6443, "Masq")]
    v6 = table[("TCP", ipaddress.ip_address("fd00:3::5068"), 80)]
    assert len(v6.real_servers) == 3 and all(r.address.version == 6 for r in v6.real_servers)
    assert ("UDP", ipaddress.ip_address("10.96.0.10"), 53) in table
    # one NodePort virtual server per local address of each family (IPVS binds every one but kube-ipvs0's)
    nodeports = sorted(str(a) for (proto, a, port) in table if port == 30080)
    assert nodeports == ["10.244.79.0", "172.17.0.1", "192.168.200.21", "fd00:1::1", "fd00:db1::21"]
    stale = parse.parse_ipvsadm(load("ipvsadm-k8s-worker01-1.17.txt"))[("TCP", ipaddress.ip_address("fd00:3::5068"), 80)]
    assert [(str(r.address), r.weight) for r in stale.real_servers][0] == ("fd00:2::b5a5:4f8:6a6e:ac01", 0)


def test_parse_proc_net_tcp_decodes_addresses():
    sockets = parse.parse_proc_net_tcp(load("proc-net-tcp-nginx.txt"))
    listening = {(str(s.address), s.port) for s in sockets if s.listening}
    assert listening == {("0.0.0.0", 80), ("::", 80)}
    assert ("10.244.32.194", 80) in {(str(s.address), s.port) for s in sockets}
    assert ("fd00:2::6c1a:2f3e:9b04:20c1", 80) in {(str(s.address), s.port) for s in sockets}


def test_parse_access_log_formats():
    lines = parse.parse_access_log(load("nginx-access.log"))
    assert [l.remote_addr for l in lines] == ["10.244.79.4", "192.168.200.1", "fd00:db1::1", "fd00:2::6c1a:2f3e:9b04:20c2"]
    assert lines[1].request == "GET /?dslab-verify=TOKEN4 HTTP/1.1" and lines[1].status == 200
    assert lines[2].server == "fd00:2::b5a5:4f8:6a6e:ac02" and lines[2].pod == "my-nginx-7d9c6f8b5d-9wq2m"


def test_parse_getent_ahosts_distinct_in_order():
    assert [str(a) for a in parse.parse_getent_ahosts(load("getent-ahosts-master01.txt"))] == ["fd00:db1::11", "192.168.200.11"]


# ============================================================ node-addresses


def _addr_outputs(cfg, worker01_text):
    text = load("ip-addr-worker01.txt")
    outputs = {}
    for node in cfg.nodes:
        body = worker01_text if node.name == "k8s-worker01" else \
            text.replace("192.168.200.21", str(node.ipv4)).replace("fd00:db1::21", str(node.ipv6))
        outputs[node.name] = Section(0, body)
    return outputs


def test_node_addresses_pass(cfg36):
    assert network.evaluate_node_addresses(_addr_outputs(cfg36, load("ip-addr-worker01.txt")), cfg36) == []


def test_node_addresses_missing_ipv6_names_node_and_family(cfg36):
    found = network.evaluate_node_addresses(_addr_outputs(cfg36, load("ip-addr-worker01-no-ipv6.txt")), cfg36)
    assert problems(found) == ["k8s-worker01: missing its IPv6 address fd00:db1::21"]
    assert "provision/network.sh" in found[0].look_at


def test_node_addresses_dadfailed(cfg36):
    found = network.evaluate_node_addresses(_addr_outputs(cfg36, load("ip-addr-worker01-dadfailed.txt")), cfg36)
    assert problems(found) == ["k8s-worker01: IPv6 address fd00:db1::21 is dadfailed/tentative"]


def test_node_addresses_wrong_prefix_and_unreachable(cfg36):
    outputs = _addr_outputs(cfg36, load("ip-addr-worker01.txt").replace("192.168.200.21/24", "192.168.200.21/16"))
    outputs["k8s-worker02"] = Section(255, "ssh: connect to host: No route to host")
    assert problems(network.evaluate_node_addresses(outputs, cfg36)) == [
        "k8s-worker01: IPv4 address 192.168.200.21 has prefix /16",
        "k8s-worker02: could not read its addresses",
    ]


# ============================================================ node-dns


def _getent_for(cfg, target):
    return load("getent-ahosts-master01.txt").replace("192.168.200.11", str(target.ipv4)).replace("fd00:db1::11", str(target.ipv6))


def _dns_outputs(cfg, override=None):
    outputs = {}
    for node in cfg.nodes:
        answers = {name: (0, _getent_for(cfg, target)) for name, target in network.dns_names(cfg).items()}
        if override and node.name in override:
            answers.update(override[node.name])
        outputs[node.name] = sections_text(answers)
    return outputs


def test_node_dns_pass(cfg36):
    assert network.evaluate_node_dns(_dns_outputs(cfg36), cfg36) == []


def test_node_dns_loopback_and_missing_ipv6(cfg36):
    found = network.evaluate_node_dns(_dns_outputs(cfg36, {"k8s-master01": {
        "k8s-master01": (0, load("getent-ahosts-master01-loopback.txt"))}}), cfg36)
    assert problems(found) == [
        "k8s-master01: k8s-master01 does not resolve to its IPv6 fd00:db1::11",
        "k8s-master01: k8s-master01 also resolves to 127.0.0.1",
    ]
    assert "127.0.x.1" in found[1].look_at


def test_node_dns_name_unknown(cfg36):
    found = network.evaluate_node_dns(_dns_outputs(cfg36, {"k8s-worker02": {"k8s-worker01.dslab.internal": (2, "")}}), cfg36)
    assert problems(found) == ["k8s-worker02: k8s-worker01.dslab.internal does not resolve to its IPv4 192.168.200.21",
                               "k8s-worker02: k8s-worker01.dslab.internal does not resolve to its IPv6 fd00:db1::21"]


# ============================================================ node-reach

PING_OK = ("PING fd00:db1::21(fd00:db1::21) 56 data bytes\n64 bytes from fd00:db1::21: icmp_seq=1 ttl=64 time=0.41 ms\n\n"
           "--- fd00:db1::21 ping statistics ---\n1 packets transmitted, 1 received, 0% packet loss, time 0ms")
PING_FAIL = ("PING fd00:db1::21(fd00:db1::21) 56 data bytes\n\n--- fd00:db1::21 ping statistics ---\n"
             "1 packets transmitted, 0 received, 100% packet loss, time 0ms")


def _reach_outputs(cfg, broken=()):
    outputs = {}
    for src in cfg.nodes:
        answers = {}
        for dst in cfg.nodes:
            if dst.name != src.name:
                for v in (4, 6):
                    bad = (src.name, dst.name, v) in broken
                    answers[f"{dst.name}/{v}"] = (1 if bad else 0, PING_FAIL if bad else PING_OK)
        outputs[src.name] = sections_text(answers)
    return outputs


def test_node_reach_pass(cfg36):
    assert network.evaluate_node_reach(_reach_outputs(cfg36), cfg36) == []


def test_node_reach_ipv6_loss(cfg36):
    found = network.evaluate_node_reach(_reach_outputs(cfg36, {("k8s-master01", "k8s-worker01", 6)}), cfg36)
    assert problems(found) == ["k8s-master01 cannot ping k8s-worker01 over IPv6 (fd00:db1::21)"]
    assert "100% packet loss" in found[0].seen


def test_ping_command_works_on_old_and_new_iputils(cfg36):
    assert network.ping_command(cfg36.nodes[1].ipv4) == "ping -c1 -W2 192.168.200.21"
    assert "ping6 -c1 -W2 fd00:db1::21" in network.ping_command(cfg36.nodes[1].ipv6)


# ============================================================ pod-cidrs


def test_pod_cidrs_pass_both_eras(cfg36, cfg17):
    assert node_objects.evaluate_pod_cidrs(load("nodes-1.36.json"), cfg36) == []
    assert node_objects.evaluate_pod_cidrs(load("nodes-1.17.json"), cfg17) == []


def test_pod_cidrs_failures(cfg36):
    nodes = load("nodes-1.36.json")
    nodes["items"][0]["spec"]["podCIDRs"] = ["10.244.0.0/24"]  # single-stack allocation
    nodes["items"][1]["spec"]["podCIDRs"] = ["10.244.1.0/24", "fd00:9::/64"]  # outside the subnet
    del nodes["items"][2]["spec"]["podCIDRs"], nodes["items"][2]["spec"]["podCIDR"]
    assert problems(node_objects.evaluate_pod_cidrs(nodes, cfg36)) == [
        "k8s-master01: 0 IPv6 podCIDRs",
        "k8s-worker01: IPv6 podCIDR fd00:9::/64 is not one IPv6 /64 inside fd00:2::/48",
        "k8s-worker02: 0 IPv4 podCIDRs",
        "k8s-worker02: 0 IPv6 podCIDRs",
    ]


def test_controller_manager_allocates_flag():
    pods = load("kube-controller-manager-pods.json")
    assert node_objects.controller_manager_allocates(pods) is True
    pods["items"][0]["spec"]["containers"][0]["command"].remove("--allocate-node-cidrs=true")
    assert node_objects.controller_manager_allocates(pods) is False
    assert node_objects.controller_manager_allocates(None) is None


# ============================================================ node-internal-ips


def test_node_internal_ips_pass_current(cfg36):
    assert node_objects.evaluate_node_internal_ips(load("nodes-1.36.json"), cfg36, 36) == []


def test_node_internal_ips_117_ipv4_only_is_a_note(cfg17):
    found = node_objects.evaluate_node_internal_ips(load("nodes-1.17.json"), cfg17, 17)
    assert problems(found) == []
    assert notes(found) == ["no IPv6 InternalIP on k8s-master01, k8s-worker01, k8s-worker02: expected limitation of "
                            "Kubernetes 1.17 (kubelet --node-ip takes one address until 1.20)"]
    result = result_from_findings(found, "ok")
    assert result.status == PASS and result.notes


def test_node_internal_ips_missing_ipv6_fails_on_current(cfg36):
    found = node_objects.evaluate_node_internal_ips(load("nodes-1.17.json"), cfg36, 36)
    assert problems(found)[0] == "k8s-master01: no IPv6 InternalIP"


def test_node_internal_ips_vagrant_nat(cfg36):
    nodes = load("nodes-1.36.json")
    nodes["items"][1]["status"]["addresses"][0]["address"] = "192.168.121.57"
    found = node_objects.evaluate_node_internal_ips(nodes, cfg36, 36)
    assert problems(found) == ["k8s-worker01: IPv4 InternalIP is 192.168.121.57, not 192.168.200.21"]
    assert "Vagrant NAT" in found[0].look_at


# ============================================================ pod-ips


def test_pod_ips_pass(cfg36, cfg17):
    assert pod_objects.evaluate_pod_ips(load("pods-1.36.json"), cfg36, 36) == []
    assert pod_objects.evaluate_pod_ips(load("pods-1.17.json"), cfg17, 17) == []


def test_pod_ips_failures(cfg36):
    pods = load("pods-1.36.json")
    pods["items"][0]["status"]["podIPs"] = [{"ip": "10.244.69.198"}]  # cri-dockerd without --ipv6-dual-stack
    first = pods["items"][1]["status"]
    first["podIPs"] = list(reversed(first["podIPs"]))  # podIP != podIPs[0]
    pods["items"][2]["status"]["hostIPs"] = [{"ip": "192.168.200.22"}]  # the kubelet's --node-ip lacks the IPv6
    assert problems(pod_objects.evaluate_pod_ips(pods, cfg36, 36)) == [
        "default/my-nginx-7d9c6f8b5d-4xkzp: podIPs 10.244.69.198 is not one IPv4 and one IPv6",
        "default/my-nginx-7d9c6f8b5d-9wq2m: podIP 10.244.79.3 is not podIPs[0] fd00:2::b5a5:4f8:6a6e:ac02",
        "default/my-nginx-7d9c6f8b5d-tj8ls: hostIPs 192.168.200.22 are not k8s-worker02's",
    ]


def test_pod_ips_outside_subnet_and_none(cfg36):
    pods = load("pods-1.36.json")
    pods["items"][0]["status"]["podIPs"][1]["ip"] = "fd00:1::242:ac11:2"  # Docker's fixed-cidr-v6, not Calico
    assert problems(pod_objects.evaluate_pod_ips(pods, cfg36, 36)) == [
        "default/my-nginx-7d9c6f8b5d-4xkzp: podIPs fd00:1::242:ac11:2 outside the pod subnets"]
    assert problems(pod_objects.evaluate_pod_ips({"items": []}, cfg36, 36)) == [
        "0 of 3 nginx replicas found (pods labelled app=my-nginx in namespace default)"]


# ============================================================ service-families


def test_service_families_pass_current(cfg36):
    found = service_objects.evaluate_service_families(load("services-1.36.json"), load("endpointslices-1.36.json"), None, cfg36, 36)
    assert found == []


def test_service_families_pass_117_with_notes(cfg17):
    found = service_objects.evaluate_service_families(load("services-1.17.json"), load("endpointslices-1.17-empty.json"),
                                              load("endpoints-1.17.json"), cfg17, 17)
    assert problems(found) == []
    assert len(notes(found)) == 2 and "single-family" in notes(found)[0]


def test_service_families_current_failures(cfg36):
    services = load("services-1.36.json")
    dual = services["items"][5]["spec"]
    dual["clusterIPs"] = ["fd00:3::9a1", "10.96.120.7"]  # order does not follow ipFamilies
    services["items"][2]["spec"]["ipFamilyPolicy"] = "RequireDualStack"  # one family only
    slices = load("endpointslices-1.36.json")
    slices["items"] = [s for s in slices["items"] if not (s["metadata"]["name"].startswith("my-nginx-svc-dual") and s["addressType"] == "IPv6")]
    got = problems(service_objects.evaluate_service_families(services, slices, None, cfg36, 36))
    assert got == [
        "default/my-nginx-svc-ipv4: ipFamilyPolicy RequireDualStack with ipFamilies ['IPv4']",
        "default/my-nginx-svc-dual: clusterIPs fd00:3::9a1, 10.96.120.7 do not match its families IPv4, IPv6",
        "default/my-nginx-svc-dual: clusterIP 10.96.120.7 is not clusterIPs[0]",
        "default/my-nginx-svc-dual: EndpointSlices of type IPv4",
        "default/my-nginx-svc-dual: IPv6 EndpointSlices hold 0 of 3 ready nginx endpoints",
    ]


def test_service_families_outside_range_and_no_dual(cfg36):
    services = load("services-1.36.json")
    services["items"] = services["items"][:5]  # no my-nginx-svc-dual
    services["items"][3]["spec"]["clusterIP"] = services["items"][3]["spec"]["clusterIPs"][0] = "fd00:4::5068"
    got = problems(service_objects.evaluate_service_families(services, load("endpointslices-1.36.json"), None, cfg36, 36))
    assert got == ["default/my-nginx-svc-ipv6: cluster IP fd00:4::5068 outside the service subnets",
                   "no nginx Service is dual-stack", "Service my-nginx-svc-dual is missing"]


def test_service_families_117_failures(cfg17):
    services = load("services-1.17.json")
    del services["items"][2]["spec"]["ipFamily"]  # apiserver without the IPv6DualStack gate
    services["items"][3]["spec"]["clusterIP"] = "10.96.7.7"  # ipFamily IPv6 but an IPv4 cluster IP
    endpoints = load("endpoints-1.17.json")
    endpoints["items"][3]["subsets"][0]["addresses"][0]["ip"] = "10.244.69.198"
    got = problems(service_objects.evaluate_service_families(services, None, endpoints, cfg17, 17))
    assert got == [
        "default/my-nginx-svc-ipv4: no spec.ipFamily",
        "default/my-nginx-svc-ipv6: clusterIPs 10.96.7.7 do not match its families IPv6",
        "default/my-nginx-svc-ipv6-local: Endpoints hold 10.244.69.198, not IPv6",
        "default/my-nginx-svc-ipv6-local: Endpoints hold 2 of 3 ready nginx addresses",
    ]


# ============================================================ probes: pod-to-pod, pod/node-to-service


def test_pod_to_pod_targets_cover_both_families():
    targets = probes.pod_to_pod_targets(load("pods-1.36.json"))
    assert len(targets) == 6
    assert "http://[fd00:2::8e1:3d7c:51a9:4e06]:80/" in [t.url for t in targets]


def test_evaluate_probes_pass_and_fail():
    targets = probes.cluster_ip_targets(load("services-1.36.json"))
    assert [t.url for t in targets] == ["http://10.96.48.15:80/", "http://[fd00:3::5068]:80/", "http://[fd00:3::1ff3]:80/",
                                        "http://10.96.120.7:80/", "http://[fd00:3::9a1]:80/"]
    ok = sections_text({t.key: (0, "200") for t in targets})
    assert probes.evaluate_probes({"client on k8s-worker01": ok}, {"client on k8s-worker01": targets}) == []
    bad = sections_text({**{t.key: (0, "200") for t in targets}, targets[1].key: (28, "000")})
    found = probes.evaluate_probes({"client on k8s-worker01": bad, "client on k8s-worker02": None},
                                    {"client on k8s-worker01": targets, "client on k8s-worker02": targets})
    assert problems(found) == ["client on k8s-worker01 -> Service my-nginx-svc-ipv6 fd00:3::5068:80: HTTP 000",
                               "client on k8s-worker02: could not run the probes"]
    assert found[0].seen == "HTTP 000 (no answer)"


def test_node_port_targets_respect_local_policy(cfg36):
    pods = load("pods-1.36.json")
    pods["items"] = pods["items"][1:]  # no nginx on the control plane
    targets = probes.node_port_targets(load("services-1.36.json"), pods, cfg36)
    urls = [t.url for t in targets]
    assert "http://[fd00:db1::21]:32405/" in urls and "http://192.168.200.22:30080/" in urls
    assert not any("192.168.200.11" in u or "fd00:db1::11]" in u for u in urls)
    assert "http://192.168.200.21:32405/" not in urls  # an IPv6-only Service has no IPv4 NodePort


# ============================================================ cluster-dns


def _dig_outputs(services, override=None):
    answers = {}
    for key, (svc, rtype, _fqdn) in dns.dns_queries(services).items():
        want = [a for a in kube.service_cluster_ips(svc) if (":" in a) == (rtype == "AAAA")]
        answers[key] = (0, "\n".join(want))
    answers.update(override or {})
    return {"client on k8s-master01": sections_text(answers)}


def test_cluster_dns_pass_both_eras():
    for name in ("services-1.36.json", "services-1.17.json"):
        services = load(name)
        assert dns.evaluate_cluster_dns(_dig_outputs(services), services) == []


def test_cluster_dns_failures():
    services = load("services-1.36.json")
    found = dns.evaluate_cluster_dns(_dig_outputs(services, {"my-nginx-svc-dual/AAAA": (0, ""),
                                                                  "my-nginx-svc-ipv4/AAAA": (0, "fd00:3::77")}), services)
    assert problems(found) == [
        "client on k8s-master01: AAAA my-nginx-svc-ipv4.default.svc.cluster.local answered fd00:3::77",
        "client on k8s-master01: AAAA my-nginx-svc-dual.default.svc.cluster.local answered nothing",
    ]
    assert found[1].expected == "AAAA fd00:3::9a1"


# ============================================================ kube-proxy-ipvs


def test_kube_proxy_config_pass_both_eras(cfg36, cfg17):
    assert proxy.evaluate_kube_proxy_config(load("kube-proxy-cm-1.36.json"), cfg36) == []
    assert proxy.evaluate_kube_proxy_config(load("kube-proxy-cm-1.17.json"), cfg17) == []


def test_kube_proxy_config_failures(cfg17):
    cm = load("kube-proxy-cm-1.17.json")
    cm["data"]["config.conf"] = (cm["data"]["config.conf"].replace("mode: ipvs", 'mode: ""')
                                 .replace("strictARP: true", "strictARP: false")
                                 .replace("clusterCIDR: 10.244.0.0/16,fd00:2::/48", "clusterCIDR: 10.244.0.0/16")
                                 .replace("featureGates:\n  IPv6DualStack: true\n", ""))
    assert problems(proxy.evaluate_kube_proxy_config(cm, cfg17)) == [
        "kube-proxy mode is ''", "kube-proxy ipvs.strictARP is not true",
        "kube-proxy clusterCIDR is '10.244.0.0/16'", "kube-proxy lacks featureGates IPv6DualStack: true"]
    assert problems(proxy.evaluate_kube_proxy_config(None, cfg17)) == ["no kube-system/kube-proxy ConfigMap"]


MODULES = ("ip_vs_sh 12688 0 - Live 0xffffffffc0a1e000\nip_vs_wrr 12697 0 - Live 0xffffffffc0a19000\n"
           "ip_vs_rr 12600 13 - Live 0xffffffffc0a14000\n"
           "ip_vs 145458 19 ip_vs_sh,ip_vs_wrr,ip_vs_rr, Live 0xffffffffc09e7000\n"
           "nf_conntrack 139264 9 ip_vs,nf_nat,nf_conntrack_netlink, Live 0xffffffffc0540000\n"
           "br_netfilter 22256 0 - Live 0xffffffffc0531000\n")
SYSCTL = ("net.ipv4.ip_forward = 1\nnet.ipv6.conf.all.forwarding = 1\n"
          "net.bridge.bridge-nf-call-iptables = 1\nnet.bridge.bridge-nf-call-ip6tables = 1\n")


def _proxy_output(ipvsadm=None, mode="ipvs", modules=MODULES, sysctl=SYSCTL, node="k8s-worker01", version="1.36"):
    table = ipvsadm if ipvsadm is not None else load(f"ipvsadm-{node}-{version}.txt")
    return sections_text({"proxymode": (0, mode), "ipvsadm": (0, table), "modules": (0, modules), "sysctl": (0, sysctl)})


NODES = ("k8s-master01", "k8s-worker01", "k8s-worker02")


@pytest.mark.parametrize("version", ["1.36", "1.17"])
def test_node_proxy_pass_every_node_both_eras(cfg36, cfg17, version):
    cfg = cfg36 if version == "1.36" else cfg17
    exp = proxy.ipvs_expectations(load(f"services-{version}.json"), load(f"pods-{version}.json"), cfg)
    # 1.36: 5 cluster IPs, 3 LoadBalancer IPs, 2 externalIPs, NodePorts: dual 2 families + ipv6-local 1, on 3 nodes
    assert len(exp) == (10 + 9 if version == "1.36" else 3 + 1 + 2 + 3)
    outputs = {node: _proxy_output(node=node, version=version) for node in NODES}
    assert proxy.evaluate_node_proxy(outputs, exp) == []


def test_node_proxy_failures(cfg36):
    exp = proxy.ipvs_expectations(load("services-1.36.json"), load("pods-1.36.json"), cfg36)
    table = load("ipvsadm-k8s-worker01-1.36.txt")
    table = table.replace("TCP  [fd00:3::5068]:80 rr", "TCP  [fd00:3::5069]:80 rr")  # IPv6 cluster IP missing
    table = table.replace("TCP  [fd00:db1::240]:80 rr\n  -> [fd00:2::b5a5:4f8:6a6e:ac02]:80 Masq    1      0          0         \n",
                          "TCP  [fd00:db1::240]:80 rr\n")  # Local LB on a node with a pod: no backend
    found = proxy.evaluate_node_proxy({"k8s-worker01": _proxy_output(table, mode="iptables",
                                                                       modules=MODULES.replace("ip_vs_rr", "xx"),
                                                                       sysctl=SYSCTL.replace("net.bridge.bridge-nf-call-ip6tables = 1\n", ""))}, exp)
    assert problems(found) == [
        "k8s-worker01: kube-proxy runs in mode iptables",
        "k8s-worker01: no IPVS virtual server for my-nginx-svc-ipv6 cluster IP TCP [fd00:3::5068]:80",
        "k8s-worker01: my-nginx-svc-ipv6-local LoadBalancer IP TCP [fd00:db1::240]:80 has no backends",
        "k8s-worker01: kernel modules ip_vs_rr not loaded",
        "k8s-worker01: net.bridge.bridge-nf-call-ip6tables = (missing)",
    ]
    assert found[-1].look_at.startswith("load br_netfilter")
    assert (found[1].node, found[1].family, found[1].address) == ("k8s-worker01", "IPv6", "fd00:3::5068")


def test_node_proxy_nodeport_on_each_node_address_of_each_family(cfg36):
    """A NodePort lost for one family on one node's lab address fails, naming node, family and address."""
    exp = proxy.ipvs_expectations(load("services-1.36.json"), load("pods-1.36.json"), cfg36)
    table = load("ipvsadm-k8s-worker02-1.36.txt").replace("TCP  [fd00:db1::22]:30080 rr", "TCP  [fd00:db1::99]:30080 rr")
    found = proxy.evaluate_node_proxy({"k8s-worker02": _proxy_output(table, node="k8s-worker02")}, exp)
    assert problems(found) == ["k8s-worker02: no IPVS virtual server for my-nginx-svc-dual NodePort on k8s-worker02 "
                               "TCP [fd00:db1::22]:30080"]
    assert (found[0].node, found[0].family, found[0].address) == ("k8s-worker02", "IPv6", "fd00:db1::22")


def test_node_proxy_every_replica_is_a_backend(cfg36):
    """A cluster IP forwarding to two of three ready replicas fails, naming the missing one."""
    exp = proxy.ipvs_expectations(load("services-1.36.json"), load("pods-1.36.json"), cfg36)
    table = load("ipvsadm-k8s-worker01-1.36.txt").replace(
        "TCP  [fd00:3::9a1]:80 rr\n  -> [fd00:2::b5a5:4f8:6a6e:ac02]:80 Masq    1      0          0         \n",
        "TCP  [fd00:3::9a1]:80 rr\n")
    found = proxy.evaluate_node_proxy({"k8s-worker01": _proxy_output(table)}, exp)
    assert problems(found) == ["k8s-worker01: my-nginx-svc-dual cluster IP TCP [fd00:3::9a1]:80 lacks backends "
                               "fd00:2::b5a5:4f8:6a6e:ac02"]


def test_node_proxy_ignores_draining_real_servers_at_weight_zero(cfg17):
    """kube-proxy keeps a removed endpoint at weight 0 while its connections drain: not stale state."""
    exp = proxy.ipvs_expectations(load("services-1.17.json"), load("pods-1.17.json"), cfg17)
    table = load("ipvsadm-k8s-worker01-1.17.txt")
    assert "[fd00:2::b5a5:4f8:6a6e:ac01]:80 Masq    0" in table
    assert proxy.evaluate_node_proxy({"k8s-worker01": _proxy_output(table, version="1.17")}, exp) == []
    live = table.replace("[fd00:2::b5a5:4f8:6a6e:ac01]:80 Masq    0", "[fd00:2::b5a5:4f8:6a6e:ac01]:80 Masq    1")
    assert problems(proxy.evaluate_node_proxy({"k8s-worker01": _proxy_output(live, version="1.17")}, exp)) == [
        "k8s-worker01: my-nginx-svc-ipv6 cluster IP TCP [fd00:3::5068]:80 forwards to fd00:2::b5a5:4f8:6a6e:ac01"]
    drained = table.replace("TCP  [fd00:db1::21]:32405 rr\n  -> [fd00:2::b5a5:4f8:6a6e:ac02]:80 Masq    1",
                            "TCP  [fd00:db1::21]:32405 rr\n  -> [fd00:2::b5a5:4f8:6a6e:ac02]:80 Masq    0")
    found = proxy.evaluate_node_proxy({"k8s-worker01": _proxy_output(drained, version="1.17")}, exp)
    assert problems(found) == ["k8s-worker01: my-nginx-svc-ipv6-local NodePort on k8s-worker01 TCP [fd00:db1::21]:32405 has no backends"]
    assert found[0].seen == "no real servers (only drained ones, weight 0)"


def test_local_lb_without_backend_is_fine_on_a_node_without_pods(cfg36):
    exp = proxy.ipvs_expectations(load("services-1.36.json"), load("pods-1.36.json"), cfg36)
    table = load("ipvsadm-k8s-master01-1.36.txt")
    assert "TCP  [fd00:db1::240]:80 rr\nTCP" in table  # the control plane runs no nginx: no local backend
    assert proxy.evaluate_node_proxy({"k8s-master01": _proxy_output(table, node="k8s-master01")}, exp) == []


# ============================================================ calico-pools


def test_calico_pass(cfg36):
    assert cni.evaluate_calico(load("ippools.json"), load("calico-node-pods.json"), load("nodes-1.36.json"), cfg36) == []


def test_calico_failures(cfg36):
    pools = load("ippools.json")
    pools["items"][1]["spec"]["disabled"] = True
    pods = load("calico-node-pods.json")
    pods["items"][2]["status"]["conditions"][1]["status"] = "False"
    nodes = load("nodes-1.36.json")
    del nodes["items"][1]["metadata"]["annotations"]["projectcalico.org/IPv6Address"]
    nodes["items"][0]["metadata"]["annotations"]["projectcalico.org/IPv4Address"] = "192.168.121.57/24"
    found = cni.evaluate_calico(pools, pods, nodes, cfg36)
    assert problems(found) == [
        "no enabled IPv6 IPPool for fd00:2::/48",
        "k8s-master01: Calico detected 192.168.121.57/24 for IPv4",
        "k8s-worker01: Calico detected no address for IPv6",
        "k8s-worker02: calico-node kube-system/calico-node-zr5tb not Ready",
    ]
    assert "FELIX_IPV6SUPPORT" in found[2].look_at


def test_calico_pool_outside_subnet_and_crd_missing(cfg36):
    pools = load("ippools.json")
    extra = copy.deepcopy(pools["items"][0])
    extra["metadata"]["name"] = "stray"
    extra["spec"]["cidr"] = "192.168.0.0/16"  # Calico's manifest default when CALICO_IPV4POOL_CIDR was left commented
    pools["items"].append(extra)
    assert problems(cni.evaluate_calico(pools, load("calico-node-pods.json"), load("nodes-1.36.json"), cfg36)) == [
        "IPPool stray (192.168.0.0/16) is enabled outside the pod subnets"]
    assert problems(cni.evaluate_calico(None, load("calico-node-pods.json"), load("nodes-1.36.json"), cfg36)) == [
        "IPPools (crd.projectcalico.org/v1) cannot be read"]


# ============================================================ metallb-ingress


def test_load_balancers_pass(cfg36, cfg17):
    found, targets = ingress.evaluate_load_balancers(load("services-1.36.json"), cfg36)
    assert found == [] and [t.url for t in targets] == ["http://[fd00:db1::240]:80/", "http://192.168.200.240:80/", "http://[fd00:db1::241]:80/"]
    found, targets = ingress.evaluate_load_balancers(load("services-1.17.json"), cfg17)
    assert found == [] and len(targets) == 1


def test_load_balancers_failures(cfg36, cfg17):
    services = load("services-1.36.json")
    services["items"][4]["status"] = {"loadBalancer": {}}  # pending
    services["items"][5]["status"]["loadBalancer"]["ingress"] = [{"ip": "192.168.200.99", "ipMode": "VIP"}]
    found, _ = ingress.evaluate_load_balancers(services, cfg36)
    assert problems(found) == [
        "default/my-nginx-svc-ipv6-local: no LoadBalancer ingress IP",
        "default/my-nginx-svc-dual: ingress 192.168.200.99 does not match its families IPv4, IPv6",
        "default/my-nginx-svc-dual: no ingress 192.168.200.240 (IPv4)",
        "default/my-nginx-svc-dual: no ingress fd00:db1::241 (IPv6)",
        "default/my-nginx-svc-dual: ingress 192.168.200.99 outside the MetalLB pools",
    ]
    assert (found[3].family, found[3].address) == ("IPv6", "fd00:db1::241")
    old = load("services-1.17.json")
    old["items"][4]["status"]["loadBalancer"]["ingress"] = [{"ip": "192.168.200.240"}]  # MetalLB 0.9 picked IPv4
    found, _ = ingress.evaluate_load_balancers(old, cfg17)
    assert problems(found) == ["default/my-nginx-svc-ipv6-local: ingress 192.168.200.240 does not match its families IPv6",
                               "default/my-nginx-svc-ipv6-local: no ingress fd00:db1::240 (IPv6)"]
    assert "MetalLB 0.9 cannot choose a family" in found[0].look_at


def test_host_codes():
    _, targets = ingress.evaluate_load_balancers(load("services-1.17.json"), config.load({"profile": "seed-2020"}))
    assert ingress.evaluate_host_codes({targets[0].key: "200"}, targets) == []
    assert problems(ingress.evaluate_host_codes({targets[0].key: "000"}, targets)) == [
        "host -> LoadBalancer default/my-nginx-svc-ipv6-local fd00:db1::240:80: HTTP 000"]


# ============================================================ client-ip-preserved


def _client_probes():
    services = load("services-1.36.json")
    found = ingress.local_targets(services)
    probes = {}
    for target, version in found:
        if target.key == "local-my-nginx-svc-dual/4":
            probes["TOKEN4"] = (target, version, target.key)
        if target.key == "local-my-nginx-svc-dual/6":
            probes["TOKEN6"] = (target, version, target.key)
    return probes


def test_client_ip_pass(cfg36):
    probes = _client_probes()
    codes = {p[2]: "200" for p in probes.values()}
    assert ingress.evaluate_client_ip(load("nginx-access.log"), probes, codes, cfg36) == []


def test_client_ip_snat_and_missing(cfg36):
    probes = _client_probes()
    codes = {p[2]: "200" for p in probes.values()}
    log = load("nginx-access.log").replace("192.168.200.1 - -", "192.168.200.21 - -").replace("TOKEN6", "OTHER")
    found = ingress.evaluate_client_ip(log, probes, codes, cfg36)
    assert problems(found) == [
        "my-nginx-svc-dual 192.168.200.240: nginx saw client 192.168.200.21 (k8s-worker01's address: the request was SNATed)",
        "my-nginx-svc-dual fd00:db1::241: the request is not in the nginx logs",
    ]
    assert found[0].expected == "client 192.168.200.1 (the host)"


# ============================================================ external-ips


def test_external_ips_pass(cfg36, cfg17):
    found, targets = ingress.evaluate_external_ips(load("services-1.36.json"), cfg36)
    assert found == [] and [t.url for t in targets] == ["http://192.168.200.145:80/", "http://[fd00:db1::120]:80/"]
    assert ingress.evaluate_external_ips(load("services-1.17.json"), cfg17)[0] == []


def test_external_ips_failures(cfg36):
    services = load("services-1.36.json")
    services["items"][2]["spec"]["externalIPs"] = ["fd00:db1::120"]  # IPv6 externalIP on an IPv4 Service
    services["items"][3]["spec"]["externalIPs"] = []
    found, _ = ingress.evaluate_external_ips(services, cfg36)
    assert problems(found) == ["default/my-nginx-svc-ipv4: externalIP fd00:db1::120 is not of its families IPv4",
                               "no nginx Service has externalIP 192.168.200.145"]


# ============================================================ nginx-listens


def test_nginx_listens_pass_and_ipv4_only():
    ok = {"my-nginx-a": Section(0, load("proc-net-tcp-nginx.txt"))}
    assert nginx.evaluate_nginx_listens(ok) == []
    bad = {"my-nginx-a": Section(0, load("proc-net-tcp-nginx-ipv4-only.txt")),
           "my-nginx-b": Section(1, "error: unable to upgrade connection: container not found")}
    found = nginx.evaluate_nginx_listens(bad)
    assert problems(found) == ["my-nginx-a: nginx does not listen on [::]:80", "my-nginx-b: could not read /proc/net/tcp"]
    assert found[0].seen == "listening on port 80: 0.0.0.0:80"


def test_result_from_findings_keeps_every_finding_whole():
    """No "(and N more)" hiding problems, no merged expected/seen that no longer pair up."""
    from lab.verify.model import Finding
    result = result_from_findings([Finding("a", "x", "y", "z", node="n1"), Finding("b", "x", "w", "z", family="IPv6"),
                                   Finding("c", note=True)], "fine")
    assert result.status == FAIL and result.message == "2 problems"
    assert [(f.problem, f.expected, f.seen, f.where()) for f in result.problems] == [("a", "x", "y", "node n1"), ("b", "x", "w", "IPv6")]
    assert (result.expected, result.seen, result.look_at) == ("x", "y", "z")  # the first problem's, paired
    assert result.notes == ["c"]
    one = result_from_findings([Finding("only", "e", "s", "l")], "fine")
    assert one.message == "only" and (one.expected, one.seen) == ("e", "s")


def test_lab_load_balancers_present_with_ingress_pass(cfg36):
    assert ingress.missing_load_balancers(load("services-1.36.json"), cfg36) is None


def test_missing_or_pending_load_balancers_fail_not_skip(cfg36):
    services = load("services-1.36.json")
    kept = [s for s in services["items"] if s["metadata"]["name"] != "my-nginx-svc-dual"]
    for svc in kept:
        if svc["metadata"]["name"] == "my-nginx-svc-ipv6-local":
            svc["status"] = {"loadBalancer": {}}
    result = ingress.missing_load_balancers({**services, "items": kept}, cfg36)
    assert result is not None and result.status == "fail"
    assert "my-nginx-svc-ipv6-local" in result.message and "my-nginx-svc-dual" in result.message
    assert "my-nginx-svc-dual: absent" in result.seen
    assert "my-nginx-svc-ipv6-local: no status.loadBalancer.ingress" in result.seen


# ============================================================ the fixtures have the real shapes


@pytest.mark.parametrize("version", ["1.36", "1.17"])
def test_fixture_runs_no_nginx_on_the_tainted_control_plane(version):
    """kubeadm taints the control plane NoSchedule and the nginx pods do not tolerate it."""
    nodes = {n["metadata"]["name"]: n for n in load(f"nodes-{version}.json")["items"]}
    tainted = {name for name, n in nodes.items() if any(t["effect"] == "NoSchedule" for t in n["spec"].get("taints") or [])}
    assert tainted == {"k8s-master01"}
    pods = kube.nginx_pods(load(f"pods-{version}.json"))
    assert len(pods) == 3 and not [p for p in pods if p["spec"]["nodeName"] in tainted]
    assert not any(t.get("key", "").startswith("node-role.kubernetes.io/") for p in pods for t in p["spec"].get("tolerations") or [])


def test_fixture_kubernetes_endpointslice_as_the_apiserver_writes_it():
    """pkg/controlplane/reconcilers/endpointsadapter.go: name and service-name label only (no managed-by,
    the mirroring controller skips it), IPv4, the API server's address, ready, port https 6443."""
    (sl,) = [s for s in load("endpointslices-1.36.json")["items"] if s["metadata"]["name"] == "kubernetes"]
    assert sl["metadata"]["labels"] == {"kubernetes.io/service-name": "kubernetes"}
    assert sl["addressType"] == "IPv4" and sl["endpoints"] == [{"addresses": ["192.168.200.11"], "conditions": {"ready": True}}]
    assert sl["ports"] == [{"name": "https", "port": 6443, "protocol": "TCP"}]


def test_fixture_access_log_as_the_rendered_nginx_config_writes_it(cfg36):
    """Every line of the fixture has the fields of `log_format dslab` in lab/workloads.py, in its order."""
    from lab import workloads
    conf = [d for d in workloads.nginx(cfg36) if d["kind"] == "ConfigMap"][0]["data"]["default.conf"]
    fields = re.findall(r"\$(\w+)", conf.split("log_format dslab", 1)[1].split(";", 1)[0])
    assert fields == ["remote_addr", "remote_user", "time_local", "request", "status", "body_bytes_sent",
                      "http_referer", "http_user_agent", "server_addr", "hostname"]
    text = load("nginx-access.log")
    shape = re.compile(r'^\S+ - - \[[^\]]+\] "[^"]*" \d{3} \d+ "[^"]*" "[^"]*" server=\S+ pod=\S+$')
    assert all(shape.match(line) for line in text.splitlines())
    assert len(parse.parse_access_log(text)) == len(text.splitlines())


def test_fixture_136_nodes_carry_calicos_network_unavailable_condition():
    """calico-node sets NetworkUnavailable False / CalicoIsUp when it starts (node/pkg/lifecycle/utils/utils.go)."""
    for node in load("nodes-1.36.json")["items"]:
        (cond,) = [c for c in node["status"]["conditions"] if c["type"] == "NetworkUnavailable"]
        assert (cond["status"], cond["reason"], cond["message"]) == ("False", "CalicoIsUp", "Calico is running on this node")


def test_calico_network_unavailable_fails_naming_the_node(cfg36):
    nodes = load("nodes-1.36.json")
    cond = [c for c in nodes["items"][1]["status"]["conditions"] if c["type"] == "NetworkUnavailable"][0]
    cond.update(status="True", reason="CalicoIsDown", message="Calico is shutting down on this node")
    found = cni.evaluate_calico(load("ippools.json"), load("calico-node-pods.json"), nodes, cfg36)
    assert problems(found) == ["k8s-worker01: NetworkUnavailable is True (CalicoIsDown: Calico is shutting down on this node)"]
    assert found[0].node == "k8s-worker01"


# ============================================================ ssh errors in the network findings


class _Nodes:
    """Nodes answering a network check's script; ``down`` gives no output and ssh's error text."""

    def __init__(self, cfg, answer, down):
        self.cfg, self.answer, self.down = cfg, answer, down

    def node_run(self, node, script, timeout=None):
        from lab.context import Result
        if node in self.down:
            return Result(255, "", self.down[node])
        return Result(0, self.answer(node, script))


SSH_DOWN = "ssh: connect to host 192.168.200.22 port 22: No route to host\r\n"


@pytest.mark.parametrize("check", ["node-dns", "node-reach"])
def test_a_node_ssh_cannot_reach_is_named_with_sshs_error(cfg36, check):
    outputs = _dns_outputs(cfg36) if check == "node-dns" else _reach_outputs(cfg36)
    nodes = _Nodes(cfg36, lambda node, script: outputs[node], {"k8s-worker02": SSH_DOWN})
    result = (network.node_dns if check == "node-dns" else network.node_reach)(nodes)
    assert result.status == FAIL
    (found,) = result.problems
    assert found.problem == f"k8s-worker02: could not run {'getent' if check == 'node-dns' else 'ping'}"
    assert (found.node, found.error) == ("k8s-worker02", SSH_DOWN.strip())


# ============================================================ IPv6 NodePorts and the kernel's local routes

KERNEL_EL7 = "3.10.0-1127.el7.x86_64"
KERNEL_EL9 = "5.14.0-570.el9.x86_64"


def test_parse_routes_of_old_and_new_iproute2():
    old = {r.destination: r for r in parse.parse_routes(load("ip6-route-local-worker01-centos7.txt"))}
    assert old["fd00:db1::21"] == parse.Route("local", "fd00:db1::21", "lo", "none")
    assert old["ff00::/8"].kind == "unicast" and old["ff00::/8"].protocol == ""  # no type, no proto printed
    new = parse.parse_routes(load("ip6-route-local-worker01-stream9.txt"))
    assert parse.Route("local", "fd00:db1::21", "eth1", "kernel") in new
    assert {r.kind for r in new} == {"local", "anycast", "multicast"} and {r.protocol for r in new} == {"kernel"}


def _routes(distribution, node="k8s-worker01", kernel=None):
    cfg = config.load({})
    text = load(f"ip6-route-local-worker01-{distribution}.txt").replace("fd00:db1::21 ", f"{cfg.node(node).ipv6} ")
    return {"ipv6-local-routes": (0, text), "kernel-release": (0, kernel or (KERNEL_EL7 if distribution == "centos7" else KERNEL_EL9))}


def _without_ipv6_nodeports(table):
    """The table of a node whose kube-proxy found no IPv6 node address: no IPv6 NodePort at all."""
    out, skip = [], False
    for line in table.splitlines():
        if not line.startswith(" "):
            skip = bool(re.match(r"^TCP  \[(fd00:db1::2\d|::1)\]:32405 ", line))
        if not skip:
            out.append(line)
    return "\n".join(out) + "\n"


def _limited_proxy_output(distribution, ipvsadm=None):
    table = ipvsadm if ipvsadm is not None else _without_ipv6_nodeports(load("ipvsadm-k8s-worker01-1.17.txt"))
    return sections_text({"proxymode": (0, "ipvs"), "ipvsadm": (0, table), "modules": (0, MODULES),
                          "sysctl": (0, SYSCTL), **_routes(distribution)})


def test_proxy_script_reads_the_ipv6_local_routes_and_the_kernel():
    script = proxy.proxy_node_script()
    assert "ip -6 route show table local" in script and "uname -r" in script


def test_ipv6_nodeports_missing_where_ipv6_local_routes_are_not_proto_kernel_are_the_known_limit(cfg17):
    exp = proxy.ipvs_expectations(load("services-1.17.json"), load("pods-1.17.json"), cfg17)
    found = proxy.evaluate_node_proxy({"k8s-worker01": _limited_proxy_output("centos7")}, exp, cfg=cfg17)
    assert problems(found) == []
    (limit,) = [f for f in found if f.note]
    assert limit.problem.startswith("k8s-worker01: 1 IPv6 NodePort virtual server(s) missing on its IPv6 fd00:db1::21: "
                                    "expected limitation of Kubernetes 1.17 on kernel 3.10.0-1127.el7.x86_64, whose "
                                    "IPv6 local routes are proto none")
    assert "kubernetes/kubernetes#93858" in limit.problem and (limit.node, limit.address) == ("k8s-worker01", "fd00:db1::21")


def test_ipv6_nodeports_missing_where_routes_are_proto_kernel_still_fail(cfg17, cfg36):
    exp = proxy.ipvs_expectations(load("services-1.17.json"), load("pods-1.17.json"), cfg17)
    found = proxy.evaluate_node_proxy({"k8s-worker01": _limited_proxy_output("stream9")}, exp, cfg=cfg17)
    assert problems(found) == ["k8s-worker01: no IPVS virtual server for my-nginx-svc-ipv6-local NodePort on k8s-worker01 "
                               "TCP [fd00:db1::21]:32405"] and notes(found) == []
    # on current: a kernel since 4.11 gives proto kernel, and a missing IPv6 NodePort is a failure
    exp36 = proxy.ipvs_expectations(load("services-1.36.json"), load("pods-1.36.json"), cfg36)
    table = load("ipvsadm-k8s-worker02-1.36.txt").replace("TCP  [fd00:db1::22]:30080 rr", "TCP  [fd00:db1::99]:30080 rr")
    output = sections_text({"proxymode": (0, "ipvs"), "ipvsadm": (0, table), "modules": (0, MODULES),
                            "sysctl": (0, SYSCTL), **_routes("stream9", "k8s-worker02")})
    assert problems(proxy.evaluate_node_proxy({"k8s-worker02": output}, exp36, cfg=cfg36)) == [
        "k8s-worker02: no IPVS virtual server for my-nginx-svc-dual NodePort on k8s-worker02 TCP [fd00:db1::22]:30080"]


def test_the_route_limit_covers_only_missing_ipv6_nodeports(cfg17):
    exp = proxy.ipvs_expectations(load("services-1.17.json"), load("pods-1.17.json"), cfg17)
    table = _without_ipv6_nodeports(load("ipvsadm-k8s-worker01-1.17.txt")).replace("TCP  [fd00:3::5068]:80 rr",
                                                                                  "TCP  [fd00:3::5069]:80 rr")
    found = proxy.evaluate_node_proxy({"k8s-worker01": _limited_proxy_output("centos7", table)}, exp, cfg=cfg17)
    assert problems(found) == ["k8s-worker01: no IPVS virtual server for my-nginx-svc-ipv6 cluster IP TCP [fd00:3::5068]:80"]
    assert len(notes(found)) == 1
