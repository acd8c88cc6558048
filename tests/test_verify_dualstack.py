"""The checks that create their own objects (lab/verify/dualstack.py, traffic.py, fresh.py):
their manifests against both versions' API schemas, their lifecycle, and each check healthy on
both versions and failing, with a finding naming node, pod, family and address, on a cluster
broken the way it looks for."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from lab import config
from lab.context import Result
from lab.verify import dualstack, fresh, registry, traffic
from lab.verify.model import FAIL, PASS, SKIP
from lab.verify.parse import BEGIN, END
from lab.verify.session import (
    CLIENT_LABEL_KEY, CLIENT_LABEL_VALUE, CLIENT_NAME_PREFIX, CLIENT_SELECTOR, VerifyContext,
)

FIX = Path(__file__).parent / "fixtures" / "verify" / "dualstack"
VERSIONS = {"current": "1.36", "seed-2020": "1.17"}
PROFILES = tuple(VERSIONS)


def load(name):
    text = (FIX / name).read_text()
    return json.loads(text) if name.endswith(".json") else text


def cfg_of(profile):
    return config.load({"profile": profile})


def items_as(name, check, profile):
    """A fixture List of a check (written for udp-service or downward-pod-ips) as another check's."""
    text = (FIX / f"{name}-{VERSIONS[profile]}.json").read_text()
    text = text.replace("udp-service", check).replace("downward-pod-ips", check)
    return json.loads(text)["items"]


def all_objects(cfg):
    builds = (traffic.nodeport_objects, traffic.hairpin_objects, traffic.udp_objects, traffic.large_objects,
              fresh.fresh_objects, fresh.downward_objects)
    return [obj for build in builds for obj in build(cfg)[1]] + fresh.policy_objects(cfg)


# ============================================================ manifests


@pytest.mark.parametrize("profile", PROFILES)
def test_every_object_validates_against_its_versions_api_schema(profile):
    schemas = pytest.importorskip("schemas")
    cfg = cfg_of(profile)
    assert schemas.validate_objects(all_objects(cfg), cfg.profile.kubernetes_schema_version) == []


def test_the_schemas_tell_the_two_service_apis_apart():
    schemas = pytest.importorskip("schemas")
    new = [o for o in all_objects(cfg_of("current")) if o["kind"] == "Service"]
    old = [o for o in all_objects(cfg_of("seed-2020")) if o["kind"] == "Service"]
    assert schemas.validate_objects(new, "1.17")  # ipFamilyPolicy/ipFamilies do not exist in 1.17
    assert schemas.validate_objects(old, "1.36")  # the alpha ipFamily is gone


@pytest.mark.parametrize("profile", PROFILES)
def test_fixtures_are_the_api_shapes_of_their_version(profile):
    schemas = pytest.importorskip("schemas")
    version = VERSIONS[profile]
    objs = [o for path in sorted(FIX.glob(f"*-{version}*.json")) for o in json.loads(path.read_text())["items"]]
    # the API writes an unset time as null (lastProbeTime), which the 1.17 schemas do not allow
    text = re.sub(r'"lastProbeTime": null, ', "", json.dumps(objs))
    assert len(objs) > 10 and schemas.validate_objects(json.loads(text), version) == []


@pytest.mark.parametrize("profile", PROFILES)
def test_objects_are_labelled_pinned_and_use_the_client_image(profile):
    cfg = cfg_of(profile)
    for build in (traffic.hairpin_objects, traffic.udp_objects, traffic.large_objects, fresh.fresh_objects,
                  fresh.downward_objects, traffic.nodeport_objects):
        expected, objs = build(cfg)
        assert all(o["metadata"]["labels"][CLIENT_LABEL_KEY] == CLIENT_LABEL_VALUE for o in objs)
        pods = [o for o in objs if o["kind"] == "Pod"]
        assert {p["metadata"]["name"]: p["spec"]["nodeName"] for p in pods} == expected
        assert all(p["spec"]["containers"][0]["image"] == cfg.profile.client_image and
                   p["spec"]["tolerations"] == [{"operator": "Exists"}] for p in pods)
        if build is not traffic.nodeport_objects:  # every node, the tainted control plane included
            assert set(expected.values()) == {n.name for n in cfg.nodes}
    svcs = [o for o in traffic.udp_objects(cfg)[1] if o["kind"] == "Service"]
    assert [(s["spec"].get("ipFamilyPolicy"), s["spec"].get("ipFamilies") or s["spec"]["ipFamily"]) for s in svcs] == (
        [("RequireDualStack", ["IPv4", "IPv6"])] if cfg.profile.dual_stack_services else [(None, "IPv4"), (None, "IPv6")])
    nodeport = [o for o in traffic.nodeport_objects(cfg)[1] if o["kind"] == "Service"]
    assert all(s["spec"]["type"] == "NodePort" and s["spec"]["externalTrafficPolicy"] == "Cluster" for s in nodeport)


