"""lab.kubeadm: the rendered init/join files, field by field, for both profiles."""

from __future__ import annotations

import base64
import ipaddress
import re
import shutil
import subprocess

import pytest
import yaml

import lab.config
import lab.kubeadm as kubeadm

PROFILES = ("current", "seed-2020")
HASH = "sha256:" + "ab" * 32


def cfg_of(profile: str, **extra):
    return lab.config.load({"profile": profile, **extra})


def args_map(args) -> dict:
    """extraArgs of either form as a dict (v1beta4 list must not repeat a name)."""
    if isinstance(args, list):
        names = [a["name"] for a in args]
        assert len(names) == len(set(names)), names
        assert all(set(a) == {"name", "value"} and isinstance(a["value"], str) for a in args)
        return {a["name"]: a["value"] for a in args}
    assert all(isinstance(v, str) for v in args.values())
    return dict(args)


def docs_of(cfg, token):
    docs = list(yaml.safe_load_all(kubeadm.render_init(cfg, token)))
    assert [d["kind"] for d in docs] == [
        "InitConfiguration", "ClusterConfiguration", "KubeletConfiguration", "KubeProxyConfiguration"]
    assert docs == kubeadm.init_config(cfg, token)  # the YAML is exactly the data
    return {d["kind"]: d for d in docs}


# --------------------------------------------------------------------------- tokens


def test_new_token_format_and_randomness():
    tokens = {kubeadm.new_token() for _ in range(200)}
    assert len(tokens) == 200
    assert all(re.fullmatch(r"[a-z0-9]{6}\.[a-z0-9]{16}", t) for t in tokens)
    assert "abcdef.0123456789abcdef" not in tokens  # never the recipe's fixed token


def test_bad_token_rejected():
    cfg = cfg_of("current")
    with pytest.raises(ValueError):
        kubeadm.init_config(cfg, "abcdef.0123456789ABCDEF")
    with pytest.raises(ValueError):
        kubeadm.join_config(cfg, cfg.workers[0], "abc.def", HASH)
    with pytest.raises(ValueError):
        kubeadm.join_config(cfg, cfg.workers[0], kubeadm.new_token(), "sha256:xyz")


# --------------------------------------------------------------------------- init, per profile


