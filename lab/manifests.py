"""The recipe's workloads as data: MetalLB (layer 2), the nginx Deployment and its Services.

Everything here is built as Python objects and dumped with PyYAML; every address comes
from the lab configuration, and the LoadBalancer addresses are derived from the MetalLB
ranges in one place (:func:`lab.lbplan.lb_addresses`). Two profiles:

``seed-2020`` (Kubernetes 1.17, MetalLB 0.9)
    Services choose their family with the alpha field ``spec.ipFamily`` (singular);
    dual-stack Services do not exist. MetalLB is configured by the ConfigMap
    ``metallb-system/config`` with one layer 2 pool per family; the IPv6 LoadBalancer
    asks for its address with ``spec.loadBalancerIP`` (and names the IPv6 pool).
    nginx spreads with a *preferred* pod anti-affinity (topologySpreadConstraints is
    alpha in 1.17).

``current`` (Kubernetes 1.36, MetalLB 0.16)
    Services use ``ipFamilyPolicy``/``ipFamilies``; MetalLB is configured by one
    ``IPAddressPool`` holding both ranges and an ``L2Advertisement``; LoadBalancers ask
    for their addresses with the ``metallb.io/loadBalancerIPs`` annotation. A fourth
    Service, ``my-nginx-svc-dual``, is a RequireDualStack LoadBalancer.

nginx ships its own ``default.conf`` in a ConfigMap, listening on ``0.0.0.0:80`` and
``[::]:80`` (the official image's entrypoint only adds the IPv6 listen to its stock
file); the page names the pod (downward API → ``index.html`` written by an init
container), ``/client`` answers the client address nginx saw, and the access log starts
with ``$remote_addr`` (nginx's ``combined`` format plus the server address and pod).

The steps that apply these objects are in :mod:`lab.workloads`. Which flavour is built is
decided by the profile's capabilities (``legacy_metallb``, ``dual_stack_services``,
``topology_spread``), never by its name or version strings.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Dict, List, Optional, Sequence

import yaml

from .lbplan import SVC_DUAL, SVC_IPV4, SVC_IPV6, SVC_IPV6_LOCAL, lb_addresses
from .settings import LabConfig

NAMESPACE = "default"  #: where nginx and its Services live (the recipe's `kubectl get all`)
METALLB_NAMESPACE = "metallb-system"
APP = "my-nginx"
REPLICAS = 3
PORT = 80

#: MetalLB >= 0.14.9 annotation prefix (``metallb.universe.tf/`` is deprecated but still read).
ANNOTATION_LB_IPS = "metallb.io/loadBalancerIPs"
#: MetalLB 0.9's pool annotation (0.9 knows only the ``metallb.universe.tf/`` prefix).
ANNOTATION_POOL_09 = "metallb.universe.tf/address-pool"

#: Order in which the document sets are applied, and the file each is rendered to.
SET_FILES = {
    "metallb-config": "metallb-config.yaml",
    "nginx": "nginx.yaml",
    "services": "services.yaml",
}

LABELS = {"app.kubernetes.io/part-of": "dslab"}


def endpoints(cfg: LabConfig) -> List[dict]:
    """Every address a client outside the cluster can reach nginx on: service, family, address, curl."""
    rows = [(SVC_IPV4, cfg.external_ipv4, "externalIP"), (SVC_IPV6, cfg.external_ipv6, "externalIP")]
    for name, addrs in lb_addresses(cfg).items():
        rows.extend((name, addr, "LoadBalancer") for addr in addrs)
    out = []
    for name, addr, kind in rows:
        url = f"http://{addr}/" if addr.version == 4 else f"http://[{addr}]/"
        curl = f"curl http://{addr}/" if addr.version == 4 else f"curl -g http://[{addr}]/"
        out.append({"service": name, "family": f"IPv{addr.version}", "address": str(addr), "kind": kind,
                    "url": url, "curl": curl})
    return out



def _meta(name: str, namespace: Optional[str] = None, labels: Optional[dict] = None, annotations=None) -> dict:
    meta: dict = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta["labels"] = {**LABELS, **(labels or {})}
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def metallb_config(cfg: LabConfig) -> List[dict]:
    """The MetalLB address configuration: ConfigMap (0.9) or IPAddressPool + L2Advertisement (0.13+)."""
    if cfg.profile.legacy_metallb:
        pools = []
        for family, rng in ((4, cfg.metallb_ipv4_range), (6, cfg.metallb_ipv6_range)):
            if rng is not None:
                pools.append({"name": pool_name(cfg, family), "protocol": "layer2", "addresses": [str(rng)]})
        text = yaml.safe_dump({"address-pools": pools}, sort_keys=False, default_flow_style=False)
        return [{
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta("config", METALLB_NAMESPACE),
            "data": {"config": text},
        }]
    addresses = [str(r) for r in (cfg.metallb_ipv4_range, cfg.metallb_ipv6_range) if r is not None]
    return [
        {
            "apiVersion": "metallb.io/v1beta1",
            "kind": "IPAddressPool",
            "metadata": _meta(pool_name(cfg), METALLB_NAMESPACE),
            "spec": {"addresses": addresses, "autoAssign": True},
        },
        {
            "apiVersion": "metallb.io/v1beta1",
            "kind": "L2Advertisement",
            "metadata": _meta(f"{cfg.name}-l2", METALLB_NAMESPACE),
            "spec": {"ipAddressPools": [pool_name(cfg)]},
        },
    ]


def pool_name(cfg: LabConfig, family: Optional[int] = None) -> str:
    """Name of the MetalLB pool (one per family on 0.9, one for both on 0.13+)."""
    return f"{cfg.name}-pool" if family is None else f"{cfg.name}-ipv{family}"


NGINX_CONF = r"""# dslab: written by lab/manifests.py. Both families, explicitly: the official image's
# 10-listen-on-ipv6-by-default.sh only edits its stock default.conf, never this one.
log_format dslab '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
                 '"$http_referer" "$http_user_agent" server=$server_addr pod=$hostname';

