"""Workloads: MetalLB configuration, nginx, the recipe's Services, their checks and steps.

The MetalLB CRD schemas below are trimmed copies (descriptions dropped) of the
``openAPIV3Schema`` of metallb/metallb ``config/crd/bases/metallb.io_ipaddresspools.yaml``
(commit 6b4b54fb63544eade6080b60c0d5744e1ba44166, controller-gen v0.16.3) and
``config/crd/bases/metallb.io_l2advertisements.yaml`` (commit
645de157e9680a6045536bc851795f216a025e9d), the v1beta1 field set of MetalLB 0.13-0.15.
``additionalProperties: false`` is added: the API server would silently prune an unknown
(misspelt) field, so the test rejects it instead.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re

import jsonschema
import pytest
import schemas
import yaml

from lab import config, profiles, workloads
from lab.config import AddressRange, ConfigError
from lab.context import Context, Result, State
from lab.errors import StepError
from lab.profiles import Download
from lab.verify import parse

PROFILES = ("current", "seed-2020")

# --------------------------------------------------------------------------- fixtures


def load(profile="current", **settings):
    return config.load({"profile": profile, **settings})


def with_pins(cfg):
    """``cfg`` with made-up sha256 pins (no download is made: the runner is a fake)."""
    pins = tuple(Download(p.url, "ab" * 32) for p in cfg.profile.metallb_manifests)
    return dataclasses.replace(cfg, profile=dataclasses.replace(cfg.profile, metallb_manifests=pins))


def objects(cfg):
    return [obj for objs in workloads.manifests(cfg).values() for obj in objs]


def by_kind(cfg, kind):
    return {o["metadata"]["name"]: o for o in objects(cfg) if o["kind"] == kind}


# --------------------------------------------------------------------------- 1. schemas


@pytest.mark.parametrize("profile", PROFILES)
def test_every_manifest_validates_against_the_profiles_kubernetes_schema(profile):
    cfg = load(profile)
    core = [o for o in objects(cfg) if not o["apiVersion"].startswith("metallb.io/")]
    if cfg.profile.legacy_metallb:
        core.append(workloads.memberlist_secret())
    assert core
    assert schemas.validate_objects(core, cfg.profile.kubernetes_schema_version) == []


def test_the_schema_check_tells_the_1_17_service_api_from_the_current_one():
    old = by_kind(load("seed-2020"), "Service")["my-nginx-svc-ipv6"]
    new = by_kind(load("current"), "Service")["my-nginx-svc-ipv6"]
    assert schemas.validate_objects([old], "1.36")  # ipFamily is gone
    assert schemas.validate_objects([new], "1.17")  # ipFamilies does not exist yet


_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchExpressions": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["key", "operator"],
            "properties": {"key": {"type": "string"}, "operator": {"type": "string"},
                           "values": {"type": "array", "items": {"type": "string"}}}}},
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
_META = {"type": "object", "required": ["name", "namespace"]}

CRD_SCHEMAS = {
    "IPAddressPool": {
        "type": "object",
        "required": ["spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "metallb.io/v1beta1"},
            "kind": {"const": "IPAddressPool"},
            "metadata": _META,
            "spec": {
                "type": "object",
                "required": ["addresses"],
                "additionalProperties": False,
                "properties": {
                    "addresses": {"type": "array", "items": {"type": "string"}},
                    "autoAssign": {"type": "boolean"},
                    "avoidBuggyIPs": {"type": "boolean"},
                    "serviceAllocation": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "namespaceSelectors": {"type": "array", "items": _SELECTOR},
                            "namespaces": {"type": "array", "items": {"type": "string"}},
                            "priority": {"type": "integer"},
                            "serviceSelectors": {"type": "array", "items": _SELECTOR},
                        },
                    },
                },
            },
            "status": {"type": "object"},
        },
    },
    "L2Advertisement": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "metallb.io/v1beta1"},
            "kind": {"const": "L2Advertisement"},
            "metadata": _META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "interfaces": {"type": "array", "items": {"type": "string"}},
                    "ipAddressPoolSelectors": {"type": "array", "items": _SELECTOR},
                    "ipAddressPools": {"type": "array", "items": {"type": "string"}},
                    "nodeSelectors": {"type": "array", "items": _SELECTOR},
                },
            },
            "status": {"type": "object"},
        },
    },
}


def _metallb_range(text):
    """A MetalLB address entry (CIDR or first-last) as an AddressRange."""
    if "-" in text:
        first, last = (ipaddress.ip_address(p.strip()) for p in text.split("-"))
        assert first.version == last.version and first <= last, text
        return AddressRange(first, last)
    net = ipaddress.ip_network(text)
    return AddressRange(net.network_address, net.broadcast_address)


def test_metallb_custom_resources_validate_against_the_upstream_crd_schema():
    cfg = load("current")
    crs = [o for o in objects(cfg) if o["apiVersion"].startswith("metallb.io/")]
    assert sorted(o["kind"] for o in crs) == ["IPAddressPool", "L2Advertisement"]
    for obj in crs:
        jsonschema.validate(obj, CRD_SCHEMAS[obj["kind"]])
        assert obj["metadata"]["namespace"] == "metallb-system"
    pool = by_kind(cfg, "IPAddressPool")[workloads.pool_name(cfg)]
    assert by_kind(cfg, "L2Advertisement")[f"{cfg.name}-l2"]["spec"]["ipAddressPools"] == [pool["metadata"]["name"]]


def test_the_crd_schema_fixture_rejects_a_misspelt_field():
    obj = by_kind(load("current"), "IPAddressPool")["dslab-pool"]
    bad = {**obj, "spec": {**obj["spec"], "adresses": obj["spec"]["addresses"]}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, CRD_SCHEMAS["IPAddressPool"])


def test_metallb_0_9_configmap_has_one_layer2_pool_per_family():
    cfg = load("seed-2020")
    cm = by_kind(cfg, "ConfigMap")["config"]
    assert cm["metadata"]["namespace"] == "metallb-system"
    conf = yaml.safe_load(cm["data"]["config"])
    assert set(conf) == {"address-pools"}
    pools = {p["name"]: p for p in conf["address-pools"]}
    assert set(pools) == {"dslab-ipv4", "dslab-ipv6"}
    for family, pool in ((4, pools["dslab-ipv4"]), (6, pools["dslab-ipv6"])):
        assert set(pool) <= {"name", "protocol", "addresses", "auto-assign", "avoid-buggy-ips"}
        assert pool["protocol"] == "layer2"
        assert [_metallb_range(a) for a in pool["addresses"]] == [getattr(cfg, f"metallb_ipv{family}_range")]
    assert not by_kind(cfg, "IPAddressPool")


# --------------------------------------------------------------------------- 2. services and pools


def _pool_ranges(cfg):
    if cfg.profile.legacy_metallb:
        conf = yaml.safe_load(by_kind(cfg, "ConfigMap")["config"]["data"]["config"])
        return [_metallb_range(a) for p in conf["address-pools"] for a in p["addresses"]]
    return [_metallb_range(a) for a in by_kind(cfg, "IPAddressPool")[workloads.pool_name(cfg)]["spec"]["addresses"]]


def _families(cfg, svc):
    spec = svc["spec"]
    if not cfg.profile.dual_stack_services:
        assert "ipFamilies" not in spec and "ipFamilyPolicy" not in spec
        return [spec["ipFamily"]]
    assert "ipFamily" not in spec
    return spec["ipFamilies"]


def _lb_ips(cfg, svc):
    if cfg.profile.legacy_metallb:
        return [ipaddress.ip_address(svc["spec"]["loadBalancerIP"])]
    return [ipaddress.ip_address(a) for a in svc["metadata"]["annotations"][workloads.ANNOTATION_LB_IPS].split(",")]


@pytest.mark.parametrize("profile", PROFILES)
def test_services_have_the_recipes_families_policies_and_addresses(profile):
    cfg = load(profile)
    svcs = by_kind(cfg, "Service")
    expected = ["my-nginx-svc-ipv4", "my-nginx-svc-ipv6", "my-nginx-svc-ipv6-local"]
    if profile == "current":
        expected.append("my-nginx-svc-dual")
    assert sorted(svcs) == sorted(expected)
    for svc in svcs.values():
        assert svc["metadata"]["namespace"] == workloads.NAMESPACE
        assert svc["spec"]["selector"] == {"app": "my-nginx"}
        assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": 80, "protocol": "TCP"}]

    v4, v6 = svcs["my-nginx-svc-ipv4"], svcs["my-nginx-svc-ipv6"]
    assert _families(cfg, v4) == ["IPv4"] and _families(cfg, v6) == ["IPv6"]
    for svc, addr in ((v4, cfg.external_ipv4), (v6, cfg.external_ipv6)):
        assert svc["spec"]["type"] == "ClusterIP"
        assert svc["spec"]["externalIPs"] == [str(addr)]
        if profile == "current":
            assert svc["spec"]["ipFamilyPolicy"] == "SingleStack"

    local = svcs["my-nginx-svc-ipv6-local"]
    assert local["spec"]["type"] == "LoadBalancer"
    assert local["spec"]["externalTrafficPolicy"] == "Local"
    assert _families(cfg, local) == ["IPv6"]
    assert [a.version for a in _lb_ips(cfg, local)] == [6]
    assert _lb_ips(cfg, local) == [cfg.metallb_ipv6_range.first]
    if profile == "seed-2020":
        assert local["metadata"]["annotations"][workloads.ANNOTATION_POOL_09] == "dslab-ipv6"
    else:
        dual = svcs["my-nginx-svc-dual"]
        assert dual["spec"]["type"] == "LoadBalancer"
        assert dual["spec"]["ipFamilyPolicy"] == "RequireDualStack"
        assert dual["spec"]["ipFamilies"] == ["IPv4", "IPv6"]
        assert dual["spec"]["externalTrafficPolicy"] == "Local"
        assert [a.version for a in _lb_ips(cfg, dual)] == [4, 6]
        assert not set(_lb_ips(cfg, dual)) & set(_lb_ips(cfg, local))
        assert "loadBalancerIP" not in dual["spec"] and "loadBalancerIP" not in local["spec"]


@pytest.mark.parametrize("profile", PROFILES)
def test_every_outside_address_is_in_the_node_network_and_clear_of_dhcp_and_nodes(profile):
    cfg = load(profile)
    svcs = by_kind(cfg, "Service")
    nets = {4: cfg.network_ipv4, 6: cfg.network_ipv6}
    dhcp = {4: cfg.dhcp_ipv4_range, 6: cfg.dhcp_ipv6_range}
    nodes = {a for n in cfg.nodes for a in (n.ipv4, n.ipv6)}
    pools = _pool_ranges(cfg)
    outside = [ipaddress.ip_address(a) for s in svcs.values() for a in s["spec"].get("externalIPs", [])]
    lbs = [a for s in svcs.values() if s["spec"]["type"] == "LoadBalancer" for a in _lb_ips(cfg, s)]
    assert len(outside) == 2 and lbs
    for addr in outside + lbs:
        assert addr in nets[addr.version], addr
        assert addr not in dhcp[addr.version], addr
        assert addr not in nodes, addr
        assert addr not in {cfg.gateway_ipv4, cfg.gateway_ipv6}, addr
    for addr in lbs:
        assert any(addr in rng for rng in pools), addr
    for addr in outside:
        assert not any(addr in rng for rng in pools), addr
    for rng in pools:
        assert rng.within(nets[rng.version]) and not rng.overlaps(dhcp[rng.version])
        assert not any(a in rng for a in nodes)
    assert sorted(pools, key=lambda r: r.version) == [cfg.metallb_ipv4_range, cfg.metallb_ipv6_range]


def test_lb_addresses_and_endpoints_give_the_curl_commands():
    rows = workloads.endpoints(load("current"))
    assert [r["curl"] for r in rows] == [
        "curl http://192.168.200.145/",
        "curl -g http://[fd00:db1::120]/",
        "curl -g http://[fd00:db1::240]/",
        "curl http://192.168.200.240/",
        "curl -g http://[fd00:db1::241]/",
    ]
    assert [r["service"] for r in workloads.endpoints(load("seed-2020"))] == [
        "my-nginx-svc-ipv4", "my-nginx-svc-ipv6", "my-nginx-svc-ipv6-local"]


@pytest.mark.parametrize("profile", PROFILES)
def test_addresses_come_only_from_the_config(profile):
    cfg = load(profile, network_ipv4="10.77.0.0/24", network_ipv6="fd00:77::/64",
               dhcp_ipv4_range="10.77.0.100-10.77.0.139", dhcp_ipv6_range="fd00:77::1000-fd00:77::10ff",
               metallb_ipv4_range="10.77.0.200-10.77.0.210", metallb_ipv6_range="fd00:77::200-fd00:77::210",
               external_ipv4="10.77.0.150", external_ipv6="fd00:77::150")
    text = "".join(workloads.render_manifests(cfg).values())
    assert "192.168.200." not in text and "fd00:db1" not in text
    assert "fd00:77::200" in text and "10.77.0.150" in text


@pytest.mark.parametrize("profile", PROFILES)
def test_rendered_yaml_is_the_manifest_data(profile):
    cfg = load(profile)
    rendered = workloads.render_manifests(cfg)
    assert set(rendered) == {"metallb-config.yaml", "nginx.yaml", "services.yaml"}
    for name, objs in workloads.manifests(cfg).items():
        assert list(yaml.safe_load_all(rendered[name])) == objs


@pytest.mark.parametrize("profile", PROFILES)
def test_nginx_spreads_over_workers_and_serves_both_families(profile):
    cfg = load(profile)
    dep = by_kind(cfg, "Deployment")["my-nginx"]
    spec = dep["spec"]["template"]["spec"]
    assert dep["spec"]["replicas"] == 3
    images = {c["image"] for c in spec["containers"] + spec["initContainers"]}
    assert images == {cfg.profile.nginx_image}
    assert re.search(r":\d+\.\d+", cfg.profile.nginx_image) and "latest" not in cfg.profile.nginx_image
    if profile == "seed-2020":
        assert "topologySpreadConstraints" not in spec  # alpha in 1.17
        term = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
        assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    else:
        (tsc,) = spec["topologySpreadConstraints"]
        assert tsc["topologyKey"] == "kubernetes.io/hostname" and tsc["maxSkew"] == 1
        assert tsc["nodeTaintsPolicy"] == "Honor"
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in spec["initContainers"][0]["env"]}
    assert env["POD_NAME"] == "metadata.name"
    conf = by_kind(cfg, "ConfigMap")["my-nginx-conf"]["data"]["default.conf"]
    assert re.search(r"^\s*listen 0\.0\.0\.0:80;$", conf, re.M)
    assert re.search(r"^\s*listen \[::\]:80;$", conf, re.M)
    assert "log_format dslab '$remote_addr " in conf and "access_log /var/log/nginx/access.log dslab;" in conf


def test_the_access_log_format_is_read_by_lab_verify():
    # A line as `log_format dslab` writes it, for a client on the node network.
    line = ('[pod/my-nginx-abc/nginx] fd00:db1::1 - - [01/Jan/2026:00:00:00 +0000] "GET / HTTP/1.1" 200 312 '
            '"-" "curl/8.0" server=fd00:2::5 pod=my-nginx-abc')
    (entry,) = parse.parse_access_log(line)
    assert entry.remote_addr == "fd00:db1::1" and entry.status == 200


# --------------------------------------------------------------------------- 3. bad input


LOAD_CASES = [
    ("metallb_ipv4_range", {"metallb_ipv4_range": "192.168.200.5-192.168.200.15"}),  # holds k8s-master01
    ("metallb_ipv6_range", {"metallb_ipv6_range": "fd00:db1::5-fd00:db1::15"}),  # holds k8s-master01
    ("metallb_ipv4_range", {"metallb_ipv4_range": ""}),
    ("metallb_ipv6_range", {"metallb_ipv6_range": ""}),
    ("metallb_ipv4_range", {"metallb_ipv4_range": "192.168.200.130-192.168.200.140"}),  # overlaps DHCP
    ("metallb_ipv6_range", {"metallb_ipv6_range": "fd00:99::1-fd00:99::9"}),  # off the node network
    ("external_ipv4", {"external_ipv4": "10.1.2.3"}),
    ("external_ipv6", {"external_ipv6": "fd00:99::120"}),
    ("external_ipv4", {"external_ipv4": "192.168.200.120"}),  # inside DHCP
    ("external_ipv4", {"external_ipv4": "192.168.200.21"}),  # a node's address
    ("external_ipv6", {"external_ipv6": "fd00:db1::245"}),  # inside the MetalLB range
]


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("key,settings", LOAD_CASES)
def test_bad_addresses_are_one_line_from_the_config_loader(profile, key, settings):
    with pytest.raises(ConfigError) as info:
        load(profile, **settings)
    assert len(info.value.problems) == 1, info.value.problems
    assert info.value.problems[0].startswith(f"lab.{key}: ")


# --------------------------------------------------------------------------- what the profile can do


def with_capabilities(cfg, **changes):
    """``cfg`` on its profile with ``changes`` to what the profile's versions can do."""
    return dataclasses.replace(cfg, profile=dataclasses.replace(cfg.profile, **changes))