# ============================================================ /dial: url and script


def test_dial_url_decodes_to_the_request_netexec_makes():
    dial = dualstack.Dial("k", "p", "n", "http", "fd00:3::8c2e", 80, f"echo?msg={traffic.HTTP_MESSAGE}",
                          frozenset({traffic.HTTP_MESSAGE}), "Service")
    query = parse_qs(urlsplit(dualstack.dial_url(dial)).query)
    assert query["host"] == ["fd00:3::8c2e"] and query["protocol"] == ["http"] and query["tries"] == ["1"]
    assert query["request"] == [f"echo?msg={traffic.HTTP_MESSAGE}"]  # netexec GETs http://[host]:80/<request>
    udp = dualstack.Dial("k", "p", "n", "udp", "10.96.0.1", 81, f"echo {traffic.UDP_MESSAGE}", frozenset(), "x")
    assert parse_qs(urlsplit(dualstack.dial_url(udp)).query)["request"] == [f"echo {traffic.UDP_MESSAGE}"]
    assert len(f"echo {traffic.UDP_MESSAGE}") > 2000 and len(traffic.HTTP_MESSAGE) >= 2000


def test_dial_script_runs_in_sh_with_every_argument_intact(tmp_path):
    fake = tmp_path / "curl"
    fake.write_text('#!/bin/sh\necho "proxy=${http_proxy:-none}"; for a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)
    dials = [dualstack.Dial("a/6/udp", "p", "n", "udp", "fd00:3::1", 81, "echo it's *", frozenset(), "x")]
    out = subprocess.run(["sh"], input=dualstack.dial_script(dials), capture_output=True, text=True,  # as kubectl exec -i
                         env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "http_proxy": "http://proxy:3128"}).stdout
    args = out.split(f"{BEGIN} a/6/udp\n")[1].split("\n")
    assert args[:6] == ["proxy=none", "-sS", "--noproxy", "*", "--max-time", str(dualstack.DIAL_TIMEOUT_S)]
    assert parse_qs(urlsplit(args[6]).query)["request"] == ["echo it's *"]


# ============================================================ a fake cluster