server {
    listen 0.0.0.0:80;
    listen [::]:80;
    server_name _;

    access_log /var/log/nginx/access.log dslab;
    add_header X-Pod-Name $hostname always;

    location / {
        root /usr/share/nginx/html;
        index index.html;
    }

    # The client address as nginx saw it (externalTrafficPolicy: Local keeps it).
    location = /client {
        default_type text/plain;
        return 200 "$remote_addr\n";
    }

    location = /healthz {
        access_log off;
        default_type text/plain;
        return 200 "ok\n";
    }
}
"""

# Written by the init container; ${...} are its environment (downward API).
INDEX_SCRIPT = r"""set -eu
cat > /work/index.html <<EOF
<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>my-nginx: ${POD_NAME}</title></head>
<body>
<h1>${POD_NAME}</h1>
<pre>
pod:       ${POD_NAME}
namespace: ${POD_NAMESPACE}
node:      ${NODE_NAME}
pod IPs:   ${POD_IPS}
</pre>
</body></html>
EOF
"""


def _env_field(name: str, path: str) -> dict:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def nginx(cfg: LabConfig) -> List[dict]:
    """The nginx ConfigMap and Deployment."""
    image = cfg.profile.nginx_image
    labels = {"app": APP}
    env = [
        _env_field("POD_NAME", "metadata.name"),
        _env_field("POD_NAMESPACE", "metadata.namespace"),
        _env_field("NODE_NAME", "spec.nodeName"),
        # status.podIPs (both families) only where dual-stack is past alpha (with dual-stack
        # Services, 1.20+); before, the page shows the primary (IPv4) pod IP.
        _env_field("POD_IPS", "status.podIPs" if cfg.profile.dual_stack_services else "status.podIP"),
    ]
    pod_spec: dict = {
        "enableServiceLinks": False,
        "initContainers": [{
            "name": "index",
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["sh", "-c", INDEX_SCRIPT],
            "env": env,
            "volumeMounts": [{"name": "html", "mountPath": "/work"}],
        }],
        "containers": [{
            "name": "nginx",
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": PORT}, "periodSeconds": 5},
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "128Mi"}},
            "volumeMounts": [
                {"name": "conf", "mountPath": "/etc/nginx/conf.d", "readOnly": True},
                {"name": "html", "mountPath": "/usr/share/nginx/html", "readOnly": True},
            ],
        }],
        "volumes": [
            {"name": "conf", "configMap": {"name": f"{APP}-conf"}},
            {"name": "html", "emptyDir": {}},
        ],
    }
    if not cfg.profile.topology_spread:
        # e.g. 1.17, where topologySpreadConstraints is alpha (EvenPodsSpread): a preferred anti-affinity.
        pod_spec["affinity"] = {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100,
            "podAffinityTerm": {"labelSelector": {"matchLabels": dict(labels)},
                                "topologyKey": "kubernetes.io/hostname"},
        }]}}
    else:
        pod_spec["topologySpreadConstraints"] = [{
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": dict(labels)},
            # The tainted control plane is not a domain: without this it would count as an
            # empty one and keep the third replica unschedulable.
            "nodeTaintsPolicy": "Honor",
        }]
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta(f"{APP}-conf", NAMESPACE, labels),
            "data": {"default.conf": NGINX_CONF},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta(APP, NAMESPACE, labels),
            "spec": {
                "replicas": REPLICAS,
                "selector": {"matchLabels": dict(labels)},
                "template": {"metadata": {"labels": {**LABELS, **labels}}, "spec": pod_spec},
            },
        },
    ]


def _service(cfg: LabConfig, name: str, families: Sequence[int], *, external: Optional[list] = None,
             load_balancer: Optional[tuple] = None) -> dict:
    spec: dict = {}
    annotations = {}
    if not cfg.profile.dual_stack_services:
        if len(families) != 1:
            raise ValueError(f"{name}: Kubernetes {cfg.profile.kubernetes_version} has no dual-stack Services")
        spec["ipFamily"] = f"IPv{families[0]}"
    else:
        spec["ipFamilyPolicy"] = "SingleStack" if len(families) == 1 else "RequireDualStack"
        spec["ipFamilies"] = [f"IPv{f}" for f in families]
    spec["type"] = "LoadBalancer" if load_balancer else "ClusterIP"
    spec["selector"] = {"app": APP}
    spec["ports"] = [{"name": "http", "port": PORT, "targetPort": PORT, "protocol": "TCP"}]
    if external:
        spec["externalIPs"] = [str(a) for a in external]
    if load_balancer:
        spec["externalTrafficPolicy"] = "Local"
        if cfg.profile.legacy_metallb:
            spec["loadBalancerIP"] = str(load_balancer[0])
            annotations[ANNOTATION_POOL_09] = pool_name(cfg, families[0])
        else:
            annotations[ANNOTATION_LB_IPS] = ",".join(str(a) for a in load_balancer)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, NAMESPACE, {"app": APP}, annotations),
        "spec": spec,
    }


def services(cfg: LabConfig) -> List[dict]:
    """The recipe's three Services, plus the dual-stack LoadBalancer where Kubernetes has one."""
    lbs = lb_addresses(cfg)
    docs = [
        _service(cfg, SVC_IPV4, [4], external=[cfg.external_ipv4]),
        _service(cfg, SVC_IPV6, [6], external=[cfg.external_ipv6]),
        _service(cfg, SVC_IPV6_LOCAL, [6], load_balancer=lbs[SVC_IPV6_LOCAL]),
    ]
    if cfg.profile.dual_stack_services:
        docs.append(_service(cfg, SVC_DUAL, [4, 6], load_balancer=lbs[SVC_DUAL]))
    return docs