@pytest.mark.parametrize("profile", PROFILES)
def test_init_fields(profile):
    cfg = cfg_of(profile)
    token = kubeadm.new_token()
    d = docs_of(cfg, token)
    cp = cfg.control_plane
    p = cfg.profile
    seed = profile == "seed-2020"
    api = f"kubeadm.k8s.io/{'v1beta2' if seed else 'v1beta4'}"

    init = d["InitConfiguration"]
    assert init["apiVersion"] == api
    (bt,) = init["bootstrapTokens"]
    assert bt["token"] == token
    assert bt["ttl"] == "2h0m0s"
    assert bt["usages"] == ["signing", "authentication"]
    assert bt["groups"] == ["system:bootstrappers:kubeadm:default-node-token"]
    assert init["localAPIEndpoint"] == {"advertiseAddress": str(cp.ipv4), "bindPort": 6443}
    assert ipaddress.ip_address(init["localAPIEndpoint"]["advertiseAddress"]) in cfg.network_ipv4
    reg = init["nodeRegistration"]
    assert reg["name"] == cp.name == "k8s-master01"
    if seed:
        assert reg["criSocket"] == "/var/run/dockershim.sock"
        assert reg["taints"] == [{"key": "node-role.kubernetes.io/master", "effect": "NoSchedule"}]
        assert isinstance(reg["kubeletExtraArgs"], dict)
        assert args_map(reg["kubeletExtraArgs"]) == {"node-ip": str(cp.ipv4)}  # 1.17: one address
    else:
        assert reg["criSocket"] == "unix:///var/run/cri-dockerd.sock"
        assert reg["taints"] == [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]
        assert reg["kubeletExtraArgs"] == [{"name": "node-ip", "value": f"{cp.ipv4},{cp.ipv6}"}]

    cl = d["ClusterConfiguration"]
    assert cl["apiVersion"] == api
    assert cl["kubernetesVersion"] == f"v{p.kubernetes_version}"
    assert cl["controlPlaneEndpoint"] == f"{cp.ipv4}:6443"
    net = cl["networking"]
    pods = [ipaddress.ip_network(s) for s in net["podSubnet"].split(",")]
    svcs = [ipaddress.ip_network(s) for s in net["serviceSubnet"].split(",")]
    assert [n.version for n in pods] == [4, 6] and tuple(pods) == cfg.pod_subnets
    assert [n.version for n in svcs] == [4, 6] and tuple(svcs) == cfg.service_subnets
    assert net["dnsDomain"] == "cluster.local"
    assert args_map(cl["controllerManager"]["extraArgs"]) == {
        "node-cidr-mask-size-ipv4": str(cfg.node_cidr_mask_ipv4),
        "node-cidr-mask-size-ipv6": str(cfg.node_cidr_mask_ipv6),
    }
    sans = cl["apiServer"]["certSANs"]
    assert {str(cp.ipv4), str(cp.ipv6), cp.name, cp.fqdn(cfg.domain)} <= set(sans)
    if seed:
        assert cl["featureGates"] == {"IPv6DualStack": True}
        assert cl["imageRepository"] == "registry.k8s.io"
        # kubeadm 1.17 passes the gate to apiserver/controller-manager itself: no extraArgs for it
        assert "apiServer" not in cl or "extraArgs" not in cl["apiServer"]
        assert "feature-gates" not in args_map(cl["controllerManager"]["extraArgs"])
    else:
        assert "featureGates" not in cl
        assert "imageRepository" not in cl

    kl = d["KubeletConfiguration"]
    assert kl["apiVersion"] == "kubelet.config.k8s.io/v1beta1"
    assert kl["cgroupDriver"] == "systemd"
    # 1.36 with cri-dockerd: exec/attach WebSockets must not go to the kubelet (plain-HTTP streams)
    assert kl.get("featureGates") == ({"IPv6DualStack": True} if seed else {"ExtendWebSocketsToKubelet": False})
    if not seed:
        assert cl["apiServer"]["extraArgs"] == [{"name": "feature-gates", "value": "ExtendWebSocketsToKubelet=false"}]

    kp = d["KubeProxyConfiguration"]
    assert kp["apiVersion"] == "kubeproxy.config.k8s.io/v1alpha1"
    assert kp["mode"] == cfg.kube_proxy_mode == "ipvs"
    assert kp["ipvs"] == {"strictARP": True}
    assert kp["clusterCIDR"] == net["podSubnet"]
    assert kp.get("featureGates") == ({"IPv6DualStack": True} if seed else None)


def test_current_containerd_socket():
    cfg = cfg_of("current", runtime="containerd")
    d = docs_of(cfg, kubeadm.new_token())
    assert d["InitConfiguration"]["nodeRegistration"]["criSocket"] == "unix:///var/run/containerd/containerd.sock"
    join = kubeadm.join_config(cfg, cfg.workers[0], kubeadm.new_token(), HASH)
    assert join["nodeRegistration"]["criSocket"] == "unix:///var/run/containerd/containerd.sock"


def test_nftables_mode_has_no_ipvs_block():
    d = docs_of(cfg_of("current", kube_proxy_mode="nftables"), kubeadm.new_token())
    assert d["KubeProxyConfiguration"]["mode"] == "nftables"
    assert "ipvs" not in d["KubeProxyConfiguration"]


# --------------------------------------------------------------------------- join


@pytest.mark.parametrize("profile", PROFILES)
def test_join_fields(profile):
    cfg = cfg_of(profile)
    token = kubeadm.new_token()
    for worker in cfg.workers:
        doc = yaml.safe_load(kubeadm.render_join(cfg, worker, token, HASH))
        assert doc == kubeadm.join_config(cfg, worker, token, HASH)
        assert doc["kind"] == "JoinConfiguration"
        assert doc["apiVersion"] == kubeadm.api_version(cfg)
        bt = doc["discovery"]["bootstrapToken"]
        assert bt == {"apiServerEndpoint": f"{cfg.control_plane.ipv4}:6443", "token": token,
                      "caCertHashes": [HASH]}
        assert "unsafeSkipCAVerification" not in bt
        reg = doc["nodeRegistration"]
        assert reg["name"] == worker.name
        assert "taints" not in reg
        expected_ip = f"{worker.ipv4},{worker.ipv6}" if profile == "current" else str(worker.ipv4)
        assert args_map(reg["kubeletExtraArgs"]) == {"node-ip": expected_ip}


