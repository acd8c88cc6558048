"""lab.calico: the recipe's dual-stack edits on real-structure excerpts of Calico 3.11 and 3.31."""

from __future__ import annotations

import collections

import json
import re
from pathlib import Path

import pytest
import yaml

import lab.calico as calico
import lab.config
from schemas import kv121_available, validate_objects

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CASES = {"current": "calico-3.31.yaml", "seed-2020": "calico-3.11.yaml"}


def load(profile):
    cfg = lab.config.load({"profile": profile})
    return cfg, (FIXTURES / CASES[profile]).read_text()


def objects(text):
    return [o for o in yaml.safe_load_all(text) if o is not None]


def find(objs, kind, name):
    (obj,) = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def node_env(objs):
    ds = find(objs, "DaemonSet", "calico-node")
    (container,) = [c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "calico-node"]
    return container["env"]


def env_values(objs):
    return {e["name"]: e.get("value") for e in node_env(objs)}


def ipam(objs):
    cm = find(objs, "ConfigMap", "calico-config")
    conf = calico.cni_config(cm["data"]["cni_network_config"])
    (plugin,) = [p for p in conf["plugins"] if p["type"] == "calico"]
    return plugin["ipam"]


@pytest.mark.parametrize("profile", CASES)
def test_fixture_matches_profile_pin(profile):
    cfg, text = load(profile)
    images = set(re.findall(r"image: \S*calico/node:v(\S+)", text))
    assert images == {cfg.profile.calico_version}


@pytest.mark.parametrize("profile", CASES)
def test_recipe_settings(profile):
    cfg, text = load(profile)
    before = objects(text)
    assert env_values(before)["FELIX_IPV6SUPPORT"] == "false"
    assert "CALICO_IPV4POOL_CIDR" not in env_values(before)  # commented out upstream
    after = objects(calico.edit_manifest(text, cfg))

    assert ipam(after) == {"type": "calico-ipam", "assign_ipv4": "true", "assign_ipv6": "true"}
    env = env_values(after)
    assert env["IP"] == "autodetect"
    assert env["IP6"] == "autodetect"
    assert env["CALICO_IPV4POOL_CIDR"] == "10.244.0.0/16" == str(cfg.pod_subnets[0])
    assert env["CALICO_IPV6POOL_CIDR"] == "fd00:2::/48" == str(cfg.pod_subnets[1])
    assert env["FELIX_IPV6SUPPORT"] == "true"
    assert "FELIX_USAGEREPORTINGENABLED" not in env_values(before) and env["FELIX_USAGEREPORTINGENABLED"] == "false"
    assert env["CALICO_IPV6POOL_NAT_OUTGOING"] == "true"  # upstream default false: no pod IPv6 egress
    if profile == "current":  # follows the kubelet's node-ip pair; cidr= would also see kube-ipvs0
        assert env["IP_AUTODETECTION_METHOD"] == "kubernetes-internal-ip"
        assert env["IP6_AUTODETECTION_METHOD"] == "kubernetes-internal-ip"
        assert not any(str(v).startswith("cidr=") for v in env.values())
    else:  # 3.11 has first-found, can-reach=, interface=, skip-interface= only
        assert env["IP_AUTODETECTION_METHOD"] == f"can-reach={cfg.gateway_ipv4}"
        assert env["IP6_AUTODETECTION_METHOD"] == f"can-reach={cfg.gateway_ipv6}"
    names = [e["name"] for e in node_env(after)]
    assert len(names) == len(set(names))
    assert names.index("IP6") == names.index("IP") + 1  # next to its IPv4 sibling