def test_metallb_is_configured_as_the_profile_says_not_as_its_version_reads():
    legacy = with_capabilities(load("current"), legacy_metallb=True)
    assert [o["kind"] for o in workloads.metallb_config(legacy)] == ["ConfigMap"]
    local = by_kind(legacy, "Service")["my-nginx-svc-ipv6-local"]
    assert local["spec"]["loadBalancerIP"] == str(legacy.metallb_ipv6_range.first)
    modern = with_capabilities(load("seed-2020"), legacy_metallb=False)
    assert [o["kind"] for o in workloads.metallb_config(modern)] == ["IPAddressPool", "L2Advertisement"]


def test_dual_stack_services_follow_the_profile_not_its_feature_gate():
    # 1.20-1.22: dual-stack Services, with the IPv6DualStack gate still to be turned on.
    gated = with_capabilities(load("current"), dual_stack_feature_gate=True)
    svcs = by_kind(gated, "Service")
    assert svcs["my-nginx-svc-dual"]["spec"]["ipFamilyPolicy"] == "RequireDualStack"
    assert set(workloads.lb_addresses(gated)) == {"my-nginx-svc-ipv6-local", "my-nginx-svc-dual"}
    single = with_capabilities(load("current"), dual_stack_services=False)
    svcs = by_kind(single, "Service")
    assert "my-nginx-svc-dual" not in svcs
    assert svcs["my-nginx-svc-ipv6"]["spec"]["ipFamily"] == "IPv6" and "ipFamilies" not in svcs["my-nginx-svc-ipv6"]["spec"]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
           for e in by_kind(single, "Deployment")["my-nginx"]["spec"]["template"]["spec"]["initContainers"][0]["env"]}
    assert env["POD_IPS"] == "status.podIP"


