"""kubeadm configuration of the lab: ``kubeadm init`` and ``kubeadm join`` files, built as data.

Every object is a plain dict dumped with PyYAML; nothing is templated as text. Field names
follow kubeadm's Go types (``cmd/kubeadm/app/apis/kubeadm/<version>/types.go`` in
kubernetes/kubernetes): v1beta2 as shipped with 1.17 for ``seed-2020``, v1beta4 for ``current``.

What differs between the two API versions and Kubernetes releases, and why:

* ``extraArgs`` / ``kubeletExtraArgs``: a ``{flag: value}`` map in v1beta2, a list of
  ``{name, value}`` in v1beta4 (``[]Arg``).
* kubelet ``--node-ip``: one address before 1.20, ``<v4>,<v6>`` since. 1.17's kubelet takes
  only the IPv4 address, so the node's ``.status.addresses`` stay IPv4-only (the recipe's
  known limit).
* ``IPv6DualStack`` (alpha in 1.17): kubeadm 1.17 itself passes the ClusterConfiguration
  feature gate to kube-apiserver, kube-controller-manager and kube-scheduler
  (``phases/controlplane/manifests.go``: ``defaultArguments["feature-gates"] =
  "IPv6DualStack=<b>"``) and into the default KubeProxyConfiguration
  (``componentconfigs/defaults.go``), but not to the kubelet: the KubeletConfiguration below
  carries the gate itself, and the KubeProxyConfiguration sets it explicitly too.
* ``--node-cidr-mask-size-ipv4/-ipv6``: flags of kube-controller-manager since 1.17
  (kubernetes#79993); kubeadm 1.17 no longer adds the single-stack ``--node-cidr-mask-size``
  when the gate is set (kubernetes#85494), so the per-family flags given here are accepted.
* control-plane taint: ``node-role.kubernetes.io/master`` in 1.17,
  ``node-role.kubernetes.io/control-plane`` (kubeadm's default) today.
* CRI socket: dockershim's in 1.17; cri-dockerd's or containerd's today.
* ``ExtendWebSocketsToKubelet`` (beta, on by default from 1.36; kubernetes/website
  ``feature-gates/extend-websockets-to-kubelet.md``): kube-apiserver then hands exec, attach
  and port-forward WebSockets straight to the kubelet of a node that declares the feature,
  and the kubelet declares it when its own gate is on (``nodedeclaredfeatures``). cri-dockerd
  serves its streams over plain HTTP at a scheme-less base URL, which the kubelet then dials
  as HTTPS ("server gave HTTP response to HTTPS client"; Mirantis/cri-dockerd#560, #569;
  kubespray 80b3345e). With the docker runtime on 1.36+, the gate is off on both components
  that read it: the kubelet (KubeletConfiguration, which ``kubeadm join`` hands to every
  worker) and kube-apiserver (``--feature-gates``).
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import string
from typing import Any, Dict, List, Mapping

import yaml

from .config import LabConfig, Node

#: Format of a bootstrap token (kubeadm's ``BootstrapTokenRegexp``).
TOKEN_RE = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")
TOKEN_ALPHABET = string.ascii_lowercase + string.digits
#: Lifetime of the bootstrap token: long enough for the workers to join, then it expires.
TOKEN_TTL = "2h0m0s"
TOKEN_GROUPS = ["system:bootstrappers:kubeadm:default-node-token"]
TOKEN_USAGES = ["signing", "authentication"]

API_PORT = 6443
DNS_DOMAIN = "cluster.local"
IMAGE_REPOSITORY_2020 = "registry.k8s.io"  # k8s.gcr.io is frozen; its images were copied here
DUAL_STACK_GATE = "IPv6DualStack"
WEBSOCKETS_GATE = "ExtendWebSocketsToKubelet"
WEBSOCKETS_GATE_SINCE = (1, 36)

KUBELET_API = "kubelet.config.k8s.io/v1beta1"
KUBE_PROXY_API = "kubeproxy.config.k8s.io/v1alpha1"

CRI_DOCKERSHIM = "/var/run/dockershim.sock"
CRI_DOCKERD = "unix:///var/run/cri-dockerd.sock"  # cri-dockerd's default and its socket unit's %t/cri-dockerd.sock
CRI_CONTAINERD = "unix:///var/run/containerd/containerd.sock"  # install-kubeadm.md, known endpoints

TAINT_MASTER = "node-role.kubernetes.io/master"
TAINT_CONTROL_PLANE = "node-role.kubernetes.io/control-plane"

#: Prints ``sha256:<hex>`` of the cluster CA's public key on the control-plane node (the same
#: value :func:`ca_cert_hash` computes from the certificate, and ``kubeadm join
#: --discovery-token-ca-cert-hash`` expects). ``openssl pkey`` handles RSA and ECDSA keys.
CA_HASH_COMMAND = (
    "openssl x509 -pubkey -noout -in /etc/kubernetes/pki/ca.crt"
    " | openssl pkey -pubin -outform der"
    " | openssl dgst -sha256 -hex"
    " | sed 's/^.* /sha256:/'"
)


# --------------------------------------------------------------------------- tokens and CA pins


def new_token() -> str:
    """A fresh random bootstrap token ``[a-z0-9]{6}.[a-z0-9]{16}``."""
    pick = lambda n: "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(n))  # noqa: E731
    return f"{pick(6)}.{pick(16)}"


def ca_cert_hash(pem: bytes) -> str:
    """``sha256:<hex>`` of the CA certificate's DER SubjectPublicKeyInfo, as kubeadm pins it.

    kubeadm hashes ``x509.Certificate.RawSubjectPublicKeyInfo`` (the SPKI bytes exactly as
    they appear in the certificate), so the DER is walked here rather than re-encoded.
    """
    der = _pem_to_der(pem)
    cert = _der_children(der, 0)  # Certificate ::= SEQUENCE { tbsCertificate, ... }
    tbs_start, tbs_end = cert[0]
    fields = _der_children(der[tbs_start:tbs_end], 0)
    # TBSCertificate: [0] version (optional), serialNumber, signature, issuer, validity,
    # subject, subjectPublicKeyInfo, ...
    index = 6 if der[tbs_start:tbs_end][fields[0][0]] == 0xA0 else 5
    start, end = fields[index]
    spki = der[tbs_start:tbs_end][start:end]
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def _pem_to_der(pem: bytes) -> bytes:
    text = pem.decode("ascii") if isinstance(pem, bytes) else pem
    match = re.search(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", text, re.S)
    if not match:
        raise ValueError("no PEM certificate found")
    return base64.b64decode("".join(match.group(1).split()))


def _der_length(data: bytes, pos: int):
    """(length, position of the content) of the DER TLV whose length octets start at ``pos``."""
    first = data[pos]
    if first < 0x80:
        return first, pos + 1
    count = first & 0x7F
    if count == 0 or count > 4:
        raise ValueError("unsupported DER length")
    return int.from_bytes(data[pos + 1:pos + 1 + count], "big"), pos + 1 + count


def _der_children(data: bytes, pos: int):
    """[(start, end)] of each whole TLV inside the constructed TLV at ``pos`` (whole, with headers)."""
    if data[pos] & 0x20 == 0:
        raise ValueError("expected a constructed DER value")
    length, content = _der_length(data, pos + 1)
    children, cur, end = [], content, content + length
    while cur < end:
        child_len, child_content = _der_length(data, cur + 1)
        children.append((cur, child_content + child_len))
        cur = child_content + child_len
    return children


# --------------------------------------------------------------------------- per-version details


def _v1beta4(cfg: LabConfig) -> bool:
    return cfg.profile.kubeadm_api_version != "v1beta2"


def api_version(cfg: LabConfig) -> str:
    """``kubeadm.k8s.io/<version>`` of the profile."""
    return f"kubeadm.k8s.io/{cfg.profile.kubeadm_api_version}"


def cri_socket(cfg: LabConfig) -> str:
    """CRI socket kubeadm and the kubelet talk to, per profile and runtime."""
    if cfg.runtime == "containerd":
        return CRI_CONTAINERD
    if not cfg.profile.needs_cri_dockerd:
        return CRI_DOCKERSHIM  # dockershim is built into the 1.17 kubelet
    return CRI_DOCKERD


def control_plane_taint(cfg: LabConfig) -> Dict[str, str]:
    """The control-plane taint of the version (1.17: ``master``; now kubeadm's default)."""
    key = TAINT_CONTROL_PLANE if _v1beta4(cfg) else TAINT_MASTER
    return {"key": key, "effect": "NoSchedule"}


def node_ip(cfg: LabConfig, node: Node) -> str:
    """kubelet ``--node-ip``: both families where the kubelet accepts it (1.20+), else IPv4."""
    if cfg.profile.kubelet_node_ip_dual:
        return f"{node.ipv4},{node.ipv6}"
    return str(node.ipv4)


def _args(cfg: LabConfig, args: Mapping[str, str]):
    """Extra arguments in the API version's form: a map (v1beta2) or a name/value list (v1beta4)."""
    if _v1beta4(cfg):
        return [{"name": k, "value": str(v)} for k, v in args.items()]
    return {k: str(v) for k, v in args.items()}


def _pair(values) -> str:
    return ",".join(str(v) for v in values)


def _node_registration(cfg: LabConfig, node: Node) -> Dict[str, Any]:
    reg: Dict[str, Any] = {
        "name": node.name,
        "criSocket": cri_socket(cfg),
        "kubeletExtraArgs": _args(cfg, {"node-ip": node_ip(cfg, node)}),
    }
    if node.is_control_plane:
        reg["taints"] = [control_plane_taint(cfg)]
    return reg


def gates_off(cfg: LabConfig) -> List[str]:
    """Feature gates turned off on kube-apiserver and the kubelet for this runtime and version."""
    version = tuple(int(p) for p in cfg.profile.kubernetes_version.split(".")[:2])
    if cfg.runtime == "docker" and version >= WEBSOCKETS_GATE_SINCE:
        return [WEBSOCKETS_GATE]
    return []


def control_plane_endpoint(cfg: LabConfig) -> str:
    """``<control-plane IPv4>:6443``."""
    return f"{cfg.control_plane.ipv4}:{API_PORT}"


# --------------------------------------------------------------------------- init


def init_config(cfg: LabConfig, token: str) -> List[Dict[str, Any]]:
    """The documents of ``kubeadm init --config``: Init, Cluster, Kubelet and KubeProxy configuration."""
    if not TOKEN_RE.match(token):
        raise ValueError(f"{token!r} is not a bootstrap token ([a-z0-9]{{6}}.[a-z0-9]{{16}})")
    cp = cfg.control_plane
    gate = cfg.profile.dual_stack_feature_gate

    init = {
        "apiVersion": api_version(cfg),
        "kind": "InitConfiguration",
        "bootstrapTokens": [
            {"token": token, "ttl": TOKEN_TTL, "usages": list(TOKEN_USAGES), "groups": list(TOKEN_GROUPS)}
        ],
        "localAPIEndpoint": {"advertiseAddress": str(cp.ipv4), "bindPort": API_PORT},
        "nodeRegistration": _node_registration(cfg, cp),
    }

    cluster: Dict[str, Any] = {
        "apiVersion": api_version(cfg),
        "kind": "ClusterConfiguration",
        "kubernetesVersion": f"v{cfg.profile.kubernetes_version}",
        "controlPlaneEndpoint": control_plane_endpoint(cfg),
        "networking": {
            "podSubnet": _pair(cfg.pod_subnets),
            "serviceSubnet": _pair(cfg.service_subnets),
            "dnsDomain": DNS_DOMAIN,
        },
        "apiServer": {
            "certSANs": [str(cp.ipv4), str(cp.ipv6), cp.name, cp.fqdn(cfg.domain)],
        },
        "controllerManager": {
            "extraArgs": _args(cfg, {
                "node-cidr-mask-size-ipv4": cfg.node_cidr_mask_ipv4,
                "node-cidr-mask-size-ipv6": cfg.node_cidr_mask_ipv6,
            }),
        },
    }
    off = gates_off(cfg)
    if off:
        cluster["apiServer"]["extraArgs"] = _args(cfg, {"feature-gates": ",".join(f"{g}=false" for g in off)})
    if not _v1beta4(cfg):
        cluster["imageRepository"] = IMAGE_REPOSITORY_2020
        cluster["dns"] = {"type": "CoreDNS"}
    if gate:
        cluster["featureGates"] = {DUAL_STACK_GATE: True}

    kubelet: Dict[str, Any] = {
        "apiVersion": KUBELET_API,
        "kind": "KubeletConfiguration",
        "cgroupDriver": "systemd",
    }
    if gate:
        kubelet["featureGates"] = {DUAL_STACK_GATE: True}
    if off:
        kubelet.setdefault("featureGates", {}).update({g: False for g in off})

    proxy: Dict[str, Any] = {
        "apiVersion": KUBE_PROXY_API,
        "kind": "KubeProxyConfiguration",
        "mode": cfg.kube_proxy_mode,
        "clusterCIDR": _pair(cfg.pod_subnets),
    }
    if cfg.kube_proxy_mode == "ipvs":
        proxy["ipvs"] = {"strictARP": True}  # MetalLB's layer 2 mode needs it under IPVS
    if gate:
        proxy["featureGates"] = {DUAL_STACK_GATE: True}

    return [init, cluster, kubelet, proxy]


def render_init(cfg: LabConfig, token: str) -> str:
    """:func:`init_config` as a multi-document YAML file."""
    return _dump_all(init_config(cfg, token))


# --------------------------------------------------------------------------- join


def join_config(cfg: LabConfig, node: Node, token: str, ca_cert_hash: str) -> Dict[str, Any]:
    """``kubeadm join --config`` for ``node``: token discovery pinned to the cluster CA."""
    if not TOKEN_RE.match(token):
        raise ValueError(f"{token!r} is not a bootstrap token ([a-z0-9]{{6}}.[a-z0-9]{{16}})")
    if not re.match(r"^sha256:[0-9a-f]{64}$", ca_cert_hash):
        raise ValueError(f"{ca_cert_hash!r} is not a CA pin of the form sha256:<64 hex digits>")
    return {
        "apiVersion": api_version(cfg),
        "kind": "JoinConfiguration",
        "discovery": {
            "bootstrapToken": {
                "apiServerEndpoint": control_plane_endpoint(cfg),
                "token": token,
                "caCertHashes": [ca_cert_hash],
            },
        },
        "nodeRegistration": _node_registration(cfg, node),
    }


def render_join(cfg: LabConfig, node: Node, token: str, ca_cert_hash: str) -> str:
    """:func:`join_config` as YAML."""
    return _dump_all([join_config(cfg, node, token, ca_cert_hash)])


def _dump_all(documents) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False, explicit_start=True)