@pytest.mark.parametrize("profile", CASES)
def test_everything_else_unchanged(profile):
    cfg, text = load(profile)
    out = calico.edit_manifest(text, cfg)
    old_docs, new_docs = calico.split_documents(text), calico.split_documents(out)
    assert len(old_docs) == len(new_docs)
    for old, new in zip(old_docs, new_docs):
        ident = calico._identity(old)
        if ident not in (calico.CONFIGMAP, calico.DAEMONSET):
            assert old == new, ident  # untouched documents: exact text
    # edited documents: only the recipe's lines went away, and only the recipe's lines came in
    old_lines = collections.Counter(line.strip() for line in text.splitlines())
    new_lines = collections.Counter(line.strip() for line in out.splitlines())
    removed, added = list((old_lines - new_lines).elements()), list((new_lines - old_lines).elements())
    # FELIX_IPV6SUPPORT's "false" became "true"; the usage reporting entry brought a "false" of its own
    assert removed == ['"type": "calico-ipam"']
    assert sorted(added) == sorted([
        '"type": "calico-ipam",', '"assign_ipv4": "true",', '"assign_ipv6": "true"',
        "- name: IP6", 'value: "autodetect"',
        "- name: IP_AUTODETECTION_METHOD", f'value: "{calico.autodetection_methods(cfg)[0]}"',
        "- name: IP6_AUTODETECTION_METHOD", f'value: "{calico.autodetection_methods(cfg)[1]}"',
        "- name: CALICO_IPV4POOL_CIDR", 'value: "10.244.0.0/16"',
        "- name: CALICO_IPV6POOL_CIDR", 'value: "fd00:2::/48"',
        "- name: CALICO_IPV6POOL_NAT_OUTGOING", 'value: "true"',
        'value: "true"', "- name: FELIX_USAGEREPORTINGENABLED",
    ])
    # parsed: every field outside the edits is equal
    before, after = objects(text), objects(out)
    for obj in before + after:
        if obj["kind"] == "ConfigMap":
            conf = calico.cni_config(obj["data"]["cni_network_config"])
            for plugin in conf["plugins"]:
                if "ipam" in plugin:
                    plugin["ipam"].pop("assign_ipv4", None)
                    plugin["ipam"].pop("assign_ipv6", None)
            obj["data"]["cni_network_config"] = conf
        if obj["kind"] == "DaemonSet":
            keep = [e for e in node_env([obj]) if e["name"] not in {n for n, _v, _a in calico.env_settings(cfg)}]
            node_env([obj])[:] = keep
    assert before == after


@pytest.mark.parametrize("profile", CASES)
def test_idempotent(profile):
    cfg, text = load(profile)
    once = calico.edit_manifest(text, cfg)
    assert calico.edit_manifest(once, cfg) == once


def test_present_pool_replaced_and_absent_settings_appended():
    cfg, text = load("current")
    # an uncommented IPv4 pool with another value, no FELIX_IPV6SUPPORT entry at all, no sample comment
    text = text.replace('            # - name: CALICO_IPV4POOL_CIDR\n            #   value: "192.168.0.0/16"\n',
                        '            - name: CALICO_IPV4POOL_CIDR\n              value: "192.168.0.0/16"\n')
    text = text.replace('            # Disable IPv6 on Kubernetes.\n            - name: FELIX_IPV6SUPPORT\n'
                        '              value: "false"\n', '')
    assert "FELIX_IPV6SUPPORT" not in text
    out = calico.edit_manifest(text, cfg)
    env = env_values(objects(out))
    assert env["CALICO_IPV4POOL_CIDR"] == "10.244.0.0/16"
    assert env["FELIX_IPV6SUPPORT"] == "true"
    assert [e["name"] for e in node_env(objects(out))][-2:] == ["FELIX_IPV6SUPPORT", "FELIX_USAGEREPORTINGENABLED"]
    assert calico.edit_manifest(out, cfg) == out


def test_single_line_ipam_object():
    cfg, text = load("current")
    text = text.replace('"ipam": {\n              "type": "calico-ipam"\n          },', '"ipam": {"type": "calico-ipam"},')
    out = calico.edit_manifest(text, cfg)
    assert '"ipam": {"type": "calico-ipam", "assign_ipv4": "true", "assign_ipv6": "true"},' in out


def test_missing_documents_rejected():
    cfg, text = load("current")
    docs = [d for d in calico.split_documents(text) if calico._identity(d) != calico.CONFIGMAP]
    with pytest.raises(calico.ManifestError):
        calico.edit_manifest("".join(docs), cfg)


def test_cni_config_reads_placeholders():
    conf = calico.cni_config('{"mtu": __CNI_MTU__, "a": ["__X__", __Y__]}')
    assert conf == {"mtu": "__CNI_MTU__", "a": ["__X__", "__Y__"]}
    json.dumps(conf)