@pytest.mark.parametrize("spread", [True, False])
def test_nginx_spreads_as_the_profile_can(spread):
    for profile in PROFILES:
        cfg = with_capabilities(load(profile), topology_spread=spread)
        spec = by_kind(cfg, "Deployment")["my-nginx"]["spec"]["template"]["spec"]
        assert ("topologySpreadConstraints" in spec) == spread and ("affinity" in spec) == (not spread), profile


# --------------------------------------------------------------------------- one rule for pins


PIN_CASES = {
    # case: (the download changed, pinned?)
    "http": (lambda d: dataclasses.replace(d, url=d.url.replace("https://", "http://")), False),
    "no-sum": (lambda d: dataclasses.replace(d, sha256=""), False),
    "short-sum": (lambda d: dataclasses.replace(d, sha256=d.sha256[:-1]), False),
    "http-mirror": (lambda d: dataclasses.replace(d, mirrors=("http://mirror.example.invalid/x.yaml",)), False),
    "sha512-only": (lambda d: dataclasses.replace(d, sha256="", sha512="ab" * 64), True),
}


@pytest.mark.parametrize("case", list(PIN_CASES))
def test_the_metallb_step_refuses_exactly_what_the_profile_check_names(case, tmp_path):
    change, pinned = PIN_CASES[case]
    real = load("current")
    pins = tuple(change(d) for d in real.profile.metallb_manifests)
    cfg = dataclasses.replace(real, profile=dataclasses.replace(real.profile, metallb_manifests=pins))
    named = [p for step, p in profiles.missing_pins(cfg.profile, cfg.runtime) if step == "metallb"]
    assert bool(named) == (not pinned), (case, named)
    runner = FakeRunner(cfg)
    ctx = Context(cfg, State(tmp_path / "state.json"), runner)
    if named:
        with pytest.raises(StepError) as info:
            workloads.deploy_metallb(ctx)
        assert all(p in info.value.reason for p in named), info.value.reason
        assert runner.calls == []
    else:
        workloads.deploy_metallb(ctx)
        assert any(c[1][:2] == ["bash", workloads.FETCH] for c in runner.calls)