# --------------------------------------------------------------------------- profiles differ only where they must


def _flatten(value, path=""):
    """{path: leaf} with extraArgs lists turned into maps (the two forms of the same thing)."""
    out = {}
    if isinstance(value, list) and value and all(isinstance(v, dict) and set(v) == {"name", "value"} for v in value):
        value = args_map(value)
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(_flatten(v, f"{path}.{k}" if path else k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{path}[{i}]"))
    else:
        out[path] = value
    return out


#: Every path at which seed-2020 and current may differ, and why.
ALLOWED_DIFFERENCES = {
    # kubeadm API version: v1beta2 (1.17) / v1beta4 (1.36)
    "InitConfiguration.apiVersion", "ClusterConfiguration.apiVersion",
    "JoinConfiguration.apiVersion",
    # CRI: dockershim (built into 1.17) / cri-dockerd
    "InitConfiguration.nodeRegistration.criSocket", "JoinConfiguration.nodeRegistration.criSocket",
    # control-plane taint key: master (1.17) / control-plane
    "InitConfiguration.nodeRegistration.taints[0].key",
    # kubelet --node-ip: one address before 1.20 / both families
    "InitConfiguration.nodeRegistration.kubeletExtraArgs.node-ip",
    "JoinConfiguration.nodeRegistration.kubeletExtraArgs.node-ip",
    # the versions themselves
    "ClusterConfiguration.kubernetesVersion",
    # IPv6DualStack alpha gate (1.17 only), to kubeadm, kubelet and kube-proxy
    "ClusterConfiguration.featureGates.IPv6DualStack",
    "KubeletConfiguration.featureGates.IPv6DualStack",
    "KubeProxyConfiguration.featureGates.IPv6DualStack",
    # k8s.gcr.io is frozen: the 1.17 images come from registry.k8s.io (the default today)
    "ClusterConfiguration.imageRepository",
    # v1beta2 has dns.type (the recipe's CoreDNS); v1beta4 has no such field
    "ClusterConfiguration.dns.type",
    # 1.36 + cri-dockerd: ExtendWebSocketsToKubelet off on kube-apiserver and the kubelet
    "ClusterConfiguration.apiServer.extraArgs.feature-gates",
    "KubeletConfiguration.featureGates.ExtendWebSocketsToKubelet",
}


@pytest.mark.parametrize("profile, runtime, version, off", [
    ("current", "docker", "1.36.0", True),
    ("current", "docker", "1.37.2", True),
    ("current", "docker", "1.35.4", False),  # the gate's default is off before 1.36
    ("current", "containerd", "1.36.0", False),  # containerd's streaming server is fine
    ("seed-2020", "docker", "1.17.2", False),
])
def test_websockets_gate_off_only_with_cri_dockerd_from_136(profile, runtime, version, off):
    import dataclasses
    cfg = cfg_of(profile)
    cfg = dataclasses.replace(cfg, runtime=runtime, profile=dataclasses.replace(cfg.profile, kubernetes_version=version))
    d = {doc["kind"]: doc for doc in kubeadm.init_config(cfg, kubeadm.new_token())}
    kubelet_gates = d["KubeletConfiguration"].get("featureGates", {})
    api_args = args_map(d["ClusterConfiguration"]["apiServer"].get("extraArgs", []))
    if off:
        assert kubelet_gates["ExtendWebSocketsToKubelet"] is False
        assert api_args["feature-gates"] == "ExtendWebSocketsToKubelet=false"
    else:
        assert "ExtendWebSocketsToKubelet" not in kubelet_gates
        assert "feature-gates" not in api_args


def test_profiles_differ_only_where_they_must():
    token = kubeadm.new_token()
    flat = {}
    for profile in PROFILES:
        cfg = cfg_of(profile)
        docs = kubeadm.init_config(cfg, token) + [kubeadm.join_config(cfg, cfg.workers[0], token, HASH)]
        flat[profile] = _flatten({d["kind"]: d for d in docs})
    a, b = flat["seed-2020"], flat["current"]
    differing = {k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>")}
    assert differing <= ALLOWED_DIFFERENCES, sorted(differing - ALLOWED_DIFFERENCES)
    # and each allowed difference really is one (the list is not padded)
    assert differing == ALLOWED_DIFFERENCES, sorted(ALLOWED_DIFFERENCES - differing)


# --------------------------------------------------------------------------- fields exist in kubeadm's Go types

# Read from cmd/kubeadm/app/apis/kubeadm/v1beta2/types.go (the 1.15-1.25 API, as in release-1.17)
# and v1beta4/types.go (kubernetes/kubernetes master), json tags; Taint from core/v1.
_TAINT = {"key", "value", "effect", "timeAdded"}
_V1BETA2 = {
    "InitConfiguration": {"apiVersion", "kind", "bootstrapTokens", "nodeRegistration", "localAPIEndpoint",
                          "certificateKey"},
    "ClusterConfiguration": {"apiVersion", "kind", "etcd", "networking", "kubernetesVersion",
                             "controlPlaneEndpoint", "apiServer", "controllerManager", "scheduler", "dns",
                             "certificatesDir", "imageRepository", "useHyperKubeImage", "featureGates",
                             "clusterName"},
    "JoinConfiguration": {"apiVersion", "kind", "nodeRegistration", "caCertPath", "discovery", "controlPlane"},
    "bootstrapTokens": {"token", "description", "ttl", "expires", "usages", "groups"},
    "nodeRegistration": {"name", "criSocket", "taints", "kubeletExtraArgs", "ignorePreflightErrors"},
    "localAPIEndpoint": {"advertiseAddress", "bindPort"},
    "networking": {"serviceSubnet", "podSubnet", "dnsDomain"},
    "apiServer": {"extraArgs", "extraVolumes", "certSANs", "timeoutForControlPlane"},
    "controllerManager": {"extraArgs", "extraVolumes"},
    "dns": {"type", "imageRepository", "imageTag"},
    "discovery": {"bootstrapToken", "file", "tlsBootstrapToken", "timeout"},
    "bootstrapToken": {"token", "apiServerEndpoint", "caCertHashes", "unsafeSkipCAVerification"},
    "taints": _TAINT,
}
_V1BETA4 = {
    "InitConfiguration": {"apiVersion", "kind", "bootstrapTokens", "dryRun", "nodeRegistration",
                          "localAPIEndpoint", "certificateKey", "skipPhases", "patches", "timeouts"},
    "ClusterConfiguration": {"apiVersion", "kind", "etcd", "networking", "kubernetesVersion",
                             "controlPlaneEndpoint", "apiServer", "controllerManager", "scheduler", "dns",
                             "proxy", "certificatesDir", "imageRepository", "featureGates", "clusterName",
                             "encryptionAlgorithm", "certificateValidityPeriod", "caCertificateValidityPeriod"},
    "JoinConfiguration": {"apiVersion", "kind", "dryRun", "nodeRegistration", "caCertPath", "discovery",
                          "controlPlane", "skipPhases", "patches", "timeouts"},
    "bootstrapTokens": {"token", "description", "ttl", "expires", "usages", "groups"},
    "nodeRegistration": {"name", "criSocket", "taints", "kubeletExtraArgs", "ignorePreflightErrors",
                         "imagePullPolicy", "imagePullSerial"},
    "localAPIEndpoint": {"advertiseAddress", "bindPort"},
    "networking": {"serviceSubnet", "podSubnet", "dnsDomain"},
    "apiServer": {"extraArgs", "extraVolumes", "extraEnvs", "certSANs"},
    "controllerManager": {"extraArgs", "extraVolumes", "extraEnvs"},
    "dns": {"imageRepository", "imageTag", "disabled"},
    "discovery": {"bootstrapToken", "file", "tlsBootstrapToken"},
    "bootstrapToken": {"token", "apiServerEndpoint", "caCertHashes", "unsafeSkipCAVerification"},
    "taints": _TAINT,
}
# Component configs the lab sets (kubelet.config.k8s.io/v1beta1, kubeproxy.config.k8s.io/v1alpha1).
_COMPONENTS = {
    "KubeletConfiguration": {"apiVersion", "kind", "cgroupDriver", "featureGates"},
    "KubeProxyConfiguration": {"apiVersion", "kind", "mode", "clusterCIDR", "ipvs", "featureGates"},
    "ipvs": {"strictARP"},
}
_FREE_MAPS = {"extraArgs", "kubeletExtraArgs", "featureGates"}  # keys are flag/gate names


def _check_keys(node, name, allowed, where, problems):
    if isinstance(node, list):
        for i, item in enumerate(node):
            _check_keys(item, name, allowed, f"{where}[{i}]", problems)
        return
    if not isinstance(node, dict) or name in _FREE_MAPS:
        return
    known = allowed.get(name)
    if known is None:
        problems.append(f"{where}: no key list for {name}")
        return
    for key, value in node.items():
        if key not in known:
            problems.append(f"{where}.{key}: not a field of {name}")
        else:
            _check_keys(value, key, allowed, f"{where}.{key}", problems)


@pytest.mark.parametrize("profile", PROFILES)
def test_fields_exist_in_kubeadm_go_types(profile):
    # kubeadm itself ("kubeadm config validate") is not available on this machine: the keys are
    # checked against the json tags of kubeadm's Go types instead.
    cfg = cfg_of(profile)
    allowed = dict(_V1BETA2 if profile == "seed-2020" else _V1BETA4, **_COMPONENTS)
    token = kubeadm.new_token()
    docs = kubeadm.init_config(cfg, token) + [kubeadm.join_config(cfg, cfg.workers[0], token, HASH)]
    problems = []
    for doc in docs:
        _check_keys(doc, doc["kind"], allowed, doc["kind"], problems)
    assert problems == []
    # value shapes: v1beta2 extraArgs are maps, v1beta4 are name/value lists
    cluster = docs[1]
    shape = dict if profile == "seed-2020" else list
    assert isinstance(cluster["controllerManager"]["extraArgs"], shape)
    assert isinstance(docs[0]["nodeRegistration"]["kubeletExtraArgs"], shape)


# --------------------------------------------------------------------------- CA pin


def _make_ca(tmp_path, key_args):
    key = tmp_path / "ca.key"
    crt = tmp_path / "ca.crt"
    subprocess.run(["openssl", "req", "-x509", "-nodes", "-days", "1", "-subj", "/CN=kubernetes",
                    *key_args, "-keyout", str(key), "-out", str(crt)], check=True, capture_output=True)
    return crt


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
@pytest.mark.parametrize("key_args", [["-newkey", "rsa:2048"],
                                      ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]],
                         ids=["rsa", "ecdsa"])
def test_ca_cert_hash_matches_openssl(tmp_path, key_args):
    crt = _make_ca(tmp_path, key_args)
    pin = kubeadm.ca_cert_hash(crt.read_bytes())
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", pin)
    command = kubeadm.CA_HASH_COMMAND.replace("/etc/kubernetes/pki/ca.crt", str(crt))
    out = subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == pin


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_ca_cert_hash_matches_cryptography(tmp_path):
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization

    crt = _make_ca(tmp_path, ["-newkey", "rsa:2048"])
    cert = x509.load_pem_x509_certificate(crt.read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    assert kubeadm.ca_cert_hash(crt.read_bytes()) == "sha256:" + digest.finalize().hex()


def test_ca_cert_hash_rejects_non_certificates():
    with pytest.raises(ValueError):
        kubeadm.ca_cert_hash(b"not a certificate")
    bogus = b"-----BEGIN CERTIFICATE-----\n" + base64.b64encode(b"\x04\x03abc") + b"\n-----END CERTIFICATE-----\n"
    with pytest.raises(ValueError):
        kubeadm.ca_cert_hash(bogus)