class FakeVctx:
    """The lab behind a VerifyContext: kubectl (exec included) and ssh answered from the fixtures;
    netexec's /dial simulated from its source (test/images/agnhost/netexec): JSON responses or errors."""

    def __init__(self, profile, check, *, broken=lambda dial: False, pods=None, services=None, wait_rc=0,
                 delete_rc=0, apply=(0, ""), node_answers=None, exec_raises=None, client_pods=None):
        self.cfg, self.broken, self.calls, self.slept = cfg_of(profile), broken, [], []
        self.client_calls = []  # the client pods' commands, apart from the check's own
        self.client_pods = client_pods  # None: they get Ready; else the pods `kubectl get` shows
        self.pods = pods if pods is not None else items_as("pods-netexec", check, profile)
        self.services = services or []
        self.wait_rc, self.delete_rc, self.apply, self.node_answers = wait_rc, delete_rc, apply, node_answers
        self.exec_raises, self.runner = exec_raises, self

    def kubectl(self, args, input=None, check=True, timeout=None):
        if args[:2] == ["exec", "-i"]:  # a script on stdin
            return self.exec_in(args[3], args[4], [*args[6:], input])
        if args[0] == "exec":
            return self.exec_in(args[2], args[3], args[5:])
        if any(CLIENT_NAME_PREFIX in str(a) for a in [*args, input or ""]) or CLIENT_SELECTOR in args:
            return self.clients(args, input, timeout)
        self.calls.append((list(args), input, timeout))
        answers = {"delete": Result(self.delete_rc, 'pod "x" deleted', "etcd timeout" if self.delete_rc else ""),
                   "apply": Result(self.apply[0], "created", self.apply[1]),
                   "wait": Result(self.wait_rc, "", "error: timed out waiting for the condition" if self.wait_rc else ""),
                   "pods": Result(0, json.dumps({"items": self.pods})),
                   "services": Result(0, json.dumps({"items": self.services}))}
        return answers[args[1] if args[0] == "get" else args[0]]

    def clients(self, args, input, timeout):
        self.client_calls.append((list(args), timeout))
        self.client_input = input if args[0] == "apply" else getattr(self, "client_input", None)
        if args[0] == "wait" and self.client_pods is not None:
            return Result(1, "", "error: timed out waiting for the condition on pods/dslab-verify-client-k8s-worker02")
        if args[0] == "get":
            return Result(0, json.dumps({"items": self.client_pods or []}))
        return Result(0, "ok")

    def exec_in(self, namespace, pod, command):
        self.calls.append((["exec", pod], command[-1], None))
        if self.exec_raises:
            raise self.exec_raises
        if "/dial?" in command[-1]:
            return Result(0, self.netexec(pod, command[-1]))
        return Result(0, self.downward(pod))

    def run(self, node, command, input=None, timeout=None, check=True):
        self.calls.append((["ssh", node], command, timeout))
        return Result(0, self.node_answers(node, command))

    def netexec(self, source, script):
        out = []
        for key, url in re.findall(re.escape(BEGIN) + r" (\S+)'\n\{ curl .* '?(http://127\.0\.0\.1:8080/dial\?[^' ]+)'? ;", script):
            q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
            dial = dualstack.Dial(key, source, "", q["protocol"], q["host"], int(q["port"]), q["request"], frozenset(), "")
            if self.broken(dial):
                name = "udp-timeout" if dial.protocol == "udp" else "http-timeout" if dial.request == "hostname" else "http-echo-timeout"
                body = (FIX / f"dial-{name}-ipv6.json").read_text()
            elif dial.request == "hostname":
                owner = [p["metadata"]["name"] for p in self.pods if q["host"] in [i["ip"] for i in p["status"]["podIPs"]]]
                body = json.dumps({"responses": [owner[0] if owner else self.hostname_of(q["host"], source)]})
            else:
                body = json.dumps({"responses": [q["request"].split("msg=", 1)[-1].split(" ", 1)[-1].lower()]})
            out += [f"{BEGIN} {key}", body.strip(), f"{END} {key} 0"]
        return "\n".join(out) + "\n"

    def hostname_of(self, cluster_ip, source):
        """The pod behind a cluster IP: the Service's only pod (hairpin), else the source itself."""
        for svc in self.services:
            if cluster_ip in (svc["spec"].get("clusterIPs") or [svc["spec"]["clusterIP"]]):
                return svc["spec"]["selector"].get(dualstack.POD_LABEL, source)
        return "nobody"

    def downward(self, pod_name):
        pod = next(p for p in self.pods if p["metadata"]["name"] == pod_name)
        ips = [i["ip"] for i in pod["status"]["podIPs"]]
        hosts = load("etc-hosts-worker01.txt").replace("dslab-verify-downward-pod-ips-2", pod_name)
        hosts = hosts.replace("10.244.79.4", ips[0]).replace("fd00:2::b5a5:4f8:6a6e:ac03", ips[-1])
        sections = {fresh.POD_IPS_VAR: ",".join(ips), "hosts": hosts}
        if self.cfg.profile.host_ips:
            sections[fresh.HOST_IPS_VAR] = ",".join(i["ip"] for i in pod["status"]["hostIPs"])
        return "".join(f"{BEGIN} {k}\n{v}\n{END} {k} 0\n" for k, v in sections.items())


def run(check_fn, fake):
    result = check_fn(VerifyContext(fake, sleep=fake.slept.append))
    return result, [f for f in result.findings if not f.note]


def v6(dial):  # a broken cluster: nothing answers over IPv6
    return ":" in dial.host


# ============================================================ lifecycle


def test_a_leftover_is_replaced_and_everything_removed_even_when_the_check_fails():
    fake = FakeVctx("current", "udp-service", services=items_as("services-udp", "udp-service", "current"), broken=v6)
    result, found = run(traffic.check_udp_service, fake)
    kubectl = [c[0] for c in fake.calls if c[0][0] not in ("exec", "ssh")]
    sel = dualstack.selector("udp-service")
    assert kubectl[0][:2] == ["delete", "pods,services"] and sel in kubectl[0] and "--wait=true" in kubectl[0]
    assert [c[0] for c in kubectl[1:3]] == ["apply", "wait"] and kubectl[-1] == kubectl[0]
    assert result.status == FAIL and not any("earlier run" in f.problem for f in found)
    assert fake.slept == [dualstack.RETRY_PAUSE_S]  # the failing dials were tried once more
    wait = next(c for c in fake.calls if c[0][0] == "wait")
    assert f"--timeout={dualstack.READY_TIMEOUT_S}s" in wait[0] and wait[2] > dualstack.READY_TIMEOUT_S