# What the workloads need of the MetalLB ranges is checked by the loader with every other
# setting (tests/test_validation.py): a configuration that loads has room for every LoadBalancer.
def test_what_only_the_dual_stack_lb_needs_is_no_problem_on_1_17():
    cfg = load("seed-2020", metallb_ipv6_range="fd00:db1::240-fd00:db1::240")
    assert workloads.lb_addresses(cfg) == {"my-nginx-svc-ipv6-local": (cfg.metallb_ipv6_range.first,)}


def test_a_profile_without_manifest_sha256_refuses_before_doing_anything(tmp_path):
    real = load("current")
    unpinned = dataclasses.replace(real.profile, metallb_manifests=tuple(
        dataclasses.replace(d, sha256="") for d in real.profile.metallb_manifests))
    cfg = dataclasses.replace(real, profile=unpinned)
    runner = FakeRunner(cfg)
    with pytest.raises(StepError, match="sha256"):
        workloads.deploy_metallb(Context(cfg, State(tmp_path / "state.json"), runner))
    assert runner.calls == []


# --------------------------------------------------------------------------- 4. idempotence


class FakeRunner:
    """Records every command; answers like a cluster where everything becomes ready."""

    def __init__(self, cfg, *, secret_exists=False, lb_ready=True, fail_apply=None, webhook_failures=0,
                 empty_cluster=False):
        self.cfg = cfg
        self.empty_cluster = empty_cluster  # nothing applied exists (new machines) until applied again
        self.calls = []
        self.secret_exists = secret_exists
        self.lb_ready = lb_ready
        self.fail_apply = fail_apply  # substring of an input whose apply fails
        self.webhook_failures = webhook_failures

    def run(self, node, command, *, input=None, timeout=None, check=True):
        self.calls.append((node, list(command) if not isinstance(command, str) else command, input))
        args = list(command)
        result = Result(0, "", "")
        if args[:1] == ["kubectl"]:
            args = args[3:]  # drop --kubeconfig FILE
            if "get" in args and "memberlist" in args:
                result = Result(0 if self.secret_exists else 1, "", "" if self.secret_exists else "NotFound")
            elif args[:2] == ["create", "-f"] and "memberlist" in (input or ""):
                self.secret_exists = True
            elif args[:3] == ["apply", "-f", "-"]:
                if self.webhook_failures and "IPAddressPool" in input:
                    self.webhook_failures -= 1
                    result = Result(1, "", 'Internal error occurred: failed calling webhook "ipaddresspoolvalidationwebhook.metallb.io"')
                elif self.fail_apply and self.fail_apply in input:
                    result = Result(1, "", "the server could not find the requested resource")
            elif args[:3] == ["get", "-f", "-"] or ("get" in args and "deployment/controller" in args):
                result = Result(1 if self.empty_cluster else 0, "", "NotFound" if self.empty_cluster else "")
            elif "get" in args and "service" in args:
                name = args[args.index("service") + 1]
                ingress = [{"ip": str(a)} for a in workloads.lb_addresses(self.cfg).get(name, ())] if self.lb_ready else []
                result = Result(0, json.dumps({"status": {"loadBalancer": {"ingress": ingress}}}), "")
        if check and not result.ok:
            raise StepError("fake", result.stderr)
        return result

    # What the run changed: fetches, applies and creates.
    def writes(self):
        out = []
        for _node, cmd, text in self.calls:
            if cmd[:2] == ["bash", workloads.FETCH]:
                out.append(("fetch", cmd[2]))
            elif cmd[:1] == ["kubectl"] and cmd[3] in ("apply", "create"):
                out.append((cmd[3], cmd[5] if cmd[5] != "-" else _kinds(text)))
        return out