def manifests(cfg: LabConfig) -> Dict[str, List[dict]]:
    """File name → the objects of that file."""
    return {
        SET_FILES["metallb-config"]: metallb_config(cfg),
        SET_FILES["nginx"]: nginx(cfg),
        SET_FILES["services"]: services(cfg),
    }


class _Dumper(yaml.SafeDumper):
    """SafeDumper writing multi-line strings as literal blocks (readable ConfigMaps)."""


def _str(dumper, value):
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str)


def dump(objects: Sequence[dict]) -> str:
    """Multi-document YAML of ``objects``."""
    return yaml.dump_all(list(objects), Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                         explicit_start=True)


def render_manifests(cfg: LabConfig) -> Dict[str, str]:
    """File name → multi-document YAML text."""
    return {name: dump(objs) for name, objs in manifests(cfg).items()}


def digest(text: str) -> str:
    """sha256 of a document set's text."""
    return hashlib.sha256(text.encode()).hexdigest()


def memberlist_secret() -> dict:
    """A fresh memberlist Secret for MetalLB 0.9 (``openssl rand -base64 128`` equivalent)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta("memberlist", METALLB_NAMESPACE),
        "type": "Opaque",
        "stringData": {"secretkey": base64.b64encode(secrets.token_bytes(128)).decode()},
    }