def test_objects_are_removed_when_the_check_is_interrupted():
    fake = FakeVctx("current", "hairpin", services=items_as("services-hairpin", "hairpin", "current"),
                    pods=items_as("pods-netexec", "hairpin", "current"), exec_raises=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        run(traffic.check_hairpin, fake)
    assert fake.calls[-1][0][0] == "delete" and dualstack.selector("hairpin") in fake.calls[-1][0]


def test_a_pod_that_is_not_ready_is_named_with_its_node_and_reason():
    pods = items_as("pods-netexec", "udp-service", "current")
    pods[2]["status"].update(phase="Pending", podIPs=[], conditions=[{"type": "Ready", "status": "False"}],
                             containerStatuses=[{"name": "agnhost", "ready": False, "state": {"waiting": {
                                 "reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}])
    fake = FakeVctx("current", "udp-service", pods=pods, wait_rc=1, services=items_as("services-udp", "udp-service", "current"))
    result, found = run(traffic.check_udp_service, fake)
    stuck = [f for f in found if "not Ready" in f.problem]
    assert [(f.pod, f.node) for f in stuck] == [("dslab-verify-udp-service-3", "k8s-worker02")]
    assert "ImagePullBackOff" in stuck[0].seen and "timed out" in stuck[0].error


def test_a_failed_removal_is_a_note_with_the_command_to_run():
    fake = FakeVctx("current", "udp-service", services=items_as("services-udp", "udp-service", "current"), delete_rc=1)
    result, _ = run(traffic.check_udp_service, fake)
    assert any("kubectl delete pods,services" in n and dualstack.selector("udp-service") in n for n in result.notes)


def test_client_pods_come_first_once_a_run_and_by_name_not_by_the_shared_label():
    fake = FakeVctx("current", "udp-service", services=items_as("services-udp", "udp-service", "current"))
    vctx = VerifyContext(fake, sleep=fake.slept.append)
    traffic.check_udp_service(vctx)
    traffic.check_udp_service(vctx)  # a second check that creates pods: the image is ready, nothing waits for it again
    steps = [args[0] for args, _ in fake.client_calls]
    assert steps == ["delete", "apply", "wait"]
    delete, _, wait = (args for args, _ in fake.client_calls)
    names = [f"{CLIENT_NAME_PREFIX}{n}" for n in ("k8s-master01", "k8s-worker01", "k8s-worker02")]
    assert delete[4:7] == names and "--wait=true" in delete and "--timeout=60s" in delete  # leftovers gone first
    assert [a for a in wait if a.startswith("pod/")] == [f"pod/{n}" for n in names]
    assert not any(a == "-l" for a in wait)  # verify's other pods carry the managed-by label too
    labels = [pod["metadata"]["labels"] for pod in json.loads(fake.client_input)["items"]]
    assert labels == [{CLIENT_LABEL_KEY: CLIENT_LABEL_VALUE, "dslab.verify/role": "client"}] * 3
    assert vctx.objects_created


def test_a_client_image_that_cannot_be_pulled_is_said_at_once_by_every_check_creating_pods():
    clients = load("pods-clients-pull-failed-1.36.json")["items"]
    fake = FakeVctx("current", "udp-service", services=items_as("services-udp", "udp-service", "current"),
                    client_pods=clients)
    vctx = VerifyContext(fake, sleep=fake.slept.append)
    results = [traffic.check_udp_service(vctx), traffic.check_hairpin(vctx)]
    assert [args[0] for args, _ in fake.client_calls].count("wait") == 1  # one budget for the image, not one per check
    assert fake.calls == []  # no check created, waited for or removed objects of its own
    for result in results:
        assert result.status == FAIL
        found = {f.node: f for f in result.problems}
        assert sorted(found) == ["k8s-worker01", "k8s-worker02"]
        assert found["k8s-worker02"].seen == 'ImagePullBackOff (Back-off pulling image "registry.k8s.io/e2e-test-images/agnhost:2.53")'
        assert found["k8s-worker01"].seen.startswith("ErrImagePull (rpc error: code = Unknown desc = Error response from daemon")
        assert found["k8s-worker02"].pod == "default/dslab-verify-client-k8s-worker02"
        assert "timed out waiting for the condition" in found["k8s-worker02"].error
    # a check with Services only needs no image
    policies = FakeVctx("current", "service-policies", pods=[], services=load("services-policies-1.36.json")["items"],
                        client_pods=clients)
    assert fresh.check_service_policies(VerifyContext(policies)).status == PASS and policies.client_calls == []


def test_the_removal_of_a_checks_objects_is_shielded_from_a_second_ctrl_c(monkeypatch):
    import signal
    seen = []
    fake = FakeVctx("current", "udp-service", services=items_as("services-udp", "udp-service", "current"))
    original = fake.kubectl

    def kubectl(args, input=None, check=True, timeout=None):
        if args[0] == "delete" and CLIENT_NAME_PREFIX not in " ".join(args):
            seen.append(signal.getsignal(signal.SIGINT))
        return original(args, input=input, check=check, timeout=timeout)
    fake.kubectl = kubectl
    run(traffic.check_udp_service, fake)
    assert seen[0] is not signal.SIG_IGN  # clearing leftovers before: Ctrl-C still stops the run
    assert seen[-1] is signal.SIG_IGN  # the removal in the finally
    assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN


# ============================================================ nodeport-cluster


def nodeport_answers(dead=(), routes=None):
    def answer(source, script):
        out = []
        if routes and source in routes and "ip -6 route show table local" in script:
            table, kernel = routes[source]
            out += [f"{BEGIN} ipv6-local-routes", table.rstrip("\n"), f"{END} ipv6-local-routes 0",
                    f"{BEGIN} kernel-release", kernel, f"{END} kernel-release 0"]
        for key, url in re.findall(re.escape(BEGIN) + r" (\S+)'\n.*? '?(http://[^\s']+/hostname)", script, re.S):
            host = urlsplit(url).hostname
            body = "\n@@dslab-http-code 000curl: (28) Connection timed out after 5001 milliseconds\n" if host in dead \
                else "dslab-verify-nodeport-cluster-2\n@@dslab-http-code 200\n"
            out += [f"{BEGIN} {key}", body, f"{END} {key} {28 if host in dead else 0}"]
        return "\n".join(out) + "\n"
    return answer


def nodeport_fake(profile, dead=(), services=None, routes=None):
    pods = [p for p in items_as("pods-netexec", "nodeport-cluster", profile) if p["metadata"]["name"].endswith("-2")]
    return FakeVctx(profile, "nodeport-cluster", pods=pods, node_answers=nodeport_answers(dead, routes),
                    services=services if services is not None else items_as("services-nodeport", "nodeport-cluster", profile))


@pytest.mark.parametrize("profile", PROFILES)
def test_nodeport_cluster_passes_on_every_node_address_of_both_families(profile):
    fake = nodeport_fake(profile)
    result, found = run(traffic.check_nodeport_cluster, fake)
    assert result.status == PASS and found == []
    scripts = [c[1] for c in fake.calls if c[0][0] == "ssh"]
    assert [c[0][1] for c in fake.calls if c[0][0] == "ssh"] == ["k8s-master01", "k8s-worker01", "k8s-worker02"]
    for address in ("192.168.200.11", "[fd00:db1::11]", "192.168.200.22", "[fd00:db1::22]"):
        assert all(f"http://{address}:" in s for s in scripts)  # the control plane's addresses included


def test_nodeport_cluster_names_the_node_family_and_address_that_do_not_answer():
    result, found = run(traffic.check_nodeport_cluster, nodeport_fake("current", dead={"fd00:db1::11"}))
    assert result.status == FAIL and len(found) == 3  # from each node to the control plane's IPv6
    assert {(f.family, f.address) for f in found} == {("IPv6", "fd00:db1::11")}
    assert {f.node for f in found} == {"k8s-master01", "k8s-worker01", "k8s-worker02"}
    assert found[0].problem.startswith("k8s-master01 -> NodePort 31380 on k8s-master01 IPv6 fd00:db1::11: HTTP 000")
    assert "curl: (28)" in found[0].error


def _master_routes(distribution):
    text = (FIX.parent / f"ip6-route-local-worker01-{distribution}.txt").read_text().replace("fd00:db1::21 ", "fd00:db1::11 ")
    return {"k8s-master01": (text, "3.10.0-1127.el7.x86_64" if distribution == "centos7" else "5.14.0-570.el9.x86_64")}


def test_nodeport_cluster_on_a_kernel_without_proto_kernel_ipv6_routes_is_the_versions_limit():
    fake = nodeport_fake("seed-2020", dead={"fd00:db1::11"}, routes=_master_routes("centos7"))
    result, found = run(traffic.check_nodeport_cluster, fake)
    assert result.status == PASS and found == []
    assert all("ip -6 route show table local" in c[1] for c in fake.calls if c[0][0] == "ssh")
    (limit,) = [f for f in result.findings if f.note]
    assert limit.problem.startswith("k8s-master01: 3 IPv6 NodePort probe(s) unanswered on its IPv6 fd00:db1::11: expected "
                                    "limitation of Kubernetes 1.17 on kernel 3.10.0-1127.el7.x86_64")
    assert "kubernetes/kubernetes#93858" in limit.problem


def test_nodeport_cluster_unanswered_where_ipv6_routes_are_proto_kernel_fails():
    result, found = run(traffic.check_nodeport_cluster,
                        nodeport_fake("seed-2020", dead={"fd00:db1::11"}, routes=_master_routes("stream9")))
    assert result.status == FAIL and {(f.family, f.address) for f in found} == {("IPv6", "fd00:db1::11")} and len(found) == 3
    assert not result.notes


def test_nodeport_cluster_fails_on_a_single_family_local_service():
    svc = items_as("services-nodeport", "nodeport-cluster", "current")
    svc[0]["spec"].update(ipFamilies=["IPv4"], clusterIPs=["10.96.27.130"], ipFamilyPolicy="SingleStack",
                          externalTrafficPolicy="Local")
    result, found = run(traffic.check_nodeport_cluster, nodeport_fake("current", services=svc))
    assert result.status == FAIL
    assert [f.problem for f in found if not f.node] == [
        "Service dslab-verify-nodeport-cluster is NodePort with externalTrafficPolicy Local",
        "the NodePort Service(s) dslab-verify-nodeport-cluster has no IPv6 address"]


# ============================================================ hairpin, udp-service, large-requests


def traffic_fake(profile, check, broken=lambda d: False, services="services-udp"):
    return FakeVctx(profile, check, broken=broken, pods=items_as("pods-netexec", check, profile),
                    services=items_as(services, check, profile))


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("check,fn,services,dials", [
    ("hairpin", traffic.check_hairpin, "services-hairpin", 6),
    ("udp-service", traffic.check_udp_service, "services-udp", 6),
    ("large-requests", traffic.check_large_requests, "services-udp", 3 * (2 * 2 * 2 + 2 * 2)),
])
def test_traffic_checks_pass_on_a_healthy_cluster(profile, check, fn, services, dials):
    fake = traffic_fake(profile, check, services=services)
    result, found = run(fn, fake)
    assert result.status == PASS and found == [], found
    scripts = [c[1] for c in fake.calls if c[0][0] == "exec"]
    assert sum(s.count(BEGIN) for s in scripts) == dials and fake.slept == []


def test_hairpin_fails_when_a_pod_cannot_reach_itself_over_ipv6():
    def broken(dial):
        return dial.source == "dslab-verify-hairpin-2" and v6(dial)
    result, found = run(traffic.check_hairpin, traffic_fake("current", "hairpin", broken, "services-hairpin"))
    assert [(f.pod, f.node, f.family, f.address) for f in found] == [
        ("dslab-verify-hairpin-2", "k8s-worker01", "IPv6", "fd00:3::1c54")]
    assert "its own Service dslab-verify-hairpin-2 IPv6 fd00:3::1c54 HTTP: no answer" in found[0].problem
    assert "Client.Timeout exceeded" in found[0].error


def test_hairpin_fails_when_another_pod_answers():
    fake = traffic_fake("current", "hairpin", services="services-hairpin")
    fake.hostname_of = lambda cluster_ip, source: "dslab-verify-hairpin-3"  # the VIP leads to the pod on worker02
    result, found = run(traffic.check_hairpin, fake)
    assert [(f.pod, f.seen) for f in found] == [(f"dslab-verify-hairpin-{i}", "answer dslab-verify-hairpin-3")
                                                for i in (1, 1, 2, 2)]


@pytest.mark.parametrize("profile", PROFILES)
def test_udp_answered_only_over_ipv4_fails_for_every_pod(profile):
    result, found = run(traffic.check_udp_service, traffic_fake(profile, "udp-service", v6))
    assert result.status == FAIL
    assert {(f.pod, f.node) for f in found} == {(f"dslab-verify-udp-service-{i}", n.name)
                                               for i, n in enumerate(cfg_of(profile).nodes, start=1)}
    assert {(f.family, f.address) for f in found} == {("IPv6", "fd00:3::8c2e")}
    assert all("UDP" in f.problem and "i/o timeout" in f.error and f.seen.startswith("no answer") for f in found)


def test_udp_service_without_an_ipv6_cluster_ip_fails():
    services = items_as("services-udp", "udp-service", "seed-2020")[:1]  # the IPv4 Service only
    result, found = run(traffic.check_udp_service, FakeVctx("seed-2020", "udp-service", services=services))
    assert [f.problem for f in found] == ["the UDP Service has no IPv6 address"]


def test_large_requests_failing_over_ipv6_only_name_each_path():
    result, found = run(traffic.check_large_requests, traffic_fake("current", "large-requests", v6))
    assert result.status == FAIL and len(found) == 3 * (2 * 2 + 2)  # pod to 2 peers and to the Service, HTTP and UDP
    assert {f.family for f in found} == {"IPv6"}
    first = found[0]
    assert (first.pod, first.node) == ("dslab-verify-large-requests-1", "k8s-master01")
    assert "pod dslab-verify-large-requests-2 on k8s-worker01 (a 2000-byte HTTP echo) IPv6" in first.problem
    assert first.address == "fd00:2::b5a5:4f8:6a6e:ac03" and "MTU" in first.look_at


def test_findings_say_what_came_back_and_keep_the_commands_error():
    dial = traffic._echo_dials("k", "p", "k8s-worker01", "fd00:2::1", (8080, 8081), "pod", "")[1]
    found = dualstack.dial_finding(dial, (0, json.dumps({"responses": [traffic.UDP_MESSAGE[:1400]]})))
    assert found.problem.endswith("wrong answer") and "(1400 characters)" in found.seen
    found = dualstack.dial_finding(dial, (dualstack.NOT_RUN, 'error: unable to upgrade connection: container not found ("agnhost")'))
    assert found.problem.endswith("the probe did not run") and "container not found" in found.error and found.pod == "p"
    target = traffic.NodePortTarget("k", "s", "k8s-master01", "fd00:db1::11", 31380)
    found = traffic.nodeport_finding("k8s-worker02", target, None, ["b"], "k8s-worker01", "ssh: connect to host: No route to host")
    assert (found.node, found.family, found.address) == ("k8s-worker02", "IPv6", "fd00:db1::11") and "No route" in found.error


def test_a_pod_without_ipv6_is_a_finding_not_a_silent_skip():
    fake = traffic_fake("current", "large-requests")
    fake.pods[1]["status"]["podIPs"] = fake.pods[1]["status"]["podIPs"][:1]
    live = dualstack.Live(pods=fake.pods, services=fake.services)
    found, _ = traffic.large_dials(live, dualstack.placements(fake.cfg, "large-requests"))
    assert [(f.problem, f.family) for f in found] == [("pod dslab-verify-large-requests-2 on k8s-worker01 has no IPv6 address", "IPv6")]


# ============================================================ fresh-pod-ips, downward-pod-ips


@pytest.mark.parametrize("profile", PROFILES)
def test_fresh_pod_ips_pass_on_both_versions(profile):
    fake = FakeVctx(profile, "fresh-pod-ips", pods=items_as("pods-downward", "fresh-pod-ips", profile))
    result, found = run(fresh.check_fresh_pod_ips, fake)
    assert result.status == PASS and found == []
    assert bool(result.notes) == (not fake.cfg.profile.host_ips)  # 1.17: hostIPs said to be absent, not passed


def test_fresh_pod_with_only_ipv4_and_one_host_ip_fails():
    fake = FakeVctx("current", "fresh-pod-ips", pods=items_as("pods-downward", "fresh-pod-ips", "current"))
    fake.pods[2]["status"]["podIPs"] = [{"ip": "10.244.69.198"}]
    fake.pods[0]["status"]["hostIPs"] = [{"ip": "192.168.200.11"}]
    result, found = run(fresh.check_fresh_pod_ips, fake)
    assert [(f.pod, f.node, f.family) for f in found] == [
        ("dslab-verify-fresh-pod-ips-1", "k8s-master01", ""), ("dslab-verify-fresh-pod-ips-3", "k8s-worker02", "IPv6")]
    assert "hostIPs 192.168.200.11 are not k8s-master01's IPv4 and IPv6" in found[0].problem


@pytest.mark.parametrize("profile", PROFILES)
def test_downward_pod_ips_pass_on_both_versions(profile):
    fake = FakeVctx(profile, "downward-pod-ips", pods=items_as("pods-downward", "downward-pod-ips", profile))
    result, found = run(fresh.check_downward_pod_ips, fake)
    assert result.status == PASS and found == []
    env = fake.pods and fresh.downward_objects(fake.cfg)[1][0]["spec"]["containers"][0]["env"]
    assert [e["valueFrom"]["fieldRef"]["fieldPath"] for e in env] == (
        ["status.podIPs", "status.hostIPs"] if fake.cfg.profile.host_ips else ["status.podIPs"])


def downward_output(ips, host_ips, hosts_file):
    out = f"{BEGIN} {fresh.POD_IPS_VAR}\n{ips}\n{END} {fresh.POD_IPS_VAR} 0\n"
    if host_ips:
        out += f"{BEGIN} {fresh.HOST_IPS_VAR}\n{host_ips}\n{END} {fresh.HOST_IPS_VAR} 0\n"
    return out + f"{BEGIN} hosts\n{load(hosts_file)}{END} hosts 0\n"


@pytest.mark.parametrize("profile,ips,hosts_file,want", [
    ("current", "10.244.79.4,fd00:2::b5a5:4f8:6a6e:ac03", "etc-hosts-worker01-ipv4-only.txt",
     [("/etc/hosts has no IPv6 entry fd00:2::b5a5:4f8:6a6e:ac03 for dslab-verify-downward-pod-ips-2", "IPv6",
       "fd00:2::b5a5:4f8:6a6e:ac03")]),
    ("seed-2020", "10.244.79.4", "etc-hosts-worker01.txt", [("Downward API MY_POD_IPS=10.244.79.4", "IPv6", "10.244.79.4")]),
])
def test_downward_with_only_the_ipv4_pod_address_fails(profile, ips, hosts_file, want):
    cfg = cfg_of(profile)
    pod = items_as("pods-downward", "downward-pod-ips", profile)[1]
    out = downward_output(ips, "192.168.200.21,fd00:db1::21" if cfg.profile.host_ips else "", hosts_file)
    found = fresh.evaluate_downward({pod["metadata"]["name"]: out}, [pod], {pod["metadata"]["name"]: "k8s-worker01"}, cfg)
    assert [(f.problem.split(": ", 1)[1], f.family, f.address) for f in found] == want
    assert all(f.problem.startswith("pod dslab-verify-downward-pod-ips-2 on k8s-worker01: ") for f in found)


# ============================================================ service-policies


def test_service_policies_pass_on_a_dual_stack_cluster():
    fake = FakeVctx("current", "service-policies", pods=[], services=load("services-policies-1.36.json")["items"])
    result, found = run(fresh.check_service_policies, fake)
    assert result.status == PASS and found == []
    assert not any(c[0][0] == "wait" for c in fake.calls)  # Services only: nothing to wait for


def test_service_policies_on_a_single_stack_cluster_name_each_service_and_the_apis_reason():
    fake = FakeVctx("current", "service-policies", pods=[], services=load("services-policies-1.36-single-stack.json")["items"],
                    apply=(1, load("apply-single-stack.txt")))
    result, found = run(fresh.check_service_policies, fake)
    assert result.status == FAIL
    by_name = {n: [f for f in found if re.search(rf"{n}\b(?!-)", f.problem)] for n in
               {re.search(r"dslab-verify-policy-[\w-]+", f.problem).group(0) for f in found}}
    assert sorted(by_name) == ["dslab-verify-policy-ipv6", "dslab-verify-policy-prefer", "dslab-verify-policy-require",
                               "dslab-verify-policy-require-v6first"]
    assert [(f.problem, f.family) for f in by_name["dslab-verify-policy-prefer"]] == [
        ("Service dslab-verify-policy-prefer (PreferDualStack) got IPv4", "IPv6"),
        ("Service dslab-verify-policy-prefer: clusterIPs 10.96.112.4 are not one per family (IPv4, IPv6)", "")]
    assert "not configured for dual-stack services" in by_name["dslab-verify-policy-require"][0].seen
    assert '"dslab-verify-policy-require-v6first"' in by_name["dslab-verify-policy-require-v6first"][0].seen
    assert "not configured on this cluster" in by_name["dslab-verify-policy-ipv6"][0].seen


def test_service_policies_on_1_17_check_ip_family_and_say_what_the_version_lacks():
    fake = FakeVctx("seed-2020", "service-policies", pods=[], services=load("services-policies-1.17.json")["items"])
    result, found = run(fresh.check_service_policies, fake)
    assert result.status == SKIP and found == []
    assert "no ipFamilyPolicy" in result.message and "PreferDualStack and RequireDualStack" in result.message
    assert "fd00:3::a7c1" in result.notes[0]
    applied = next(c for c in fake.calls if c[0][0] == "apply")[1]
    assert "ipFamilyPolicy" not in applied and "ipFamily: IPv6" in applied


def test_service_policies_on_1_17_fail_when_the_default_family_is_wrong():
    services = load("services-policies-1.17.json")["items"]
    services[0]["spec"].update(ipFamily="IPv6", clusterIP="fd00:3::77")
    result, found = run(fresh.check_service_policies, FakeVctx("seed-2020", "service-policies", pods=[], services=services))
    assert result.status == FAIL
    assert [f.problem for f in found][:2] == ["Service dslab-verify-policy-default (no ipFamilyPolicy) got IPv6",
                                             "Service dslab-verify-policy-default: clusterIPs fd00:3::77 are not one per family (IPv4)"]


# ============================================================ registry


def test_the_new_checks_are_cluster_checks_in_order():
    names = [c.name for c in registry.CHECKS]
    new = [c for c in registry.CHECKS if c.run.__module__ in (fresh.__name__, traffic.__name__)]
    assert [c.name for c in new] == ["fresh-pod-ips", "downward-pod-ips", "service-policies", "nodeport-cluster",
                                     "hairpin", "udp-service", "large-requests"]
    assert all(c.layer == "cluster" and not c.needs_clients for c in new)  # they bring their own pods
    assert names[names.index("pod-ips") + 1:][:4] == ["fresh-pod-ips", "downward-pod-ips", "service-families", "service-policies"]
    at = names.index("node-to-service")
    assert names[at + 1:at + 5] == ["nodeport-cluster", "hairpin", "udp-service", "large-requests"]