def _kinds(text):
    return ",".join(f"{d['kind']}/{d['metadata']['name']}" for d in yaml.safe_load_all(text))


@pytest.fixture(autouse=True)
def fast_clock(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(workloads, "_clock", lambda: now[0])
    monkeypatch.setattr(workloads, "_sleep", lambda s: now.__setitem__(0, now[0] + s))
    return now


def run_both(cfg, state_path, **fake):
    runner = FakeRunner(cfg, **fake)
    ctx = Context(cfg, State(state_path), runner)
    workloads.deploy_metallb(ctx)
    workloads.deploy_workloads(ctx)
    return runner


@pytest.mark.parametrize("profile", PROFILES)
def test_first_run_applies_everything_second_run_only_reads(profile, tmp_path):
    cfg = with_pins(load(profile))
    state = tmp_path / "state.json"
    first = run_both(cfg, state)
    pins = cfg.profile.metallb_manifests
    expected = []
    for pin in pins:
        dest = workloads._remote_path(cfg, pin.url)
        expected += [("fetch", pin.url), ("apply", dest)]
    if profile == "seed-2020":
        expected.append(("create", "Secret/memberlist"))
        expected.append(("apply", "ConfigMap/config"))
    else:
        expected.append(("apply", "IPAddressPool/dslab-pool,L2Advertisement/dslab-l2"))
    expected.append(("apply", "ConfigMap/my-nginx-conf,Deployment/my-nginx"))
    svc_names = ["my-nginx-svc-ipv4", "my-nginx-svc-ipv6", "my-nginx-svc-ipv6-local"]
    if profile == "current":
        svc_names.append("my-nginx-svc-dual")
    expected.append(("apply", ",".join(f"Service/{n}" for n in svc_names)))
    assert first.writes() == expected
    waited = [c[1] for c in first.calls if "rollout" in c[1]]
    assert [w[7] for w in waited] == ["deployment/controller", "daemonset/speaker", "deployment/my-nginx"]

    # The state records what each applied set was; the rendered files hash the same.
    saved = json.loads(state.read_text())
    rendered = workloads.render_manifests(cfg)
    for key, name in workloads.SET_FILES.items():
        assert saved[workloads.STATE_PREFIX + key] == workloads.digest(rendered[name])

    second = run_both(cfg, state, secret_exists=True)
    assert second.writes() == []
    assert second.calls  # it still read and waited
    for _node, cmd, _input in second.calls:
        assert cmd[3] in ("get", "-n") and ("get" in cmd or "rollout" in cmd), cmd


def test_a_changed_setting_reapplies_only_its_set(tmp_path):
    state = tmp_path / "state.json"
    cfg = with_pins(load("current"))
    run_both(cfg, state)

    moved = with_pins(load("current", external_ipv4="192.168.200.146"))
    assert run_both(moved, state).writes() == [
        ("apply", "Service/my-nginx-svc-ipv4,Service/my-nginx-svc-ipv6,Service/my-nginx-svc-ipv6-local,"
                  "Service/my-nginx-svc-dual")]

    new_image = dataclasses.replace(moved, profile=dataclasses.replace(moved.profile, nginx_image="docker.io/library/nginx:1.30.9"))
    assert run_both(new_image, state).writes() == [("apply", "ConfigMap/my-nginx-conf,Deployment/my-nginx")]

    assert run_both(new_image, state).writes() == []


def test_a_changed_pool_reapplies_the_metallb_config_only(tmp_path):
    state = tmp_path / "state.json"
    run_both(with_pins(load("seed-2020")), state)
    wider = with_pins(load("seed-2020", metallb_ipv4_range="192.168.200.230-192.168.200.250"))
    assert run_both(wider, state, secret_exists=True).writes() == [("apply", "ConfigMap/config")]


def test_new_pins_reinstall_metallb(tmp_path):
    state = tmp_path / "state.json"
    cfg = with_pins(load("current"))
    run_both(cfg, state)
    pins = tuple(Download(p.url, "cd" * 32) for p in cfg.profile.metallb_manifests)
    repinned = dataclasses.replace(cfg, profile=dataclasses.replace(cfg.profile, metallb_manifests=pins))
    writes = run_both(repinned, state).writes()
    assert [w[0] for w in writes] == ["fetch", "apply"]


def test_the_memberlist_secret_is_created_only_when_absent(tmp_path):
    cfg = with_pins(load("seed-2020"))
    runner = run_both(cfg, tmp_path / "a.json", secret_exists=True)
    assert ("create", "Secret/memberlist") not in runner.writes()
    created = [c for c in run_both(cfg, tmp_path / "b.json").calls if c[1][:1] == ["kubectl"] and c[1][3] == "create"]
    (call,) = created
    assert "secretkey" in call[2] and "--from-literal" not in " ".join(call[1])  # the key never on a command line


def test_a_failed_apply_is_not_recorded_and_the_next_run_resumes(tmp_path):
    state = tmp_path / "state.json"
    cfg = with_pins(load("current"))
    with pytest.raises(StepError, match="kubectl apply failed"):
        run_both(cfg, state, fail_apply="kind: Service")
    saved = json.loads(state.read_text())
    assert workloads.STATE_PREFIX + "nginx" in saved and workloads.STATE_PREFIX + "services" not in saved
    assert run_both(cfg, state).writes() == [
        ("apply", "Service/my-nginx-svc-ipv4,Service/my-nginx-svc-ipv6,Service/my-nginx-svc-ipv6-local,"
                  "Service/my-nginx-svc-dual")]


def test_the_metallb_config_waits_for_the_webhook(tmp_path):
    cfg = with_pins(load("current"))
    runner = run_both(cfg, tmp_path / "state.json", webhook_failures=3)
    applies = [c for c in runner.calls if c[2] and "IPAddressPool" in c[2]]
    assert len(applies) == 4


def test_a_load_balancer_without_its_addresses_times_out_naming_the_service(tmp_path, fast_clock):
    cfg = with_pins(load("current", ready_timeout=60))
    with pytest.raises(StepError, match=r"Service default/my-nginx-svc-dual has no IPv4 and IPv6"):
        run_both(cfg, tmp_path / "state.json", lb_ready=False)
    assert 60 <= fast_clock[0] <= 60 + workloads.POLL_SECONDS


@pytest.mark.parametrize("profile", PROFILES)
def test_new_machines_with_an_old_state_get_everything_again(profile, tmp_path):
    cfg = with_pins(load(profile))
    state = tmp_path / "state.json"
    first = run_both(cfg, state).writes()
    again = run_both(cfg, state, empty_cluster=True).writes()
    assert again == first


def test_metallb_0_9_is_applied_with_its_images_taken_as_loaded(tmp_path, fast_clock):
    """metallb.yaml v0.9.8 sets imagePullPolicy: Always on the speaker and the controller."""
    cfg = with_pins(load("seed-2020"))
    upstream = ("      containers:\n      - args:\n        - --port=7472\n        image: metallb/speaker:v0.9.8\n"
                "        imagePullPolicy: Always\n        name: speaker\n---\n"
                "      - image: metallb/controller:v0.9.8\n        imagePullPolicy: Always\n")

    class Node(FakeRunner):
        put = {}

        def run(self, node, command, **options):
            if list(command)[:1] == ["cat"]:
                self.calls.append((node, list(command), None))
                return Result(0, upstream, "")
            return super().run(node, command, **options)

        def put_text(self, node, text, remote, mode="0644", secret=False):
            self.put[remote] = text

    runner = Node(cfg)
    workloads.deploy_metallb(Context(cfg, State(tmp_path / "state.json"), runner))
    for pin in cfg.profile.metallb_manifests:
        dest = workloads._remote_path(cfg, pin.url)
        local = dest[:-len(".yaml")] + ".if-not-present.yaml"
        assert runner.put[local] == upstream.replace("imagePullPolicy: Always", "imagePullPolicy: IfNotPresent")
        assert ("apply", local) in runner.writes() and ("apply", dest) not in runner.writes()
    # a manifest without it (namespace.yaml, MetalLB 0.16's) is applied as fetched
    plain = Node(cfg)
    plain.run = lambda node, command, **o: FakeRunner.run(plain, node, command, **o)
    workloads.deploy_metallb(Context(cfg, State(tmp_path / "plain.json"), plain))
    assert [w for w in plain.writes() if w[0] == "apply"][:2] == [
        ("apply", workloads._remote_path(cfg, p.url)) for p in cfg.profile.metallb_manifests]