@pytest.mark.parametrize("profile", CASES)
def test_edited_manifest_matches_api_schemas(profile):
    cfg, text = load(profile)
    version = cfg.profile.kubernetes_schema_version
    if version.startswith("1.17") and not kv121_available():
        pytest.fail("kubernetes-validate 1.21.0 is missing: run `python tests/schemas.py install`")
    objs = objects(calico.edit_manifest(text, cfg))
    assert {o["kind"] for o in objs} >= {"ConfigMap", "DaemonSet", "CustomResourceDefinition", "ServiceAccount"}
    assert validate_objects(objs, version) == []


def test_schema_helper_reports_errors():
    bad = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "b"}, "bogus": 1}
    assert validate_objects([bad], "1.36") and "bogus" in validate_objects([bad], "1.36")[0]
    unknown = {"apiVersion": "example.com/v1", "kind": "Nope", "metadata": {"name": "x"}}
    assert "no schema" in validate_objects([unknown], "1.36")[0]
    if kv121_available():
        assert "bogus" in validate_objects([bad], "1.17")[0]


# --------------------------------------------------------------------------- can-reach never sees kube-ipvs0

#: What calico/node 3.11's ReachDestination does (pkg/startup/autodetection/reachaddr.go at
#: v3.11.3-node): connect a UDP socket to the destination and take its local address.
_REACH = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
sock = socket.socket(family, socket.SOCK_DGRAM)
sock.connect((sys.argv[1], 80))
print(sock.getsockname()[0])
"""


@pytest.mark.parametrize("ipvs_up", [False, True], ids=["kube-ipvs0-down", "kube-ipvs0-up"])
def test_can_reach_picks_the_lab_address_not_kube_ipvs0(ipvs_up):
    """seed-2020's can-reach=<gateway> gives the node's lab address although kube-ipvs0 holds
    LoadBalancer and externalIP addresses of the same network, some closer to the gateway."""
    import os
    import shutil
    import subprocess
    import sys as _sys

    if shutil.which("ip") is None:
        pytest.skip("ip (iproute2) is not installed")
    if os.geteuid() != 0:
        pytest.fail("this test needs root (ip netns)")
    from harness.netns import NetNS

    cfg, _text = load("seed-2020")
    node = cfg.node("k8s-worker01")
    v4_method, v6_method = calico.autodetection_methods(cfg)
    gateways = [v4_method.split("=", 1)[1], v6_method.split("=", 1)[1]]
    assert gateways == [str(cfg.gateway_ipv4), str(cfg.gateway_ipv6)]
    # On kube-ipvs0: the externalIPs, both ends of the MetalLB ranges, and the address right
    # after the gateway (longest prefix match would prefer it to the node's own address).
    on_ipvs = [cfg.external_ipv4, cfg.external_ipv6, cfg.metallb_ipv4_range.first, cfg.metallb_ipv4_range.last,
               cfg.metallb_ipv6_range.first, cfg.metallb_ipv6_range.last, cfg.gateway_ipv4 + 1, cfg.gateway_ipv6 + 1]
    ns = NetNS.create()
    try:
        def ip(*args):
            subprocess.run(["ip", "-n", ns.name, *args], check=True, capture_output=True)
        # veth pairs stand in for the NIC and for kube-ipvs0 (a dummy device in real life; the
        # kernel's source address selection does not look at the device type).
        ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer")
        ip("link", "set", "eth0-peer", "up")
        ip("addr", "add", f"{node.ipv4}/{cfg.network_ipv4.prefixlen}", "dev", "eth0")
        ip("-6", "addr", "add", f"{node.ipv6}/{cfg.network_ipv6.prefixlen}", "dev", "eth0", "nodad")
        ip("link", "set", "eth0", "up")
        ip("link", "add", "kube-ipvs0", "type", "veth", "peer", "name", "ipvs-peer")
        for address in on_ipvs:  # as kube-proxy's IPVS proxier binds them: host routes only
            plen = 32 if address.version == 4 else 128
            ip("addr", "add", f"{address}/{plen}", "dev", "kube-ipvs0", *(["nodad"] if address.version == 6 else []))
        if ipvs_up:
            ip("link", "set", "ipvs-peer", "up")
            ip("link", "set", "kube-ipvs0", "up")
        for gateway, want in zip(gateways, (node.ipv4, node.ipv6)):
            got = subprocess.run(["ip", "netns", "exec", ns.name, _sys.executable, "-c", _REACH, gateway],
                                 check=True, capture_output=True, text=True).stdout.strip()
            assert got == str(want), f"can-reach={gateway} picked {got}, not the lab address {want}"
    finally:
        ns.delete()
